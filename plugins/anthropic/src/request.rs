//! OpenAI-shaped requests translated to Messages API requests.
//!
//! 1. `system` and `developer` messages join (blank-line separated) into
//!    the top-level `system`.
//! 2. User messages become user turns: text parts as text blocks,
//!    `image_url` parts as image blocks (base64 `data:` URLs or plain URLs).
//! 3. Assistant messages become assistant turns: text, then one `tool_use`
//!    block per tool call (its JSON `arguments` parsed into `input`).
//! 4. Tool messages become `tool_result` blocks of a user turn.
//! 5. Consecutive turns of one role merge, as the API expects.
//! 6. A trailing assistant turn is a prefill: its trailing whitespace is
//!    trimmed (the API rejects it) and reported, so the continuation can be
//!    joined back exactly.
//! 7. `max_tokens` is the Router's bound; `stop` becomes `stop_sequences`;
//!    `temperature` is capped at 1.0 (Anthropic's range is 0 to 1);
//!    `top_p`, `top_k` pass; `tools`, `tool_choice` and
//!    `parallel_tool_calls` map to Anthropic's shapes; `user` becomes
//!    `metadata.user_id`. Fields with no Anthropic meaning are dropped.
//! 8. What Anthropic cannot express (`n` > 1, legacy `functions` and
//!    `function` messages, audio, file and other non-image parts, non-base64
//!    image data URLs, tool-call arguments that are not a JSON object,
//!    non-function tools, a `tool_choice` it does not know) is
//!    `Unsupported`: the request may be fine for another model, so the
//!    Router falls over. Only a request that is malformed for every
//!    OpenAI-compatible API (a tool message without `tool_call_id`, an
//!    image part without a URL, a function tool without a name) is a
//!    `BadRequest`, which stops the chain.

use backstop_core::{Call, Content, FailureKind, Message, ProviderError, Role};
use serde_json::{Map, Value, json};

/// A translated request.
#[derive(Debug)]
pub(crate) struct MessagesRequest {
    /// The JSON body.
    pub(crate) body: Map<String, Value>,
    /// Whitespace trimmed off the end of the assistant prefill.
    pub(crate) trimmed: String,
}

/// Caller fields this translation reads; every other field is dropped.
const MAPPED: &[&str] = &[
    "stop",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "n",
    "functions",
    "function_call",
];

/// The request is malformed for every API: no model could serve it.
fn bad(message: impl Into<String>) -> ProviderError {
    ProviderError::new(FailureKind::BadRequest, message)
}

/// The request is valid but Anthropic cannot express it: another model may.
fn unsupported(message: impl Into<String>) -> ProviderError {
    ProviderError::new(FailureKind::Unsupported, message)
}

/// Translates the call's request.
pub(crate) fn translate(call: &Call<'_>, stream: bool) -> Result<MessagesRequest, ProviderError> {
    let request = call.request;
    let extra = &request.extra;
    if extra
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(unsupported(
            "Anthropic returns one choice per request; `n` > 1 is not supported",
        ));
    }
    if extra.contains_key("functions") || extra.contains_key("function_call") {
        return Err(unsupported(
            "legacy `functions` / `function_call` are not supported; use `tools`",
        ));
    }

    let mut system = Vec::new();
    let mut turns = Turns::default();
    for message in &request.messages {
        match message.role {
            Role::System | Role::Developer => {
                let text = message.text_content();
                if !text.is_empty() {
                    system.push(text);
                }
            }
            Role::User => turns.push("user", user_blocks(message)?),
            Role::Assistant => turns.push("assistant", assistant_blocks(message)?),
            Role::Tool => turns.push("user", vec![tool_result(message)?]),
            Role::Function => {
                return Err(unsupported(
                    "legacy `function` messages are not supported; use `tool` messages",
                ));
            }
        }
    }
    let trimmed = turns.trim_prefill();

    let mut body = Map::new();
    body.insert("model".into(), call.model.upstream.clone().into());
    body.insert("max_tokens".into(), call.max_tokens.into());
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    body.insert("messages".into(), turns.into_json());
    if let Some(stop) = stop_sequences(extra.get("stop")) {
        body.insert("stop_sequences".into(), stop);
    }
    if let Some(t) = extra.get("temperature").and_then(Value::as_f64) {
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    for key in ["top_p", "top_k"] {
        if let Some(v) = extra.get(key).filter(|v| v.is_number()) {
            body.insert(key.into(), v.clone());
        }
    }
    if let Some(tools) = extra
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    {
        body.insert(
            "tools".into(),
            Value::Array(tools.iter().map(tool).collect::<Result<_, _>>()?),
        );
        let parallel = extra.get("parallel_tool_calls").and_then(Value::as_bool);
        if let Some(choice) = tool_choice(extra.get("tool_choice"), parallel)? {
            body.insert("tool_choice".into(), choice);
        }
    }
    if let Some(user) = extra.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    let dropped: Vec<&str> = extra
        .keys()
        .map(String::as_str)
        .filter(|k| !MAPPED.contains(k))
        .collect();
    if !dropped.is_empty() {
        tracing::debug!(model = %call.model.id, ?dropped, "fields with no Anthropic equivalent dropped");
    }
    Ok(MessagesRequest { body, trimmed })
}

/// Turns under construction.
#[derive(Debug, Default)]
struct Turns(Vec<(&'static str, Vec<Value>)>);

impl Turns {
    fn push(&mut self, role: &'static str, blocks: Vec<Value>) {
        if blocks.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => self.0.push((role, blocks)),
        }
    }

    /// Trims the trailing whitespace of a final assistant text block and
    /// returns it; drops the block (and the turn) if nothing is left.
    fn trim_prefill(&mut self) -> String {
        let Some(("assistant", blocks)) = self.0.last_mut() else {
            return String::new();
        };
        let Some(last) = blocks.last_mut() else {
            return String::new();
        };
        let Some(text) = last
            .get("text")
            .and_then(Value::as_str)
            .filter(|_| last["type"] == "text")
        else {
            return String::new();
        };
        let kept = text.trim_end();
        let trimmed = text[kept.len()..].to_owned();
        if kept.is_empty() {
            blocks.pop();
            if blocks.is_empty() {
                self.0.pop();
            }
        } else {
            let kept = kept.to_owned();
            last["text"] = kept.into();
        }
        trimmed
    }

    /// `[{"role", "content"}]`, with a lone plain text block as a string.
    fn into_json(self) -> Value {
        let messages = self
            .0
            .into_iter()
            .map(|(role, mut blocks)| {
                let plain = match blocks.as_slice() {
                    [only] => {
                        only.get("type").and_then(Value::as_str) == Some("text")
                            && only.as_object().is_some_and(|o| o.len() == 2)
                    }
                    _ => false,
                };
                let content = if plain {
                    blocks
                        .pop()
                        .and_then(|mut b| b.get_mut("text").map(Value::take))
                        .unwrap_or_default()
                } else {
                    Value::Array(blocks)
                };
                json!({ "role": role, "content": content })
            })
            .collect();
        Value::Array(messages)
    }
}

fn text_block(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

/// The blocks of a user message's content.
fn user_blocks(message: &Message) -> Result<Vec<Value>, ProviderError> {
    match &message.content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(vec![text_block(text)]),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                if let Some(block) = part_block(part)? {
                    blocks.push(block);
                }
            }
            Ok(blocks)
        }
    }
}

/// One content part as a block; `None` for an empty text part.
fn part_block(part: &Value) -> Result<Option<Value>, ProviderError> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
    let mut block = match kind {
        "text" => {
            let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
            if text.is_empty() {
                return Ok(None);
            }
            text_block(text)
        }
        "image_url" => {
            let url = part
                .get("image_url")
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("an image_url part has no url"))?;
            image_block(url)?
        }
        "refusal" => return Ok(None),
        "" => return Err(bad("a content part has no `type`")),
        other => {
            return Err(unsupported(format!(
                "content parts of type `{other}` cannot be sent to Anthropic"
            )));
        }
    };
    // Prompt caching hints written for Anthropic pass through.
    if let (Some(cache), Some(object)) = (part.get("cache_control"), block.as_object_mut()) {
        object.insert("cache_control".into(), cache.clone());
    }
    Ok(Some(block))
}

/// An image block from a `data:<type>;base64,<data>` URL or a plain URL.
fn image_block(url: &str) -> Result<Value, ProviderError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| bad("an image data URL has no data"))?;
    let media_type = meta
        .strip_suffix(";base64")
        .ok_or_else(|| unsupported("only base64 image data URLs can be sent to Anthropic"))?;
    Ok(json!({
        "type": "image",
        "source": { "type": "base64", "media_type": media_type, "data": data }
    }))
}

/// The blocks of an assistant message: its text, then its tool calls.
fn assistant_blocks(message: &Message) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = user_blocks(message)?;
    let Some(calls) = message.extra.get("tool_calls").and_then(Value::as_array) else {
        return Ok(blocks);
    };
    for call in calls {
        let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
        let function = call.get("function").unwrap_or(&Value::Null);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let arguments = function
            .get("arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        // OpenAI-compatible APIs take any string as past arguments (a cut
        // tool call, say); Anthropic's `input` must be a JSON object.
        let input: Value = if arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str::<Value>(arguments)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    unsupported(format!(
                        "the arguments of tool call `{id}` are not a JSON object, which Anthropic requires"
                    ))
                })?
        };
        blocks.push(json!({ "type": "tool_use", "id": id, "name": name, "input": input }));
    }
    Ok(blocks)
}

/// A tool message as a `tool_result` block.
fn tool_result(message: &Message) -> Result<Value, ProviderError> {
    let id = message
        .extra
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("a tool message has no tool_call_id"))?;
    Ok(json!({
        "type": "tool_result",
        "tool_use_id": id,
        "content": message.text_content(),
    }))
}

/// `stop` (a string or a list) as `stop_sequences`.
fn stop_sequences(stop: Option<&Value>) -> Option<Value> {
    let sequences: Vec<Value> = match stop? {
        Value::String(s) => vec![s.clone().into()],
        Value::Array(items) => items.iter().filter(|v| v.is_string()).cloned().collect(),
        _ => return None,
    };
    (!sequences.is_empty()).then_some(Value::Array(sequences))
}

/// An OpenAI function tool as an Anthropic tool.
fn tool(tool: &Value) -> Result<Value, ProviderError> {
    let kind = tool
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("function");
    if kind != "function" {
        return Err(unsupported(format!(
            "tools of type `{kind}` cannot be sent to Anthropic"
        )));
    }
    let function = tool
        .get("function")
        .ok_or_else(|| bad("a function tool has no `function`"))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("a function tool has no name"))?;
    let mut out = json!({
        "name": name,
        "input_schema": function
            .get("parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({ "type": "object", "properties": {} })),
    });
    if let Some(description) = function.get("description").and_then(Value::as_str) {
        out["description"] = description.into();
    }
    Ok(out)
}

/// `tool_choice` and `parallel_tool_calls` as Anthropic's `tool_choice`.
fn tool_choice(
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<Value>, ProviderError> {
    let mut out = match choice {
        None | Some(Value::Null) => json!({ "type": "auto" }),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({ "type": "auto" }),
            "required" => json!({ "type": "any" }),
            "none" => return Ok(Some(json!({ "type": "none" }))),
            other => {
                return Err(unsupported(format!(
                    "tool_choice `{other}` cannot be sent to Anthropic"
                )));
            }
        },
        Some(object) => {
            // OpenAI also has `allowed_tools` and `custom` choices.
            let kind = object
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("function");
            if kind != "function" {
                return Err(unsupported(format!(
                    "tool_choice of type `{kind}` cannot be sent to Anthropic"
                )));
            }
            let name = object
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice names no function"))?;
            json!({ "type": "tool", "name": name })
        }
    };
    match parallel {
        Some(false) => out["disable_parallel_tool_use"] = true.into(),
        _ if choice.is_none() => return Ok(None),
        _ => {}
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use backstop_core::{ChatRequest, ModelSpec};

    use super::*;

    fn translated(request: Value, stream: bool) -> Result<MessagesRequest, ProviderError> {
        let request: ChatRequest = serde_json::from_value(request).unwrap();
        let mut model = ModelSpec::new("claude", "anthropic");
        model.upstream = "claude-sonnet-4-5".into();
        let call = Call {
            scenario: "chat",
            model: &model,
            request: &request,
            max_tokens: 300,
            connect_timeout: Duration::from_secs(1),
            request_id: None,
            headers: &[],
        };
        translate(&call, stream)
    }

    fn body(request: Value) -> Value {
        Value::Object(translated(request, false).unwrap().body)
    }

    #[test]
    fn a_plain_conversation_translates() {
        let b = body(json!({
            "model": "chat",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Weather?"}
            ],
            "max_tokens": 1000,
            "stop": "END",
            "temperature": 1.7,
            "top_p": 0.9,
            "frequency_penalty": 0.5,
            "response_format": {"type": "json_object"},
            "user": "u-1"
        }));
        assert_eq!(
            b,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 300,
                "system": "Be brief.\n\nAnswer in English.",
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Weather?"}
                ],
                "stop_sequences": ["END"],
                "temperature": 1.0,
                "top_p": 0.9,
                "metadata": {"user_id": "u-1"}
            })
        );
    }

    #[test]
    fn images_become_image_blocks() {
        let b = body(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}}
            ]}]}),
        );
        assert_eq!(
            b["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
            ])
        );
        let e = translated(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
            false,
        )
        .unwrap_err();
        assert_eq!(e.kind, FailureKind::Unsupported);
        assert!(e.message.contains("input_audio"), "{e}");
    }

    #[test]
    fn tools_calls_and_results_translate() {
        let b = body(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "24C"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
            }}],
            "tool_choice": "required",
            "parallel_tool_calls": false
        }));
        assert_eq!(
            b["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "24C"}
                ]}
            ])
        );
        assert_eq!(
            b["tools"],
            json!([{"name": "get_weather", "description": "Current weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
        );
        assert_eq!(
            b["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
    }

    #[test]
    fn tool_choice_variants_map() {
        let choice = |c: Value| {
            let mut r = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]});
            if !c.is_null() {
                r["tool_choice"] = c;
            }
            body(r).get("tool_choice").cloned()
        };
        assert_eq!(choice(Value::Null), None);
        assert_eq!(choice(json!("auto")), Some(json!({"type": "auto"})));
        assert_eq!(choice(json!("none")), Some(json!({"type": "none"})));
        assert_eq!(
            choice(json!({"type": "function", "function": {"name": "f"}})),
            Some(json!({"type": "tool", "name": "f"}))
        );
        let b = body(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"}),
        );
        assert!(b.get("tool_choice").is_none(), "no tools, no tool_choice");
    }

    #[test]
    fn a_trailing_assistant_prefill_is_trimmed_and_reported() {
        let t = translated(
            json!({"model": "m", "messages": [
                {"role": "user", "content": "Count to five."},
                {"role": "assistant", "content": "One, two, \n"}
            ]}),
            true,
        )
        .unwrap();
        assert_eq!(t.trimmed, " \n");
        assert_eq!(
            t.body["messages"][1],
            json!({"role": "assistant", "content": "One, two,"})
        );
        assert_eq!(t.body["stream"], true);

        let t = translated(
            json!({"model": "m", "messages": [
                {"role": "user", "content": "Go"},
                {"role": "assistant", "content": "  "}
            ]}),
            false,
        )
        .unwrap();
        assert_eq!(t.trimmed, "  ");
        assert_eq!(
            t.body["messages"].as_array().map(Vec::len),
            Some(1),
            "an all-blank prefill is dropped"
        );
    }

    #[test]
    fn what_anthropic_cannot_express_is_unsupported() {
        let user = json!([{"role": "user", "content": "x"}]);
        for request in [
            json!({"model": "m", "messages": user, "n": 2}),
            json!({"model": "m", "messages": user, "functions": []}),
            json!({"model": "m", "messages": user, "function_call": "auto"}),
            json!({"model": "m", "messages": [{"role": "function", "name": "f", "content": "x"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "file", "file": {"file_id": "file-abc"}}]}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/svg+xml,%3Csvg%3E"}}]}]}),
            json!({"model": "m", "messages": [{"role": "assistant", "content": null, "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"city\": \"Par"}}]}]}),
            json!({"model": "m", "messages": user, "tools": [{"type": "web_search"}]}),
            json!({"model": "m", "messages": user,
                   "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}),
            json!({"model": "m", "messages": user,
                   "tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}}),
        ] {
            let e = translated(request.clone(), false).unwrap_err();
            assert_eq!(e.kind, FailureKind::Unsupported, "{request}: {e}");
        }
    }

    #[test]
    fn only_a_request_malformed_for_every_api_is_a_bad_request() {
        let user = json!([{"role": "user", "content": "x"}]);
        for request in [
            json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"detail": "low"}}]}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
            json!({"model": "m", "messages": user, "tools": [{"type": "function"}]}),
            json!({"model": "m", "messages": user,
                   "tools": [{"type": "function", "function": {"parameters": {}}}]}),
            json!({"model": "m", "messages": user,
                   "tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": {"type": "function"}}),
        ] {
            let e = translated(request.clone(), false).unwrap_err();
            assert_eq!(e.kind, FailureKind::BadRequest, "{request}: {e}");
        }
    }
}
