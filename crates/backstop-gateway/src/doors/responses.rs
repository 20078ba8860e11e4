//! `POST /v1/responses`: OpenAI's Responses API, stateless, complete and
//! streaming, in front of any chain.
//!
//! The door turns a Responses request (`input` as a string or items,
//! `instructions`, function tools and their calls and outputs,
//! `max_output_tokens`) into the core chat request, and the Router's answer
//! back into a `response` object, or its stream into the semantic events:
//! `response.created`, `response.in_progress`, per output item
//! `response.output_item.added`, its content (`response.content_part.added`,
//! `response.output_text.delta`s, `response.output_text.done`,
//! `response.content_part.done`, or `response.function_call_arguments.delta`s
//! and `.done`) and `response.output_item.done`, then `response.completed`
//! (or `response.incomplete` when the output bound cut the answer). A
//! stream the Router cannot complete ends with `response.failed`.
//!
//! Nothing is stored: a request that depends on stored state
//! (`previous_response_id`, `store: true`, `conversation`, `background`)
//! is a 400 saying so. `response.created` is sent only once some model
//! produced output, so a model that fails after its own `response.created`
//! but before any output is replaced invisibly.

use std::convert::Infallible;
use std::sync::Arc;

use super::relay::Batched;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use backstop_core::{
    ChatChunk, ChatRequest, ChatResponse, Content, Extra, FallbackStream, Message, Outcome,
    RequestContext, Role, StreamItem, StreamOptions, ToolCall, Usage,
};
use serde_json::{Map, Value, json};

use super::write_json_event;
use crate::annotate::BackstopInfo;
use crate::api_error::ApiError;
use crate::app::Gateway;

/// The door's name in `/v1/models` and the status page.
pub const NAME: &str = "responses";

/// Handles one Responses request.
pub async fn responses(
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
            let (request, echo) = match parse(&bytes) {
                Ok(parsed) => parsed,
                Err(e) => return e.into_response(),
            };
            drop(bytes);
            tracing::debug!(route = %request.model, stream = request.is_stream(), "responses");
            if request.is_stream() {
                stream(&gateway, request, echo, cx).await
            } else {
                complete(&gateway, request, echo, cx).await
            }
        },
    )
    .await
}

// ------------------------------------------------------------ request

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::invalid_body(message)
}

/// The fields of a Responses request this door understands.
const KNOWN: [&str; 22] = [
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "stream",
    "store",
    "previous_response_id",
    "conversation",
    "background",
    "metadata",
    "user",
    "safety_identifier",
    "text",
    "reasoning",
    "include",
    "truncation",
    "service_tier",
];

/// What a response object repeats of its request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Echo {
    instructions: Value,
    max_output_tokens: Value,
    tools: Value,
    tool_choice: Value,
    temperature: Value,
    top_p: Value,
    parallel_tool_calls: Value,
    metadata: Value,
}

/// Parses a Responses request into the core chat request.
pub(crate) fn parse(bytes: &Bytes) -> Result<(ChatRequest, Echo), ApiError> {
    let body: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("the body is not a Responses request: {e}")))?;
    if let Some(field) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(format!(
            "`{field}` is not supported by this gateway's /v1/responses"
        )));
    }
    let set = |key: &str| body.get(key).filter(|v| !v.is_null());
    if set("previous_response_id").is_some() {
        return Err(bad(
            "`previous_response_id` is not supported: this gateway stores no responses; send the whole conversation in `input`",
        ));
    }
    if set("store").and_then(Value::as_bool) == Some(true) {
        return Err(bad(
            "`store: true` is not supported: this gateway stores no responses; send `store: false`",
        ));
    }
    if set("conversation").is_some() {
        return Err(bad(
            "`conversation` is not supported: this gateway stores no conversations",
        ));
    }
    if set("background").and_then(Value::as_bool) == Some(true) {
        return Err(bad("`background: true` is not supported"));
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`model` is required and must be a string"))?;

    let mut messages = Vec::new();
    match set("instructions") {
        None => {}
        Some(Value::String(text)) => messages.push(Message::text(Role::System, text.as_str())),
        Some(_) => return Err(bad("`instructions` must be a string")),
    }
    match set("input") {
        Some(Value::String(text)) => messages.push(Message::text(Role::User, text.as_str())),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(i, item, &mut messages)?;
            }
        }
        _ => return Err(bad("`input` is required: a string or an array of items")),
    }
    if !messages.iter().any(|m| m.role != Role::System) {
        return Err(bad("`input` holds no message"));
    }

    let mut extra = Extra::new();
    for key in ["temperature", "top_p"] {
        if let Some(v) = set(key) {
            if !v.is_number() {
                return Err(bad(format!("`{key}` must be a number")));
            }
            extra.insert(key.into(), v.clone());
        }
    }
    if let Some(v) = set("parallel_tool_calls") {
        extra.insert("parallel_tool_calls".into(), v.clone());
    }
    if let Some(user) = set("safety_identifier").or_else(|| set("user")) {
        extra.insert("user".into(), user.clone());
    }
    if let Some(effort) = set("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|v| !v.is_null())
    {
        extra.insert("reasoning_effort".into(), effort.clone());
    }
    if let Some(format) = set("text").and_then(|t| t.get("format")) {
        match format.get("type").and_then(Value::as_str) {
            Some("text") | None => {}
            Some("json_object") => {
                extra.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut schema = format.clone();
                if let Some(s) = schema.as_object_mut() {
                    s.remove("type");
                }
                extra.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            Some(other) => {
                return Err(bad(format!(
                    "`text.format.type` `{other}` is not supported"
                )));
            }
        }
    }
    if let Some(tools) = set("tools") {
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
    if let Some(choice) = set("tool_choice") {
        extra.insert("tool_choice".into(), tool_choice(choice)?);
    }
    let max_tokens = match set("max_output_tokens") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| bad("`max_output_tokens` must be a positive integer"))?,
        ),
    };
    let stream = match set("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("`stream` must be a boolean")),
    };
    let echo = Echo {
        instructions: set("instructions").cloned().unwrap_or(Value::Null),
        max_output_tokens: set("max_output_tokens").cloned().unwrap_or(Value::Null),
        tools: set("tools").cloned().unwrap_or_else(|| json!([])),
        tool_choice: set("tool_choice").cloned().unwrap_or_else(|| json!("auto")),
        temperature: set("temperature").cloned().unwrap_or_else(|| json!(1.0)),
        top_p: set("top_p").cloned().unwrap_or_else(|| json!(1.0)),
        parallel_tool_calls: set("parallel_tool_calls")
            .cloned()
            .unwrap_or(Value::Bool(true)),
        metadata: set("metadata").cloned().unwrap_or_else(|| json!({})),
    };
    let request = ChatRequest {
        model: model.to_owned(),
        messages,
        max_tokens,
        max_completion_tokens: None,
        stream: Some(stream),
        stream_options: stream.then(|| StreamOptions {
            include_usage: true,
            extra: Extra::new(),
        }),
        extra,
    };
    Ok((request, echo))
}

/// One input item: a message, a function call or a function call's output.
fn input_item(i: usize, item: &Value, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let at = format!("input[{i}]");
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        Some("message") | None => out.push(input_message(&at, item)?),
        Some("function_call") => {
            let field = |name: &str| {
                item.get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("`{at}.{name}` is required")))
            };
            let call = ToolCall {
                id: field("call_id")?.to_owned(),
                name: field("name")?.to_owned(),
                arguments: field("arguments")?.to_owned(),
            };
            // Consecutive calls (and the text before them) are one
            // assistant turn in the chat shape.
            match out.last_mut() {
                Some(last) if last.role == Role::Assistant => {
                    let mut calls = last.tool_calls();
                    calls.push(call);
                    last.set_tool_calls(&calls);
                }
                _ => {
                    let mut message = Message {
                        role: Role::Assistant,
                        content: None,
                        extra: Extra::new(),
                    };
                    message.set_tool_calls(&[call]);
                    out.push(message);
                }
            }
        }
        Some("function_call_output") => {
            let id = item
                .get("call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("`{at}.call_id` is required")))?;
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect(),
                _ => return Err(bad(format!("`{at}.output` is required"))),
            };
            let mut message = Message::text(Role::Tool, output);
            message.extra.insert("tool_call_id".into(), id.into());
            out.push(message);
        }
        // Reasoning items only the model that wrote them can read; other
        // models answer without them.
        Some("reasoning") => {}
        Some(other) => {
            return Err(bad(format!(
                "`{at}` is a `{other}` item, which this gateway's /v1/responses does not support"
            )));
        }
    }
    Ok(())
}

/// A message item: its role and its content parts.
fn input_message(at: &str, item: &Value) -> Result<Message, ApiError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system") => Role::System,
        Some("developer") => Role::Developer,
        _ => {
            return Err(bad(format!(
                "`{at}.role` must be `user`, `assistant`, `system` or `developer`"
            )));
        }
    };
    let content = match item.get("content") {
        Some(Value::String(text)) => Content::Text(text.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let at = format!("{at}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text") => out.push(json!({
                        "type": "text",
                        "text": part.get("text").and_then(Value::as_str).unwrap_or_default(),
                    })),
                    Some("input_image") => {
                        let url =
                            part.get("image_url")
                                .and_then(Value::as_str)
                                .ok_or_else(|| {
                                    bad(format!(
                                        "`{at}.image_url` is required (file ids are not supported)"
                                    ))
                                })?;
                        let mut image = json!({"url": url});
                        if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                            image["detail"] = detail.clone();
                        }
                        out.push(json!({"type": "image_url", "image_url": image}));
                    }
                    Some(other) => {
                        return Err(bad(format!(
                            "`{at}` is an `{other}` part, which this gateway's /v1/responses does not support"
                        )));
                    }
                    None => return Err(bad(format!("`{at}.type` is required"))),
                }
            }
            if role == Role::Assistant {
                Content::Text(Content::Parts(out).text())
            } else {
                Content::Parts(out)
            }
        }
        _ => return Err(bad(format!("`{at}.content` must be a string or parts"))),
    };
    Ok(Message {
        role,
        content: Some(content),
        extra: Extra::new(),
    })
}

/// A Responses function tool as a chat function tool.
fn tool(i: usize, tool: &Value) -> Result<Value, ApiError> {
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(bad(format!(
                "`tools[{i}]` is a `{other}` tool, which this gateway's /v1/responses does not support; only `function` tools are"
            )));
        }
        None => return Err(bad(format!("`tools[{i}].type` is required"))),
    }
    let name = tool
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("`tools[{i}].name` is required")))?;
    let mut function = json!({"name": name});
    for key in ["description", "parameters", "strict"] {
        if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
            function[key] = v.clone();
        }
    }
    Ok(json!({"type": "function", "function": function}))
}

/// `tool_choice` in the chat shape.
fn tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("`tool_choice.name` is required"))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(bad(
            "`tool_choice` must be `auto`, `none`, `required` or a function choice",
        )),
    }
}

// ------------------------------------------------------------ answers

/// The response id: `resp_` and the answer's id.
fn response_id(id: &str) -> String {
    format!("resp_{id}")
}

/// The usage object of a response.
fn usage_json(usage: Option<&Usage>) -> Value {
    let usage = usage.cloned().unwrap_or_default();
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    })
}

/// The status (and `incomplete_details`) a finish reason gives.
fn status_of(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn text_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" {
        json!([])
    } else {
        json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn call_item(call: &ToolCall, status: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{}", call.id), "call_id": call.id,
           "name": call.name, "arguments": call.arguments, "status": status})
}

/// A response object.
#[allow(clippy::too_many_arguments)]
fn response_json(
    id: &str,
    created_at: u64,
    model: &str,
    status: &str,
    incomplete: Value,
    output: Vec<Value>,
    usage: Option<Value>,
    error: Value,
    echo: &Echo,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": false,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "metadata": echo.metadata,
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "previous_response_id": null,
        "store": false,
        "temperature": echo.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": echo.tool_choice,
        "tools": echo.tools,
        "top_p": echo.top_p,
        "truncation": "disabled",
        "usage": usage,
    })
}

async fn complete(
    gateway: &Gateway,
    request: ChatRequest,
    echo: Echo,
    cx: RequestContext,
) -> Response {
    let result = match gateway.router().complete(request, cx).await {
        Ok(result) => result,
        Err(e) => return gateway.route_error(e).into_response(),
    };
    let body = complete_json(&result.response, &result.outcome, &echo);
    super::json_answer(body.to_string(), &result.outcome)
}

fn complete_json(response: &ChatResponse, outcome: &Outcome, echo: &Echo) -> Value {
    let choice = response.choices.first();
    let mut output = Vec::new();
    if let Some(choice) = choice {
        let text = choice.message.text_content();
        if !text.is_empty() {
            output.push(text_item(
                &format!("msg_{}", response.id),
                &text,
                "completed",
            ));
        }
        for call in choice.message.tool_calls() {
            output.push(call_item(&call, "completed"));
        }
    }
    let (status, incomplete) = status_of(choice.and_then(|c| c.finish_reason.as_deref()));
    let mut body = response_json(
        &response_id(&response.id),
        response.created,
        &outcome.model_used,
        status,
        incomplete,
        output,
        Some(usage_json(response.usage.as_ref())),
        Value::Null,
        echo,
    );
    body["backstop"] = serde_json::to_value(BackstopInfo::from(outcome)).unwrap_or_default();
    body
}

async fn stream(
    gateway: &Gateway,
    request: ChatRequest,
    echo: Echo,
    cx: RequestContext,
) -> Response {
    let stream = match gateway.router().stream(request, cx).await {
        Ok(stream) => stream,
        Err(e) => return gateway.route_error(e).into_response(),
    };
    let outcome = stream.meta().outcome.clone();
    super::sse_answer(sse_body(stream, echo), &outcome)
}

/// An output item being streamed or streamed.
enum Item {
    Text {
        id: String,
        text: String,
    },
    /// A function call, with its index among the answer's tool calls.
    Call {
        index: u32,
        call: ToolCall,
    },
}

impl Item {
    fn json(&self, status: &str) -> Value {
        match self {
            Item::Text { id, text } => text_item(id, text, status),
            Item::Call { call, .. } => call_item(call, status),
        }
    }
}

/// Turns the Router's chunks into the semantic events.
struct Encoder {
    id: String,
    created_at: u64,
    model: String,
    echo: Echo,
    sequence: u64,
    items: Vec<Item>,
    /// Whether the last item is still open.
    open: bool,
    finish: Option<String>,
}

impl Encoder {
    fn event(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        data["type"] = kind.into();
        data["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        write_json_event(out, kind, &data);
    }

    fn response(&self, status: &str, usage: Option<Value>, error: Value) -> Value {
        let output = self
            .items
            .iter()
            .map(|item| {
                item.json(if status == "in_progress" {
                    "in_progress"
                } else {
                    "completed"
                })
            })
            .collect();
        let (status, incomplete) = if status == "completed" {
            status_of(self.finish.as_deref())
        } else {
            (
                if status == "failed" {
                    "failed"
                } else {
                    "in_progress"
                },
                Value::Null,
            )
        };
        response_json(
            &self.id,
            self.created_at,
            &self.model,
            status,
            incomplete,
            output,
            usage,
            error,
            &self.echo,
        )
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        let response = self.response("in_progress", None, Value::Null);
        self.event(out, "response.created", json!({"response": response}));
        self.event(out, "response.in_progress", json!({"response": response}));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        let output_index = self.items.len() - 1;
        let Some(item) = self.items.last() else {
            return;
        };
        let done = item.json("completed");
        match item {
            Item::Text { id, text } => {
                let (id, text) = (id.clone(), text.clone());
                self.event(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": output_index, "content_index": 0,
                           "text": text, "logprobs": []}),
                );
                self.event(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": output_index, "content_index": 0,
                           "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
                );
            }
            Item::Call { call, .. } => {
                let (id, name, arguments) = (
                    format!("fc_{}", call.id),
                    call.name.clone(),
                    call.arguments.clone(),
                );
                self.event(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": output_index, "name": name,
                           "arguments": arguments}),
                );
            }
        }
        self.event(
            out,
            "response.output_item.done",
            json!({"output_index": output_index, "item": done}),
        );
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        if !(self.open && matches!(self.items.last(), Some(Item::Text { .. }))) {
            self.close(out);
            let id = match self.items.len() {
                0 => format!("msg_{}", self.id),
                n => format!("msg_{}_{n}", self.id),
            };
            self.items.push(Item::Text {
                id: id.clone(),
                text: String::new(),
            });
            self.open = true;
            let output_index = self.items.len() - 1;
            self.event(
                out,
                "response.output_item.added",
                json!({"output_index": output_index, "item": text_item(&id, "", "in_progress")}),
            );
            self.event(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": output_index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            );
        }
        let output_index = self.items.len() - 1;
        let Some(Item::Text { id, text: all }) = self.items.last_mut() else {
            return;
        };
        all.push_str(text);
        let id = id.clone();
        self.event(
            out,
            "response.output_text.delta",
            json!({"item_id": id, "output_index": output_index, "content_index": 0,
                   "delta": text, "logprobs": []}),
        );
    }

    fn call(&mut self, fragment: backstop_core::ToolCallDelta, out: &mut Vec<u8>) {
        let same = self.open
            && matches!(self.items.last(), Some(Item::Call { index, .. }) if *index == fragment.index);
        if !same {
            self.close(out);
            let call = ToolCall {
                id: fragment.id.clone().unwrap_or_default(),
                name: fragment.name.clone().unwrap_or_default(),
                arguments: String::new(),
            };
            let added = call_item(&call, "in_progress");
            self.items.push(Item::Call {
                index: fragment.index,
                call,
            });
            self.open = true;
            let output_index = self.items.len() - 1;
            self.event(
                out,
                "response.output_item.added",
                json!({"output_index": output_index, "item": added}),
            );
        }
        let Some(arguments) = fragment.arguments.filter(|a| !a.is_empty()) else {
            return;
        };
        let output_index = self.items.len() - 1;
        let Some(Item::Call { call, .. }) = self.items.last_mut() else {
            return;
        };
        call.arguments.push_str(&arguments);
        let id = format!("fc_{}", call.id);
        self.event(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": output_index, "delta": arguments}),
        );
    }

    fn chunk(&mut self, chunk: &ChatChunk, out: &mut Vec<u8>) {
        let Some(choice) = chunk.choices.iter().find(|c| c.index == 0) else {
            return;
        };
        if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
            self.text(text, out);
        }
        for fragment in choice.delta.tool_calls() {
            self.call(fragment, out);
        }
        if let Some(finish) = &choice.finish_reason {
            self.finish = Some(finish.clone());
        }
    }

    fn done(&mut self, outcome: &Outcome, out: &mut Vec<u8>) {
        self.close(out);
        let mut response = self.response(
            "completed",
            Some(usage_json(outcome.usage.as_ref())),
            Value::Null,
        );
        response["backstop"] =
            serde_json::to_value(BackstopInfo::from(outcome)).unwrap_or_default();
        let kind = if response["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.event(out, kind, json!({"response": response}));
    }

    fn failed(&mut self, error: &ApiError, out: &mut Vec<u8>) {
        let mut response = self.response(
            "failed",
            None,
            json!({"code": "server_error", "message": error.message}),
        );
        response["backstop"] = json!({"code": error.code, "attempts": error.attempts});
        self.event(out, "response.failed", json!({"response": response}));
    }
}

/// The SSE body: the semantic events, ending in `response.completed` (or
/// `response.incomplete`), or `response.failed` when the answer cannot be
/// completed.
fn sse_body(
    stream: FallbackStream,
    echo: Echo,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    let mut encoder = Encoder {
        id: response_id(&stream.meta().id),
        created_at: stream.meta().created,
        model: stream.meta().outcome.model_used.to_string(),
        echo,
        sequence: 0,
        items: Vec::new(),
        open: false,
        finish: None,
    };
    let mut head = Vec::with_capacity(2048);
    encoder.start(&mut head);
    Batched::new(head, stream, move |item, out: &mut Vec<u8>| match item {
        StreamItem::Chunk(chunk) => encoder.chunk(&chunk, out),
        StreamItem::Done(outcome) => {
            encoder.model = outcome.model_used.to_string();
            encoder.done(&outcome, out);
        }
        StreamItem::Failed(error) => {
            tracing::debug!(%error, "stream failed after it started");
            encoder.failed(&ApiError::from_route(error, String::new), out);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: Value) -> Result<ChatRequest, ApiError> {
        parse(&Bytes::from(body.to_string())).map(|(r, _)| r)
    }

    #[test]
    fn items_instructions_and_tools_translate_to_chat() {
        let req = parsed(json!({
            "model": "chat", "instructions": "Be brief.", "max_output_tokens": 99,
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                                             {"type": "input_image", "image_url": "https://x/y.png"}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"}
            ]
        }))
        .unwrap();
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["max_tokens"], 99);
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            v["messages"][1]["content"][1]["image_url"]["url"],
            "https://x/y.png"
        );
        assert_eq!(v["messages"][2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(
            v["messages"][3],
            json!({"role": "tool", "content": "18C", "tool_call_id": "call_1"})
        );
        assert_eq!(v["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(v["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(v["response_format"]["json_schema"]["name"], "w");
    }

    #[test]
    fn stored_state_is_a_clear_400() {
        for (key, value) in [
            ("previous_response_id", json!("resp_1")),
            ("store", json!(true)),
            ("conversation", json!("conv_1")),
        ] {
            let mut body = json!({"model": "chat", "input": "hi"});
            body[key] = value;
            let e = parsed(body).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(e.message.contains(key), "{}", e.message);
        }
        assert!(parsed(json!({"model": "chat", "input": "hi", "store": false})).is_ok());
    }

    #[test]
    fn non_function_tools_are_refused_by_name() {
        let e = parsed(json!({"model": "chat", "input": "hi", "tools": [{"type": "web_search"}]}))
            .unwrap_err();
        assert!(e.message.contains("web_search"));
    }
}
