//! Upstream error bodies and statuses, classified into [`FailureKind`]s.
//!
//! OpenAI answers errors with `{"error": {"message", "type", "param",
//! "code"}}`; compatible servers vary: vLLM sends `{"object": "error",
//! "message", "type", "code": 400}` (a numeric code), Ollama `{"error":
//! "text"}`, Azure `{"error": {"code": "content_filter", ...}}`. The kind
//! comes from the status and from `error.code` / `error.type` together, so
//! a 429 that means "out of credits" is not mistaken for a rate limit.
//!
//! A 404 from a chat completions endpoint is always about the model (OpenAI
//! `model_not_found`, Ollama `model "x" not found`, vLLM's `NotFoundError`,
//! a deployment that does not exist): the model's configuration is wrong,
//! not the caller's request, so it is `ModelNotFound` and the Router falls
//! over and disables the model rather than returning the error.
//!
//! An error object inside a stream or a 200 body has no status of its own;
//! a numeric `code` in the 4xx/5xx range (vLLM's `"code": 404`) stands in
//! for it.

use backstop_core::FailureKind;
use backstop_http::upstream_error::{ErrorDialect, ErrorInfo};

/// OpenAI-compatible error objects: the message under `message` (or
/// `detail`, as FastAPI-based servers write it), and numbers read as text
/// (vLLM's `"code": 400`).
pub(crate) const DIALECT: ErrorDialect = ErrorDialect {
    message_keys: &["message", "detail"],
    code_path: &["code"],
    numbers_as_text: true,
    in_band_status: true,
    missing_message: "the upstream reported an error without a message",
    classify,
};

/// Whether the error's `code` or `type` is `name`.
fn is(info: &ErrorInfo, name: &str) -> bool {
    info.code.as_deref() == Some(name) || info.kind.as_deref() == Some(name)
}

fn overloaded(info: &ErrorInfo) -> bool {
    is(info, "overloaded_error") || info.says(&["overload", "capacity"])
}

/// The kind of an upstream error. `status` is `None` for an error object
/// inside a stream or a 200 body.
pub(crate) fn classify(status: Option<u16>, info: &ErrorInfo) -> FailureKind {
    let client_side = status.is_none_or(|s| (400..500).contains(&s));
    if matches!(status, Some(401 | 403))
        || is(info, "invalid_api_key")
        || is(info, "authentication_error")
    {
        return FailureKind::Auth;
    }
    if status == Some(402)
        || is(info, "insufficient_quota")
        || is(info, "billing_hard_limit_reached")
        || is(info, "billing_not_active")
    {
        return FailureKind::QuotaExhausted;
    }
    if client_side
        && (is(info, "context_length_exceeded")
            || info.says(&["maximum context length", "context window"]))
    {
        return FailureKind::ContextLength;
    }
    if client_side && (is(info, "content_policy_violation") || is(info, "content_filter")) {
        return FailureKind::ContentPolicy;
    }
    if status == Some(429) || is(info, "rate_limit_exceeded") || is(info, "rate_limit_error") {
        return FailureKind::RateLimited;
    }
    if status == Some(404) || (client_side && is(info, "model_not_found")) {
        return FailureKind::ModelNotFound;
    }
    match status {
        Some(529) => FailureKind::Overloaded,
        Some(503) if overloaded(info) => FailureKind::Overloaded,
        Some(408 | 500..=599) => FailureKind::Server,
        Some(400..=499) => FailureKind::BadRequest,
        Some(_) => FailureKind::InvalidResponse,
        None if is(info, "invalid_request_error") => FailureKind::BadRequest,
        None if overloaded(info) => FailureKind::Overloaded,
        None => FailureKind::Server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use backstop_http::ApiKey;
    use serde_json::{Value, json};

    fn kind(status: Option<u16>, body: Value) -> FailureKind {
        classify(status, &ErrorInfo::from_value(&body, &DIALECT).unwrap())
    }

    fn openai(message: &str, kind: &str, code: Value) -> Value {
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    }

    #[test]
    fn openai_error_bodies_map_by_status_and_code() {
        use FailureKind::*;
        let cases = [
            (
                400,
                openai(
                    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                    "invalid_request_error",
                    json!("context_length_exceeded"),
                ),
                ContextLength,
            ),
            (
                400,
                openai(
                    "Your request was rejected as a result of our safety system.",
                    "invalid_request_error",
                    json!("content_policy_violation"),
                ),
                ContentPolicy,
            ),
            (
                400,
                json!({"error": {"code": "content_filter", "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.", "param": "prompt", "status": 400}}),
                ContentPolicy,
            ),
            (
                429,
                openai(
                    "You exceeded your current quota, please check your plan and billing details.",
                    "insufficient_quota",
                    json!("insufficient_quota"),
                ),
                QuotaExhausted,
            ),
            (
                402,
                json!({"error": {"message": "Insufficient Balance", "type": "unknown_error", "code": "invalid_request_error"}}),
                QuotaExhausted,
            ),
            (
                429,
                openai(
                    "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 30000, Requested 100.",
                    "tokens",
                    json!("rate_limit_exceeded"),
                ),
                RateLimited,
            ),
            (
                401,
                openai(
                    "Incorrect API key provided: sk-abc***xyz.",
                    "invalid_request_error",
                    json!("invalid_api_key"),
                ),
                Auth,
            ),
            (
                403,
                openai(
                    "Country, region, or territory not supported",
                    "request_forbidden",
                    json!("unsupported_country_region_territory"),
                ),
                Auth,
            ),
            (
                503,
                openai(
                    "The engine is currently overloaded, please try again later",
                    "server_error",
                    Value::Null,
                ),
                Overloaded,
            ),
            (
                503,
                openai("Service Unavailable", "server_error", Value::Null),
                Server,
            ),
            (529, openai("busy", "server_error", Value::Null), Overloaded),
            (
                500,
                openai(
                    "The server had an error while processing your request.",
                    "server_error",
                    Value::Null,
                ),
                Server,
            ),
            (502, json!({"error": "bad gateway"}), Server),
            (408, openai("timeout", "server_error", Value::Null), Server),
            (
                404,
                openai(
                    "The model `gpt-9` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    json!("model_not_found"),
                ),
                ModelNotFound,
            ),
            (
                404,
                json!({"error": "model \"llama3.3:70b\" not found, try pulling it first"}),
                ModelNotFound,
            ),
            (
                404,
                json!({"object": "error", "message": "The model `llama-3-8b` does not exist.", "type": "NotFoundError", "param": null, "code": 404}),
                ModelNotFound,
            ),
            (
                404,
                json!({"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}}),
                ModelNotFound,
            ),
            (
                400,
                openai(
                    "Invalid value for 'temperature': expected a number.",
                    "invalid_request_error",
                    json!("invalid_value"),
                ),
                BadRequest,
            ),
            (
                400,
                json!({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.", "type": "BadRequestError", "param": null, "code": 400}),
                ContextLength,
            ),
            (422, json!({"detail": "field required"}), BadRequest),
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
    fn inband_errors_map_by_type() {
        use FailureKind::*;
        assert_eq!(
            kind(None, openai("boom", "server_error", Value::Null)),
            Server
        );
        assert_eq!(
            kind(
                None,
                openai("slow down", "tokens", json!("rate_limit_exceeded"))
            ),
            RateLimited
        );
        assert_eq!(
            kind(None, openai("bad", "invalid_request_error", Value::Null)),
            BadRequest
        );
        assert_eq!(
            kind(
                None,
                openai(
                    "The model `gpt-9` does not exist",
                    "invalid_request_error",
                    json!("model_not_found")
                )
            ),
            ModelNotFound
        );
        assert_eq!(
            kind(None, openai("Overloaded", "overloaded_error", Value::Null)),
            Overloaded
        );
        assert_eq!(
            kind(
                None,
                openai(
                    "too long",
                    "invalid_request_error",
                    json!("context_length_exceeded")
                )
            ),
            ContextLength
        );
    }

    #[test]
    fn inband_numeric_codes_are_classified_as_their_status() {
        use FailureKind::*;
        let vllm = |message: &str, kind: &str, code: u16| json!({"object": "error", "message": message, "type": kind, "param": null, "code": code});
        for (body, expected) in [
            (
                vllm(
                    "The model `llama-3-8b` does not exist.",
                    "NotFoundError",
                    404,
                ),
                ModelNotFound,
            ),
            (
                vllm("temperature must be non-negative", "BadRequestError", 400),
                BadRequest,
            ),
            (
                vllm("Too many requests", "RateLimitError", 429),
                RateLimited,
            ),
            (
                vllm(
                    "EngineCore encountered an issue.",
                    "InternalServerError",
                    500,
                ),
                Server,
            ),
            (
                json!({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}),
                RateLimited,
            ),
            // Not a status: classified by its words as before.
            (
                json!({"error": {"code": 1234, "message": "something broke"}}),
                Server,
            ),
        ] {
            let e = DIALECT.in_band_error(&body, None);
            assert_eq!(e.kind, expected, "{body}");
            assert_eq!(e.status, None, "the response itself was a 200");
        }
    }

    #[test]
    fn status_error_keeps_code_status_retry_after_and_redacts() {
        let key = ApiKey::bearer("sk-live-0123456789").unwrap();
        let body = serde_json::to_vec(&openai(
            "Incorrect API key provided: sk-live-0123456789.",
            "invalid_request_error",
            json!("invalid_api_key"),
        ))
        .unwrap();
        let e = DIALECT.status_error(401, &body, Some(Duration::from_secs(2)), Some(&key));
        assert_eq!(e.kind, FailureKind::Auth);
        assert_eq!(e.status, Some(401));
        assert_eq!(e.code.as_deref(), Some("invalid_api_key"));
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        assert!(!e.to_string().contains("0123456789"), "{e}");
    }

    #[test]
    fn unknown_bodies_fall_back_to_text_or_status() {
        let e = DIALECT.status_error(502, b"<html>Bad Gateway</html>", None, None);
        assert_eq!(e.kind, FailureKind::Server);
        assert_eq!(e.message, "HTTP 502 with no error message");
        let e = DIALECT.status_error(400, b"upstream said no", None, None);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (FailureKind::BadRequest, "upstream said no")
        );
        let e = DIALECT.status_error(302, b"", None, None);
        assert_eq!(e.kind, FailureKind::InvalidResponse);
    }
}
