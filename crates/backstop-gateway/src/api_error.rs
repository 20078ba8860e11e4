//! Errors in OpenAI's shape: `{"error": {"message", "type", "code", "param"}}`,
//! with a status that fits, plus a `backstop` object carrying the attempt
//! trail when there is one.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backstop_core::{Attempt, FailureKind, RateScope, RouteError};
use serde::Serialize;

/// An error answer of the gateway.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's error `type`.
    pub kind: &'static str,
    /// A machine-readable code.
    pub code: String,
    /// Every attempt and skip, when the Router tried models.
    pub attempts: Vec<Attempt>,
    /// Seconds after which a retry may succeed, sent as `Retry-After`.
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    param: Option<&'a str>,
}

#[derive(Serialize)]
struct TrailObject<'a> {
    attempts: &'a [Attempt],
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backstop: Option<TrailObject<'a>>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            code: code.into(),
            attempts: Vec::new(),
            retry_after_secs: None,
        }
    }

    /// 400: the body is not a chat completion request.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    /// 401: no key, or not a known key. Never echoes the key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Missing or incorrect API key. Send `Authorization: Bearer <key>` (or `x-api-key: <key>`) with a key this gateway knows.",
        )
    }

    /// 413: the body is larger than the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("The request body exceeds the gateway's limit of {limit} bytes."),
        )
    }

    /// 408: the body did not arrive in time.
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!(
                "The request body did not arrive within {} ms.",
                timeout.as_millis()
            ),
        )
    }

    /// 404: no such endpoint.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("Unknown endpoint `{path}`."),
        )
    }

    /// 404: the model is not served by a `simulated` provider, so it cannot
    /// be changed at run time.
    pub fn not_simulated(model: &str, simulated: &[String]) -> Self {
        let known = if simulated.is_empty() {
            "this configuration has none".to_owned()
        } else {
            format!("simulated models: {}", simulated.join(", "))
        };
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("`{model}` is not a model of a `simulated` provider; {known}."),
        )
    }

    /// 405: the endpoint exists but not for this method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("`{path}` does not accept {method}."),
        )
    }

    /// Sets `Retry-After`, in whole seconds (at least 1).
    #[must_use]
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.retry_after_secs = Some(millis.div_ceil(1000).max(1));
        self
    }

    /// 503: the gateway is shutting down or not ready.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "unavailable",
            message,
        )
    }

    /// Maps a Router error: unknown scenario 404, the upstream's own 4xx
    /// for a request it rejected, 429 with `Retry-After` for a rate limit,
    /// 503 with the trail when every model failed.
    pub fn from_route(error: RouteError, known: impl FnOnce() -> String) -> Self {
        match error {
            RouteError::UnknownRoute(name) => Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!(
                    "No scenario or model is named `{name}`. Known: {}.",
                    known()
                ),
            ),
            RouteError::Rejected {
                model,
                error,
                attempts,
            } => {
                let status = error
                    .status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(StatusCode::is_client_error)
                    .unwrap_or(StatusCode::BAD_REQUEST);
                let code = error.code.clone().unwrap_or_else(|| match error.kind {
                    FailureKind::ContextLength => "context_length_exceeded".to_owned(),
                    FailureKind::ContentPolicy => "content_policy_violation".to_owned(),
                    kind => kind.as_str().to_owned(),
                });
                Self {
                    status,
                    message: format!("`{model}` rejected the request: {}", error.message),
                    kind: "invalid_request_error",
                    code,
                    attempts,
                    retry_after_secs: None,
                }
            }
            // OpenAI's own answer to a prompt too long for the model, so
            // clients do not retry what cannot succeed.
            RouteError::NoWindowFits { ref attempts, .. } => Self {
                status: StatusCode::BAD_REQUEST,
                message: error.to_string(),
                kind: "invalid_request_error",
                code: "context_length_exceeded".to_owned(),
                attempts: attempts.clone(),
                retry_after_secs: None,
            },
            RouteError::AllFailed(all) => {
                let message = all.to_string();
                Self {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message,
                    kind: "server_error",
                    code: "all_models_failed".to_owned(),
                    attempts: all.attempts,
                    retry_after_secs: None,
                }
            }
            // The caller over its own limit, or every model at its quota:
            // a 429 with the wait, before any upstream had to answer one.
            RouteError::RateLimited {
                scope,
                retry_after,
                ref attempts,
                ..
            } => Self {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: error.to_string(),
                kind: "rate_limit_error",
                code: match scope {
                    RateScope::Caller => "rate_limit_exceeded",
                    RateScope::Model => "models_rate_limited",
                }
                .to_owned(),
                attempts: attempts.clone(),
                retry_after_secs: None,
            }
            .retry_after(retry_after),
            RouteError::StreamAborted { cause, attempts } => Self {
                status: StatusCode::BAD_GATEWAY,
                message: format!("The answer was cut after it started: {cause}"),
                kind: "server_error",
                code: "stream_aborted".to_owned(),
                attempts,
                retry_after_secs: None,
            },
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                code: &self.code,
                param: None,
            },
            backstop: (!self.attempts.is_empty()).then_some(TrailObject {
                attempts: &self.attempts,
            }),
        };
        serde_json::to_vec(&body)
            .unwrap_or_else(|_| b"{\"error\":{\"message\":\"error\"}}".to_vec())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_core::{AllModelsFailed, ProviderError};
    use serde_json::Value;

    #[test]
    fn an_upstream_rejection_keeps_its_status_and_code() {
        let e = ApiError::from_route(
            RouteError::Rejected {
                model: "gpt-4o".into(),
                error: ProviderError::new(FailureKind::ContentPolicy, "flagged")
                    .with_status(400)
                    .with_code("content_filter"),
                attempts: vec![],
            },
            String::new,
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let body: Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(body["error"]["code"], "content_filter");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("flagged")
        );
    }

    #[test]
    fn every_model_failing_is_a_503_with_the_trail() {
        let cause = ProviderError::new(FailureKind::Connect, "refused");
        let e = ApiError::from_route(
            RouteError::AllFailed(AllModelsFailed {
                scenario: "chat".into(),
                attempts: vec![Attempt::failed(
                    "a".into(),
                    &cause,
                    std::time::Duration::ZERO,
                )],
                first_cause: Some(cause),
            }),
            String::new,
        );
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(body["error"]["code"], "all_models_failed");
        assert_eq!(body["backstop"]["attempts"][0]["kind"], "connect");
    }
}
