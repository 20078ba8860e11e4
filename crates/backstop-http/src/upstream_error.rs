//! Reading what an upstream's error body says, for both HTTP providers.
//!
//! OpenAI, Anthropic and the servers compatible with them answer errors
//! with an error object under `error` (`{"error": {"message", "type",
//! ...}}`), a bare error object, or an error string (`{"error": "text"}`).
//! [`ErrorInfo`] reads the fields they share, and [`ErrorDialect::status_error`] and
//! [`ErrorDialect::in_band_error`] turn them into a `ProviderError` (message redacted,
//! code kept). Each provider says through an [`ErrorDialect`] which keys
//! hold the message and the code, whether numbers count as text, and how
//! an error is classified into a `FailureKind`: those rules stay the
//! provider's own.

use std::time::Duration;

use backstop_core::{FailureKind, ProviderError};
use serde_json::Value;

use crate::{ApiKey, fallback_message, redact};

/// How a provider's error objects are written and classified.
#[derive(Debug, Clone, Copy)]
pub struct ErrorDialect {
    /// The keys that may hold the message, in order; the first present
    /// wins. An object without any of them is not an error object.
    pub message_keys: &'static [&'static str],
    /// The path to the error's code inside the error object: `["code"]`,
    /// or `["details", "error_code"]`.
    pub code_path: &'static [&'static str],
    /// Whether a number counts as text (vLLM's `"code": 404`).
    pub numbers_as_text: bool,
    /// Whether an in-band error whose code is an HTTP error status (see
    /// [`ErrorInfo::status_code`]) is classified as that status.
    pub in_band_status: bool,
    /// The message of an in-band error that says nothing readable.
    pub missing_message: &'static str,
    /// The kind of an error; `status` is `None` for an in-band error.
    pub classify: fn(Option<u16>, &ErrorInfo) -> FailureKind,
}

/// What an error body says.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ErrorInfo {
    /// The message (not yet redacted).
    pub message: String,
    /// `error.type`.
    pub kind: Option<String>,
    /// The code, read at the dialect's [`ErrorDialect::code_path`].
    pub code: Option<String>,
}

impl ErrorInfo {
    /// Reads the error object under `error` (or `value` itself when there
    /// is no `error`): an error string is the message; an object gives the
    /// message and the code (by `dialect`) and `type`.
    /// `None` when it is neither.
    pub fn from_value(value: &Value, dialect: &ErrorDialect) -> Option<Self> {
        let error = value.get("error").unwrap_or(value);
        if let Some(text) = error.as_str() {
            return Some(Self {
                message: text.to_owned(),
                ..Self::default()
            });
        }
        let object = error.as_object()?;
        let text = |v: Option<&Value>| match v? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) if dialect.numbers_as_text => Some(n.to_string()),
            _ => None,
        };
        let message = dialect
            .message_keys
            .iter()
            .find_map(|key| text(object.get(*key)))?;
        Some(Self {
            message,
            kind: text(object.get("type")),
            code: text(
                dialect
                    .code_path
                    .iter()
                    .try_fold(error, |v, key| v.get(*key)),
            ),
        })
    }

    /// Reads an error body; `None` when it is not JSON of a known shape.
    pub fn from_body(body: &[u8], dialect: &ErrorDialect) -> Option<Self> {
        Self::from_value(&serde_json::from_slice(body).ok()?, dialect)
    }

    /// What a non-success response's body says: its error object, else the
    /// start of its text or the status (see [`fallback_message`]).
    pub fn of_response(status: u16, body: &[u8], dialect: &ErrorDialect) -> Self {
        Self::from_body(body, dialect).unwrap_or_else(|| Self {
            message: fallback_message(status, body),
            ..Self::default()
        })
    }

    /// Whether the message contains any of `words` (lower case), ignoring
    /// ASCII case.
    pub fn says(&self, words: &[&str]) -> bool {
        let message = self.message.to_ascii_lowercase();
        words.iter().any(|w| message.contains(w))
    }

    /// The HTTP status an in-band error names in its `code`: vLLM's bare
    /// error objects (and Google's compatible API) carry the status they
    /// would have answered with, `400`, `404`, `429`, `500`, ...
    pub fn status_code(&self) -> Option<u16> {
        let code: u16 = self.code.as_deref()?.parse().ok()?;
        (400..=599).contains(&code).then_some(code)
    }
}

impl ErrorDialect {
    /// The error for a non-success response: kind, status, code,
    /// `Retry-After`, and the message redacted of `key`.
    pub fn status_error(
        &self,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
        key: Option<&ApiKey>,
    ) -> ProviderError {
        let info = ErrorInfo::of_response(status, body, self);
        let kind = (self.classify)(Some(status), &info);
        let mut error = build(kind, info, key).with_status(status);
        error.retry_after = retry_after;
        error
    }

    /// The error for an error object inside a stream or a 200 body (it has
    /// no status of its own; see [`ErrorDialect::in_band_status`]).
    pub fn in_band_error(&self, value: &Value, key: Option<&ApiKey>) -> ProviderError {
        let info = ErrorInfo::from_value(value, self).unwrap_or_else(|| ErrorInfo {
            message: self.missing_message.to_owned(),
            ..ErrorInfo::default()
        });
        let status = if self.in_band_status {
            info.status_code()
        } else {
            None
        };
        build((self.classify)(status, &info), info, key)
    }
}

/// The error: the message redacted of `key`, the code (else the type) kept.
fn build(kind: FailureKind, info: ErrorInfo, key: Option<&ApiKey>) -> ProviderError {
    let mut error = ProviderError::new(kind, redact(&info.message, key));
    error.code = info.code.or(info.kind);
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server(_: Option<u16>, _: &ErrorInfo) -> FailureKind {
        FailureKind::Server
    }

    const STRICT: ErrorDialect = ErrorDialect {
        message_keys: &["message"],
        code_path: &["details", "error_code"],
        numbers_as_text: false,
        in_band_status: false,
        missing_message: "no message",
        classify: server,
    };
    const LENIENT: ErrorDialect = ErrorDialect {
        message_keys: &["message", "detail"],
        code_path: &["code"],
        numbers_as_text: true,
        in_band_status: true,
        missing_message: "no message",
        classify: server,
    };

    #[test]
    fn reads_nested_bare_and_string_errors() {
        let nested = json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow", "details": {"error_code": "x"}}});
        assert_eq!(
            ErrorInfo::from_value(&nested, &STRICT),
            Some(ErrorInfo {
                message: "slow".into(),
                kind: Some("rate_limit_error".into()),
                code: Some("x".into()),
            })
        );
        let bare =
            json!({"object": "error", "message": "gone", "type": "NotFoundError", "code": 404});
        let info = ErrorInfo::from_value(&bare, &LENIENT).unwrap();
        assert_eq!(info.code.as_deref(), Some("404"));
        assert_eq!(info.status_code(), Some(404));
        assert_eq!(ErrorInfo::from_value(&bare, &STRICT).unwrap().code, None);
        assert_eq!(
            ErrorInfo::from_value(&bare, &STRICT)
                .unwrap()
                .kind
                .as_deref(),
            Some("NotFoundError")
        );
        let text = json!({"error": "model not found"});
        assert_eq!(
            ErrorInfo::from_value(&text, &STRICT).unwrap().message,
            "model not found"
        );
    }

    #[test]
    fn message_keys_and_fallbacks_follow_the_shape() {
        let detail = json!({"detail": "field required"});
        assert_eq!(ErrorInfo::from_value(&detail, &STRICT), None);
        assert_eq!(
            ErrorInfo::from_value(&detail, &LENIENT).unwrap().message,
            "field required"
        );
        assert_eq!(ErrorInfo::from_value(&json!([1]), &LENIENT), None);
        assert_eq!(
            ErrorInfo::of_response(502, b"<html>x</html>", &STRICT).message,
            "HTTP 502 with no error message"
        );
        let key = ApiKey::raw("s3cret-key").unwrap();
        let e = STRICT.in_band_error(&json!({"error": {}}), Some(&key));
        assert_eq!((e.message.as_str(), e.code), ("no message", None));
        let e = LENIENT.status_error(
            429,
            br#"{"error": {"message": "bad s3cret-key", "type": "t", "code": 7}}"#,
            Some(Duration::from_secs(3)),
            Some(&key),
        );
        assert_eq!(e.message, "bad <redacted>");
        assert_eq!(e.code.as_deref(), Some("7"), "the code wins over the type");
        assert_eq!(
            (e.status, e.retry_after),
            (Some(429), Some(Duration::from_secs(3)))
        );
        let e = STRICT.status_error(
            400,
            br#"{"error": {"message": "m", "type": "t"}}"#,
            None,
            None,
        );
        assert_eq!(e.code.as_deref(), Some("t"), "else the type");
        assert!(
            ErrorInfo::from_value(&json!({"message": "Engine OVERLOADED"}), &STRICT)
                .unwrap()
                .says(&["overload"])
        );
        let not_status = ErrorInfo {
            code: Some("1234".into()),
            ..ErrorInfo::default()
        };
        assert_eq!(not_status.status_code(), None);
    }
}
