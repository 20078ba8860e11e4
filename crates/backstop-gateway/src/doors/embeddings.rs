//! `POST /v1/embeddings`: OpenAI's embeddings API, with fallback across
//! deployments of the same embedding model.
//!
//! The `model` names a scenario whose chain holds embedding models (models
//! that declare `dimensions`; `backstop check` makes sure a chain's models
//! all declare the same), or one such model. The Router runs the request
//! down the chain like any other — circuits, budgets, retries, the failure
//! table — and accepts only answers with one vector per input of the
//! declared length. The door checks the input, reads `encoding_format`
//! (`float`, the default, or `base64`: little-endian `f32`s) and writes
//! OpenAI's list with `usage`, the `x-backstop-*` headers and the
//! `backstop` object.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use backstop_core::{EmbeddingsRequest, ModelSpec, RequestContext, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::annotate::BackstopInfo;
use crate::api_error::ApiError;
use crate::app::Gateway;

/// The door's name in `/v1/models` and the status page.
pub const NAME: &str = "embeddings";

/// How the caller wants its vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// Handles one embeddings request.
pub async fn embeddings(
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
            match answer(&gateway, &bytes, cx).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            }
        },
    )
    .await
}

/// The dimensions every model of the route declares, when it is an
/// embeddings route (`None` when any of its models is a chat model).
pub(crate) fn route_dimensions(router: &Router, route: &str) -> Option<u32> {
    let route = router.route(route)?;
    let models: &[ModelSpec] = router.models();
    let mut dimensions = route.chain.iter().map(|&i| models[i].dimensions);
    let first = dimensions.next()??;
    dimensions.all(|d| d == Some(first)).then_some(first)
}

fn parse(bytes: &Bytes) -> Result<(EmbeddingsRequest, EncodingFormat), ApiError> {
    let mut request: EmbeddingsRequest = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid_body(format!("the body is not an embeddings request: {e}"))
    })?;
    let format = match request.extra.remove("encoding_format") {
        None | Some(Value::Null) => EncodingFormat::default(),
        Some(v) => serde_json::from_value(v)
            .map_err(|_| ApiError::invalid_body("`encoding_format` must be `float` or `base64`"))?,
    };
    if let Some(field) = request.extra.keys().next() {
        return Err(ApiError::invalid_body(format!(
            "`{field}` is not supported by /v1/embeddings"
        )));
    }
    if request.input.is_empty() {
        return Err(ApiError::invalid_body(
            "`input` must not be empty (nor hold an empty token array)",
        ));
    }
    if let backstop_core::EmbeddingInput::Texts(texts) = &request.input
        && let Some(i) = texts.iter().position(String::is_empty)
    {
        return Err(ApiError::invalid_body(format!(
            "`input[{i}]` is an empty string"
        )));
    }
    Ok((request, format))
}

async fn answer(
    gateway: &Gateway,
    bytes: &Bytes,
    cx: RequestContext,
) -> Result<Response, ApiError> {
    let (request, format) = parse(bytes)?;
    let router = &gateway.router();
    if router.route(&request.model).is_some() {
        let Some(dimensions) = route_dimensions(router, &request.model) else {
            return Err(ApiError::invalid_body(format!(
                "`{}` does not serve embeddings: its models declare no `dimensions` (they are chat models)",
                request.model
            )));
        };
        if let Some(asked) = request.dimensions
            && asked != dimensions
        {
            return Err(ApiError::invalid_body(format!(
                "`{}` serves vectors of {dimensions} dimensions; `dimensions` asked for {asked}",
                request.model
            )));
        }
    }
    tracing::debug!(route = %request.model, inputs = request.input.len(), "embeddings");
    let result = router
        .embed(request, cx)
        .await
        .map_err(|e| gateway.route_error(e))?;
    let engine = base64::engine::general_purpose::STANDARD;
    let data: Vec<Value> = result
        .response
        .data
        .iter()
        .map(|e| {
            let embedding = match format {
                EncodingFormat::Float => json!(e.embedding),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = e.embedding.iter().flat_map(|f| f.to_le_bytes()).collect();
                    json!(engine.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": e.index, "embedding": embedding})
        })
        .collect();
    let usage = result.response.usage.unwrap_or_default();
    let body = json!({
        "object": "list",
        "data": data,
        "model": result.outcome.model_used.as_ref(),
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
        "backstop": BackstopInfo::from(&result.outcome),
    });
    Ok(super::json_answer(body.to_string(), &result.outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_format_and_unknown_fields_are_checked() {
        let ok = |v: Value| parse(&Bytes::from(v.to_string()));
        let (_, f) = ok(json!({"model": "e", "input": "x", "encoding_format": "base64"})).unwrap();
        assert_eq!(f, EncodingFormat::Base64);
        let (_, f) = ok(json!({"model": "e", "input": ["x", "y"]})).unwrap();
        assert_eq!(f, EncodingFormat::Float);
        assert!(ok(json!({"model": "e", "input": "x", "encoding_format": "hex"})).is_err());
        assert!(ok(json!({"model": "e", "input": []})).is_err());
        assert!(ok(json!({"model": "e", "input": ["a", ""]})).is_err());
        let e = ok(json!({"model": "e", "input": "x", "truncate": true})).unwrap_err();
        assert!(e.message.contains("truncate"));
    }
}
