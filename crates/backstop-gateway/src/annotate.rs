//! How the gateway tells the caller which model answered: `x-backstop-*`
//! headers on every answer and a `backstop` object in the body (on the
//! final chunk, for streams).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use backstop_core::{Attempt, Outcome};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Serialize;

/// `x-backstop-model`: the model that answered.
pub const MODEL: HeaderName = HeaderName::from_static("x-backstop-model");
/// `x-backstop-fallback-level`: its index in the order tried.
pub const FALLBACK_LEVEL: HeaderName = HeaderName::from_static("x-backstop-fallback-level");
/// `x-backstop-attempts`: upstream calls made.
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-backstop-attempts");
/// `x-backstop-warning`: percent-encoded warning.
pub const WARNING: HeaderName = HeaderName::from_static("x-backstop-warning");
/// `x-backstop-limitation`: percent-encoded limitation.
pub const LIMITATION: HeaderName = HeaderName::from_static("x-backstop-limitation");
/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Characters encoded in header values: controls, non-ASCII (always),
/// and `%` so decoding is unambiguous.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b'%').add(b'"');

/// The `backstop` object, as every answer carries it.
#[derive(Debug, Serialize)]
pub struct BackstopInfo<'a> {
    /// The model that answered.
    pub model_used: &'a str,
    /// Its index in the order tried.
    pub fallback_level: usize,
    /// Set when a backup answered.
    pub warning: Option<&'a str>,
    /// Set when features may be limited.
    pub limitation: Option<&'a str>,
    /// Every attempt and skip.
    pub attempts: &'a [Attempt],
}

impl<'a> From<&'a Outcome> for BackstopInfo<'a> {
    fn from(outcome: &'a Outcome) -> Self {
        Self {
            model_used: &outcome.model_used,
            fallback_level: outcome.fallback_level,
            warning: outcome.warning.as_deref(),
            limitation: outcome.limitation.as_deref(),
            attempts: &outcome.attempts,
        }
    }
}

/// Sets the `x-backstop-*` headers of an answer served as `outcome` says.
pub fn set_headers(headers: &mut HeaderMap, outcome: &Outcome) {
    if let Ok(v) = HeaderValue::from_str(&encode(&outcome.model_used)) {
        headers.insert(MODEL, v);
    }
    headers.insert(FALLBACK_LEVEL, HeaderValue::from(outcome.fallback_level));
    headers.insert(ATTEMPTS, HeaderValue::from(outcome.upstream_attempts));
    for (name, text) in [
        (WARNING, &outcome.warning),
        (LIMITATION, &outcome.limitation),
    ] {
        if let Some(text) = text
            && let Ok(v) = HeaderValue::from_str(&encode(text))
        {
            headers.insert(name, v);
        }
    }
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, HEADER_UNSAFE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_warnings_are_percent_encoded() {
        let mut h = HeaderMap::new();
        let warning: std::sync::Arc<str> = "当前使用了备用模型(qwen-7b) 100%".into();
        let outcome = Outcome {
            model_used: "qwen-7b".into(),
            fallback_level: 1,
            attempts: Vec::new(),
            upstream_attempts: 2,
            warning: Some(warning.clone()),
            limitation: None,
            usage: None,
        };
        set_headers(&mut h, &outcome);
        let v = h[WARNING].to_str().unwrap();
        assert!(v.is_ascii());
        let decoded = percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, *warning);
        assert_eq!(h[FALLBACK_LEVEL], "1");
        assert_eq!(h[ATTEMPTS], "2");
        assert!(!h.contains_key(LIMITATION));
    }
}
