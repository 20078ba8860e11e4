//! Requests, responses and stream chunks shaped like OpenAI chat completions.
//!
//! Every struct keeps the fields it does not name in an `extra` map
//! (`temperature`, `tools`, `response_format`, `logprobs`, ...), so nothing a
//! caller sends is silently dropped and nothing an upstream returns is lost.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod read_chunk;

/// Fields a struct does not name, kept as they came.
pub type Extra = Map<String, Value>;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions from the application.
    System,
    /// OpenAI's newer name for system instructions.
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
    /// A legacy function result.
    Function,
}

/// A message's content: a plain string or a list of typed parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts (`{"type": "text", "text": ...}`, images, audio...).
    Parts(Vec<Value>),
}

impl Content {
    /// The text of the content: the string, or the `text` parts joined.
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => {
                let mut out = String::new();
                for part in parts {
                    if let Some(t) = part.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                    }
                }
                out
            }
        }
    }

    /// Visits every text fragment without allocating.
    fn for_each_text(&self, mut f: impl FnMut(&str)) {
        match self {
            Content::Text(t) => f(t),
            Content::Parts(parts) => {
                for part in parts {
                    if let Some(t) = part.get("text").and_then(Value::as_str) {
                        f(t);
                    }
                }
            }
        }
    }
}

/// One message of a conversation (also the message of a response choice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says; absent on assistant messages that only call tools.
    #[serde(default)]
    pub content: Option<Content>,
    /// `name`, `tool_calls`, `tool_call_id`, `refusal`, ...
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message {
    /// A message with text content.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(Content::Text(text.into())),
            extra: Extra::new(),
        }
    }

    /// The message's text (empty when it has none).
    pub fn text_content(&self) -> String {
        self.content.as_ref().map(Content::text).unwrap_or_default()
    }

    /// The function calls of an assistant message (`tool_calls`), in
    /// order; entries without an id or a name are skipped.
    pub fn tool_calls(&self) -> Vec<ToolCall> {
        let Some(calls) = self.extra.get("tool_calls").and_then(Value::as_array) else {
            return Vec::new();
        };
        calls
            .iter()
            .filter_map(|call| {
                let function = call.get("function")?;
                Some(ToolCall {
                    id: call.get("id")?.as_str()?.to_owned(),
                    name: function.get("name")?.as_str()?.to_owned(),
                    arguments: function
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}")
                        .to_owned(),
                })
            })
            .collect()
    }

    /// Sets the message's tool calls (none removes them).
    pub fn set_tool_calls(&mut self, calls: &[ToolCall]) {
        if calls.is_empty() {
            self.extra.remove("tool_calls");
        } else {
            let calls = calls.iter().map(ToolCall::to_value).collect();
            self.extra.insert("tool_calls".into(), Value::Array(calls));
        }
    }
}

/// `stream_options` of a streaming request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Ask for a final chunk that carries `usage`.
    #[serde(default)]
    pub include_usage: bool,
    /// Anything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A chat completion request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// A scenario name or a model id.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Output-token bound (legacy name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Output-token bound (current name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// `temperature`, `tools`, `response_format`, `stop`, `user`, ...
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatRequest {
    /// A request with one user message.
    pub fn user(model: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            messages: vec![Message::text(Role::User, text)],
            max_tokens: None,
            max_completion_tokens: None,
            stream: None,
            stream_options: None,
            extra: Extra::new(),
        }
    }

    /// Whether the caller asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The caller's output-token bound, whichever name it used.
    pub fn requested_max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether the request offers tools to the model.
    pub fn has_tools(&self) -> bool {
        self.extra
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty())
            || self.extra.contains_key("functions")
    }

    /// Whether the caller asked for usage in the stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// Whether the conversation ends with an assistant message (a prefill the
    /// model is asked to continue).
    pub fn ends_with_assistant(&self) -> bool {
        self.messages
            .last()
            .is_some_and(|m| m.role == Role::Assistant)
    }

    /// A cheap, conservative estimate of the prompt's tokens: ASCII text at
    /// four bytes a token, every other character a token of its own (CJK
    /// text is close to one token a character), plus a few tokens of
    /// framing per message. Good enough to price a request and check a
    /// context window; never used for billing.
    pub fn estimated_prompt_tokens(&self) -> u32 {
        let mut ascii_bytes: u64 = 0;
        let mut other_chars: u64 = 0;
        for message in &self.messages {
            if let Some(content) = &message.content {
                content.for_each_text(|t| {
                    if t.is_ascii() {
                        ascii_bytes += t.len() as u64;
                    } else {
                        for c in t.chars() {
                            if c.is_ascii() {
                                ascii_bytes += 1;
                            } else {
                                other_chars += 1;
                            }
                        }
                    }
                });
            }
        }
        let framing = 4 * self.messages.len() as u64 + 3;
        let tokens = ascii_bytes.div_ceil(4) + other_chars + framing;
        u32::try_from(tokens).unwrap_or(u32::MAX)
    }
}

/// A cheap estimate of the tokens in `text`, by the same rule as
/// [`ChatRequest::estimated_prompt_tokens`]: ASCII at four bytes a token,
/// every other character a token. Used to charge budgets for answers whose
/// upstream reported no usage, or that were cut off.
pub fn estimate_tokens(text: &str) -> u32 {
    let mut tally = TokenTally::default();
    tally.add(text);
    tally.tokens()
}

/// [`estimate_tokens`] of text that arrives in pieces, without keeping the
/// text: the same count as the whole text's.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokenTally {
    ascii: u64,
    other: u64,
}

impl TokenTally {
    /// Counts `text` in.
    pub(crate) fn add(&mut self, text: &str) {
        for c in text.chars() {
            if c.is_ascii() {
                self.ascii += 1;
            } else {
                self.other += 1;
            }
        }
    }

    /// The estimate of everything counted so far.
    pub(crate) fn tokens(&self) -> u32 {
        u32::try_from(self.ascii.div_ceil(4) + self.other).unwrap_or(u32::MAX)
    }

    /// Whether nothing was counted yet (no character).
    pub(crate) fn is_empty(&self) -> bool {
        self.ascii == 0 && self.other == 0
    }
}

/// Token counts of one call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// The sum.
    pub total_tokens: u32,
    /// `prompt_tokens_details`, `completion_tokens_details`, ...
    #[serde(flatten)]
    pub extra: Extra,
}

impl Usage {
    /// Usage with the total filled in.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            extra: Extra::new(),
        }
    }
}

/// One choice of a complete response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position among the choices.
    #[serde(default)]
    pub index: u32,
    /// The answer.
    pub message: Message,
    /// Why generation stopped (`stop`, `length`, `tool_calls`, ...).
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// `logprobs`, ...
    #[serde(flatten)]
    pub extra: Extra,
}

/// A complete (non-streaming) chat completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The completion's id.
    #[serde(default)]
    pub id: String,
    /// Always `chat.completion`.
    #[serde(default = "object_completion")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// The answers.
    pub choices: Vec<Choice>,
    /// Token counts, when the upstream reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// `system_fingerprint`, `service_tier`, ...
    #[serde(flatten)]
    pub extra: Extra,
    /// The body's JSON text as the upstream sent it, when a provider parsed
    /// the answer from OpenAI-shaped JSON and nothing but `model` has
    /// changed since: the chat-completions door writes it through with
    /// only `model` rewritten (and its `backstop` object added) instead of
    /// serialising the typed fields again. Whoever changes any other field
    /// must set it to `None`. Never serialised; equality ignores it.
    #[serde(skip)]
    pub raw: Option<RawJson>,
}

/// `PartialEq` over a wire type's typed fields, leaving out its `raw`
/// text: that text is a cache of their wire form, so two values are equal
/// whichever text they came from.
macro_rules! eq_but_raw {
    ($type:ty { $($field:ident),+ }) => {
        impl PartialEq for $type {
            fn eq(&self, other: &Self) -> bool {
                let Self { $($field,)+ raw: _ } = self;
                $(*$field == other.$field)&&+
            }
        }
    };
}

eq_but_raw!(ChatResponse {
    id,
    object,
    created,
    model,
    choices,
    usage,
    extra
});

fn object_completion() -> String {
    "chat.completion".to_owned()
}

fn object_chunk() -> String {
    "chat.completion.chunk".to_owned()
}

impl ChatResponse {
    /// A one-choice assistant answer.
    pub fn assistant(
        id: impl Into<String>,
        model: impl Into<String>,
        created: u64,
        text: impl Into<String>,
        usage: Option<Usage>,
    ) -> Self {
        Self {
            id: id.into(),
            object: object_completion(),
            created,
            model: model.into(),
            choices: vec![Choice {
                index: 0,
                message: Message::text(Role::Assistant, text),
                finish_reason: Some("stop".to_owned()),
                extra: Extra::new(),
            }],
            usage,
            extra: Extra::new(),
            raw: None,
        }
    }

    /// The first choice's text.
    pub fn text(&self) -> String {
        self.choices
            .first()
            .map(|c| c.message.text_content())
            .unwrap_or_default()
    }
}

/// The incremental part of a streamed choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Delta {
    /// Set on the first chunk of a choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The next piece of text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `tool_calls`, `refusal`, ...
    #[serde(flatten)]
    pub extra: Extra,
}

impl Delta {
    /// Whether a field other than role and text carries a value (a tool
    /// call, a refusal). OpenAI's opening chunk sends `"refusal": null`,
    /// which carries nothing.
    pub fn carries_extra(&self) -> bool {
        self.extra.values().any(|v| !v.is_null())
    }

    /// The tool-call fragments this delta carries (`tool_calls`), in order.
    /// Entries that are not objects are skipped.
    pub fn tool_calls(&self) -> Vec<ToolCallDelta> {
        let Some(calls) = self.extra.get("tool_calls").and_then(Value::as_array) else {
            return Vec::new();
        };
        calls
            .iter()
            .enumerate()
            .filter(|(_, call)| call.is_object())
            .map(|(position, call)| {
                let function = call.get("function");
                let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
                ToolCallDelta {
                    index: call
                        .get("index")
                        .and_then(Value::as_u64)
                        .and_then(|i| u32::try_from(i).ok())
                        .unwrap_or(u32::try_from(position).unwrap_or(u32::MAX)),
                    id: text(call.get("id")),
                    name: text(function.and_then(|f| f.get("name"))),
                    arguments: text(function.and_then(|f| f.get("arguments"))),
                }
            })
            .collect()
    }

    /// Sets the delta's tool-call fragments (replacing any).
    pub fn set_tool_calls(&mut self, calls: &[ToolCallDelta]) {
        let calls = calls.iter().map(ToolCallDelta::to_value).collect();
        self.extra.insert("tool_calls".into(), Value::Array(calls));
    }
}

/// One fragment of a streamed tool call: the first fragment of a call
/// carries its id and function name, later ones pieces of its JSON
/// arguments. Every provider streams tool calls in this shape (OpenAI's
/// `delta.tool_calls[]`), and every door reads them from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// The call's position among the answer's tool calls.
    pub index: u32,
    /// The call's id (first fragment).
    pub id: Option<String>,
    /// The function's name (first fragment).
    pub name: Option<String>,
    /// The next piece of the JSON arguments.
    pub arguments: Option<String>,
}

impl ToolCallDelta {
    /// The fragment in OpenAI's wire shape.
    pub fn to_value(&self) -> Value {
        let mut function = Map::new();
        if let Some(name) = &self.name {
            function.insert("name".into(), Value::from(name.as_str()));
        }
        if let Some(arguments) = &self.arguments {
            function.insert("arguments".into(), Value::from(arguments.as_str()));
        }
        let mut call = Map::new();
        call.insert("index".into(), Value::from(self.index));
        if let Some(id) = &self.id {
            call.insert("id".into(), Value::from(id.as_str()));
            call.insert("type".into(), Value::from("function"));
        }
        call.insert("function".into(), Value::Object(function));
        Value::Object(call)
    }
}

/// A complete tool call of an assistant message (`tool_calls[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id, which the tool's result names.
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments, a JSON text.
    pub arguments: String,
}

impl ToolCall {
    /// The call in OpenAI's wire shape.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

/// One choice of a stream chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkChoice {
    /// Position among the choices.
    #[serde(default)]
    pub index: u32,
    /// What this chunk adds.
    #[serde(default)]
    pub delta: Delta,
    /// Set on the choice's last chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// `logprobs`, ...
    #[serde(flatten)]
    pub extra: Extra,
}

/// One server-sent event of a streamed chat completion.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    /// The completion's id (the same on every chunk).
    #[serde(default)]
    pub id: String,
    /// Always `chat.completion.chunk`.
    #[serde(default = "object_chunk")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// Usually one; empty on the usage-only chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Set on the final chunk when usage was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// `system_fingerprint`, ...
    #[serde(flatten)]
    pub extra: Extra,
    /// The chunk's JSON text as the upstream sent it, when a provider
    /// parsed the chunk from OpenAI-shaped JSON and nothing but `model`
    /// has changed since: a door writes it through with only `model`
    /// rewritten instead of serialising the typed fields again. Whoever
    /// changes any other field must set it to `None` (the Router does).
    /// Never serialised; equality ignores it.
    #[serde(skip)]
    pub raw: Option<RawJson>,
}

/// A chunk's JSON text as it came, with where its top-level `model` value
/// is, so that it can be written again with only `model` changed.
///
/// Kept only for single-line JSON objects whose top-level `model` is a
/// plain string key (no escapes in the key) with a string value; anything
/// else is rebuilt from the typed fields.
#[derive(Debug, Clone)]
pub struct RawJson {
    text: String,
    /// The `model` value, quotes included.
    model: std::ops::Range<usize>,
}

eq_but_raw!(ChatChunk {
    id,
    object,
    created,
    model,
    choices,
    usage,
    extra
});

impl RawJson {
    /// Keeps `text`, the JSON object a chunk was read from, if its
    /// top-level `model` can be found; `None` otherwise (the chunk is then
    /// rebuilt when written).
    pub fn new(text: String) -> Option<Self> {
        if text.as_bytes().contains(&b'\n') || text.as_bytes().contains(&b'\r') {
            // An SSE `data:` line cannot carry a line break.
            return None;
        }
        Self::of_body(text)
    }

    /// Keeps `text`, a complete answer's JSON body (line breaks allowed),
    /// if its top-level `model` can be found; `None` otherwise.
    pub fn of_body(text: String) -> Option<Self> {
        let model = find_model(text.as_bytes())?;
        Some(Self { text, model })
    }

    /// The JSON text as it came.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Appends the JSON text with its `model` value replaced by `model`.
    pub fn write_with_model(&self, model: &str, out: &mut Vec<u8>) {
        let (head, tail) = (
            self.text.get(..self.model.start),
            self.text.get(self.model.end..),
        );
        let (Some(head), Some(tail)) = (head, tail) else {
            // Unreachable: the range was found in this text.
            out.extend_from_slice(self.text.as_bytes());
            return;
        };
        out.extend_from_slice(head.as_bytes());
        write_json_string(model, out);
        out.extend_from_slice(tail.as_bytes());
    }

    /// Appends the JSON object with its `model` value replaced by `model`
    /// and one more member, `"key": value` (`value` already JSON), last.
    /// `key` must be a plain name (no character JSON escapes). Returns
    /// `false`, with `out` as it was, if the text does not end its object
    /// with `}` (it always does: it was parsed as one).
    pub fn write_with_model_and_member(
        &self,
        model: &str,
        key: &str,
        value: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        let start = out.len();
        self.write_with_model(model, out);
        // The object's closing brace: its last byte but whitespace.
        let close = out[start..]
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map(|at| start + at)
            .filter(|at| out.get(*at) == Some(&b'}'));
        let Some(close) = close else {
            out.truncate(start);
            return false;
        };
        out.truncate(close);
        // The object has members before this one: `model` at least.
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value);
        out.push(b'}');
        true
    }
}

/// Appends `s` as a JSON string (quoted, escaped as `serde_json` does).
fn write_json_string(s: &str, out: &mut Vec<u8>) {
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if let Ok(json) = serde_json::to_string(s) {
        out.extend_from_slice(json.as_bytes());
    }
}

/// The keys a chunk's text must have for it to be written through: the
/// ones the typed chunk would write even when the upstream left them out.
const HEADER: [&[u8]; 3] = [b"id", b"object", b"created"];

/// Where the string value of the top-level `model` of the JSON object
/// `json` is (quotes included). `None` when `json` is not an object,
/// `model` is absent or not a string, one of [`HEADER`] is absent, or one
/// of these keys is written with escapes. The scan only tells strings from
/// structure: `json` is assumed valid (it was parsed before), and stops
/// once it has seen all four (OpenAI writes them first).
fn find_model(json: &[u8]) -> Option<std::ops::Range<usize>> {
    let skip_ws = |mut i: usize| {
        while json.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    // The end of the string whose opening quote is at `i` (past its
    // closing quote).
    let string_end = |mut i: usize| {
        i += 1;
        loop {
            i += memchr::memchr2(b'"', b'\\', json.get(i..)?)?;
            match json.get(i)? {
                b'"' => return Some(i + 1),
                _ => i += 2,
            }
        }
    };
    let mut i = skip_ws(0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut model = None;
    let mut header = [false; HEADER.len()];
    loop {
        if model.is_some() && header.iter().all(|seen| *seen) {
            return model;
        }
        i = skip_ws(i);
        match json.get(i)? {
            b'}' => return None,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(i)?;
        let name = json.get(i + 1..key_end - 1)?;
        let is_key = name == b"model";
        if let Some(at) = HEADER.iter().position(|h| *h == name) {
            header[at] = true;
        }
        i = skip_ws(key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(i + 1);
        // The value: a string, or anything else skipped to the next `,` or
        // `}` at this depth.
        let value_start = i;
        if json.get(i) == Some(&b'"') {
            i = string_end(i)?;
            if is_key {
                // The first is the one: a chunk read with a named field
                // twice is an error (see `read_chunk`), so there is no
                // other.
                model = Some(value_start..i);
            }
            continue;
        }
        if is_key {
            return None;
        }
        let mut depth = 0usize;
        loop {
            match json.get(i)? {
                b'"' => {
                    i = string_end(i)?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => break,
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
    }
}

impl ChatChunk {
    /// A chunk carrying a piece of text for choice 0.
    pub fn text(
        id: impl Into<String>,
        model: impl Into<String>,
        created: u64,
        text: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            object: object_chunk(),
            created,
            model: model.into(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta {
                    role: None,
                    content: Some(text.into()),
                    extra: Extra::new(),
                },
                finish_reason: None,
                extra: Extra::new(),
            }],
            usage: None,
            extra: Extra::new(),
            raw: None,
        }
    }

    /// A chunk that ends choice 0 with a finish reason.
    pub fn finish(
        id: impl Into<String>,
        model: impl Into<String>,
        created: u64,
        finish_reason: impl Into<String>,
    ) -> Self {
        let mut chunk = Self::text(id, model, created, "");
        if let Some(choice) = chunk.choices.first_mut() {
            choice.delta.content = None;
            choice.finish_reason = Some(finish_reason.into());
        }
        chunk
    }

    /// A chunk with no choices that carries usage.
    pub fn usage_only(
        id: impl Into<String>,
        model: impl Into<String>,
        created: u64,
        usage: Usage,
    ) -> Self {
        Self {
            id: id.into(),
            object: object_chunk(),
            created,
            model: model.into(),
            choices: Vec::new(),
            usage: Some(usage),
            extra: Extra::new(),
            raw: None,
        }
    }

    /// The text this chunk adds to choice 0.
    pub fn content(&self) -> Option<&str> {
        self.choices
            .iter()
            .find(|c| c.index == 0)
            .and_then(|c| c.delta.content.as_deref())
    }

    /// The finish reason of any choice, if this chunk ends one.
    pub fn finish_reason(&self) -> Option<&str> {
        self.choices.iter().find_map(|c| c.finish_reason.as_deref())
    }

    /// Whether the chunk carries anything a caller would see: text, a role,
    /// a tool call or a finish reason. Usage-only chunks do not count.
    pub fn carries_output(&self) -> bool {
        self.choices.iter().any(|c| {
            c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
                || c.delta.carries_extra()
                || c.finish_reason.is_some()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_tally_of_pieces_estimates_what_the_whole_text_does() {
        let pieces = ["The quick", " brown ", "fox — über", "", "是的 ok", "!"];
        let mut tally = TokenTally::default();
        assert!(tally.is_empty());
        for piece in pieces {
            tally.add(piece);
        }
        assert!(!tally.is_empty());
        let whole: String = pieces.concat();
        assert_eq!(tally.tokens(), estimate_tokens(&whole));
        // 28 ASCII bytes (7 tokens) and 4 other characters (4 tokens).
        assert_eq!(tally.tokens(), 11);
        let mut empty = TokenTally::default();
        empty.add("");
        assert!(empty.is_empty());
    }

    #[test]
    fn unknown_request_fields_survive_a_round_trip() {
        let body = json!({
            "model": "realtime_chat",
            "messages": [{"role": "user", "content": "hi", "name": "ann"}],
            "temperature": 0.2,
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "max_tokens": 50
        });
        let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        assert!(req.has_tools());
        assert_eq!(req.requested_max_tokens(), Some(50));
        assert_eq!(serde_json::to_value(&req).unwrap(), body);
    }

    #[test]
    fn content_parts_are_read_as_text() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "hello "},
                {"type": "image_url", "image_url": {"url": "data:"}},
                {"type": "text", "text": "world"}
            ]}]
        }))
        .unwrap();
        assert_eq!(req.messages[0].text_content(), "hello world");
    }

    #[test]
    fn prompt_estimate_counts_cjk_characters_as_tokens() {
        let ascii = ChatRequest::user("m", "a".repeat(400));
        let cjk = ChatRequest::user("m", "降".repeat(400));
        assert_eq!(ascii.estimated_prompt_tokens(), 100 + 7);
        assert_eq!(cjk.estimated_prompt_tokens(), 400 + 7);
    }

    #[test]
    fn upstream_response_with_extras_parses() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                      "prompt_tokens_details": {"cached_tokens": 0}}
        });
        let resp: ChatResponse = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(resp.text(), "Hi");
        assert_eq!(resp.usage.as_ref().unwrap().total_tokens, 4);
        assert_eq!(serde_json::to_value(&resp).unwrap(), body);
    }

    #[test]
    fn tool_call_fragments_read_back_as_written() {
        let first = ToolCallDelta {
            index: 1,
            id: Some("call_1".into()),
            name: Some("get_weather".into()),
            arguments: Some(String::new()),
        };
        let next = ToolCallDelta {
            index: 1,
            arguments: Some("{\"city\":".into()),
            ..ToolCallDelta::default()
        };
        let mut delta = Delta::default();
        delta.set_tool_calls(&[first.clone(), next.clone()]);
        assert!(delta.carries_extra());
        assert_eq!(delta.tool_calls(), vec![first, next]);
        assert_eq!(delta.extra["tool_calls"][0]["type"], "function");
        assert!(delta.extra["tool_calls"][1].get("id").is_none());
    }

    #[test]
    fn a_messages_tool_calls_read_back_as_written() {
        let mut message = Message::text(Role::Assistant, "");
        let call = ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: "{}".into(),
        };
        message.set_tool_calls(std::slice::from_ref(&call));
        assert_eq!(message.tool_calls(), vec![call]);
        message.set_tool_calls(&[]);
        assert!(message.tool_calls().is_empty());
        assert!(!message.extra.contains_key("tool_calls"));
    }

    /// The raw text of `json` written with `model`.
    fn rewritten(json: &str, model: &str) -> Option<String> {
        serde_json::from_str::<Value>(json).expect("the test's JSON is valid");
        let raw = RawJson::new(json.to_owned())?;
        let mut out = Vec::new();
        raw.write_with_model(model, &mut out);
        Some(String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_raw_chunk_is_written_with_only_its_model_changed() {
        let json = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"x1"}"#;
        assert_eq!(
            rewritten(json, "fast").unwrap(),
            json.replace(r#""model":"gpt-4o""#, r#""model":"fast""#)
        );
        // The same model: the text as it came, byte for byte.
        assert_eq!(rewritten(json, "gpt-4o").unwrap(), json);
    }

    #[test]
    fn a_raw_body_gets_its_model_changed_and_one_member_added_last() {
        // Pretty-printed, as some servers answer: line breaks are kept.
        let json = "{\n  \"id\": \"chatcmpl-1\",\n  \"object\": \"chat.completion\",\n  \"created\": 1,\n  \"model\": \"gpt-4o\",\n  \"choices\": [],\n  \"usage\": null\n}\n";
        assert!(RawJson::new(json.to_owned()).is_none(), "not an SSE line");
        let raw = RawJson::of_body(json.to_owned()).expect("kept");
        let mut out = b"prefix".to_vec();
        assert!(raw.write_with_model_and_member("fast", "backstop", br#"{"level":1}"#, &mut out));
        let text = String::from_utf8(out).unwrap();
        let body = text.strip_prefix("prefix").unwrap();
        let value: Value = serde_json::from_str(body).unwrap();
        assert_eq!(value["model"], "fast");
        assert_eq!(value["backstop"]["level"], 1);
        assert!(value["usage"].is_null());
        assert!(
            body.ends_with(
                r#""usage": null
,"backstop":{"level":1}}"#
            ),
            "{body}"
        );
        // A body without the header keys is not kept.
        assert!(RawJson::of_body(r#"{"model":"m","choices":[]}"#.to_owned()).is_none());
    }

    #[test]
    fn the_new_model_is_escaped_and_the_old_one_may_hold_escapes() {
        let json = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"a\"b\\c\u00e9","choices":[]}"#;
        let out = rewritten(json, "say \"hi\"\\\n").unwrap();
        assert_eq!(
            out,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"say \"hi\"\\\n","choices":[]}"#
        );
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["model"], "say \"hi\"\\\n");
    }

    #[test]
    fn unicode_around_the_model_survives() {
        let json = "{ \"id\" : \"é\", \"object\":\"o\",\"created\":1, \"choices\":[{\"delta\":{\"content\":\"降水 \\\"model\\\": \\\"x\\\"\"}}], \"model\" :\t\"모델\" }";
        let out = rewritten(json, "快").unwrap();
        assert_eq!(out, json.replace("\"모델\"", "\"快\""));
    }

    #[test]
    fn only_the_top_level_model_is_found() {
        // `model` keys inside nested objects and strings are not the chunk's.
        let json = r#"{"meta":{"model":"inner","list":[{"model":"x"},"}"]},"choices":[{"delta":{"content":"\"model\":\"y\""}}],"model":"outer","id":"c","object":"o","created":1}"#;
        let out = rewritten(json, "m").unwrap();
        assert_eq!(out, json.replace(r#""model":"outer""#, r#""model":"m""#));
    }

    #[test]
    fn a_chunk_without_a_plain_model_string_is_not_kept() {
        // Absent (model, or id, object or created), not a string, written
        // with escapes in the key, spread over lines, not an object: the
        // chunk is rebuilt instead.
        for json in [
            r#"{"id":"c","object":"o","created":1,"choices":[]}"#,
            r#"{"object":"o","created":1,"model":"m"}"#,
            r#"{"id":"c","created":1,"model":"m"}"#,
            r#"{"id":"c","object":"o","model":"m"}"#,
            r#"{"id":"c","object":"o","cre\u0061ted":1,"model":"m"}"#,
            r#"{"id":"c","object":"o","created":1,"model":null,"choices":[]}"#,
            r#"{"id":"c","object":"o","created":1,"model":{"name":"m"},"choices":[]}"#,
            r#"{"id":"c","object":"o","created":1,"mod\u0065l":"m","choices":[]}"#,
            "{\"id\":\"c\",\"object\":\"o\",\"created\":1,\"model\":\"a\",\n\"choices\":[]}",
            "{\"id\":\"c\",\"object\":\"o\",\"created\":1,\"model\":\"a\",\r\"choices\":[]}",
            r#"["model","a"]"#,
        ] {
            assert!(RawJson::new(json.to_owned()).is_none(), "{json}");
        }
        let kept = r#"{"id":"c","object":"o","created":1,"model":"m","choices":[]}"#;
        assert!(RawJson::new(kept.to_owned()).is_some());
        // The header may come after `model` too.
        let kept = r#"{"model":"m","choices":[],"created":1,"object":"o","id":"c"}"#;
        assert_eq!(
            rewritten(kept, "n").unwrap(),
            kept.replace(r#""m""#, r#""n""#)
        );
    }

    #[test]
    fn extra_fields_are_kept_byte_for_byte() {
        // Number spellings, key order, nulls and whitespace that a parse
        // and re-serialisation would change.
        let json = r#"{"id":"c","object":"o","created":0,"z":1.50,"choices":[{"index":0,"delta":{"content":"a","refusal":null},"logprobs":{"content":[{"token":"a","logprob":-1e-5}]}}],  "model":"up","a":[ ],"n":1e0}"#;
        let out = rewritten(json, "down").unwrap();
        assert_eq!(out, json.replace(r#""model":"up""#, r#""model":"down""#));
    }

    #[test]
    fn equality_ignores_the_raw_text() {
        let mut chunk = ChatChunk::text("c", "m", 0, "x");
        let json = serde_json::to_string(&chunk).unwrap();
        let parsed: ChatChunk = serde_json::from_str(&json).unwrap();
        assert!(parsed.raw.is_none(), "serde never fills the raw text");
        chunk.raw = RawJson::new(json);
        assert!(chunk.raw.is_some());
        assert_eq!(chunk, parsed);
    }

    #[test]
    fn usage_only_chunk_carries_no_output() {
        let chunk = ChatChunk::usage_only("c", "m", 0, Usage::new(1, 2));
        assert!(!chunk.carries_output());
        assert!(ChatChunk::text("c", "m", 0, "x").carries_output());
        assert!(ChatChunk::finish("c", "m", 0, "stop").carries_output());
    }
}
