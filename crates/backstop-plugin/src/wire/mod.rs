//! The JSON forms of what crosses the boundary that core does not already
//! serialize: a provider call, a provider error, and a plain failure
//! message. Requests, responses, chunks and model specs travel as core's
//! own serde forms.

use std::time::Duration;

use backstop_core::{Call, ChatRequest, FailureKind, ModelSpec, ProviderError};
use serde::{Deserialize, Serialize};

/// A [`Call`] as the host sends it.
#[derive(Debug, Serialize)]
pub struct WireCall<'a> {
    /// [`Call::scenario`].
    pub scenario: &'a str,
    /// [`Call::model`].
    pub model: &'a ModelSpec,
    /// [`Call::request`].
    pub request: &'a ChatRequest,
    /// [`Call::max_tokens`].
    pub max_tokens: u32,
    /// [`Call::connect_timeout`], in milliseconds.
    pub connect_timeout_ms: u64,
    /// [`Call::request_id`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
}

impl<'a> WireCall<'a> {
    /// The wire form of a call.
    pub fn of(call: &Call<'a>) -> Self {
        Self {
            scenario: call.scenario,
            model: call.model,
            request: call.request,
            max_tokens: call.max_tokens,
            connect_timeout_ms: duration_ms(call.connect_timeout),
            request_id: call.request_id,
        }
    }
}

/// A [`Call`] as the plugin receives it: owned, so it can outlive the
/// host's buffer.
#[derive(Debug, Deserialize)]
pub struct OwnedCall {
    scenario: String,
    model: ModelSpec,
    request: ChatRequest,
    max_tokens: u32,
    connect_timeout_ms: u64,
    #[serde(default)]
    request_id: Option<String>,
}

impl OwnedCall {
    /// The call, borrowing from this value.
    pub fn as_call(&self) -> Call<'_> {
        Call {
            scenario: &self.scenario,
            model: &self.model,
            request: &self.request,
            max_tokens: self.max_tokens,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_id: self.request_id.as_deref(),
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
pub struct WireMessage {
    /// What happened.
    pub message: String,
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn call_survives_the_wire() {
        let model = ModelSpec::new("m", "p");
        let request = ChatRequest::user("m", "hello");
        let call = Call {
            scenario: "chat",
            model: &model,
            request: &request,
            max_tokens: 64,
            connect_timeout: Duration::from_millis(2500),
            request_id: Some("req-1"),
        };
        let json = serde_json::to_vec(&WireCall::of(&call)).unwrap();
        let owned: OwnedCall = serde_json::from_slice(&json).unwrap();
        let back = owned.as_call();
        assert_eq!(back.scenario, "chat");
        assert_eq!(back.model, &model);
        assert_eq!(back.request, &request);
        assert_eq!(back.max_tokens, 64);
        assert_eq!(back.connect_timeout, Duration::from_millis(2500));
        assert_eq!(back.request_id, Some("req-1"));
    }
}
