//! Joining a continuation to an assistant prefill.
//!
//! Anthropic rejects a final assistant turn that ends in whitespace, so the
//! request trims it; the model then usually starts its continuation with
//! that whitespace itself (" world" after "Hello"). The caller already has
//! the trimmed whitespace, so it is taken off the continuation's start
//! again, as far as the two agree; "Hello " + " world" must read
//! "Hello world", not "Hello  world".

/// Removes from the start of a continuation the whitespace the caller
/// already has.
#[derive(Debug, Default)]
pub(crate) struct Join {
    /// Trimmed whitespace the continuation has not matched yet.
    pending: String,
}

impl Join {
    /// A join for a prefill whose trailing `trimmed` whitespace was removed
    /// (empty: nothing to join).
    pub(crate) fn new(trimmed: String) -> Self {
        Self { pending: trimmed }
    }

    /// The part of the next piece of continuation the caller does not
    /// have yet.
    pub(crate) fn apply<'t>(&mut self, text: &'t str) -> &'t str {
        if self.pending.is_empty() {
            return text;
        }
        let mut matched_text = 0;
        let mut matched_pending = 0;
        let mut pending = self.pending.chars();
        for c in text.chars() {
            match pending.next() {
                Some(p) if p == c => {
                    matched_text += c.len_utf8();
                    matched_pending += p.len_utf8();
                }
                Some(_) => {
                    // The model went its own way: keep the rest as it is.
                    self.pending.clear();
                    return &text[matched_text..];
                }
                None => break,
            }
        }
        if matched_text == text.len() && matched_pending < self.pending.len() {
            // The whole piece was whitespace the caller has; more may follow.
            self.pending.drain(..matched_pending);
            return "";
        }
        self.pending.clear();
        &text[matched_text..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(trimmed: &str, pieces: &[&str]) -> String {
        let mut join = Join::new(trimmed.to_owned());
        pieces.iter().map(|p| join.apply(p)).collect()
    }

    #[test]
    fn whitespace_the_caller_has_is_not_repeated() {
        assert_eq!(joined(" ", &[" world", "!"]), "world!");
        assert_eq!(joined("\n\n", &["\n", "\nNext", " para"]), "Next para");
        assert_eq!(joined(" ", &["", " ", "x"]), "x");
    }

    #[test]
    fn a_continuation_without_the_whitespace_is_kept_whole() {
        assert_eq!(joined(" ", &["world"]), "world");
        assert_eq!(joined("\n\n", &[" indented"]), " indented");
        assert_eq!(joined("", &[" as is"]), " as is");
        assert_eq!(
            joined(" ", &["  two"]),
            " two",
            "only what was trimmed is removed"
        );
    }

    #[test]
    fn later_pieces_are_untouched() {
        let mut join = Join::new(" ".to_owned());
        assert_eq!(join.apply(" a"), "a");
        assert_eq!(join.apply(" b"), " b");
    }
}
