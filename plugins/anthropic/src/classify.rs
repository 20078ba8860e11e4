//! Anthropic error bodies and statuses, classified into [`FailureKind`]s.
//!
//! Anthropic answers errors, and fails streams, with `{"type": "error",
//! "error": {"type": "...", "message": "..."}, "request_id": "..."}`. The
//! error type names the failure (`overloaded_error`, `rate_limit_error`,
//! `invalid_request_error`, ...); the status and the message refine it: a
//! 429 spend limit is out of credits rather than a rate limit, and an
//! `invalid_request_error` saying "prompt is too long" is a context-length
//! failure. A 404 (`not_found_error`) from the Messages endpoint names a
//! model that is retired, misspelt or not available to the key: a fault of
//! the model's configuration, so it is `ModelNotFound`, not `BadRequest`.
//! So is an in-stream `error` event of that type, or of the type
//! `model_not_found` that some Anthropic-compatible proxies send.

use backstop_core::FailureKind;
use backstop_http::upstream_error::{ErrorDialect, ErrorInfo};

/// Anthropic's error objects: the message under `message`, every field a
/// string.
pub(crate) const DIALECT: ErrorDialect = ErrorDialect {
    message_keys: &["message"],
    code_path: &["details", "error_code"],
    numbers_as_text: false,
    in_band_status: false,
    missing_message: "the stream reported an error without a message",
    classify,
};

/// Whether the error's `type` is `kind`.
fn is(info: &ErrorInfo, kind: &str) -> bool {
    info.kind.as_deref() == Some(kind)
}

/// The kind of an error. `status` is `None` for an `error` event in a
/// stream.
pub(crate) fn classify(status: Option<u16>, info: &ErrorInfo) -> FailureKind {
    let client_side = status.is_none_or(|s| (400..500).contains(&s));
    if matches!(status, Some(401 | 403))
        || is(info, "authentication_error")
        || is(info, "permission_error")
    {
        return FailureKind::Auth;
    }
    if status == Some(402)
        || is(info, "billing_error")
        || info.code.as_deref() == Some("enforced_spend_limit_reached")
        || (client_side && info.says(&["credit balance", "usage limits", "spend limit"]))
    {
        return FailureKind::QuotaExhausted;
    }
    if status == Some(429) || is(info, "rate_limit_error") {
        return FailureKind::RateLimited;
    }
    if status == Some(529)
        || is(info, "overloaded_error")
        || (status == Some(503) && info.says(&["overload"]))
    {
        return FailureKind::Overloaded;
    }
    if client_side
        && info.says(&[
            "prompt is too long",
            "exceed context limit",
            "context window",
            "context length",
        ])
    {
        return FailureKind::ContextLength;
    }
    if status == Some(404)
        || (client_side && (is(info, "not_found_error") || is(info, "model_not_found")))
    {
        return FailureKind::ModelNotFound;
    }
    match status {
        Some(408 | 500..=599) => FailureKind::Server,
        Some(400..=499) => FailureKind::BadRequest,
        Some(_) => FailureKind::InvalidResponse,
        None if is(info, "invalid_request_error") || is(info, "request_too_large") => {
            FailureKind::BadRequest
        }
        None => FailureKind::Server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use serde_json::{Value, json};

    fn error(kind: &str, message: &str) -> Value {
        json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"})
    }

    fn kind(status: Option<u16>, body: Value) -> FailureKind {
        classify(status, &ErrorInfo::from_value(&body, &DIALECT).unwrap())
    }

    #[test]
    fn anthropic_errors_map_by_status_type_and_message() {
        use FailureKind::*;
        let cases = [
            (529, error("overloaded_error", "Overloaded"), Overloaded),
            (
                429,
                error(
                    "rate_limit_error",
                    "Number of request tokens has exceeded your per-minute rate limit",
                ),
                RateLimited,
            ),
            (
                429,
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": "You have reached your monthly spend limit.", "details": {"error_code": "enforced_spend_limit_reached"}}}),
                QuotaExhausted,
            ),
            (
                400,
                error(
                    "invalid_request_error",
                    "prompt is too long: 215000 tokens > 200000 maximum",
                ),
                ContextLength,
            ),
            (
                400,
                error(
                    "invalid_request_error",
                    "input length and `max_tokens` exceed context limit: 197626 + 8192 > 200000, decrease input length or `max_tokens` and try again",
                ),
                ContextLength,
            ),
            (
                400,
                error(
                    "invalid_request_error",
                    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
                ),
                QuotaExhausted,
            ),
            (
                400,
                error(
                    "invalid_request_error",
                    "messages: roles must alternate between \"user\" and \"assistant\"",
                ),
                BadRequest,
            ),
            (
                401,
                error("authentication_error", "invalid x-api-key"),
                Auth,
            ),
            (
                403,
                error(
                    "permission_error",
                    "Your API key does not have permission to use the specified resource.",
                ),
                Auth,
            ),
            (
                402,
                error("billing_error", "There is an issue with your billing."),
                QuotaExhausted,
            ),
            (
                404,
                error("not_found_error", "model: claude-9"),
                ModelNotFound,
            ),
            (
                413,
                error(
                    "request_too_large",
                    "Request exceeds the maximum allowed number of bytes.",
                ),
                BadRequest,
            ),
            (500, error("api_error", "Internal server error"), Server),
            (504, error("timeout_error", "Request timed out"), Server),
        ];
        for (status, body, expected) in cases {
            assert_eq!(
                kind(Some(status), body.clone()),
                expected,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn stream_error_events_map_by_type() {
        use FailureKind::*;
        assert_eq!(
            kind(None, error("overloaded_error", "Overloaded")),
            Overloaded
        );
        assert_eq!(
            kind(None, error("api_error", "Internal server error")),
            Server
        );
        assert_eq!(
            kind(None, error("rate_limit_error", "slow down")),
            RateLimited
        );
        assert_eq!(
            kind(
                None,
                error(
                    "invalid_request_error",
                    "prompt is too long: 9 tokens > 8 maximum"
                )
            ),
            ContextLength
        );
        assert_eq!(
            kind(None, error("invalid_request_error", "bad")),
            BadRequest
        );
        assert_eq!(kind(None, error("authentication_error", "no")), Auth);
        assert_eq!(
            kind(None, error("not_found_error", "model: claude-9")),
            ModelNotFound
        );
        assert_eq!(
            kind(None, error("model_not_found", "model: claude-9")),
            ModelNotFound
        );
        assert_eq!(
            kind(Some(400), error("model_not_found", "model: claude-9")),
            ModelNotFound
        );
    }

    #[test]
    fn status_error_keeps_type_status_and_retry_after() {
        let body = serde_json::to_vec(&error("rate_limit_error", "slow down")).unwrap();
        let e = DIALECT.status_error(429, &body, Some(Duration::from_secs(4)), None);
        assert_eq!(e.kind, FailureKind::RateLimited);
        assert_eq!(e.code.as_deref(), Some("rate_limit_error"));
        assert_eq!(e.retry_after, Some(Duration::from_secs(4)));
        assert_eq!(e.to_string(), "rate_limited (HTTP 429): slow down");
        let e = DIALECT.status_error(502, b"<html>bad gateway</html>", None, None);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (FailureKind::Server, "HTTP 502 with no error message")
        );
    }
}
