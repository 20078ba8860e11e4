//! The request body: the caller's request as it came, with the model's
//! upstream name, the Router's output bound and the streaming flags, built
//! by borrowing rather than cloning the conversation.

use backstop_core::{Call, Extra, Message};
use serde::Serialize;

use crate::config::MaxTokensField;

/// The JSON body of `POST /chat/completions`.
#[derive(Debug, Serialize)]
pub(crate) struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<WireStreamOptions<'a>>,
    /// Every field the caller sent that the core types do not name.
    #[serde(flatten)]
    extra: &'a Extra,
}

/// `stream_options` with usage always requested, the caller's other
/// options kept.
#[derive(Debug, Serialize)]
struct WireStreamOptions<'a> {
    include_usage: bool,
    #[serde(flatten)]
    extra: Option<&'a Extra>,
}

impl<'a> WireRequest<'a> {
    /// The body for this call. `field` overrides which field carries the
    /// output bound; by default it is the one the caller used.
    pub(crate) fn new(call: &Call<'a>, stream: bool, field: Option<MaxTokensField>) -> Self {
        let request = call.request;
        let field = field.unwrap_or(if request.max_completion_tokens.is_some() {
            MaxTokensField::MaxCompletionTokens
        } else {
            MaxTokensField::MaxTokens
        });
        let (max_tokens, max_completion_tokens) = match field {
            MaxTokensField::MaxTokens => (Some(call.max_tokens), None),
            MaxTokensField::MaxCompletionTokens => (None, Some(call.max_tokens)),
        };
        Self {
            model: &call.model.upstream,
            messages: &request.messages,
            max_tokens,
            max_completion_tokens,
            stream: stream.then_some(true),
            // OpenAI rejects stream_options on a request that does not stream.
            stream_options: stream.then(|| WireStreamOptions {
                include_usage: true,
                extra: request.stream_options.as_ref().map(|o| &o.extra),
            }),
            extra: &request.extra,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use backstop_core::{ChatRequest, ModelSpec};
    use serde_json::{Value, json};

    use super::*;

    fn body(request: &ChatRequest, stream: bool, field: Option<MaxTokensField>) -> Value {
        let mut model = ModelSpec::new("fast", "openai");
        model.upstream = "gpt-4o-mini-2024-07-18".into();
        let call = Call {
            scenario: "chat",
            model: &model,
            request,
            max_tokens: 256,
            connect_timeout: Duration::from_secs(1),
            request_id: None,
            headers: &[],
        };
        serde_json::to_value(WireRequest::new(&call, stream, field)).unwrap()
    }

    #[test]
    fn caller_fields_pass_through_with_upstream_model_and_bound() {
        let request: ChatRequest = serde_json::from_value(json!({
            "model": "realtime_chat",
            "messages": [{"role": "user", "content": "hi", "name": "ann"}],
            "max_tokens": 1000,
            "temperature": 0.2,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "response_format": {"type": "json_object"},
            "stream": true,
            "stream_options": {"include_usage": false}
        }))
        .unwrap();
        assert_eq!(
            body(&request, false, None),
            json!({
                "model": "gpt-4o-mini-2024-07-18",
                "messages": [{"role": "user", "content": "hi", "name": "ann"}],
                "max_tokens": 256,
                "temperature": 0.2,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                "response_format": {"type": "json_object"}
            })
        );
    }

    #[test]
    fn the_bound_goes_in_the_field_the_caller_used() {
        let mut request = ChatRequest::user("m", "hi");
        request.max_completion_tokens = Some(9000);
        let b = body(&request, false, None);
        assert_eq!(b["max_completion_tokens"], 256);
        assert!(b.get("max_tokens").is_none());

        let request = ChatRequest::user("m", "hi");
        assert_eq!(body(&request, false, None)["max_tokens"], 256);
        let b = body(&request, false, Some(MaxTokensField::MaxCompletionTokens));
        assert_eq!(b["max_completion_tokens"], 256);
        assert!(b.get("max_tokens").is_none());
    }

    #[test]
    fn streaming_asks_for_usage_and_keeps_other_stream_options() {
        let request: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [],
            "stream_options": {"include_usage": false, "include_obfuscation": false}
        }))
        .unwrap();
        let b = body(&request, true, None);
        assert_eq!(b["stream"], true);
        assert_eq!(
            b["stream_options"],
            json!({"include_usage": true, "include_obfuscation": false})
        );
    }
}
