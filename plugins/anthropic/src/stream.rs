//! Messages API event streams translated to OpenAI-shaped chunks.
//!
//! | Anthropic event | chunk |
//! |---|---|
//! | `message_start` | role `assistant`, empty content (id and model kept) |
//! | `content_block_start` text / tool_use | its text / a tool call with id and name |
//! | `content_block_delta` `text_delta` / `input_json_delta` | text / tool call arguments |
//! | `message_delta` | the finish reason, then a usage-only chunk |
//! | `message_stop` | the end of the stream |
//! | `ping`, `content_block_stop`, thinking deltas, unknown events | nothing |
//! | `error` | the stream fails with the error's kind |
//!
//! An unparseable event is skipped, counted, and logged at `warn` (provider,
//! model, counts, and at most 100 characters of the data with secrets
//! removed). A stream that ends
//! without `message_stop` is complete if `message_delta` brought a stop
//! reason; otherwise, or if the transport cut it, it fails with
//! `StreamInterrupted`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use backstop_core::{
    ChatChunk, ChunkChoice, ChunkStream, Delta, Extra, ModelSpec, ProviderError, Role,
};
use backstop_http::sse::SseEvent;
use serde_json::{Value, json};

use crate::classify::DIALECT;
use crate::prefill::Join;
use crate::response::{AnthropicUsage, finish_reason, now_unix};
use backstop_http::ApiKey;
use backstop_http::body::{ChunkReader, SkipLog, SseBody, stream_chunks};

/// Turns a streaming response into chunks.
pub(crate) fn chunk_stream(
    response: backstop_http::Response,
    model: &ModelSpec,
    join: Join,
    key: Option<ApiKey>,
    malformed: Arc<AtomicU64>,
) -> ChunkStream {
    let reader = Reader {
        body: SseBody::new(response),
        out: VecDeque::new(),
        translator: Translator::new(join),
        log: SkipLog::new(model.id.clone(), model.provider.clone(), key, malformed),
        done: false,
    };
    stream_chunks(reader)
}

struct Reader {
    body: SseBody,
    out: VecDeque<ChatChunk>,
    translator: Translator,
    log: SkipLog,
    /// No more events are read.
    done: bool,
}

impl ChunkReader for Reader {
    async fn next_chunk(&mut self) -> Option<Result<ChatChunk, ProviderError>> {
        loop {
            if let Some(chunk) = self.out.pop_front() {
                return Some(Ok(chunk));
            }
            if self.done {
                return None;
            }
            match self.body.next_event().await {
                Ok(event) => {
                    if let Err(error) = self.on_event(&event) {
                        self.done = true;
                        self.out.clear();
                        return Some(Err(error));
                    }
                }
                Err(cut) => {
                    self.done = true;
                    let ending = self.log.end(
                        self.translator.finished,
                        cut.as_ref(),
                        "stop reason",
                        "the stream ended without message_stop and without a stop reason",
                    );
                    return ending.map(Err);
                }
            }
        }
    }
}

impl Reader {
    fn on_event(&mut self, event: &SseEvent) -> Result<(), ProviderError> {
        if event.data.trim().is_empty() {
            return Ok(());
        }
        let data: Value = match serde_json::from_str(&event.data) {
            Ok(data) => data,
            Err(error) => {
                self.log.skip(&event.data, &error, "event");
                return Ok(());
            }
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();
        match kind {
            "error" => {
                let error = DIALECT.in_band_error(&data, self.log.key());
                tracing::debug!(model = %self.log.model(), %error, "error event inside the stream");
                Err(error)
            }
            "message_stop" => {
                self.done = true;
                Ok(())
            }
            _ => {
                self.translator.on_event(kind, &data, &mut self.out);
                Ok(())
            }
        }
    }
}

/// What a content block of the answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    /// A tool call; its position among the answer's tool calls.
    Tool(u32),
    /// Thinking and server-tool blocks, which OpenAI's shape does not carry.
    Other,
}

/// The state of one answer's translation.
struct Translator {
    id: String,
    model: String,
    created: u64,
    blocks: Vec<Block>,
    tools: u32,
    join: Join,
    usage: AnthropicUsage,
    /// `message_delta` brought a stop reason.
    finished: bool,
}

impl Translator {
    fn new(join: Join) -> Self {
        Self {
            id: String::new(),
            model: String::new(),
            created: now_unix(),
            blocks: Vec::new(),
            tools: 0,
            join,
            usage: AnthropicUsage::default(),
            finished: false,
        }
    }

    fn on_event(&mut self, kind: &str, data: &Value, out: &mut VecDeque<ChatChunk>) {
        match kind {
            "message_start" => {
                let message = &data["message"];
                self.id = message["id"].as_str().unwrap_or_default().to_owned();
                self.model = message["model"].as_str().unwrap_or_default().to_owned();
                self.take_usage(&message["usage"]);
                let delta = Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    ..Delta::default()
                };
                out.push_back(self.chunk(delta, None));
            }
            "content_block_start" => {
                let index = data["index"].as_u64().unwrap_or(self.blocks.len() as u64);
                let block = &data["content_block"];
                let kind = match block["type"].as_str() {
                    Some("text") => {
                        self.text(block["text"].as_str().unwrap_or_default(), out);
                        Block::Text
                    }
                    Some("tool_use") => {
                        let position = self.tools;
                        self.tools += 1;
                        out.push_back(self.tool_delta(json!({
                            "index": position,
                            "id": block["id"],
                            "type": "function",
                            "function": {"name": block["name"], "arguments": ""}
                        })));
                        Block::Tool(position)
                    }
                    _ => Block::Other,
                };
                let index = usize::try_from(index).unwrap_or(usize::MAX);
                if index >= self.blocks.len() && index < self.blocks.len() + 64 {
                    self.blocks.resize(index + 1, Block::Other);
                }
                if let Some(slot) = self.blocks.get_mut(index) {
                    *slot = kind;
                }
            }
            "content_block_delta" => {
                let block = data["index"]
                    .as_u64()
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| self.blocks.get(i).copied());
                let delta = &data["delta"];
                match (delta["type"].as_str(), block) {
                    (Some("text_delta"), Some(Block::Text) | None) => {
                        self.text(delta["text"].as_str().unwrap_or_default(), out);
                    }
                    (Some("input_json_delta"), Some(Block::Tool(position))) => {
                        let partial = delta["partial_json"].as_str().unwrap_or_default();
                        if !partial.is_empty() {
                            out.push_back(self.tool_delta(json!({
                                "index": position,
                                "function": {"arguments": partial}
                            })));
                        }
                    }
                    // thinking_delta, signature_delta, citations_delta, ...
                    _ => {}
                }
            }
            "message_delta" => {
                self.take_usage(&data["usage"]);
                if let Some(stop) = data["delta"]["stop_reason"].as_str() {
                    self.finished = true;
                    out.push_back(self.chunk(Delta::default(), Some(finish_reason(stop))));
                    out.push_back(ChatChunk::usage_only(
                        self.id.clone(),
                        self.model.clone(),
                        self.created,
                        self.usage.to_usage(),
                    ));
                }
            }
            // ping, content_block_stop, and event types added later
            _ => {}
        }
    }

    fn take_usage(&mut self, usage: &Value) {
        if let Ok(usage) = serde_json::from_value::<AnthropicUsage>(usage.clone()) {
            self.usage.update(&usage);
        }
    }

    fn text(&mut self, text: &str, out: &mut VecDeque<ChatChunk>) {
        let text = self.join.apply(text);
        if !text.is_empty() {
            out.push_back(ChatChunk::text(
                self.id.clone(),
                self.model.clone(),
                self.created,
                text,
            ));
        }
    }

    fn tool_delta(&self, call: Value) -> ChatChunk {
        let mut delta = Delta::default();
        delta.extra.insert("tool_calls".into(), json!([call]));
        self.chunk(delta, None)
    }

    /// A chunk of choice 0.
    fn chunk(&self, delta: Delta, finish_reason: Option<&str>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
                extra: Extra::new(),
            }],
            usage: None,
            extra: Extra::new(),
            raw: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(events: &[Value], join: Join) -> Vec<ChatChunk> {
        let mut t = Translator::new(join);
        let mut out = VecDeque::new();
        for e in events {
            t.on_event(e["type"].as_str().unwrap(), e, &mut out);
        }
        out.into_iter().collect()
    }

    fn message_start() -> Value {
        json!({"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
            "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929",
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}})
    }

    #[test]
    fn tool_use_streams_as_tool_call_deltas() {
        let chunks = translate(
            &[
                message_start(),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"location\": \"San Fra"}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ncisco, CA\"}"}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 89}}),
            ],
            Join::default(),
        );
        assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
        assert_eq!(chunks[1].content(), Some("Let me check."));
        assert_eq!(
            chunks[2].choices[0].delta.extra["tool_calls"],
            json!([{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}])
        );
        let args: String = chunks[3..5]
            .iter()
            .map(|c| {
                c.choices[0].delta.extra["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(args, "{\"location\": \"San Francisco, CA\"}");
        assert_eq!(chunks[5].finish_reason(), Some("tool_calls"));
        let usage = chunks[6].usage.as_ref().unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (25, 89));
        assert!(
            chunks
                .iter()
                .all(|c| c.id == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY")
        );
    }

    #[test]
    fn thinking_is_not_streamed_and_prefill_continuations_join() {
        let chunks = translate(
            &[
                message_start(),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Counting."}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}}),
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " "}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "three"}}),
            ],
            Join::new(" ".into()),
        );
        let text: String = chunks.iter().filter_map(ChatChunk::content).collect();
        assert_eq!(text, "three");
        assert_eq!(chunks.len(), 2, "role chunk and one text chunk");
    }
}
