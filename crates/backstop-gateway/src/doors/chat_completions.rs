//! `POST /v1/chat/completions`: parse, route, and answer in OpenAI's shape,
//! complete or as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use backstop_core::{
    ChatChunk, ChatRequest, ChatResponse, FallbackStream, RequestContext, StreamItem, Usage,
};
use backstop_http::sse::write_data;
use serde::Serialize;

use super::relay::Batched;
use super::write_json_data;
use crate::annotate::BackstopInfo;
use crate::api_error::ApiError;
use crate::app::Gateway;

#[derive(Serialize)]
struct CompleteBody<'a> {
    #[serde(flatten)]
    response: &'a ChatResponse,
    backstop: BackstopInfo<'a>,
}

/// The last chunk of a stream: no choices, the usage when the caller asked
/// for it, and the `backstop` object.
#[derive(Serialize)]
struct FinalChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [(); 0],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
    backstop: BackstopInfo<'a>,
}

/// The door's name in `/v1/models` and the status page.
pub const NAME: &str = "chat_completions";

/// Handles one chat completion request.
pub async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    super::serve(
        gateway,
        headers,
        body,
        NAME,
        IntoResponse::into_response,
        |gateway, bytes, cx| async move {
            let request = match parse(&bytes) {
                Ok(request) => request,
                Err(e) => return e.into_response(),
            };
            // The parsed request owns its data; a large body need not stay
            // in memory for as long as the answer streams.
            drop(bytes);
            tracing::debug!(route = %request.model, stream = request.is_stream(), "chat completion");
            if request.is_stream() {
                stream(&gateway, request, cx).await
            } else {
                complete(&gateway, request, cx).await
            }
        },
    )
    .await
}

fn parse(bytes: &Bytes) -> Result<ChatRequest, ApiError> {
    let request: ChatRequest = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid_body(format!("the body is not a chat completion request: {e}"))
    })?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid_body("`messages` must not be empty"));
    }
    Ok(request)
}

async fn complete(gateway: &Gateway, request: ChatRequest, cx: RequestContext) -> Response {
    let result = match gateway.router().complete(request, cx).await {
        Ok(result) => result,
        Err(e) => return gateway.route_error(e).into_response(),
    };
    let json = match encode_answer(&result.response, BackstopInfo::from(&result.outcome)) {
        Ok(json) => json,
        Err(e) => {
            return ApiError::unavailable(format!("could not encode the answer: {e}"))
                .into_response();
        }
    };
    super::json_answer(json, &result.outcome)
}

/// The answer's body: the upstream's own JSON text with only `model`
/// rewritten and the `backstop` object added last, when the answer kept it
/// (see [`ChatResponse::raw`]) and has no `backstop` member of its own;
/// else the typed answer serialised.
fn encode_answer(
    response: &ChatResponse,
    backstop: BackstopInfo<'_>,
) -> Result<Vec<u8>, serde_json::Error> {
    if let Some(raw) = &response.raw
        && !response.extra.contains_key("backstop")
    {
        let info = serde_json::to_vec(&backstop)?;
        let mut out = Vec::with_capacity(raw.as_str().len() + info.len() + 16);
        if raw.write_with_model_and_member(&response.model, "backstop", &info, &mut out) {
            return Ok(out);
        }
    }
    serde_json::to_vec(&CompleteBody { response, backstop })
}

async fn stream(gateway: &Gateway, request: ChatRequest, cx: RequestContext) -> Response {
    let include_usage = request.wants_stream_usage();
    let stream = match gateway.router().stream(request, cx).await {
        Ok(stream) => stream,
        Err(e) => return gateway.route_error(e).into_response(),
    };
    let outcome = stream.meta().outcome.clone();
    super::sse_answer(sse_body(stream, include_usage), &outcome)
}

/// The SSE body (relayed in batches, see [`Batched`]): a `data:` event per chunk, then a final chunk with the
/// `backstop` object and `data: [DONE]`; or, when the answer cannot be
/// completed, an in-band `data: {"error": ...}` event and no `[DONE]`, so
/// no client mistakes a cut answer for a complete one.
fn sse_body(
    stream: FallbackStream,
    include_usage: bool,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    let id = stream.meta().id.clone();
    let created = stream.meta().created;
    Batched::new(
        Vec::new(),
        stream,
        move |item, out: &mut Vec<u8>| match item {
            StreamItem::Chunk(chunk) => write_chunk(out, &chunk),
            StreamItem::Done(outcome) => {
                let last = FinalChunk {
                    id: &id,
                    object: "chat.completion.chunk",
                    created,
                    model: &outcome.model_used,
                    choices: [],
                    usage: outcome.usage.as_ref().filter(|_| include_usage),
                    backstop: BackstopInfo::from(&outcome),
                };
                write_json_data(out, &last);
                write_data(out, "[DONE]");
            }
            StreamItem::Failed(error) => {
                tracing::debug!(%error, "stream failed after it started");
                let error = ApiError::from_route(error, String::new);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&error.to_json());
                out.extend_from_slice(b"\n\n");
            }
        },
    )
}

/// Appends one chunk as a `data:` event: the upstream's own JSON text with
/// only `model` rewritten when the chunk kept it (see
/// [`ChatChunk::raw`]), else the typed chunk serialised.
fn write_chunk(out: &mut Vec<u8>, chunk: &ChatChunk) {
    match &chunk.raw {
        Some(raw) => {
            out.extend_from_slice(b"data: ");
            raw.write_with_model(&chunk.model, out);
            out.extend_from_slice(b"\n\n");
        }
        None => write_json_data(out, chunk),
    }
}

/// For tests: a chunk as the gateway writes it.
#[cfg(test)]
fn encode_chunk(chunk: &ChatChunk) -> String {
    let mut out = Vec::new();
    write_chunk(&mut out, chunk);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_one_data_event() {
        let chunk = backstop_core::ChatChunk::text("c", "m", 1, "hi");
        let s = encode_chunk(&chunk);
        assert!(s.starts_with("data: {"));
        assert!(s.ends_with("}\n\n"));
        assert_eq!(s.matches('\n').count(), 2);
        // The data is the chunk itself, as JSON.
        let data = s
            .strip_prefix("data: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .expect("one data line");
        let parsed: backstop_core::ChatChunk = serde_json::from_str(data).expect("JSON chunk");
        assert_eq!(parsed, chunk);
    }
}
