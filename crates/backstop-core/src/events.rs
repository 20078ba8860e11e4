//! The monitoring seam: what the Router reports as it works.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::AttemptOutcome;
use crate::health::HealthTransition;

/// A fallback: a request answered by a model other than its primary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FallbackEvent {
    /// Wall clock, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The scenario.
    pub scenario: Arc<str>,
    /// The model tried first.
    pub primary: Arc<str>,
    /// The model that answered.
    pub model_used: Arc<str>,
    /// Why the primary did not answer: a failure kind or skip reason.
    pub reason: &'static str,
    /// The answering model's index in the order tried.
    pub level: usize,
    /// End-to-end latency of the request; serialized as `latency_ms`
    /// (milliseconds, fractional) so the unit is in the name.
    #[serde(rename = "latency_ms", serialize_with = "serialize_ms")]
    pub latency: Duration,
}

fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// The end of one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFinished<'a> {
    /// The scenario.
    pub scenario: &'a str,
    /// The model that answered, if one did.
    pub model_used: Option<&'a str>,
    /// Its index in the order tried.
    pub fallback_level: Option<usize>,
    /// `None` when answered; the kind of the error otherwise (`unknown_route`,
    /// `rejected`, `all_failed`, `stream_aborted`, `cancelled`).
    pub error: Option<&'static str>,
    /// End-to-end latency (to the last chunk, for streams).
    pub latency: Duration,
    /// Upstream calls made.
    pub upstream_attempts: u32,
    /// Whether it streamed.
    pub stream: bool,
}

/// Something the Router reports.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Every request, once, when it ends: the denominator of the exact
    /// fallback rate.
    RequestFinished(&'a RequestFinished<'a>),
    /// Every fallback.
    Fallback(&'a FallbackEvent),
    /// Every upstream call.
    Attempt {
        /// The scenario.
        scenario: &'a str,
        /// The model called.
        model: &'a str,
        /// How it ended.
        outcome: AttemptOutcome,
        /// How long it took.
        duration: Duration,
    },
    /// A model's circuit changed state.
    Health {
        /// The model.
        model: &'a str,
        /// The change.
        transition: HealthTransition,
    },
}

/// Receives the Router's events: alert rules, metrics, logs. Called on the
/// request path, so it must be cheap and never block: anything slow (a
/// webhook) is handed to a background task.
pub trait EventSink: Send + Sync + fmt::Debug {
    /// Takes one event.
    fn record(&self, event: &Event<'_>);
}

fn _event_sink_is_object_safe(_: &dyn EventSink) {}
