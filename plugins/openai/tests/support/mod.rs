//! Shared pieces of this crate's tests: a provider pointed at a test
//! server, calls, and the real response shapes of OpenAI's API.

#![allow(dead_code)]

pub mod chunks;
pub mod logs;
pub mod raw_http;

use std::time::Duration;

use backstop_core::{Call, ChatRequest, ModelSpec};
use backstop_provider_openai::{OpenAiConfig, OpenAiProvider};
use serde_json::{Value, json};

/// The key the test provider sends.
pub const KEY: &str = "sk-proj-TESTKEY0123456789abcdef";

/// A provider for `{url}/v1` with [`KEY`] in `TEST_OPENAI_KEY`.
pub fn provider(url: &str) -> OpenAiProvider {
    let config = OpenAiConfig {
        api_key_env: Some("TEST_OPENAI_KEY".into()),
        ..OpenAiConfig::with_base_url(format!("{url}/v1"))
    };
    OpenAiProvider::new_with_env(config, |name| {
        (name == "TEST_OPENAI_KEY").then(|| KEY.to_owned())
    })
    .expect("provider builds")
}

/// The model `fast`, upstream `gpt-4o-mini-2024-07-18`.
pub fn model() -> ModelSpec {
    let mut m = ModelSpec::new("fast", "openai");
    m.upstream = "gpt-4o-mini-2024-07-18".into();
    m
}

/// A call of `request` with a 64-token bound.
pub fn call<'a>(model: &'a ModelSpec, request: &'a ChatRequest) -> Call<'a> {
    Call {
        scenario: "chat",
        model,
        request,
        max_tokens: 64,
        connect_timeout: Duration::from_secs(2),
        request_id: Some("req-42"),
        headers: &[],
    }
}

/// A complete answer as OpenAI sends it.
pub fn completion(text: &str) -> Value {
    json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb"
    })
}

/// A stream chunk with a delta and a finish reason.
pub fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        "usage": null
    })
}

/// The usage-only chunk `stream_options.include_usage` asks for.
pub fn usage_chunk() -> Value {
    json!({
        "id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
        "model": "gpt-4o-mini-2024-07-18", "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    })
}

/// The events of a streamed "Hello world": role, two pieces, finish, usage.
pub fn hello_events() -> Vec<Value> {
    vec![
        chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ),
        chunk(json!({"content": "Hello"}), None),
        chunk(json!({"content": " world"}), None),
        chunk(json!({}), Some("stop")),
        usage_chunk(),
    ]
}

/// One `data:` event per value.
pub fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

/// One `data:` event per value, then `[DONE]`.
pub fn sse_done(events: &[Value]) -> String {
    format!("{}data: [DONE]\n\n", sse(events))
}
