//! The answers the fake providers give, known in advance so the harness can
//! tell a complete answer from a truncated one.
//!
//! Every healthy fake answers [`KNOWN_TEXT`], streamed one word-token at a
//! time; the template rung of the rendered configs answers
//! [`TEMPLATE_TEXT`]. A fake that supports prefill continues the known text
//! from wherever a trailing assistant message ends, so a mid-stream
//! `continue` can be verified end to end.

use backstop_core::{ChatRequest, Role};

/// The text every healthy fake provider answers: several words, so a cut
/// after any token is visible.
pub const KNOWN_TEXT: &str = "Backstop kept this answer flowing while the primary model was failing, \
so the caller never noticed that anything had gone wrong at all.";

/// The text of the template rung in rendered configs.
pub const TEMPLATE_TEXT: &str = "The service is busy right now. Please try again in a minute.";

/// A prompt containing this marker is refused by fakes that enforce a
/// content policy.
pub const FLAGGED_MARKER: &str = "[chaos:flagged]";

/// Splits text into the tokens a fake streams: a cut before every space, so
/// `"ick brown fox"` becomes `"ick"`, `" brown"`, `" fox"`. Joining the
/// tokens gives the text back.
pub fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' && i > start {
            out.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The number of tokens in [`KNOWN_TEXT`].
pub fn known_token_count() -> usize {
    tokens(KNOWN_TEXT).len()
}

/// What remains of [`KNOWN_TEXT`] after `prefill`, when the known text
/// starts with it; `None` when the prefill is not a prefix of it.
pub fn continuation(prefill: &str) -> Option<&'static str> {
    KNOWN_TEXT.strip_prefix(prefill)
}

/// The trailing assistant message of a request (a prefill to continue).
pub fn prefill_of(request: &ChatRequest) -> Option<String> {
    request
        .messages
        .last()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.text_content())
}

/// A user prompt of roughly `tokens` tokens by Backstop's estimate (four
/// ASCII bytes a token), for context-window scenarios. Zero gives a short
/// question.
pub fn prompt_of_size(tokens: u32) -> String {
    const QUESTION: &str = "Tell me how the outage went.";
    if tokens == 0 {
        return QUESTION.to_owned();
    }
    let filler = "lorem ipsum dolor sit amet ";
    let bytes = tokens as usize * 4;
    let mut out = String::with_capacity(bytes + QUESTION.len());
    while out.len() + filler.len() <= bytes {
        out.push_str(filler);
    }
    out.push_str(QUESTION);
    out
}

/// Whether two texts carry the same words (whitespace runs compared as one
/// space). A gateway that joins a continuation to a prefill may add or drop
/// a space at the seam; a missing or repeated word is still caught.
pub fn same_words(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_join_back_to_the_text() {
        let t = tokens(KNOWN_TEXT);
        assert!(t.len() >= 15, "several words: {}", t.len());
        assert_eq!(t.concat(), KNOWN_TEXT);
        assert_eq!(tokens("ick brown fox"), vec!["ick", " brown", " fox"]);
        assert_eq!(tokens(" brown"), vec![" brown"]);
        assert!(tokens("").is_empty());
    }

    #[test]
    fn continuation_resumes_mid_word() {
        let cut = &KNOWN_TEXT[..10];
        let rest = continuation(cut).expect("a prefix");
        assert_eq!(format!("{cut}{rest}"), KNOWN_TEXT);
        assert!(continuation("Something else").is_none());
        assert_eq!(continuation(""), Some(KNOWN_TEXT));
    }

    #[test]
    fn sized_prompt_estimates_close_to_the_ask() {
        let req = ChatRequest::user("m", prompt_of_size(12_000));
        let est = req.estimated_prompt_tokens();
        assert!((11_900..=12_100).contains(&est), "estimate {est}");
    }

    #[test]
    fn same_words_ignores_spacing_but_not_words() {
        assert!(same_words("a  b c", "a b c"));
        assert!(!same_words("a b", "a b c"));
        assert!(!same_words("a b b c", "a b c"));
    }
}
