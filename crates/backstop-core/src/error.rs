//! What went wrong, in terms the Router can act on and a person can read.
//!
//! A provider classifies every failure into a [`FailureKind`]; the kind alone
//! decides whether the Router retries the same model, falls over to the next,
//! routes only to a larger context window, or stops and returns the upstream's
//! error (see ARCHITECTURE.md, "Failure kinds and what each does"). Every
//! attempt and every skipped model lands in the attempt trail, and the
//! first real cause of a failed request is kept apart so a later, noisier
//! failure can never mask it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rate_limit::{RateCause, RateScope};

/// The taxonomy of upstream failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Refused, reset before headers, DNS failure, TLS failure.
    Connect,
    /// No headers, no first token, or a stalled stream in time.
    Timeout,
    /// 429 rate limit, with or without Retry-After.
    RateLimited,
    /// Out of credits: 429 `insufficient_quota`, 402.
    QuotaExhausted,
    /// The provider says it is overloaded (529, 503 overloaded).
    Overloaded,
    /// 500, 502, 503, 504, 408.
    Server,
    /// 401, 403: bad key or no permission.
    Auth,
    /// The prompt does not fit the model's context window.
    ContextLength,
    /// The provider refused the content.
    ContentPolicy,
    /// Any other 4xx: the request itself is wrong.
    BadRequest,
    /// Unparseable body, no choices, malformed stream.
    InvalidResponse,
    /// A stream cut before its end.
    StreamInterrupted,
    /// The upstream has no such model (404: retired, misnamed, not
    /// deployed): a fault of the model's configuration, not of the request.
    ModelNotFound,
    /// The provider cannot express this request (a feature it lacks, such
    /// as several choices): another model may serve it.
    Unsupported,
}

/// What a failure means for the model's health (ARCHITECTURE.md's "health"
/// column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEffect {
    /// Counts as a failure in the breaker's window.
    Failure,
    /// Cool the model down for its Retry-After (or a default).
    Cooldown,
    /// Disable the model until a probe succeeds, and alert.
    Disable,
    /// Says nothing about the model's health (the request was at fault).
    None,
}

impl FailureKind {
    /// Every kind, in table order.
    pub const ALL: [FailureKind; 14] = [
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::RateLimited,
        FailureKind::QuotaExhausted,
        FailureKind::Overloaded,
        FailureKind::Server,
        FailureKind::Auth,
        FailureKind::ContextLength,
        FailureKind::ContentPolicy,
        FailureKind::BadRequest,
        FailureKind::InvalidResponse,
        FailureKind::StreamInterrupted,
        FailureKind::ModelNotFound,
        FailureKind::Unsupported,
    ];

    /// The snake_case name used in config, logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::QuotaExhausted => "quota_exhausted",
            FailureKind::Overloaded => "overloaded",
            FailureKind::Server => "server",
            FailureKind::Auth => "auth",
            FailureKind::ContextLength => "context_length",
            FailureKind::ContentPolicy => "content_policy",
            FailureKind::BadRequest => "bad_request",
            FailureKind::InvalidResponse => "invalid_response",
            FailureKind::StreamInterrupted => "stream_interrupted",
            FailureKind::ModelNotFound => "model_not_found",
            FailureKind::Unsupported => "unsupported",
        }
    }

    /// What the failure means for the model's health.
    pub fn health_effect(self) -> HealthEffect {
        match self {
            FailureKind::Connect
            | FailureKind::Timeout
            | FailureKind::Overloaded
            | FailureKind::Server
            | FailureKind::InvalidResponse
            | FailureKind::StreamInterrupted => HealthEffect::Failure,
            FailureKind::RateLimited => HealthEffect::Cooldown,
            FailureKind::QuotaExhausted | FailureKind::Auth | FailureKind::ModelNotFound => {
                HealthEffect::Disable
            }
            FailureKind::ContextLength
            | FailureKind::ContentPolicy
            | FailureKind::BadRequest
            | FailureKind::Unsupported => HealthEffect::None,
        }
    }

    /// Whether the failure is the caller's request rather than the model
    /// (the upstream's 4xx is returned rather than hidden behind a 503).
    pub fn is_request_fault(self) -> bool {
        matches!(
            self,
            FailureKind::ContextLength | FailureKind::ContentPolicy | FailureKind::BadRequest
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call to an upstream, classified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
pub struct ProviderError {
    /// What kind of failure it was; decides what the Router does next.
    pub kind: FailureKind,
    /// The upstream's HTTP status, when there was one.
    pub status: Option<u16>,
    /// The upstream's error code or type (`context_length_exceeded`,
    /// `overloaded_error`), when it sent one.
    pub code: Option<String>,
    /// How long the upstream asked us to wait (Retry-After).
    pub retry_after: Option<Duration>,
    /// The upstream's message, or ours when the upstream said nothing.
    /// Never contains a secret.
    pub message: String,
}

impl ProviderError {
    /// An error of this kind with this message.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            code: None,
            retry_after: None,
            message: message.into(),
        }
    }

    /// Sets the HTTP status.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the provider's error code.
    #[must_use]
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Sets the Retry-After the upstream asked for.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// A timeout in the named phase (`first token`, `idle`, `attempt`).
    pub fn timeout(phase: &str, after: Duration) -> Self {
        Self::new(
            FailureKind::Timeout,
            format!("no {phase} within {} ms", after.as_millis()),
        )
    }
}

/// Why the Router did not try a model of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Its circuit is open (or it cools down, or is disabled).
    CircuitOpen,
    /// The request would exceed a budget on it.
    OverBudget,
    /// A call would exceed its provider quota (`rpm` / `tpm`).
    OverRateLimit,
    /// The prompt does not fit its context window (estimated, or after a
    /// context-length error from a model with a window at least as large).
    ContextWindow,
    /// The request streams and the model cannot.
    NoStreaming,
    /// The request offers tools and the model takes none.
    NoTools,
    /// The end-to-end deadline ran out before its turn.
    Deadline,
}

impl SkipReason {
    /// The snake_case name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::CircuitOpen => "circuit_open",
            SkipReason::OverBudget => "over_budget",
            SkipReason::OverRateLimit => "over_rate_limit",
            SkipReason::ContextWindow => "context_window",
            SkipReason::NoStreaming => "no_streaming",
            SkipReason::NoTools => "no_tools",
            SkipReason::Deadline => "deadline",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one entry of the attempt trail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The model answered.
    Succeeded,
    /// The call failed.
    Failed(FailureKind),
    /// The model was not called.
    Skipped(SkipReason),
    /// The call was abandoned: a hedge won, or the caller went away.
    Cancelled,
}

impl AttemptOutcome {
    /// The trail's `kind` string: `ok`, a failure kind, a skip reason, or
    /// `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "ok",
            AttemptOutcome::Failed(kind) => kind.as_str(),
            AttemptOutcome::Skipped(reason) => reason.as_str(),
            AttemptOutcome::Cancelled => "cancelled",
        }
    }

    /// Whether an upstream was called.
    pub fn called_upstream(self) -> bool {
        !matches!(self, AttemptOutcome::Skipped(_))
    }
}

/// One entry of the attempt trail.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The model's id.
    pub model: Arc<str>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The upstream's HTTP status, when there was one.
    pub status: Option<u16>,
    /// From the start of the call to its end (zero for skips).
    pub duration: Duration,
    /// The upstream's message for failures.
    pub message: Option<String>,
}

impl Attempt {
    /// A trail entry for a model that was not called.
    pub fn skipped(model: Arc<str>, reason: SkipReason) -> Self {
        Self {
            model,
            outcome: AttemptOutcome::Skipped(reason),
            status: None,
            duration: Duration::ZERO,
            message: None,
        }
    }

    /// A trail entry for a failed call.
    pub fn failed(model: Arc<str>, error: &ProviderError, duration: Duration) -> Self {
        Self {
            model,
            outcome: AttemptOutcome::Failed(error.kind),
            status: error.status,
            duration,
            message: Some(error.message.clone()),
        }
    }
}

impl Serialize for Attempt {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Attempt", 5)?;
        s.serialize_field("model", &*self.model)?;
        s.serialize_field("kind", self.outcome.as_str())?;
        s.serialize_field("status", &self.status)?;
        s.serialize_field("ms", &(self.duration.as_secs_f64() * 1000.0))?;
        if let Some(message) = &self.message {
            s.serialize_field("message", message)?;
        } else {
            s.skip_field("message")?;
        }
        s.end()
    }
}

/// Writes a trail as `model kind status ms; ...` for error messages.
pub struct TrailDisplay<'a>(pub &'a [Attempt]);

impl fmt::Display for TrailDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} {}", a.model, a.outcome.as_str())?;
            if let Some(status) = a.status {
                write!(f, " {status}")?;
            }
            if a.outcome.called_upstream() {
                write!(f, " {}ms", a.duration.as_millis())?;
            }
        }
        Ok(())
    }
}

/// Every model of the chain failed or was skipped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "every model of `{scenario}` failed{}; attempts: {}",
    first_cause.as_ref().map(|c| format!(" (first cause: {c})")).unwrap_or_default(),
    TrailDisplay(attempts)
)]
pub struct AllModelsFailed {
    /// The scenario (or single-model route) that was served.
    pub scenario: Arc<str>,
    /// Every attempt and skip, in order.
    pub attempts: Vec<Attempt>,
    /// The first real upstream failure, never replaced by a later one.
    pub first_cause: Option<ProviderError>,
}

/// Why the Router could not give the caller an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// The request's `model` names neither a scenario nor a model.
    #[error("no scenario or model is named `{0}`")]
    UnknownRoute(String),
    /// An upstream rejected the request itself (a plain 4xx, a content
    /// policy refusal, or a context-length error no larger model can take);
    /// the caller gets that error, not a fallback.
    #[error("`{model}` rejected the request: {error}")]
    Rejected {
        /// The model that rejected it.
        model: Arc<str>,
        /// The upstream's error.
        error: ProviderError,
        /// The trail up to the rejection.
        attempts: Vec<Attempt>,
    },
    /// Every model failed or was skipped.
    #[error(transparent)]
    AllFailed(#[from] AllModelsFailed),
    /// No model of the chain has a context window the request fits: every
    /// one was skipped for its window (or failed with a context-length
    /// error). The caller must shorten the prompt or the output bound; no
    /// retry can help.
    #[error(
        "the prompt (about {prompt_tokens} tokens) with its output bound fits the context window of no model of `{scenario}`; attempts: {}",
        TrailDisplay(attempts)
    )]
    NoWindowFits {
        /// The scenario (or single-model route) that was served.
        scenario: Arc<str>,
        /// The prompt's estimated tokens.
        prompt_tokens: u32,
        /// Every skip and context-length failure, in order.
        attempts: Vec<Attempt>,
    },
    /// A rate limit refused the request: the caller's own limit (checked
    /// when its first model is admitted), or every model of the chain was
    /// at its provider quota. The caller may retry after `retry_after`.
    #[error(
        "{}; attempts: {}",
        match scope {
            RateScope::Caller => format!("the caller is over its {} limit of {} per minute: retry after {} ms", cause.as_str(), limit, retry_after.as_millis()),
            RateScope::Model => format!("every model of `{scenario}` is at its rate limit: retry after {} ms", retry_after.as_millis()),
        },
        TrailDisplay(attempts)
    )]
    RateLimited {
        /// The scenario (or single-model route) that was served.
        scenario: Arc<str>,
        /// The caller's limit, or the models' quotas.
        scope: RateScope,
        /// Which limit refused (for the caller; for models, the first
        /// model's).
        cause: RateCause,
        /// The limit per minute (for the caller).
        limit: u64,
        /// How long until a retry may fit.
        retry_after: Duration,
        /// Every skip, in order.
        attempts: Vec<Attempt>,
    },
    /// The stream failed after part of the answer had reached the caller and
    /// the mid-stream policy could not complete it.
    #[error(
        "the answer was cut after it started streaming: {cause}; attempts: {}",
        TrailDisplay(attempts)
    )]
    StreamAborted {
        /// What cut the answer (the first failure, not the last).
        cause: ProviderError,
        /// Every attempt and skip, in order.
        attempts: Vec<Attempt>,
    },
}

impl RouteError {
    /// The attempt trail, when there is one.
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            RouteError::UnknownRoute(_) => &[],
            RouteError::Rejected { attempts, .. }
            | RouteError::NoWindowFits { attempts, .. }
            | RouteError::StreamAborted { attempts, .. }
            | RouteError::RateLimited { attempts, .. }
            | RouteError::AllFailed(AllModelsFailed { attempts, .. }) => attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_error_message_names_kind_and_status() {
        let e = ProviderError::new(FailureKind::Server, "boom").with_status(502);
        assert_eq!(e.to_string(), "server (HTTP 502): boom");
    }

    #[test]
    fn all_failed_shows_first_cause_and_trail() {
        let cause = ProviderError::new(FailureKind::Connect, "refused");
        let e = AllModelsFailed {
            scenario: "chat".into(),
            attempts: vec![
                Attempt::failed("a".into(), &cause, Duration::from_millis(3)),
                Attempt::skipped("b".into(), SkipReason::CircuitOpen),
            ],
            first_cause: Some(cause),
        };
        assert_eq!(
            e.to_string(),
            "every model of `chat` failed (first cause: connect: refused); \
             attempts: a connect 3ms; b circuit_open"
        );
    }

    #[test]
    fn attempt_serializes_as_trail_entry() {
        let a = Attempt {
            model: "gpt-4o".into(),
            outcome: AttemptOutcome::Failed(FailureKind::Server),
            status: Some(500),
            duration: Duration::from_micros(1500),
            message: None,
        };
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"model": "gpt-4o", "kind": "server", "status": 500, "ms": 1.5})
        );
    }
}
