//! The doors: one codec per client protocol, each turning its wire request
//! into the core [`ChatRequest`](backstop_core::ChatRequest) and the
//! Router's answer or stream back into its wire format.
//!
//! | door | path | file |
//! |---|---|---|
//! | OpenAI chat completions | `POST /v1/chat/completions` | [`chat_completions`] |
//! | Anthropic Messages | `POST /v1/messages` | [`messages`] |
//! | OpenAI Responses (stateless) | `POST /v1/responses` | [`responses`] |
//! | OpenAI embeddings | `POST /v1/embeddings` | [`embeddings`] |
//!
//! A door holds no routing logic: scenarios, circuits, budgets, retries,
//! failover before the first output and the mid-stream policies all happen
//! in the Router, the same for every door. What a door shares with the
//! others lives here: authentication, reading the body under the limits,
//! the request id and its span. The `x-backstop-*` headers and the
//! `backstop` object come from [`crate::annotate`].

pub mod chat_completions;
pub mod embeddings;
pub mod messages;
mod relay;
pub mod responses;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backstop_core::{Outcome, RequestContext};
use tracing::Instrument;

use crate::annotate;
use crate::api_error::ApiError;
use crate::app::Gateway;

/// The chat doors, by the name `/v1/models` and the status page list them
/// under.
pub const CHAT: [&str; 3] = [chat_completions::NAME, messages::NAME, responses::NAME];

/// The doors that serve a route: the embeddings door for a chain of
/// embedding models, the chat doors otherwise.
pub fn serving(router: &backstop_core::Router, route: &str) -> &'static [&'static str] {
    if embeddings::route_dimensions(router, route).is_some() {
        &[embeddings::NAME]
    } else {
        &CHAT
    }
}

/// Runs one request through a door: authenticates the caller, reads the
/// body under the gateway's size and time limits, and hands the bytes and
/// the request context to `answer`. Errors before that are rendered by
/// `render` in the door's own error shape. Every response carries
/// `x-request-id`.
pub(crate) async fn serve<A, Fut>(
    gateway: Arc<Gateway>,
    headers: HeaderMap,
    body: Body,
    door: &'static str,
    render: fn(ApiError) -> Response,
    answer: A,
) -> Response
where
    A: FnOnce(Arc<Gateway>, Bytes, RequestContext) -> Fut,
    Fut: Future<Output = Response>,
{
    let request_id = gateway.request_id(&headers);
    let span = tracing::info_span!("request", id = %request_id, door);
    let traced = gateway.telemetry().map(|t| t.request(&headers, door));
    let trace = traced
        .clone()
        .map(|t| t as Arc<dyn backstop_core::RequestTrace>);
    let mut response = async {
        let caller = match gateway.keys().authenticate(&headers) {
            Ok(caller) => caller,
            Err(e) => return render(e),
        };
        let bytes = match read_body(&gateway, body).await {
            Ok(bytes) => bytes,
            Err(e) => return render(e),
        };
        let cx = RequestContext {
            caller,
            request_id: Some(request_id.as_str().into()),
            trace,
        };
        answer(gateway, bytes, cx).await
    }
    .instrument(span)
    .await;
    // A stream's SERVER span ends with the stream, which holds it too.
    if let Some(traced) = traced {
        traced.answered(response.status());
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(annotate::REQUEST_ID, v);
    }
    response
}

/// The whole body, within the gateway's limit and read timeout.
async fn read_body(gateway: &Gateway, body: Body) -> Result<Bytes, ApiError> {
    let limit = gateway.body_limit();
    let read_timeout = gateway.body_read_timeout();
    match tokio::time::timeout(read_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Err(_elapsed) => Err(ApiError::body_timeout(read_timeout)),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::too_large(limit)
            } else {
                ApiError::invalid_body(format!("could not read the body: {e}"))
            })
        }
    }
}

/// A 200 JSON answer served as `outcome` says, with the `x-backstop-*`
/// headers.
pub(crate) fn json_answer(body: impl Into<Body>, outcome: &Outcome) -> Response {
    let mut response = (StatusCode::OK, body.into()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    annotate::set_headers(h, outcome);
    response
}

/// A 200 stream of server-sent events that started as `outcome` says,
/// with the `x-backstop-*` headers.
pub(crate) fn sse_answer<S>(body: S, outcome: &Outcome) -> Response
where
    S: futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let mut response = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = response.headers_mut();
    annotate::set_headers(h, outcome);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Appends one SSE `data:` event carrying `value` as JSON. A value that
/// cannot be encoded is never sent as an empty object: the event carries
/// the in-band error instead (`{"error": {...}}`, as a failed stream ends),
/// so no client reads a hole in the answer as part of it.
pub(crate) fn write_json_data<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) {
    let start = out.len();
    out.extend_from_slice(b"data: ");
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        out.truncate(start);
        write_encode_error(out, &e);
        return;
    }
    out.extend_from_slice(b"\n\n");
}

/// Appends one SSE event named `event` carrying `value` as JSON; a value
/// that cannot be encoded becomes an `error` event carrying the in-band
/// error (see [`write_json_data`]).
pub(crate) fn write_json_event<T: serde::Serialize>(out: &mut Vec<u8>, event: &str, value: &T) {
    let start = out.len();
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(b"data: ");
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        out.truncate(start);
        out.extend_from_slice(b"event: error\n");
        write_encode_error(out, &e);
        return;
    }
    out.extend_from_slice(b"\n\n");
}

/// The in-band error event of a value that could not be encoded.
fn write_encode_error(out: &mut Vec<u8>, error: &serde_json::Error) {
    tracing::error!(%error, "could not encode a stream event; the stream ends with an error");
    let error = ApiError::unavailable(format!("could not encode part of the answer: {error}"));
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&error.to_json());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes as an error, like a map with non-string keys would.
    struct Unencodable;

    impl serde::Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no JSON for this"))
        }
    }

    fn error_of(event: &str) -> serde_json::Value {
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("a data line");
        serde_json::from_str(data).expect("the data is JSON")
    }

    #[test]
    fn an_unencodable_value_is_an_in_band_error_not_an_empty_object() {
        let mut out = b"data: before\n\n".to_vec();
        write_json_data(&mut out, &Unencodable);
        let text = String::from_utf8(out).expect("utf-8");
        let event = text
            .strip_prefix("data: before\n\n")
            .expect("earlier events kept");
        assert!(event.ends_with("\n\n") && event.matches("data: ").count() == 1);
        let error = error_of(event);
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("no JSON for this")),
            "{error}"
        );

        let mut out = Vec::new();
        write_json_event(&mut out, "content_block_delta", &Unencodable);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("event: error\ndata: "), "{text}");
        assert!(error_of(&text)["error"]["message"].is_string());
    }
}
