//! `POST /v1/messages`: Anthropic's Messages API, complete and streaming,
//! in front of any chain (Anthropic, OpenAI-compatible, template models
//! alike).
//!
//! The door turns the Messages request into the core chat request and the
//! Router's answer back into a Messages `message`, or its stream into
//! Anthropic's event sequence: `message_start`, `ping`, then per content
//! block `content_block_start`, `content_block_delta`s and
//! `content_block_stop`, then `message_delta` (stop reason, usage and the
//! `backstop` object) and `message_stop`. A stream the Router cannot
//! complete ends with `event: error` and no `message_stop`.
//!
//! Failover before the first output is invisible: the Router returns a
//! stream only once some model produced output, so `message_start` is
//! never followed by an error from a model that failed before any text.
//!
//! What maps to what (the table in `docs/doors.md` is the reference):
//! `system` becomes a system message; text and image blocks become content
//! parts (base64 images as data URLs); `tool_use` blocks become the
//! assistant's `tool_calls`, `tool_result` blocks tool messages; `tools`,
//! `tool_choice`, `stop_sequences`, `max_tokens`, `temperature`, `top_p`,
//! `top_k` and `metadata.user_id` map to their chat counterparts. What the
//! door cannot express (documents, server tools, extended thinking, any
//! other field) is a 400 naming it. Keys come as `x-api-key` or a bearer
//! key; `anthropic-version`, when sent, must be a `YYYY-MM-DD` date.

use std::convert::Infallible;
use std::sync::Arc;

use super::relay::Batched;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backstop_core::{
    ChatChunk, ChatRequest, ChatResponse, Content, Extra, FallbackStream, Message, RequestContext,
    Role, StreamItem, StreamOptions, ToolCall, Usage,
};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::write_json_event;
use crate::annotate::BackstopInfo;
use crate::api_error::ApiError;
use crate::app::Gateway;

/// The door's name in `/v1/models` and the status page.
pub const NAME: &str = "messages";

/// The `anthropic-version` header.
const ANTHROPIC_VERSION: header::HeaderName = header::HeaderName::from_static("anthropic-version");

/// Handles one Messages request.
pub async fn messages(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = check_version(&headers) {
        return render_error(e);
    }
    super::serve(
        gateway,
        headers,
        body,
        NAME,
        render_error,
        |gateway, bytes, cx| async move {
            let request = match parse(&bytes) {
                Ok(request) => request,
                Err(e) => return render_error(e),
            };
            drop(bytes);
            tracing::debug!(route = %request.model, stream = request.is_stream(), "messages");
            if request.is_stream() {
                stream(&gateway, request, cx).await
            } else {
                complete(&gateway, request, cx).await
            }
        },
    )
    .await
}

/// `anthropic-version` is optional here, but when sent it must look like
/// one (`2023-06-01`).
fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(ANTHROPIC_VERSION) else {
        return Ok(());
    };
    let ok = value.to_str().is_ok_and(|v| {
        let b = v.as_bytes();
        b.len() == 10
            && b.iter().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    *c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            })
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_body(
            "the `anthropic-version` header must be a date such as `2023-06-01`",
        ))
    }
}

// ------------------------------------------------------------ errors

/// Anthropic's error `type` for an HTTP status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The error object in Anthropic's shape, with the gateway's code and the
/// attempt trail in a `backstop` object.
fn error_json(error: &ApiError) -> Value {
    let mut body = json!({
        "type": "error",
        "error": {"type": error_type(error.status), "message": error.message},
        "backstop": {"code": error.code},
    });
    if !error.attempts.is_empty() {
        body["backstop"]["attempts"] = serde_json::to_value(&error.attempts).unwrap_or_default();
    }
    body
}

/// An error response in Anthropic's shape.
fn render_error(error: ApiError) -> Response {
    let body = serde_json::to_vec(&error_json(&error)).unwrap_or_default();
    let mut response = (error.status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = error.retry_after_secs {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

// ------------------------------------------------------------ request

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::invalid_body(message)
}

/// The fields of a Messages request this door understands.
const KNOWN: [&str; 13] = [
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "service_tier",
];

/// Parses a Messages request into the core chat request.
pub(crate) fn parse(bytes: &Bytes) -> Result<ChatRequest, ApiError> {
    let body: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("the body is not a Messages request: {e}")))?;
    if let Some(field) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(format!(
            "`{field}` is not supported by this gateway's /v1/messages"
        )));
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`model` is required and must be a string"))?;
    let max_tokens = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| bad("`max_tokens` is required and must be a positive integer"))?;
    let turns = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("`messages` is required and must be a non-empty array"))?;

    let mut messages = Vec::with_capacity(turns.len() + 1);
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(Message::text(Role::System, text.as_str())),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for (i, block) in blocks.iter().enumerate() {
                if block.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad(format!("`system[{i}]` must be a text block")));
                }
                text.push_str(
                    block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
            }
            messages.push(Message::text(Role::System, text));
        }
        Some(_) => return Err(bad("`system` must be a string or an array of text blocks")),
    }
    for (i, turn) in turns.iter().enumerate() {
        let role = turn.get("role").and_then(Value::as_str);
        let content = turn
            .get("content")
            .ok_or_else(|| bad(format!("`messages[{i}].content` is required")))?;
        match role {
            Some("user") => user_turn(i, content, &mut messages)?,
            Some("assistant") => messages.push(assistant_turn(i, content)?),
            _ => {
                return Err(bad(format!(
                    "`messages[{i}].role` must be `user` or `assistant`"
                )));
            }
        }
    }

    let mut extra = Extra::new();
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
            if !v.is_number() {
                return Err(bad(format!("`{key}` must be a number")));
            }
            extra.insert(key.into(), v.clone());
        }
    }
    match body.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            if !stops.is_empty() {
                extra.insert("stop".into(), Value::Array(stops.clone()));
            }
        }
        Some(_) => return Err(bad("`stop_sequences` must be an array of strings")),
    }
    if let Some(user) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        extra.insert("user".into(), user.into());
    }
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        let tools = tools
            .as_array()
            .ok_or_else(|| bad("`tools` must be an array"))?;
        if !tools.is_empty() {
            let tools = tools
                .iter()
                .enumerate()
                .map(|(i, t)| tool(i, t))
                .collect::<Result<Vec<_>, _>>()?;
            extra.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) {
        let (choice, parallel) = tool_choice(choice)?;
        extra.insert("tool_choice".into(), choice);
        if let Some(parallel) = parallel {
            extra.insert("parallel_tool_calls".into(), parallel.into());
        }
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("`stream` must be a boolean")),
    };
    Ok(ChatRequest {
        model: model.to_owned(),
        messages,
        max_tokens: Some(max_tokens),
        max_completion_tokens: None,
        stream: Some(stream),
        // Usage goes on the final `message_delta`, so always ask for it.
        stream_options: stream.then(|| StreamOptions {
            include_usage: true,
            extra: Extra::new(),
        }),
        extra,
    })
}

/// A user turn: its `tool_result` blocks become tool messages (first, as
/// chat expects them right after the assistant's calls), the rest one user
/// message of content parts.
fn user_turn(i: usize, content: &Value, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let blocks = match content {
        Value::String(text) => {
            out.push(Message::text(Role::User, text.as_str()));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(bad(format!(
                "`messages[{i}].content` must be a string or an array of blocks"
            )));
        }
    };
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = || format!("messages[{i}].content[{j}]");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({
                "type": "text",
                "text": block.get("text").and_then(Value::as_str).unwrap_or_default(),
            })),
            Some("image") => parts.push(image_part(block, &at())?),
            Some("tool_result") => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("`{}.tool_use_id` is required", at())))?;
                let text = tool_result_text(block.get("content"), &at())?;
                let text = if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    format!("Error: {text}")
                } else {
                    text
                };
                let mut message = Message::text(Role::Tool, text);
                message.extra.insert("tool_call_id".into(), id.into());
                out.push(message);
            }
            Some(other) => {
                return Err(bad(format!(
                    "`{}` is a `{other}` block, which this gateway's /v1/messages does not support",
                    at()
                )));
            }
            None => return Err(bad(format!("`{}.type` is required", at()))),
        }
    }
    if !parts.is_empty() {
        out.push(Message {
            role: Role::User,
            content: Some(Content::Parts(parts)),
            extra: Extra::new(),
        });
    }
    Ok(())
}

/// An image block as a chat `image_url` part.
fn image_part(block: &Value, at: &str) -> Result<Value, ApiError> {
    let source = block
        .get("source")
        .ok_or_else(|| bad(format!("`{at}.source` is required")))?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            let (Some(media), Some(data)) = (media, data) else {
                return Err(bad(format!("`{at}.source` needs `media_type` and `data`")));
            };
            format!("data:{media};base64,{data}")
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("`{at}.source.url` is required")))?
            .to_owned(),
        _ => {
            return Err(bad(format!("`{at}.source.type` must be `base64` or `url`")));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A tool result's content as text (a string, or text blocks joined).
fn tool_result_text(content: Option<&Value>, at: &str) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for block in blocks {
                if block.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad(format!(
                        "`{at}.content` may hold only text blocks here"
                    )));
                }
                text.push_str(
                    block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
            }
            Ok(text)
        }
        Some(_) => Err(bad(format!("`{at}.content` must be a string or blocks"))),
    }
}

/// An assistant turn: its text, and its `tool_use` blocks as tool calls.
fn assistant_turn(i: usize, content: &Value) -> Result<Message, ApiError> {
    let blocks = match content {
        Value::String(text) => return Ok(Message::text(Role::Assistant, text.as_str())),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(bad(format!(
                "`messages[{i}].content` must be a string or an array of blocks"
            )));
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.push_str(
                    block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
            }
            Some("tool_use") => {
                let field = |name: &str| {
                    block.get(name).and_then(Value::as_str).ok_or_else(|| {
                        bad(format!("`messages[{i}].content[{j}].{name}` is required"))
                    })
                };
                calls.push(ToolCall {
                    id: field("id")?.to_owned(),
                    name: field("name")?.to_owned(),
                    arguments: block
                        .get("input")
                        .map_or_else(|| "{}".to_owned(), Value::to_string),
                });
            }
            Some(other) => {
                return Err(bad(format!(
                    "`messages[{i}].content[{j}]` is a `{other}` block, which this gateway's /v1/messages does not support"
                )));
            }
            None => {
                return Err(bad(format!(
                    "`messages[{i}].content[{j}].type` is required"
                )));
            }
        }
    }
    let mut message = Message::text(Role::Assistant, text);
    if !calls.is_empty() {
        if message.text_content().is_empty() {
            message.content = None;
        }
        message.set_tool_calls(&calls);
    }
    Ok(message)
}

/// An Anthropic tool as a chat function tool.
fn tool(i: usize, tool: &Value) -> Result<Value, ApiError> {
    if let Some(kind) = tool.get("type").and_then(Value::as_str)
        && kind != "custom"
    {
        return Err(bad(format!(
            "`tools[{i}]` is a `{kind}` server tool, which this gateway's /v1/messages does not support"
        )));
    }
    let name = tool
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("`tools[{i}].name` is required")))?;
    let mut function = json!({
        "name": name,
        "parameters": tool.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
    });
    if let Some(description) = tool.get("description").and_then(Value::as_str) {
        function["description"] = description.into();
    }
    Ok(json!({"type": "function", "function": function}))
}

/// `tool_choice` as chat's `tool_choice`, and `parallel_tool_calls` when
/// parallel use is disabled.
fn tool_choice(choice: &Value) -> Result<(Value, Option<bool>), ApiError> {
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disabled| !disabled);
    let mapped = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("`tool_choice.name` is required for type `tool`"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(bad(
                "`tool_choice.type` must be `auto`, `any`, `tool` or `none`",
            ));
        }
    };
    Ok((mapped, parallel))
}

// ------------------------------------------------------------ answers

/// Anthropic's `stop_reason` for a chat finish reason.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's usage object.
fn usage_json(usage: Option<&Usage>) -> Value {
    let usage = usage.cloned().unwrap_or_default();
    json!({"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens})
}

/// A message id: the answer's own when it looks like Anthropic's, else the
/// answer's id under `msg_`.
fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        format!("msg_{id}")
    }
}

/// Tool-call arguments as a `tool_use` input (a JSON object).
fn tool_input(call: &ToolCall) -> Result<Value, ApiError> {
    let arguments = if call.arguments.trim().is_empty() {
        "{}"
    } else {
        call.arguments.as_str()
    };
    match serde_json::from_str::<Value>(arguments) {
        Ok(input @ Value::Object(_)) => Ok(input),
        _ => Err(ApiError::unavailable(format!(
            "the model's call of tool `{}` carried arguments that are not a JSON object",
            call.name
        ))),
    }
}

/// A complete chat answer as a Messages `message`.
fn message_json(response: &ChatResponse, info: BackstopInfo<'_>) -> Result<Value, ApiError> {
    let choice = response.choices.first();
    let mut content = Vec::new();
    if let Some(choice) = choice {
        let text = choice.message.text_content();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in choice.message.tool_calls() {
            content.push(json!({
                "type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(&call)?,
            }));
        }
    }
    Ok(json!({
        "id": message_id(&response.id),
        "type": "message",
        "role": "assistant",
        "model": info.model_used,
        "content": content,
        "stop_reason": stop_reason(choice.and_then(|c| c.finish_reason.as_deref())),
        "stop_sequence": null,
        "usage": usage_json(response.usage.as_ref()),
        "backstop": info,
    }))
}

async fn complete(gateway: &Gateway, request: ChatRequest, cx: RequestContext) -> Response {
    let result = match gateway.router().complete(request, cx).await {
        Ok(result) => result,
        Err(e) => return render_error(gateway.route_error(e)),
    };
    let body = match message_json(&result.response, BackstopInfo::from(&result.outcome)) {
        Ok(body) => body,
        Err(e) => return render_error(e),
    };
    super::json_answer(body.to_string(), &result.outcome)
}

async fn stream(gateway: &Gateway, request: ChatRequest, cx: RequestContext) -> Response {
    let stream = match gateway.router().stream(request, cx).await {
        Ok(stream) => stream,
        Err(e) => return render_error(gateway.route_error(e)),
    };
    let outcome = stream.meta().outcome.clone();
    super::sse_answer(sse_body(stream), &outcome)
}

/// The content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    /// A tool call, by its index among the answer's tool calls.
    Tool(u32),
}

/// Turns the Router's chunks into Anthropic's events.
struct Encoder {
    /// The block open now, and its index.
    open: Option<(Block, usize)>,
    /// Blocks started so far.
    blocks: usize,
    finish: Option<String>,
}

#[derive(Serialize)]
struct MessageDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: Value,
    usage: Value,
    backstop: BackstopInfo<'a>,
}

impl Encoder {
    fn new() -> Self {
        Self {
            open: None,
            blocks: 0,
            finish: None,
        }
    }

    fn start(meta_id: &str, model: &str, out: &mut Vec<u8>) {
        write_json_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(meta_id), "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
        write_json_event(out, "ping", &json!({"type": "ping"}));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            write_json_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    /// Opens `block` unless it is the one open; returns its index.
    fn enter(&mut self, block: Block, start: Value, out: &mut Vec<u8>) -> usize {
        if let Some((open, index)) = self.open
            && open == block
        {
            return index;
        }
        self.close(out);
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some((block, index));
        write_json_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
        index
    }

    fn chunk(&mut self, chunk: &ChatChunk, out: &mut Vec<u8>) {
        let Some(choice) = chunk.choices.iter().find(|c| c.index == 0) else {
            return;
        };
        if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
            let index = self.enter(Block::Text, json!({"type": "text", "text": ""}), out);
            write_json_event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": text}}),
            );
        }
        for call in choice.delta.tool_calls() {
            let block = Block::Tool(call.index);
            let index = self.enter(
                block,
                json!({"type": "tool_use", "id": call.id.as_deref().unwrap_or_default(),
                       "name": call.name.as_deref().unwrap_or_default(), "input": {}}),
                out,
            );
            if let Some(arguments) = call.arguments.as_deref().filter(|a| !a.is_empty()) {
                write_json_event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                );
            }
        }
        if let Some(finish) = &choice.finish_reason {
            self.finish = Some(finish.clone());
        }
    }

    fn done(&mut self, outcome: &backstop_core::Outcome, out: &mut Vec<u8>) {
        self.close(out);
        let delta = MessageDelta {
            kind: "message_delta",
            delta: json!({"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null}),
            usage: usage_json(outcome.usage.as_ref()),
            backstop: BackstopInfo::from(outcome),
        };
        write_json_event(out, "message_delta", &delta);
        write_json_event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

/// The SSE body: Anthropic's event sequence, or `event: error` (and no
/// `message_stop`) when the answer cannot be completed.
fn sse_body(
    stream: FallbackStream,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    let mut head = Vec::with_capacity(512);
    Encoder::start(
        &stream.meta().id,
        &stream.meta().outcome.model_used,
        &mut head,
    );
    let mut encoder = Encoder::new();
    Batched::new(head, stream, move |item, out: &mut Vec<u8>| match item {
        StreamItem::Chunk(chunk) => encoder.chunk(&chunk, out),
        StreamItem::Done(outcome) => encoder.done(&outcome, out),
        StreamItem::Failed(error) => {
            tracing::debug!(%error, "stream failed after it started");
            let error = ApiError::from_route(error, String::new);
            write_json_event(out, "error", &error_json(&error));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: Value) -> Result<ChatRequest, ApiError> {
        parse(&Bytes::from(body.to_string()))
    }

    #[test]
    fn system_images_tools_and_results_translate_to_chat() {
        let req = parsed(json!({
            "model": "chat", "max_tokens": 64,
            "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "temperature": 0.1, "top_k": 5,
            "metadata": {"user_id": "u-1"},
            "tools": [{"name": "get_weather", "description": "Weather",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "Thanks"}
                ]}
            ]
        }))
        .unwrap();
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["max_tokens"], 64);
        assert_eq!(v["stop"], json!(["END"]));
        assert_eq!(v["user"], "u-1");
        assert_eq!(v["top_k"], 5);
        assert_eq!(v["tool_choice"], "required");
        assert_eq!(v["parallel_tool_calls"], false);
        assert_eq!(v["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(v["tools"][0]["function"]["parameters"]["type"], "object");
        let m = &v["messages"];
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(
            m[1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,iVBOR"
        );
        assert_eq!(m[2]["content"], "Checking.");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "content": "18C", "tool_call_id": "toolu_1"})
        );
        assert_eq!(m[4]["content"][0]["text"], "Thanks");
    }

    #[test]
    fn what_the_door_cannot_express_is_a_400_naming_it() {
        let base = json!({"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let mut thinking = base.clone();
        thinking["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
        assert!(parsed(thinking).unwrap_err().message.contains("`thinking`"));
        let mut server_tool = base.clone();
        server_tool["tools"] = json!([{"type": "web_search_20250305", "name": "web_search"}]);
        assert!(
            parsed(server_tool)
                .unwrap_err()
                .message
                .contains("web_search_20250305")
        );
        let document = json!({"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]});
        assert!(
            parsed(document)
                .unwrap_err()
                .message
                .contains("messages[0].content[0]")
        );
        let no_max = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
        assert!(parsed(no_max).unwrap_err().message.contains("max_tokens"));
    }

    #[test]
    fn errors_take_anthropics_shape() {
        let e = error_json(&ApiError::unauthorized());
        assert_eq!(e["type"], "error");
        assert_eq!(e["error"]["type"], "authentication_error");
        assert_eq!(e["backstop"]["code"], "invalid_api_key");
    }

    #[test]
    fn a_bad_version_header_is_refused_and_a_good_one_passes() {
        let mut h = HeaderMap::new();
        assert!(check_version(&h).is_ok());
        h.insert(ANTHROPIC_VERSION, HeaderValue::from_static("2023-06-01"));
        assert!(check_version(&h).is_ok());
        h.insert(ANTHROPIC_VERSION, HeaderValue::from_static("latest"));
        assert!(check_version(&h).is_err());
    }
}
