//! The JSON that crosses the boundary: a provider call, answers, stream
//! chunks, errors.
//!
//! Chat types cross in a form that differs from core's own serde form in
//! two ways: the fields a type does not name travel in an explicit `extra`
//! object (core flattens them, which makes serde buffer every object and
//! cost more than the rest of a call across the boundary), and message
//! content is tagged (`{"text": ...}` or `{"parts": [...]}`) rather than
//! untagged, for the same reason. Nothing is lost either way. A model
//! crosses once per provider instance: the host registers it and calls carry
//! its [`ModelHandle`]. Stream chunks cross in batches (see
//! [`encode_chunks`]).

mod chat;
mod chunks;

use std::time::Duration;

use backstop_core::{
    Call, ChatRequest, ChatResponse, Content, FailureKind, Message, ModelSpec, ProviderError,
};
use serde::{Deserialize, Deserializer, Serialize};

pub use self::chunks::{ChunkHeader, decode_chunks, encode_chunks};

use self::chat::{De, Ser};

/// A model registered with a provider instance.
pub type ModelHandle = u64;

/// Encodes `value` as JSON into a buffer that starts at `capacity` bytes:
/// one grown from empty reallocates half a dozen times for a small answer.
pub fn encode<T: Serialize + ?Sized>(value: &T, capacity: usize) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// Bytes of text in `messages`, to size a buffer.
fn text_len(messages: &[Message]) -> usize {
    messages
        .iter()
        .map(|m| m.content.as_ref().map_or(0, content_len))
        .sum()
}

/// A [`Call`] as the host sends it.
#[derive(Debug, Serialize)]
pub struct WireCall<'a> {
    /// [`Call::scenario`].
    pub scenario: &'a str,
    /// [`Call::model`], registered beforehand.
    pub model: ModelHandle,
    /// [`Call::request`].
    #[serde(serialize_with = "request::serialize")]
    pub request: &'a ChatRequest,
    /// [`Call::max_tokens`].
    pub max_tokens: u32,
    /// [`Call::connect_timeout`], in milliseconds.
    pub connect_timeout_ms: u64,
    /// [`Call::request_id`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    /// [`Call::headers`].
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub headers: &'a [(String, String)],
}

impl<'a> WireCall<'a> {
    /// A buffer size that fits the encoded call.
    pub fn size_hint(&self) -> usize {
        256 + text_len(&self.request.messages) + 32 * self.request.messages.len()
    }

    /// The wire form of `call`, whose model is registered as `model`.
    pub fn of(call: &Call<'a>, model: ModelHandle) -> Self {
        Self {
            scenario: call.scenario,
            model,
            request: call.request,
            max_tokens: call.max_tokens,
            connect_timeout_ms: u64::try_from(call.connect_timeout.as_millis()).unwrap_or(u64::MAX),
            request_id: call.request_id,
            headers: call.headers,
        }
    }
}

/// A [`Call`] as the plugin receives it: owned, so it can outlive the
/// host's buffer.
#[derive(Debug, Deserialize)]
pub struct OwnedCall {
    scenario: String,
    /// The handle of the call's model.
    pub model: ModelHandle,
    #[serde(deserialize_with = "request::deserialize")]
    request: ChatRequest,
    max_tokens: u32,
    connect_timeout_ms: u64,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

impl OwnedCall {
    /// The call, borrowing from this value and from `model` (the spec its
    /// handle names).
    pub fn as_call<'a>(&'a self, model: &'a ModelSpec) -> Call<'a> {
        Call {
            scenario: &self.scenario,
            model,
            request: &self.request,
            max_tokens: self.max_tokens,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_id: self.request_id.as_deref(),
            headers: &self.headers,
        }
    }
}

/// A [`ProviderError`] on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// [`ProviderError::kind`].
    pub kind: FailureKind,
    /// [`ProviderError::status`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// [`ProviderError::code`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// [`ProviderError::retry_after`], in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ns: Option<u64>,
    /// [`ProviderError::message`].
    pub message: String,
}

impl From<&ProviderError> for WireError {
    fn from(e: &ProviderError) -> Self {
        Self {
            kind: e.kind,
            status: e.status,
            code: e.code.clone(),
            retry_after_ns: e
                .retry_after
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            message: e.message.clone(),
        }
    }
}

impl From<WireError> for ProviderError {
    fn from(e: WireError) -> Self {
        ProviderError {
            kind: e.kind,
            status: e.status,
            code: e.code,
            retry_after: e.retry_after_ns.map(Duration::from_nanos),
            message: e.message,
        }
    }
}

/// A failure that is not a provider's: a config the plugin refused, a
/// panic, a broken payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireFailure {
    /// What happened.
    pub message: String,
}

/// `WireCall::request` and `OwnedCall::request` in the boundary's form.
mod request {
    use super::{ChatRequest, De, Deserialize, Deserializer, Ser, Serialize};

    // serde's `serialize_with` passes a reference to the field.
    #[allow(clippy::trivially_copy_pass_by_ref)]
    pub(super) fn serialize<S: serde::Serializer>(
        request: &&ChatRequest,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        Ser(*request).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChatRequest, D::Error> {
        De::<ChatRequest>::deserialize(d).map(|r| r.0)
    }
}

/// Encodes a complete answer.
pub fn encode_response(response: &ChatResponse) -> serde_json::Result<Vec<u8>> {
    let text: usize = response
        .choices
        .iter()
        .map(|c| c.message.content.as_ref().map_or(0, content_len))
        .sum();
    encode(&Ser(response), 256 + text)
}

/// Decodes a complete answer.
pub fn decode_response(bytes: &[u8]) -> serde_json::Result<ChatResponse> {
    serde_json::from_slice::<De<ChatResponse>>(bytes).map(|r| r.0)
}

fn content_len(content: &Content) -> usize {
    match content {
        Content::Text(text) => text.len(),
        Content::Parts(parts) => 64 * parts.len(),
    }
}

#[cfg(test)]
mod tests {
    use backstop_core::{Extra, Role, StreamOptions, Usage};
    use serde_json::json;

    use super::*;

    fn extra(value: serde_json::Value) -> Extra {
        match value {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("test extras are objects"),
        }
    }

    #[test]
    fn provider_error_survives_the_wire() {
        let error = ProviderError::new(FailureKind::RateLimited, "slow down")
            .with_status(429)
            .with_code("rate_limit_exceeded")
            .with_retry_after(Duration::from_micros(1_500_250));
        let json = serde_json::to_vec(&WireError::from(&error)).unwrap();
        let back: WireError = serde_json::from_slice(&json).unwrap();
        assert_eq!(ProviderError::from(back), error);
    }

    #[test]
    fn a_call_keeps_every_field_and_extra() {
        let model = ModelSpec::new("m", "p");
        let mut request = ChatRequest::user("m", "hello");
        request
            .messages
            .insert(0, Message::text(Role::System, "be brief"));
        request.messages.push(Message {
            role: Role::User,
            content: Some(Content::Parts(vec![
                json!({"type": "image_url", "image_url": {"url": "x"}}),
            ])),
            extra: extra(json!({"name": "ann"})),
        });
        request.messages.push(Message {
            role: Role::Assistant,
            content: None,
            extra: extra(json!({"tool_calls": [{"id": "t1"}]})),
        });
        request.max_tokens = Some(10);
        request.max_completion_tokens = Some(20);
        request.stream = Some(true);
        request.stream_options = Some(StreamOptions {
            include_usage: true,
            extra: extra(json!({"future": 1})),
        });
        request.extra = extra(json!({"temperature": 0.5, "tools": [{"type": "function"}]}));
        let call = Call {
            scenario: "chat",
            model: &model,
            request: &request,
            max_tokens: 64,
            connect_timeout: Duration::from_millis(2500),
            request_id: Some("req-1"),
            headers: &[],
        };
        let wire = WireCall::of(&call, 7);
        let json = encode(&wire, wire.size_hint()).unwrap();
        let owned: OwnedCall = serde_json::from_slice(&json).unwrap();
        assert_eq!(owned.model, 7);
        let back = owned.as_call(&model);
        assert_eq!(back.scenario, "chat");
        assert_eq!(back.request, &request);
        assert_eq!(back.max_tokens, 64);
        assert_eq!(back.connect_timeout, Duration::from_millis(2500));
        assert_eq!(back.request_id, Some("req-1"));
    }

    #[test]
    fn a_response_keeps_every_field_and_extra() {
        let mut response = ChatResponse::assistant("id-1", "m", 17, "hi", Some(Usage::new(3, 1)));
        response.extra = extra(json!({"system_fingerprint": "fp"}));
        response.usage.as_mut().unwrap().extra =
            extra(json!({"prompt_tokens_details": {"cached_tokens": 2}}));
        response.choices[0].extra = extra(json!({"logprobs": null}));
        response.choices[0].message.extra = extra(json!({"refusal": "no"}));
        let mut parts = response.choices[0].clone();
        parts.index = 1;
        parts.message.content = Some(Content::Parts(vec![json!({"type": "text", "text": "x"})]));
        parts.finish_reason = None;
        let mut empty = parts.clone();
        empty.index = 2;
        empty.message.content = None;
        response.choices.extend([parts, empty]);

        let json = encode_response(&response).unwrap();
        assert_eq!(decode_response(&json).unwrap(), response);
    }
}
