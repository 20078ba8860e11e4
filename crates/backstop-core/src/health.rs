//! The health seam: which models may be called now, learned from outcomes.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::error::FailureKind;
use crate::model::ModelIndex;

/// Opaque data a health policy attaches to an admission and gets back with
/// the outcome (for example "this was a half-open trial call").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permit(pub u64);

/// The answer to "may I call this model now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call it, and report the outcome with this permit.
    Admit(Permit),
    /// Do not call it; it may be admitted again after `retry_after`.
    Reject {
        /// When admission is expected again (zero when unknown).
        retry_after: Duration,
    },
}

/// How an admitted call ended, as far as health is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CallOutcome {
    /// It answered; `latency` is the total time of the call (time to first
    /// token for streams).
    Success {
        /// How long it took.
        latency: Duration,
    },
    /// It failed.
    Failure {
        /// The failure's kind.
        kind: FailureKind,
        /// The upstream's Retry-After, if any.
        retry_after: Option<Duration>,
        /// How long it took to fail.
        latency: Duration,
    },
    /// It was admitted but abandoned (a hedge won, the caller left, a
    /// budget refused it after admission). Releases the permit and counts
    /// for nothing.
    Cancelled,
}

/// A failed background probe, as a health policy hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFailure {
    /// The failure's kind.
    pub kind: FailureKind,
    /// The upstream's Retry-After, if it sent one (a probe answered with a
    /// 429 says when to come back).
    pub retry_after: Option<Duration>,
}

/// A model's circuit, as a person reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls flow.
    Closed,
    /// Calls are rejected until the break ends.
    Open,
    /// A bounded number of trial calls flow.
    HalfOpen,
    /// Rejected until the upstream's Retry-After passes.
    CoolingDown,
    /// Rejected until a probe succeeds (auth failure, exhausted quota).
    Disabled,
}

impl CircuitState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::CoolingDown => "cooling_down",
            CircuitState::Disabled => "disabled",
        }
    }
}

/// A change of a model's circuit state, reported by `record` so the Router
/// can raise an event (and an alert when a model is disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTransition {
    /// State before.
    pub from: CircuitState,
    /// State after.
    pub to: CircuitState,
    /// The failure that caused it, if one did.
    pub cause: Option<FailureKind>,
}

impl HealthTransition {
    /// Logs the transition: at warn when the model stops taking calls (open,
    /// disabled), at info otherwise. Transitions are rare; they are what an
    /// operator reads, where a line per failed request would flood the log.
    pub fn log(&self, model: &str, message: &'static str) {
        let (from, to) = (self.from.as_str(), self.to.as_str());
        let cause = self.cause.map(FailureKind::as_str);
        if matches!(self.to, CircuitState::Open | CircuitState::Disabled) {
            tracing::warn!(model, from, to, cause, "{message}");
        } else {
            tracing::info!(model, from, to, cause, "{message}");
        }
    }
}

/// A model's health, for status pages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HealthSnapshot {
    /// The circuit's state.
    pub state: CircuitState,
    /// Time until the state may change by itself.
    pub retry_after_ms: Option<u64>,
    /// Calls in the current window.
    pub window_calls: u64,
    /// Failure ratio in the current window.
    pub failure_ratio: f64,
    /// How long the circuit has been in `state`, in milliseconds of the
    /// policy's clock (`None` when the policy does not track it). A status
    /// page turns it into "open since 09:41".
    pub in_state_ms: Option<u64>,
}

/// Decides which models may be called, from the outcomes of real calls and
/// probes. `admit` is on the hot path: synchronous, `&self`, no I/O, and no
/// lock that many threads would contend on.
pub trait HealthPolicy: Send + Sync + fmt::Debug {
    /// The config `type` name.
    fn name(&self) -> &str;

    /// May this model be called now?
    fn admit(&self, model: ModelIndex) -> Admission;

    /// The outcome of a call this policy admitted. Every `Admit` is followed
    /// by exactly one `record` with its permit.
    fn record(
        &self,
        model: ModelIndex,
        permit: Permit,
        outcome: CallOutcome,
    ) -> Option<HealthTransition>;

    /// The outcome of a background probe. A success closes an open circuit
    /// and re-enables a disabled model.
    fn record_probe(
        &self,
        model: ModelIndex,
        result: Result<Duration, ProbeFailure>,
    ) -> Option<HealthTransition>;

    /// Models that want a probe now: open, half-open, cooling down or
    /// disabled ones, and those without traffic for `idle`. A healthy,
    /// busy model is never listed.
    fn probe_targets(&self, idle: Duration, out: &mut Vec<ModelIndex>);

    /// The model's current health.
    fn snapshot(&self, model: ModelIndex) -> HealthSnapshot;

    /// Whether a call of `model` that just failed is part of an outage in
    /// progress rather than a blip: then the Router falls over at once
    /// instead of retrying the same model (a Retry-After the upstream sent
    /// is still honoured). `previous_failed` is the Router's own memory:
    /// whether the model's call before this one, on any route and for any
    /// request, failed too. The default trusts it; a policy with a better
    /// view of the model may override it.
    fn outage_in_progress(&self, model: ModelIndex, previous_failed: bool) -> bool {
        let _ = model;
        previous_failed
    }
}

fn _health_is_object_safe(_: &dyn HealthPolicy) {}
