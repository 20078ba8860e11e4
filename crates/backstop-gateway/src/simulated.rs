//! `POST /v1/backstop/simulated/{model}`: changes how a model of a
//! `simulated` provider behaves while the gateway runs, so a person can
//! break the primary of `examples/quickstart.toml` and watch the fallback.
//!
//! The body is `{"failure_rate": 0..=1, "failure": "<kind>", "latency_ms": n}`,
//! every key optional; `{}` restores the configured behaviour. The answer
//! is the override now in force. Callers need a gateway key when keys are
//! configured; only models of `simulated` providers can be changed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backstop_provider_simulated::{Override, Switchboard};

use crate::api_error::ApiError;
use crate::app::Gateway;

/// Sets or clears one simulated model's override.
pub async fn set(
    State(gateway): State<Arc<Gateway>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = gateway.keys().authenticate(&headers) {
        return e.into_response();
    }
    let simulated = gateway.simulated_models();
    if !simulated.contains(&model) {
        return ApiError::not_simulated(&model, &simulated).into_response();
    }
    let change: Override = if body.iter().all(u8::is_ascii_whitespace) {
        Override::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(change) => change,
            Err(e) => {
                return ApiError::invalid_body(format!(
                    "expected {{\"failure_rate\": 0..=1, \"failure\": \"<failure kind>\", \"latency_ms\": n}}: {e}"
                ))
                .into_response();
            }
        }
    };
    if !change.is_valid() {
        return ApiError::invalid_body("failure_rate must be within 0..=1").into_response();
    }
    Switchboard::global().set(&model, change);
    tracing::warn!(model, ?change, "simulated model changed");
    let body = serde_json::json!({ "model": model, "override": change }).to_string();
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
