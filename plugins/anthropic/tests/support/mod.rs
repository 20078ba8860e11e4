//! Shared pieces of this crate's tests: a provider pointed at a test
//! server, calls, and the real response shapes of the Messages API. The
//! loopback server, the stream readers and the log capture are the OpenAI
//! crate's.

#![allow(dead_code)]

#[path = "../../../openai/tests/support/chunks.rs"]
pub mod chunks;
#[path = "../../../openai/tests/support/logs.rs"]
pub mod logs;
#[path = "../../../openai/tests/support/raw_http.rs"]
pub mod raw_http;

use std::time::Duration;

use backstop_core::{Call, ChatRequest, ModelSpec};
use backstop_provider_anthropic::{AnthropicConfig, AnthropicProvider};
use serde_json::{Value, json};

/// The key the test provider sends.
pub const KEY: &str = "sk-ant-api03-TESTKEY0123456789-abcdefAA";

/// A provider for `url` with [`KEY`] in `TEST_ANTHROPIC_KEY`.
pub fn provider(url: &str) -> AnthropicProvider {
    let config = AnthropicConfig {
        api_key_env: "TEST_ANTHROPIC_KEY".into(),
        ..AnthropicConfig::with_base_url(url)
    };
    AnthropicProvider::new_with_env(config, |name| {
        (name == "TEST_ANTHROPIC_KEY").then(|| KEY.to_owned())
    })
    .expect("provider builds")
}

/// The model `claude`, upstream `claude-sonnet-4-5-20250929`, prefill-capable.
pub fn model() -> ModelSpec {
    let mut m = ModelSpec::new("claude", "anthropic");
    m.upstream = "claude-sonnet-4-5-20250929".into();
    m.capabilities.assistant_prefill = true;
    m
}

/// A call of `request` with a 300-token bound.
pub fn call<'a>(model: &'a ModelSpec, request: &'a ChatRequest) -> Call<'a> {
    Call {
        scenario: "chat",
        model,
        request,
        max_tokens: 300,
        connect_timeout: Duration::from_secs(2),
        request_id: None,
        headers: &[],
    }
}

/// A complete answer as the Messages API sends it.
pub fn message(text: &str) -> Value {
    json!({
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 6,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    })
}

/// An error body as the Messages API sends it.
pub fn error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message},
           "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"})
}

/// One named event.
pub fn event(data: &Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap_or("message")
    )
}

/// Named events, concatenated.
pub fn events(data: &[Value]) -> String {
    data.iter().map(event).collect()
}

pub fn message_start() -> Value {
    json!({"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
        "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929",
        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}})
}

pub fn block_start() -> Value {
    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
}

pub fn text_delta(text: &str) -> Value {
    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
}

pub fn block_stop() -> Value {
    json!({"type": "content_block_stop", "index": 0})
}

pub fn message_delta(stop_reason: &str, output_tokens: u32) -> Value {
    json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
           "usage": {"output_tokens": output_tokens}})
}

pub fn message_stop() -> Value {
    json!({"type": "message_stop"})
}

pub fn ping() -> Value {
    json!({"type": "ping"})
}

/// The events of a streamed answer made of `pieces`, up to and including
/// `message_delta` (no `message_stop`).
pub fn answer_events(pieces: &[&str]) -> Vec<Value> {
    let mut all = vec![message_start(), block_start(), ping()];
    all.extend(pieces.iter().map(|p| text_delta(p)));
    all.push(block_stop());
    all.push(message_delta("end_turn", 15));
    all
}
