//! Step 5 of the map, recording: every outcome of a request reaches health,
//! latency stats, budget and rate-limit settlement, the event sinks and the
//! request's trace (a [`RequestTrace`](crate::trace::RequestTrace): each
//! upstream call, each skip, the end) through [`Recorder`], whether the
//! request is complete or streamed. A new sink (OpenTelemetry, fleet state)
//! is added here, once.
//!
//! The Router also keeps one fact of its own here: whether each model's
//! previous call failed (see [`Recorder::call_failed`]). The route's
//! [`HealthPolicy`](crate::HealthPolicy) reads it through
//! [`HealthPolicy::outage_in_progress`](crate::HealthPolicy::outage_in_progress)
//! and may override it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::run::{RunShared, RunState};
use crate::budget::Reservation;
use crate::chat::{ChatRequest, Usage};
use crate::error::{AttemptOutcome, HealthEffect, ProviderError, SkipReason};
use crate::events::{Event, FallbackEvent, RequestFinished};
use crate::health::{CallOutcome, Permit};
use crate::latency::LatencyKind;
use crate::model::ModelIndex;
use crate::rate_limit::{RateHold, RateUse};
use crate::trace::{CallEnd, CallStart, CallTrace, Operation, ResponseFacts};

use super::guard::{BudgetHold, CallGuard};

/// Records the outcomes of one request. A view of the request's shared
/// state: cheap to make, nothing to keep.
pub(crate) struct Recorder<'a> {
    shared: &'a RunShared,
}

impl RunShared {
    /// Where this request's outcomes are recorded.
    pub(crate) fn recorder(&self) -> Recorder<'_> {
        Recorder { shared: self }
    }
}

impl Recorder<'_> {
    /// Tells the route's health policy how an admitted call ended, and
    /// raises an event when the model's circuit changed.
    pub(crate) fn health(&self, index: ModelIndex, permit: Permit, outcome: CallOutcome) {
        let shared = self.shared;
        if let Some(transition) = shared
            .route
            .strategies
            .health
            .record(index, permit, outcome)
        {
            transition.log(shared.model_id(index), "circuit changed");
            shared.inner.emit(&Event::Health {
                model: shared.model_id(index),
                transition,
            });
        }
    }

    /// Settles a budget reservation and a rate-limit hold with what the
    /// call used (`None`: it used nothing that is known; the budget is
    /// released and the rate limits count no tokens for it).
    pub(crate) fn settle(
        &self,
        reservation: Reservation,
        rate: Option<RateHold>,
        usage: Option<&Usage>,
    ) {
        let shared = self.shared;
        let spec = shared.spec(reservation.model);
        shared
            .route
            .strategies
            .budget
            .settle(reservation, spec, &shared.facts(), usage);
        if let Some(hold) = rate {
            let tokens = usage.map_or(0, |u| {
                u64::from(u.prompt_tokens) + u64::from(u.completion_tokens)
            });
            self.rate_settle(hold, RateUse::Sent { tokens });
        }
    }

    /// Settles a rate-limit hold on the Router's limiter.
    pub(crate) fn rate_settle(&self, hold: RateHold, used: RateUse) {
        let shared = self.shared;
        if let Some(limiter) = &shared.inner.rate_limiter {
            limiter.settle(hold, shared.cx.caller.as_deref(), used);
        }
    }

    /// Raises the event of one upstream call.
    pub(crate) fn attempt(&self, index: ModelIndex, outcome: AttemptOutcome, duration: Duration) {
        let shared = self.shared;
        shared.inner.emit(&Event::Attempt {
            scenario: &shared.route.name,
            model: shared.model_id(index),
            outcome,
            duration,
        });
    }

    /// A model produced an answer (a complete one, or a stream's first
    /// output): feeds its latency estimate and clears its failed flag.
    pub(crate) fn answered(&self, index: ModelIndex, kind: LatencyKind, latency: Duration) {
        let inner = &self.shared.inner;
        inner.ctx.latency.observe(index, kind, latency);
        inner.last_failed[index].store(false, Ordering::Relaxed);
    }

    /// The trace of an upstream call about to start at `level` after
    /// `retry` same-model retries, sending `request`; `None` when the
    /// request is not traced.
    pub(crate) fn call_started(
        &self,
        index: ModelIndex,
        level: usize,
        retry: u32,
        request: &ChatRequest,
    ) -> Option<Box<dyn CallTrace>> {
        let shared = self.shared;
        let trace = shared.cx.trace.as_ref()?;
        Some(trace.call_started(&CallStart {
            scenario: &shared.route.name,
            model: shared.spec(index),
            operation: if shared.embeddings.is_some() {
                Operation::Embeddings
            } else {
                Operation::Chat
            },
            fallback_level: level,
            retry,
            stream: shared.stream,
            request,
        }))
    }

    /// A model at `level` was not called, for `reason`.
    pub(crate) fn skipped(&self, index: ModelIndex, level: usize, reason: SkipReason) {
        if let Some(trace) = &self.shared.cx.trace {
            trace.skipped(self.shared.model_id(index), level, reason);
        }
    }

    /// A complete call answered in `latency` and used `usage`; `response`
    /// is what it answered, for a traced call.
    pub(crate) fn complete_succeeded(
        &self,
        index: ModelIndex,
        mut call: CallGuard,
        hold: BudgetHold,
        latency: Duration,
        usage: &Usage,
        response: Option<ResponseFacts<'_>>,
    ) {
        call.end_trace(&CallEnd {
            outcome: AttemptOutcome::Succeeded,
            duration: latency,
            first_output: None,
            status: None,
            response,
        });
        call.finish(CallOutcome::Success { latency });
        self.answered(index, LatencyKind::Total, latency);
        self.attempt(index, AttemptOutcome::Succeeded, latency);
        hold.settle(Some(usage));
    }

    /// A stream finished properly after `total`; health hears of its time
    /// to first token. `response` is what it answered, for a traced call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn stream_succeeded(
        &self,
        index: ModelIndex,
        mut call: CallGuard,
        hold: BudgetHold,
        first_token: Duration,
        total: Duration,
        usage: &Usage,
        response: Option<ResponseFacts<'_>>,
    ) {
        call.end_trace(&CallEnd {
            outcome: AttemptOutcome::Succeeded,
            duration: total,
            first_output: Some(first_token),
            status: None,
            response,
        });
        call.finish(CallOutcome::Success {
            latency: first_token,
        });
        hold.settle(Some(usage));
        self.attempt(index, AttemptOutcome::Succeeded, total);
    }

    /// A call failed after `elapsed`. Returns whether the failure is an
    /// outage in progress rather than a blip worth a same-model retry: by
    /// default, whether the model's previous call (on any route of this
    /// Router, any request) failed too; the route's health policy has the
    /// last word.
    pub(crate) fn call_failed(
        &self,
        index: ModelIndex,
        mut call: CallGuard,
        error: &ProviderError,
        elapsed: Duration,
    ) -> bool {
        call.end_trace(&CallEnd {
            outcome: AttemptOutcome::Failed(error.kind),
            duration: elapsed,
            first_output: call.first_output,
            status: error.status,
            response: None,
        });
        call.finish(CallOutcome::Failure {
            kind: error.kind,
            retry_after: error.retry_after,
            latency: elapsed,
        });
        self.attempt(index, AttemptOutcome::Failed(error.kind), elapsed);
        let shared = self.shared;
        if error.kind.health_effect() != HealthEffect::None {
            shared.inner.ctx.latency.note_failure(index);
        }
        let previous_failed = shared.inner.last_failed[index].swap(true, Ordering::Relaxed);
        shared
            .route
            .strategies
            .health
            .outage_in_progress(index, previous_failed)
    }

    /// Emits the request's end and, when a backup answered, its fallback.
    pub(crate) fn finished(
        &self,
        state: &RunState,
        answered: Option<(ModelIndex, usize)>,
        error: Option<&'static str>,
        ended: Instant,
    ) {
        let shared = self.shared;
        let latency = ended.saturating_duration_since(shared.started);
        let model_used = answered.map(|(index, _)| shared.model_id(index));
        let finished = RequestFinished {
            scenario: &shared.route.name,
            model_used: model_used.map(|m| &**m),
            fallback_level: answered.map(|(_, level)| level),
            error,
            latency,
            upstream_attempts: state.upstream_calls,
            stream: shared.stream,
        };
        shared.inner.emit(&Event::RequestFinished(&finished));
        if let Some(trace) = &shared.cx.trace {
            trace.finished(&finished);
        }
        if let (Some((index, level)), Some(primary)) = (answered, state.primary())
            && level > 0
        {
            // The primary's problem: the first failure or skip; a primary
            // that was merely outrun by a hedge is `hedged`.
            let reason = state
                .trail
                .iter()
                .map(|a| a.outcome)
                .find(|o| !matches!(o, AttemptOutcome::Succeeded | AttemptOutcome::Cancelled))
                .map_or("hedged", AttemptOutcome::as_str);
            let event = FallbackEvent {
                timestamp_ms: shared.inner.ctx.clock.unix_ms(),
                scenario: shared.route.name.clone(),
                primary: shared.model_id(primary).clone(),
                model_used: shared.model_id(index).clone(),
                reason,
                level,
                latency,
            };
            // One line per request would flood the log in an outage: the
            // transitions that cause fallbacks and the gateway's periodic
            // summary are logged at info/warn instead.
            tracing::debug!(
                scenario = %event.scenario,
                primary = %event.primary,
                model_used = %event.model_used,
                reason,
                level,
                "fallback"
            );
            shared.inner.emit(&Event::Fallback(&event));
        }
    }
}
