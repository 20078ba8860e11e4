//! What a fake provider does with a request: answer, or fail in one
//! precise way.

use std::time::Duration;

use serde::Serialize;

/// The wire API a fake provider is declared with in a rendered config.
/// Every fake serves both paths (`.../chat/completions` and
/// `.../messages`); the API decides which one the gateway will call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI chat completions (JSON, SSE `data:` chunks, `[DONE]`).
    OpenAi,
    /// Anthropic Messages (`message_start` ... `message_stop` events).
    Anthropic,
}

impl Api {
    /// The provider `type` of the config contract.
    pub fn provider_type(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
        }
    }
}

/// How a fake treats a trailing assistant message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefill {
    /// Continue the known text from where the prefill ends (declared
    /// `supports_prefill = true`).
    Continue,
    /// Ignore it and answer the whole known text (declared
    /// `supports_prefill = false`).
    Ignore,
}

/// How fast a healthy fake produces its answer. A non-streaming answer
/// arrives after the whole generation time (`first_token` plus one
/// `token_interval` per further token), as a real model's would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// From request to first token.
    pub first_token: Duration,
    /// Between two tokens.
    pub token_interval: Duration,
}

impl Pacing {
    /// The time to generate `tokens` tokens.
    pub fn generation(&self, tokens: usize) -> Duration {
        let further = u32::try_from(tokens.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first_token + self.token_interval * further
    }
}

impl Default for Pacing {
    /// First token after 5 ms, then a token every millisecond.
    fn default() -> Self {
        Self {
            first_token: Duration::from_millis(5),
            token_interval: Duration::from_millis(1),
        }
    }
}

/// An HTTP error a fake answers with, in the provider's real error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 500 (`server_error` / `api_error`).
    Server,
    /// 502 bad gateway.
    BadGateway,
    /// 503 (OpenAI: engine overloaded; Anthropic: api_error).
    Unavailable,
    /// Anthropic's 529 `overloaded_error` (OpenAI: 503).
    Overloaded,
    /// 429 rate limit, with or without Retry-After.
    RateLimited {
        /// Sent as `retry-after` (seconds, rounded up) and, for OpenAI,
        /// `retry-after-ms`.
        retry_after: Option<Duration>,
    },
    /// Out of credits (OpenAI 429 `insufficient_quota`, Anthropic 400
    /// credit balance).
    QuotaExhausted,
    /// 401 bad key.
    Unauthorized,
    /// 400 context length exceeded.
    ContextLength,
    /// 400 content policy refusal.
    ContentPolicy,
    /// 400 any other invalid request.
    BadRequest,
}

impl ErrorKind {
    /// A short snake_case name for logs and the request log.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Server => "server_error",
            ErrorKind::BadGateway => "bad_gateway",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::RateLimited { .. } => "rate_limited",
            ErrorKind::QuotaExhausted => "quota_exhausted",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::ContextLength => "context_length",
            ErrorKind::ContentPolicy => "content_policy",
            ErrorKind::BadRequest => "bad_request",
        }
    }
}

/// What a fake does with the next request (or, for `Refused`, with the next
/// connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer the known text at the fake's pacing.
    Healthy,
    /// Answer with an HTTP error.
    Error(ErrorKind),
    /// Answer correctly, but only after this extra delay before the headers.
    Delay(Duration),
    /// Streams: headers at once, the first token only after this long.
    /// Non-streaming: the answer after this long plus the generation time.
    SlowFirstToken(Duration),
    /// Stream this many tokens, then close the connection without a finish
    /// reason or terminator (non-streaming: half the body, then close).
    StreamCut {
        /// Tokens sent before the cut.
        after_tokens: usize,
    },
    /// Stream this many tokens, then send nothing more with the connection
    /// open (non-streaming: half the body, then silence), until the fake's
    /// `hold_max` passes.
    StreamStall {
        /// Tokens sent before the stall.
        after_tokens: usize,
    },
    /// After this many tokens insert one garbage `data:` event (invalid
    /// JSON), then carry on: a lenient reader that skips it still gets the
    /// whole text (non-streaming: an unparseable body).
    MalformedChunk {
        /// Tokens sent before the garbage event.
        after_tokens: usize,
    },
    /// A complete stream with its finish reason and usage but without the
    /// terminator (`[DONE]` / `message_stop`). Non-streaming: healthy.
    NoDone,
    /// Reset the connection (RST, SO_LINGER 0) before any header.
    ResetBeforeHeaders,
    /// Accept the connection, read the request, never answer (until the
    /// fake's `hold_max` passes, then reset).
    NeverAnswer,
    /// Nothing listens on the port: connections are refused. Existing
    /// keep-alive connections are reset on their next request, as a crashed
    /// server's would be.
    Refused,
}

impl Behaviour {
    /// A short snake_case name for logs, errors and the request log.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Healthy => "healthy",
            Behaviour::Error(kind) => kind.name(),
            Behaviour::Delay(_) => "delay",
            Behaviour::SlowFirstToken(_) => "slow_first_token",
            Behaviour::StreamCut { .. } => "stream_cut",
            Behaviour::StreamStall { .. } => "stream_stall",
            Behaviour::MalformedChunk { .. } => "malformed_chunk",
            Behaviour::NoDone => "no_done",
            Behaviour::ResetBeforeHeaders => "reset_before_headers",
            Behaviour::NeverAnswer => "never_answer",
            Behaviour::Refused => "refused",
        }
    }

    /// Whether the behaviour is an outage from a caller's point of view:
    /// the model cannot be relied on to answer in time. `Delay` and
    /// `NoDone` still deliver a complete answer.
    pub fn is_outage(self) -> bool {
        !matches!(
            self,
            Behaviour::Healthy | Behaviour::Delay(_) | Behaviour::NoDone
        )
    }

    /// Whether wiremock (whole bodies, no connection faults) can produce it.
    pub fn wiremock_can(self) -> bool {
        matches!(
            self,
            Behaviour::Healthy
                | Behaviour::Error(_)
                | Behaviour::Delay(_)
                | Behaviour::NoDone
                | Behaviour::MalformedChunk { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_time_counts_the_first_token_once() {
        let p = Pacing {
            first_token: Duration::from_millis(10),
            token_interval: Duration::from_millis(2),
        };
        assert_eq!(p.generation(1), Duration::from_millis(10));
        assert_eq!(p.generation(5), Duration::from_millis(18));
        assert_eq!(p.generation(0), Duration::from_millis(10));
    }

    #[test]
    fn outages_exclude_answers_that_arrive_complete() {
        assert!(!Behaviour::Healthy.is_outage());
        assert!(!Behaviour::NoDone.is_outage());
        assert!(!Behaviour::Delay(Duration::from_millis(5)).is_outage());
        assert!(Behaviour::Refused.is_outage());
        assert!(Behaviour::Error(ErrorKind::Server).is_outage());
        assert!(Behaviour::StreamCut { after_tokens: 3 }.is_outage());
    }
}
