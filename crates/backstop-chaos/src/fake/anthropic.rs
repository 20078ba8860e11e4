//! Anthropic Messages on the wire: message bodies, the stream's event
//! sequence (`message_start`, `content_block_start`, `ping`,
//! `content_block_delta`..., `content_block_stop`, `message_delta`,
//! `message_stop`) and error bodies as api.anthropic.com sends them.

use backstop_http::sse;
use serde_json::json;

use super::reply::{AnswerParts, ErrorBody, StreamParts};
use crate::behaviour::ErrorKind;

/// The status and body of an error.
pub(crate) fn error(kind: ErrorKind, prompt_tokens: u32, window: u32) -> ErrorBody {
    let (status, error_type, message): (u16, &str, String) = match kind {
        ErrorKind::Server => (500, "api_error", "Internal server error".into()),
        ErrorKind::BadGateway => (502, "api_error", "Bad gateway".into()),
        ErrorKind::Unavailable => (503, "api_error", "Service unavailable".into()),
        ErrorKind::Overloaded => (529, "overloaded_error", "Overloaded".into()),
        ErrorKind::RateLimited { .. } => (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit".into(),
        ),
        ErrorKind::QuotaExhausted => (
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & \
             Billing to upgrade or purchase credits."
                .into(),
        ),
        ErrorKind::Unauthorized => (401, "authentication_error", "invalid x-api-key".into()),
        ErrorKind::ContextLength => (
            400,
            "invalid_request_error",
            format!("prompt is too long: {prompt_tokens} tokens > {window} maximum"),
        ),
        ErrorKind::ContentPolicy => (
            400,
            "invalid_request_error",
            "Output blocked by content filtering policy".into(),
        ),
        ErrorKind::BadRequest => (
            400,
            "invalid_request_error",
            "messages: field required".into(),
        ),
    };
    ErrorBody {
        status,
        body: json!({"type": "error", "error": {"type": error_type, "message": message}}),
    }
}

fn stop_reason(parts: &AnswerParts) -> &'static str {
    if parts.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

/// A complete `message` body.
pub(crate) fn message(parts: &AnswerParts) -> Vec<u8> {
    let body = json!({
        "id": parts.id,
        "type": "message",
        "role": "assistant",
        "model": parts.model,
        "content": [{"type": "text", "text": parts.text()}],
        "stop_reason": stop_reason(parts),
        "stop_sequence": null,
        "usage": {"input_tokens": parts.prompt_tokens, "output_tokens": parts.completion_tokens()}
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn event(out: &mut Vec<u8>, name: &str, data: &serde_json::Value) {
    sse::write_event(out, name, &data.to_string());
}

/// The stream's events.
pub(crate) fn stream(parts: &AnswerParts) -> StreamParts {
    let mut head = Vec::new();
    event(
        &mut head,
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": parts.id, "type": "message", "role": "assistant", "model": parts.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": parts.prompt_tokens, "output_tokens": 1}
        }}),
    );
    event(
        &mut head,
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    event(&mut head, "ping", &json!({"type": "ping"}));

    let tokens = parts
        .tokens
        .iter()
        .map(|t| {
            let mut out = Vec::new();
            event(
                &mut out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": t}}),
            );
            out
        })
        .collect();

    let mut tail = Vec::new();
    event(
        &mut tail,
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    );
    event(
        &mut tail,
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(parts), "stop_sequence": null},
                "usage": {"output_tokens": parts.completion_tokens()}}),
    );

    let mut terminator = Vec::new();
    event(
        &mut terminator,
        "message_stop",
        &json!({"type": "message_stop"}),
    );

    let mut garbage = Vec::new();
    sse::write_event(
        &mut garbage,
        "content_block_delta",
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"",
    );

    StreamParts {
        head,
        tokens,
        tail,
        terminator,
        garbage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_http::sse::SseDecoder;
    use serde_json::Value;

    #[test]
    fn stream_has_the_messages_event_sequence() {
        let parts = AnswerParts {
            id: "msg_1".into(),
            model: "claude".into(),
            created: 1,
            tokens: vec!["Hi".into(), " there".into()],
            truncated: false,
            prompt_tokens: 5,
            include_usage: false,
        };
        let s = stream(&parts);
        let mut bytes = s.head.clone();
        for t in &s.tokens {
            bytes.extend_from_slice(t);
        }
        bytes.extend_from_slice(&s.tail);
        bytes.extend_from_slice(&s.terminator);
        let mut events = Vec::new();
        SseDecoder::new().feed(&bytes, &mut events);
        let names: Vec<&str> = events.iter().filter_map(|e| e.event.as_deref()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let text: String = events
            .iter()
            .filter(|e| e.event.as_deref() == Some("content_block_delta"))
            .map(|e| {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                v["delta"]["text"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(text, "Hi there");
        let delta: Value = serde_json::from_str(&events[6].data).unwrap();
        assert_eq!(delta["usage"]["output_tokens"], 2);
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn overloaded_is_529_with_the_anthropic_shape() {
        let e = error(ErrorKind::Overloaded, 0, 0);
        assert_eq!(e.status, 529);
        assert_eq!(e.body["type"], "error");
        assert_eq!(e.body["error"]["type"], "overloaded_error");
    }
}
