//! Answer texts with `{scenario}` and `{model}` placeholders, parsed once
//! when the provider is built and rendered per call without re-parsing.

use crate::error::TemplateBuildError;

/// One piece of a parsed text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Scenario,
    Model,
}

/// A parsed answer text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    segments: Vec<Segment>,
    /// Bytes of literal text, to size the rendered string.
    literal_len: usize,
}

impl Template {
    /// Parses `text`; `key` names it in errors (`text`, `texts.zh-CN`).
    pub(crate) fn parse(key: &str, text: &str) -> Result<Self, TemplateBuildError> {
        if text.trim().is_empty() {
            return Err(TemplateBuildError::EmptyText {
                key: key.to_owned(),
            });
        }
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(TemplateBuildError::UnmatchedBrace {
                                    key: key.to_owned(),
                                });
                            }
                            Some(c) => name.push(c),
                        }
                    }
                    let segment = match name.trim() {
                        "scenario" => Segment::Scenario,
                        "model" => Segment::Model,
                        _ => {
                            return Err(TemplateBuildError::UnknownPlaceholder {
                                key: key.to_owned(),
                                placeholder: name,
                            });
                        }
                    };
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(segment);
                }
                '}' => {
                    return Err(TemplateBuildError::UnmatchedBrace {
                        key: key.to_owned(),
                    });
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        let literal_len = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.len(),
                _ => 0,
            })
            .sum();
        Ok(Self {
            segments,
            literal_len,
        })
    }

    /// The text for this scenario and model.
    pub(crate) fn render(&self, scenario: &str, model: &str) -> String {
        let mut out = String::with_capacity(self.literal_len + scenario.len() + model.len());
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Scenario => out.push_str(scenario),
                Segment::Model => out.push_str(model),
            }
        }
        out
    }
}

/// Splits `text` into at most about `count` pieces that concatenate back
/// to it: at whitespace when the text has any, else (CJK) between
/// characters.
pub(crate) fn pieces(text: &str, count: usize) -> Vec<&str> {
    let chars = text.chars().count();
    let target = chars.div_ceil(count.max(1)).max(1);
    let spaced = text.contains(char::is_whitespace);
    let mut out = Vec::with_capacity(count + 1);
    let (mut start, mut taken) = (0, 0);
    for (i, c) in text.char_indices() {
        taken += 1;
        let end = i + c.len_utf8();
        if taken >= target && (!spaced || c.is_whitespace()) && end < text.len() {
            out.push(&text[start..end]);
            start = end;
            taken = 0;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_render_and_braces_escape() {
        let t = Template::parse("text", "The {scenario} bot ({ model }) says {{hi}}.").unwrap();
        assert_eq!(
            t.render("support", "rules"),
            "The support bot (rules) says {hi}."
        );
        let t = Template::parse("text", "{model}").unwrap();
        assert_eq!(t.render("s", "m"), "m");
    }

    #[test]
    fn bad_texts_are_refused_with_their_key() {
        assert_eq!(
            Template::parse("texts.zh-CN", "Hi {user}"),
            Err(TemplateBuildError::UnknownPlaceholder {
                key: "texts.zh-CN".into(),
                placeholder: "user".into()
            })
        );
        for bad in ["Hi {scenario", "Hi }", "{{model}", "a {b{c}}"] {
            assert!(
                matches!(
                    Template::parse("text", bad),
                    Err(TemplateBuildError::UnmatchedBrace { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            Template::parse("text", "  "),
            Err(TemplateBuildError::EmptyText { key: "text".into() })
        );
    }

    #[test]
    fn pieces_concatenate_back_to_the_text() {
        for text in [
            "Sorry, the assistant is temporarily unavailable. Please try again.",
            "抱歉，智能助手暂时无法使用，请稍后再试。",
            "x",
            "two words",
        ] {
            let p = pieces(text, 4);
            assert_eq!(p.concat(), text);
            assert!(!p.is_empty() && p.len() <= 5, "{p:?}");
            assert!(p.iter().all(|s| !s.is_empty()));
        }
        assert_eq!(
            pieces("一二三四五六七八", 4),
            ["一二", "三四", "五六", "七八"]
        );
        assert_eq!(
            pieces("aaa bbb ccc ddd", 4),
            ["aaa ", "bbb ", "ccc ", "ddd"]
        );
    }
}
