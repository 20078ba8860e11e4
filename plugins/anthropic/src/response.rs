//! Messages API answers translated to OpenAI-shaped completions.

use std::time::{SystemTime, UNIX_EPOCH};

use backstop_core::{
    ChatResponse, Choice, Content, Extra, FailureKind, Message, ProviderError, Role, Usage,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::classify::DIALECT;
use crate::prefill::Join;
use backstop_http::ApiKey;

/// Anthropic's token counts.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct AnthropicUsage {
    #[serde(default)]
    pub(crate) input_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) output_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) cache_read_input_tokens: Option<u32>,
}

impl AnthropicUsage {
    /// Takes the counts `later` reports (stream deltas are cumulative).
    pub(crate) fn update(&mut self, later: &AnthropicUsage) {
        let fields = [
            (&mut self.input_tokens, later.input_tokens),
            (&mut self.output_tokens, later.output_tokens),
            (
                &mut self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            ),
            (
                &mut self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            ),
        ];
        for (field, value) in fields {
            if value.is_some() {
                *field = value;
            }
        }
    }

    /// OpenAI's usage: every prompt token (cache writes and reads
    /// included, as OpenAI counts them) and the output tokens; cache reads
    /// are also reported as `prompt_tokens_details.cached_tokens`.
    pub(crate) fn to_usage(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(cached);
        let mut usage = Usage::new(prompt, self.output_tokens.unwrap_or(0));
        if cached > 0 {
            usage.extra.insert(
                "prompt_tokens_details".into(),
                json!({ "cached_tokens": cached }),
            );
        }
        usage
    }
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
pub(crate) fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn, and any newer reason
        _ => "stop",
    }
}

/// Unix seconds now (0 if the clock is before 1970).
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Deserialize)]
struct MessageBody {
    #[serde(default)]
    id: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    model: String,
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

/// Parses a 200 body into a completion, joining a prefill continuation.
pub(crate) fn completion(
    body: &[u8],
    join: &mut Join,
    key: Option<&ApiKey>,
) -> Result<ChatResponse, ProviderError> {
    let message: MessageBody = match serde_json::from_slice(body) {
        Ok(message) => message,
        Err(parse) => {
            return Err(match serde_json::from_slice::<Value>(body) {
                Ok(value) if value.get("type").and_then(Value::as_str) == Some("error") => {
                    DIALECT.in_band_error(&value, key)
                }
                _ => ProviderError::new(
                    FailureKind::InvalidResponse,
                    format!("unparseable response body: {parse}"),
                ),
            });
        }
    };
    if message.kind != "message" {
        return Err(ProviderError::new(
            FailureKind::InvalidResponse,
            format!("expected a message, got type `{}`", message.kind),
        ));
    }
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in &message.content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let piece = block.get("text").and_then(Value::as_str).unwrap_or_default();
                text.push_str(join.apply(piece));
            }
            Some("tool_use") => tool_calls.push(json!({
                "id": block.get("id").cloned().unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or_default(),
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                }
            })),
            // thinking, redacted_thinking, server tool blocks: not part of
            // an OpenAI-shaped answer.
            _ => {}
        }
    }
    let mut extra = Extra::new();
    let content = if text.is_empty() && !tool_calls.is_empty() {
        None
    } else {
        Some(Content::Text(text))
    };
    if !tool_calls.is_empty() {
        extra.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let mut choice_extra = Extra::new();
    if let Some(sequence) = message.stop_sequence {
        // Kept for callers that want to know which stop sequence matched.
        choice_extra.insert("stop_sequence".into(), sequence.into());
    }
    Ok(ChatResponse {
        id: message.id,
        object: "chat.completion".to_owned(),
        created: now_unix(),
        model: message.model,
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: Role::Assistant,
                content,
                extra,
            },
            finish_reason: Some(
                finish_reason(message.stop_reason.as_deref().unwrap_or("end_turn")).to_owned(),
            ),
            extra: choice_extra,
        }],
        usage: Some(message.usage.to_usage()),
        extra: Extra::new(),
        raw: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ChatResponse, ProviderError> {
        completion(
            &serde_json::to_vec(&body).unwrap(),
            &mut Join::default(),
            None,
        )
    }

    #[test]
    fn text_answers_translate() {
        let r = parse(json!({
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Hi! My name is Claude."}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 2095, "output_tokens": 503,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100}
        }))
        .unwrap();
        assert_eq!(r.id, "msg_013Zva2CMHLNnXjNJJKqJ2EF");
        assert_eq!(r.model, "claude-sonnet-4-5-20250929");
        assert_eq!(r.text(), "Hi! My name is Claude.");
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("stop"));
        let usage = r.usage.unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (2195, 503, 2698)
        );
        assert_eq!(usage.extra["prompt_tokens_details"]["cached_tokens"], 100);
    }

    #[test]
    fn tool_use_becomes_tool_calls() {
        let r = parse(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                 "input": {"location": "San Francisco, CA"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 20}
        }))
        .unwrap();
        let message = &r.choices[0].message;
        assert_eq!(message.content, None);
        assert_eq!(
            message.extra["tool_calls"],
            json!([{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\"}"}}])
        );
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
        ] {
            assert_eq!(finish_reason(stop), finish);
        }
    }

    #[test]
    fn a_prefill_continuation_is_joined() {
        let body = json!({"id": "m", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "text", "text": " three, four."}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 4}});
        let mut join = Join::new(" ".into());
        let r = completion(&serde_json::to_vec(&body).unwrap(), &mut join, None).unwrap();
        assert_eq!(r.text(), "three, four.");
    }

    #[test]
    fn unparseable_bodies_are_invalid_and_error_bodies_are_classified() {
        let e = completion(b"{\"id\": \"msg", &mut Join::default(), None).unwrap_err();
        assert_eq!(e.kind, FailureKind::InvalidResponse);
        let e = parse(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})).unwrap_err();
        assert_eq!(e.kind, FailureKind::Overloaded);
    }
}
