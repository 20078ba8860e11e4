//! OpenAI chat completions on the wire: response bodies, stream chunks and
//! error bodies as api.openai.com sends them.

use backstop_core::{ChatChunk, ChatResponse, Role, Usage};
use backstop_http::sse;
use serde_json::{Value, json};

use super::reply::{AnswerParts, ErrorBody, StreamParts};
use crate::behaviour::ErrorKind;

/// The status and body of an error.
pub(crate) fn error(kind: ErrorKind, prompt_tokens: u32, window: u32) -> ErrorBody {
    let (status, message, kind_name, code): (u16, String, &str, Value) = match kind {
        ErrorKind::Server => (
            500,
            "The server had an error while processing your request. Sorry about that!".into(),
            "server_error",
            Value::Null,
        ),
        ErrorKind::BadGateway => (
            502,
            "Bad gateway.".into(),
            "server_error",
            json!("bad_gateway"),
        ),
        ErrorKind::Unavailable | ErrorKind::Overloaded => (
            503,
            "The engine is currently overloaded, please try again later.".into(),
            "server_error",
            Value::Null,
        ),
        ErrorKind::RateLimited { .. } => (
            429,
            "Rate limit reached for requests. Please try again later.".into(),
            "requests",
            json!("rate_limit_exceeded"),
        ),
        ErrorKind::QuotaExhausted => (
            429,
            "You exceeded your current quota, please check your plan and billing details.".into(),
            "insufficient_quota",
            json!("insufficient_quota"),
        ),
        ErrorKind::Unauthorized => (
            401,
            "Incorrect API key provided.".into(),
            "invalid_request_error",
            json!("invalid_api_key"),
        ),
        ErrorKind::ContextLength => (
            400,
            format!(
                "This model's maximum context length is {window} tokens. However, your messages \
                 resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
            ),
            "invalid_request_error",
            json!("context_length_exceeded"),
        ),
        ErrorKind::ContentPolicy => (
            400,
            "Your request was rejected as a result of our safety system. Your prompt may contain \
             text that is not allowed by our safety system."
                .into(),
            "invalid_request_error",
            json!("content_policy_violation"),
        ),
        ErrorKind::BadRequest => (
            400,
            "Invalid request body.".into(),
            "invalid_request_error",
            Value::Null,
        ),
    };
    let param = if matches!(kind, ErrorKind::ContextLength) {
        json!("messages")
    } else {
        Value::Null
    };
    ErrorBody {
        status,
        body: json!({"error": {"message": message, "type": kind_name, "param": param, "code": code}}),
    }
}

fn finish_reason(parts: &AnswerParts) -> &'static str {
    if parts.truncated { "length" } else { "stop" }
}

fn usage(parts: &AnswerParts) -> Usage {
    Usage::new(parts.prompt_tokens, parts.completion_tokens())
}

/// A complete `chat.completion` body.
pub(crate) fn completion(parts: &AnswerParts) -> Vec<u8> {
    let mut response = ChatResponse::assistant(
        parts.id.clone(),
        parts.model.clone(),
        parts.created,
        parts.text(),
        Some(usage(parts)),
    );
    if let Some(choice) = response.choices.first_mut() {
        choice.finish_reason = Some(finish_reason(parts).to_owned());
    }
    serde_json::to_vec(&response).unwrap_or_default()
}

fn chunk_event(out: &mut Vec<u8>, chunk: &ChatChunk) {
    let data = serde_json::to_string(chunk).unwrap_or_default();
    sse::write_data(out, &data);
}

/// The stream's events: a role chunk, one chunk per token, the finish
/// chunk, the usage chunk when asked for, and `[DONE]`.
pub(crate) fn stream(parts: &AnswerParts) -> StreamParts {
    let mut head = Vec::new();
    let mut first = ChatChunk::text(parts.id.clone(), parts.model.clone(), parts.created, "");
    if let Some(choice) = first.choices.first_mut() {
        choice.delta.role = Some(Role::Assistant);
    }
    chunk_event(&mut head, &first);

    let tokens = parts
        .tokens
        .iter()
        .map(|t| {
            let mut out = Vec::new();
            chunk_event(
                &mut out,
                &ChatChunk::text(
                    parts.id.clone(),
                    parts.model.clone(),
                    parts.created,
                    t.clone(),
                ),
            );
            out
        })
        .collect();

    let mut tail = Vec::new();
    chunk_event(
        &mut tail,
        &ChatChunk::finish(
            parts.id.clone(),
            parts.model.clone(),
            parts.created,
            finish_reason(parts),
        ),
    );
    if parts.include_usage {
        chunk_event(
            &mut tail,
            &ChatChunk::usage_only(
                parts.id.clone(),
                parts.model.clone(),
                parts.created,
                usage(parts),
            ),
        );
    }

    let mut done = Vec::new();
    sse::write_data(&mut done, "[DONE]");

    // Valid SSE framing around JSON cut off mid-string: the event arrives
    // whole, its data does not parse.
    let mut garbage = Vec::new();
    sse::write_data(
        &mut garbage,
        &format!(
            "{{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"",
            parts.id
        ),
    );

    StreamParts {
        head,
        tokens,
        tail,
        terminator: done,
        garbage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_http::sse::SseDecoder;

    fn parts(include_usage: bool) -> AnswerParts {
        AnswerParts {
            id: "chatcmpl-1".into(),
            model: "m".into(),
            created: 1,
            tokens: vec!["Hello".into(), " world".into()],
            truncated: false,
            prompt_tokens: 7,
            include_usage,
        }
    }

    #[test]
    fn stream_carries_role_tokens_finish_usage_and_done() {
        let s = stream(&parts(true));
        let mut bytes = s.head.clone();
        for t in &s.tokens {
            bytes.extend_from_slice(t);
        }
        bytes.extend_from_slice(&s.tail);
        bytes.extend_from_slice(&s.terminator);
        let mut events = Vec::new();
        SseDecoder::new().feed(&bytes, &mut events);
        assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
        let chunks: Vec<ChatChunk> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
        let text: String = chunks.iter().filter_map(|c| c.content()).collect();
        assert_eq!(text, "Hello world");
        assert_eq!(chunks[3].finish_reason(), Some("stop"));
        assert_eq!(chunks[4].usage.as_ref().unwrap().completion_tokens, 2);
    }

    #[test]
    fn garbage_event_does_not_parse() {
        let s = stream(&parts(false));
        let mut events = Vec::new();
        SseDecoder::new().feed(&s.garbage, &mut events);
        assert_eq!(events.len(), 1);
        assert!(serde_json::from_str::<Value>(&events[0].data).is_err());
    }

    #[test]
    fn errors_have_the_openai_shape() {
        let e = error(ErrorKind::ContextLength, 9000, 8192);
        assert_eq!(e.status, 400);
        assert_eq!(e.body["error"]["code"], "context_length_exceeded");
        assert!(
            e.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("8192")
        );
        let e = error(ErrorKind::QuotaExhausted, 0, 0);
        assert_eq!(
            (e.status, e.body["error"]["type"].as_str()),
            (429, Some("insufficient_quota"))
        );
    }
}
