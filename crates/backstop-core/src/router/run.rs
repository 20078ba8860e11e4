//! One request's run down its chain: candidate filtering, per-model calls
//! with same-model retries, the fall-over decisions, and hedging. Shared by
//! complete and streaming requests through the [`Mode`] trait.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use smallvec::SmallVec;
use tokio::time::Instant;

use super::decide::{Next, decide};
use super::{Route, RouterInner};
use crate::budget::Reservation;
use crate::chat::{ChatRequest, ChatResponse, Usage, estimate_tokens};
use crate::error::{
    AllModelsFailed, Attempt, AttemptOutcome, FailureKind, ProviderError, RouteError, SkipReason,
};
use crate::events::{Event, FallbackEvent, RequestFinished};
use crate::facts::RequestFacts;
use crate::health::{Admission, CallOutcome, Permit};
use crate::latency::LatencyKind;
use crate::model::{ModelIndex, ModelSpec};
use crate::provider::{Call, Provider};
use crate::result::{Annotation, FallbackResult, RouteSummary};
use crate::selector::Candidate;

use super::RequestContext;

/// What stays fixed for the whole request; shared by every call of it.
pub(crate) struct RunShared {
    pub(crate) inner: Arc<RouterInner>,
    pub(crate) route: Arc<Route>,
    pub(crate) request: ChatRequest,
    pub(crate) cx: RequestContext,
    pub(crate) prompt_tokens: u32,
    max_tokens: Option<u32>,
    stream: bool,
    tools: bool,
    /// When the request started (the Router measures durations and
    /// deadlines on tokio's clock; strategies read the injected Clock).
    pub(crate) started: Instant,
    /// End-to-end deadline.
    pub(crate) deadline: Instant,
    /// Set while the losers of a hedge are dropped: their calls stayed
    /// silent past `hedge_after`, and health hears of them as timeouts, so
    /// a hung primary's circuit opens even when hedging hides it.
    dropping_hedge_losers: AtomicBool,
}

impl RunShared {
    pub(crate) fn new(
        inner: Arc<RouterInner>,
        route: Arc<Route>,
        request: ChatRequest,
        cx: RequestContext,
        stream: bool,
    ) -> Arc<Self> {
        let started = Instant::now();
        let deadline = started + route.policy.timeouts.total;
        Arc::new(Self {
            prompt_tokens: request.estimated_prompt_tokens(),
            max_tokens: request.requested_max_tokens(),
            tools: request.has_tools(),
            stream,
            inner,
            route,
            request,
            cx,
            started,
            deadline,
            dropping_hedge_losers: AtomicBool::new(false),
        })
    }

    pub(crate) fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            scenario: &self.route.name,
            caller: self.cx.caller.as_deref(),
            prompt_tokens: self.prompt_tokens,
            max_tokens: self.max_tokens,
            stream: self.stream,
            tools: self.tools,
        }
    }
    pub(crate) fn spec(&self, index: ModelIndex) -> &ModelSpec {
        self.inner.spec(index)
    }

    /// Records that a call to the model failed, and says whether its
    /// previous call failed too: two failures in a row are an outage in
    /// progress rather than a blip (a busy model with rare errors still
    /// gets its retry).
    pub(crate) fn note_model_failed(&self, index: ModelIndex) -> bool {
        self.inner.last_failed[index].swap(true, Ordering::Relaxed)
    }

    /// Records that a call to the model succeeded.
    pub(crate) fn note_model_answered(&self, index: ModelIndex) {
        self.inner.last_failed[index].store(false, Ordering::Relaxed);
    }

    pub(crate) fn model_id(&self, index: ModelIndex) -> &Arc<str> {
        &self.inner.entries[index].id
    }

    fn record_health(&self, index: ModelIndex, permit: Permit, outcome: CallOutcome) {
        if let Some(transition) = self.route.strategies.health.record(index, permit, outcome) {
            tracing::info!(
                model = %self.model_id(index),
                from = transition.from.as_str(),
                to = transition.to.as_str(),
                cause = transition.cause.map(FailureKind::as_str),
                "circuit changed"
            );
            self.inner.emit(&Event::Health {
                model: self.model_id(index),
                transition,
            });
        }
    }

    pub(crate) fn emit_attempt(
        &self,
        index: ModelIndex,
        outcome: AttemptOutcome,
        duration: Duration,
    ) {
        self.inner.emit(&Event::Attempt {
            scenario: &self.route.name,
            model: self.model_id(index),
            outcome,
            duration,
        });
    }

    /// Emits the request's end and, when a backup answered, its fallback.
    pub(crate) fn emit_finished(
        &self,
        state: &RunState,
        answered: Option<(ModelIndex, usize)>,
        error: Option<&'static str>,
        ended: Instant,
    ) {
        let latency = ended.saturating_duration_since(self.started);
        let model_used = answered.map(|(index, _)| self.model_id(index));
        self.inner.emit(&Event::RequestFinished(&RequestFinished {
            scenario: &self.route.name,
            model_used: model_used.map(|m| &**m),
            fallback_level: answered.map(|(_, level)| level),
            error,
            latency,
            upstream_attempts: state.upstream_calls,
            stream: self.stream,
        }));
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
                timestamp_ms: self.inner.ctx.clock.unix_ms(),
                scenario: self.route.name.clone(),
                primary: self.model_id(primary).clone(),
                model_used: self.model_id(index).clone(),
                reason,
                level,
                latency,
            };
            tracing::warn!(
                scenario = %event.scenario,
                primary = %event.primary,
                model_used = %event.model_used,
                reason,
                level,
                "fallback"
            );
            self.inner.emit(&Event::Fallback(&event));
        }
    }

    /// The annotation of an answer by `index` at `level`.
    pub(crate) fn annotate(&self, state: &RunState, index: ModelIndex, level: usize) -> Annotation {
        let primary = state.primary().unwrap_or(index);
        self.route.strategies.result.annotate(&RouteSummary {
            scenario: &self.route.name,
            primary: self.model_id(primary),
            model_used: self.model_id(index),
            fallback_level: level,
            attempts: &state.trail,
        })
    }
}

/// Holds a model's budget reservation until it is settled; a hold dropped
/// unsettled (a cancelled call) is released.
pub(crate) struct BudgetHold {
    shared: Arc<RunShared>,
    reservation: Option<Reservation>,
}

impl BudgetHold {
    pub(crate) fn settle(mut self, usage: Option<&Usage>) {
        self.settle_inner(usage);
    }

    fn settle_inner(&mut self, usage: Option<&Usage>) {
        if let Some(reservation) = self.reservation.take() {
            let spec = self.shared.spec(reservation.model);
            self.shared.route.strategies.budget.settle(
                reservation,
                spec,
                &self.shared.facts(),
                usage,
            );
        }
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.settle_inner(None);
    }
}

/// One admitted upstream call; reports its outcome to health exactly once,
/// as `Cancelled` if dropped unfinished.
pub(crate) struct CallGuard {
    shared: Arc<RunShared>,
    index: ModelIndex,
    permit: Option<Permit>,
    started: Instant,
}

impl CallGuard {
    fn new(shared: &Arc<RunShared>, index: ModelIndex, permit: Permit, started: Instant) -> Self {
        Self {
            shared: shared.clone(),
            index,
            permit: Some(permit),
            started,
        }
    }

    /// Time from the start of the call to `now`.
    pub(crate) fn elapsed_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    pub(crate) fn finish(mut self, outcome: CallOutcome) {
        if let Some(permit) = self.permit.take() {
            self.shared.record_health(self.index, permit, outcome);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let elapsed = self.elapsed_at(Instant::now());
            // A loser that stayed silent past hedge_after timed out, as far
            // as health goes; one started just before the winner answered
            // merely lost a race.
            let timed_out = self.shared.dropping_hedge_losers.load(Ordering::Relaxed)
                && self
                    .shared
                    .route
                    .policy
                    .hedge_after
                    .is_some_and(|hedge| elapsed >= hedge);
            let outcome = if timed_out {
                CallOutcome::Failure {
                    kind: FailureKind::Timeout,
                    retry_after: None,
                    latency: elapsed,
                }
            } else {
                CallOutcome::Cancelled
            };
            self.shared.record_health(self.index, permit, outcome);
        }
    }
}

/// A model that passed the filters, with its first admission and its
/// budget held.
pub(crate) struct Admitted {
    index: ModelIndex,
    level: usize,
    permit: Permit,
    hold: BudgetHold,
}

/// The deadlines of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallDeadlines {
    /// When the call started.
    pub(crate) start: Instant,
    /// End of the whole attempt.
    pub(crate) attempt: Instant,
    /// The request's end-to-end deadline.
    pub(crate) total: Instant,
    /// The configured attempt and total limits, for messages.
    pub(crate) limits: (Duration, Duration),
}

impl CallDeadlines {
    /// The earlier of `limit` from `from` and the attempt's end, with a
    /// name for the phase whose deadline it is.
    pub(crate) fn phase(
        &self,
        from: Instant,
        phase: &'static str,
        limit: Duration,
    ) -> (Instant, &'static str, Duration) {
        let start = from;
        let own = start + limit;
        if own <= self.attempt {
            (own, phase, limit)
        } else if self.attempt < self.total {
            (self.attempt, "answer in the attempt", self.limits.0)
        } else {
            (
                self.total,
                "answer before the request deadline",
                self.limits.1,
            )
        }
    }
}

/// How a request is served: complete or streamed.
pub(crate) trait Mode {
    /// What a successful provider call yields.
    type Opened: Send;
    /// What the run hands back for the winning model.
    type Won: Send;

    /// Calls the provider under the call's deadlines.
    fn open(
        shared: &RunShared,
        provider: &dyn Provider,
        call: Call<'_>,
        deadlines: CallDeadlines,
    ) -> impl Future<Output = Result<Self::Opened, ProviderError>> + Send;
    /// Records a success (it took `elapsed`) and turns it into the run's
    /// winner.
    fn accept(
        shared: &RunShared,
        index: ModelIndex,
        opened: Self::Opened,
        call: CallGuard,
        hold: BudgetHold,
        deadlines: CallDeadlines,
        elapsed: Duration,
    ) -> Self::Won;
}

/// The request a run may send instead of the caller's: after a cut stream,
/// the caller's with the partial answer as an assistant prefill, for models
/// that can take one.
pub(crate) struct Requests {
    pub(crate) prefill: Option<Arc<ChatRequest>>,
}

impl Requests {
    /// The caller's request, unchanged.
    pub(crate) const ORIGINAL: Requests = Requests { prefill: None };

    /// The prefill for this model (`None`: send the caller's request).
    fn for_model(&self, spec: &ModelSpec) -> Option<Arc<ChatRequest>> {
        self.prefill
            .as_ref()
            .filter(|_| spec.capabilities.assistant_prefill)
            .cloned()
    }
}

/// The outcome of one model's calls (its retries included).
pub(crate) struct ModelRun<W> {
    index: ModelIndex,
    level: usize,
    attempts: SmallVec<[Attempt; 2]>,
    calls: u32,
    continues: bool,
    /// When its last call ended.
    ended: Instant,
    result: Result<W, (ProviderError, Next)>,
}

/// The model that produced an answer.
pub(crate) struct Winner<W> {
    pub(crate) index: ModelIndex,
    pub(crate) level: usize,
    /// The winning call's entry in the trail.
    pub(crate) trail_entry: usize,
    /// It was sent the prefill request.
    pub(crate) continues: bool,
    pub(crate) won: W,
}

fn jitter() -> f64 {
    rand::random::<f64>()
}

/// Calls one model, retrying it as the failure table allows. The first
/// call starts at `start`; `prefill` replaces the caller's request.
async fn run_model<M: Mode>(
    shared: Arc<RunShared>,
    admitted: Admitted,
    prefill: Option<Arc<ChatRequest>>,
    start: Instant,
) -> ModelRun<M::Won> {
    let Admitted {
        index,
        level,
        mut permit,
        hold,
    } = admitted;
    let spec = shared.spec(index);
    let policy = &shared.route.policy;
    let request = prefill.as_deref().unwrap_or(&shared.request);
    let continues = prefill.is_some();
    let mut attempts = SmallVec::new();
    let mut retries_done = 0;
    let mut calls = 0;
    let mut call_start = start;
    loop {
        let guard = CallGuard::new(&shared, index, permit, call_start);
        let deadlines = CallDeadlines {
            start: call_start,
            attempt: (call_start + policy.timeouts.attempt).min(shared.deadline),
            total: shared.deadline,
            limits: (policy.timeouts.attempt, policy.timeouts.total),
        };
        let call = Call {
            scenario: &shared.route.name,
            model: spec,
            request,
            max_tokens: spec.effective_max_tokens(shared.max_tokens),
            connect_timeout: policy.timeouts.connect,
            request_id: shared.cx.request_id.as_deref(),
        };
        calls += 1;
        let result = {
            let _span = tracing::debug_span!("attempt", model = %shared.model_id(index), retry = retries_done).entered();
            M::open(&shared, &*shared.inner.entries[index].provider, call, deadlines)
        }
        .await;
        let ended = Instant::now();
        let elapsed = ended.saturating_duration_since(call_start);
        match result {
            Ok(opened) => {
                attempts.push(Attempt {
                    model: shared.model_id(index).clone(),
                    outcome: AttemptOutcome::Succeeded,
                    status: None,
                    duration: elapsed,
                    message: None,
                });
                let won = M::accept(&shared, index, opened, guard, hold, deadlines, elapsed);
                return ModelRun {
                    index,
                    level,
                    attempts,
                    calls,
                    continues,
                    ended,
                    result: Ok(won),
                };
            }
            Err(error) => {
                tracing::debug!(model = %shared.model_id(index), %error, "attempt failed");
                guard.finish(CallOutcome::Failure {
                    kind: error.kind,
                    retry_after: error.retry_after,
                    latency: elapsed,
                });
                shared.emit_attempt(index, AttemptOutcome::Failed(error.kind), elapsed);
                attempts.push(Attempt::failed(
                    shared.model_id(index).clone(),
                    &error,
                    elapsed,
                ));
                let next = match decide(
                    &error,
                    retries_done,
                    policy,
                    jitter(),
                    shared.note_model_failed(index),
                ) {
                    Next::Retry(wait) if ended + wait < shared.deadline => {
                        call_start = if wait.is_zero() {
                            ended
                        } else {
                            tokio::time::sleep(wait).await;
                            Instant::now()
                        };
                        match shared.route.strategies.health.admit(index) {
                            Admission::Admit(p) => {
                                permit = p;
                                retries_done += 1;
                                continue;
                            }
                            // The failure opened the circuit: no retry.
                            Admission::Reject { .. } => Next::FallOver,
                        }
                    }
                    Next::Retry(_) => Next::FallOver,
                    next => next,
                };
                return ModelRun {
                    index,
                    level,
                    attempts,
                    calls,
                    continues,
                    ended: call_start.max(ended),
                    result: Err((error, next)),
                };
            }
        }
    }
}

/// What a failed model run means for the request.
enum Step<W> {
    Won(Winner<W>),
    Continue,
    Stop(RouteError),
}

/// The mutable part of a run: where in the order it is and what happened.
pub(crate) struct RunState {
    order: SmallVec<[ModelIndex; 8]>,
    cursor: usize,
    /// After a context-length error, only windows larger than this.
    min_window: u32,
    /// The last upstream failure was a context-length error.
    context_error: Option<(Arc<str>, ProviderError)>,
    pub(crate) trail: Vec<Attempt>,
    pub(crate) first_cause: Option<ProviderError>,
    pub(crate) upstream_calls: u32,
    /// The latest time the run knows of: its start, or the end of its last
    /// call (read once per call rather than at every step).
    pub(crate) now: Instant,
}

impl RunState {
    pub(crate) fn new(shared: &RunShared) -> Self {
        let models = &shared.inner.ctx.models;
        let mut candidates: SmallVec<[Candidate<'_>; 8]> = shared
            .route
            .chain
            .iter()
            .enumerate()
            .map(|(position, &index)| Candidate {
                index,
                spec: &models[index],
                position,
            })
            .collect();
        shared
            .route
            .strategies
            .selector
            .order(&shared.facts(), &mut candidates);
        // Last resorts go behind everything else, whatever the selector
        // thought of them (a stable sort keeps its order otherwise).
        if candidates.iter().any(|c| c.spec.last_resort) {
            candidates.sort_by_key(|c| c.spec.last_resort);
        }
        Self {
            order: candidates.iter().map(|c| c.index).collect(),
            cursor: 0,
            min_window: 0,
            context_error: None,
            trail: Vec::with_capacity(2),
            first_cause: None,
            upstream_calls: 0,
            now: shared.started,
        }
    }

    /// The model tried first.
    pub(crate) fn primary(&self) -> Option<ModelIndex> {
        self.order.first().copied()
    }

    fn skip(&mut self, shared: &RunShared, index: ModelIndex, reason: SkipReason) {
        tracing::debug!(model = %shared.model_id(index), %reason, "skipped");
        self.trail
            .push(Attempt::skipped(shared.model_id(index).clone(), reason));
    }

    /// The next model that may serve the request, admitted and with its
    /// budget held; skipped ones go to the trail with their reason.
    fn next_candidate(&mut self, shared: &Arc<RunShared>) -> Option<Admitted> {
        let strategies = &shared.route.strategies;
        let facts = shared.facts();
        while let Some(&index) = self.order.get(self.cursor) {
            let level = self.cursor;
            self.cursor += 1;
            let spec = shared.spec(index);
            if self.now >= shared.deadline {
                self.skip(shared, index, SkipReason::Deadline);
                continue;
            }
            if facts.stream && !spec.capabilities.streaming {
                self.skip(shared, index, SkipReason::NoStreaming);
                continue;
            }
            if facts.tools && !spec.capabilities.tools {
                self.skip(shared, index, SkipReason::NoTools);
                continue;
            }
            // The prompt and the output bound the call will send must fit.
            let needed = facts
                .prompt_tokens
                .saturating_add(spec.effective_max_tokens(facts.max_tokens));
            if needed > spec.context_window || spec.context_window <= self.min_window {
                self.skip(shared, index, SkipReason::ContextWindow);
                continue;
            }
            let permit = match strategies.health.admit(index) {
                Admission::Admit(permit) => permit,
                Admission::Reject { .. } => {
                    self.skip(shared, index, SkipReason::CircuitOpen);
                    continue;
                }
            };
            match strategies.budget.reserve(index, spec, &facts) {
                Ok(reservation) => {
                    return Some(Admitted {
                        index,
                        level,
                        permit,
                        hold: BudgetHold {
                            shared: shared.clone(),
                            reservation: Some(reservation),
                        },
                    });
                }
                Err(over) => {
                    shared.record_health(index, permit, CallOutcome::Cancelled);
                    tracing::debug!(model = %shared.model_id(index), %over, "over budget");
                    self.skip(shared, index, SkipReason::OverBudget);
                }
            }
        }
        None
    }
    fn absorb<W>(&mut self, shared: &RunShared, run: ModelRun<W>) -> Step<W> {
        self.upstream_calls += run.calls;
        self.now = self.now.max(run.ended);
        self.trail.extend(run.attempts);
        match run.result {
            Ok(won) => Step::Won(Winner {
                index: run.index,
                level: run.level,
                trail_entry: self.trail.len() - 1,
                continues: run.continues,
                won,
            }),
            Err((error, next)) => {
                let model = shared.model_id(run.index).clone();
                match next {
                    Next::Stop => {
                        return Step::Stop(RouteError::Rejected {
                            model,
                            error,
                            attempts: std::mem::take(&mut self.trail),
                        });
                    }
                    Next::FallOverLarger => {
                        self.min_window =
                            self.min_window.max(shared.spec(run.index).context_window);
                        self.context_error = Some((model, error.clone()));
                    }
                    Next::FallOver | Next::Retry(_) => self.context_error = None,
                }
                self.note_failure(error);
                Step::Continue
            }
        }
    }

    /// Keeps the first real cause; later failures never replace it.
    pub(crate) fn note_failure(&mut self, error: ProviderError) {
        if self.first_cause.is_none() {
            self.first_cause = Some(error);
        }
    }

    /// The error when no model is left: the context-length error when that
    /// was the last word (no larger window could take the prompt), else
    /// every attempt with the first cause.
    pub(crate) fn exhausted(&mut self, shared: &RunShared) -> RouteError {
        let attempts = std::mem::take(&mut self.trail);
        if let Some((model, error)) = self.context_error.take() {
            return RouteError::Rejected {
                model,
                error,
                attempts,
            };
        }
        RouteError::AllFailed(AllModelsFailed {
            scenario: shared.route.name.clone(),
            attempts,
            first_cause: self.first_cause.clone(),
        })
    }

    /// Runs models until one produces an answer (the first output chunk,
    /// for streams), hedging when the route asks for it.
    pub(crate) async fn first_success<M: Mode>(
        &mut self,
        shared: &Arc<RunShared>,
        requests: &Requests,
    ) -> Result<Winner<M::Won>, RouteError> {
        if let Some(hedge_after) = shared.route.policy.hedge_after {
            return self
                .first_success_hedged::<M>(shared, requests, hedge_after)
                .await;
        }
        loop {
            let Some(admitted) = self.next_candidate(shared) else {
                return Err(self.exhausted(shared));
            };
            let prefill = requests.for_model(shared.spec(admitted.index));
            let run = run_model::<M>(shared.clone(), admitted, prefill, self.now).await;
            match self.absorb(shared, run) {
                Step::Won(winner) => return Ok(winner),
                Step::Stop(error) => return Err(error),
                Step::Continue => {}
            }
        }
    }

    /// Like [`Self::first_success`], but when the model in flight has
    /// produced nothing after `hedge_after`, the next one starts beside it;
    /// the first to answer wins and the other is cancelled and recorded.
    async fn first_success_hedged<M: Mode>(
        &mut self,
        shared: &Arc<RunShared>,
        requests: &Requests,
        hedge_after: Duration,
    ) -> Result<Winner<M::Won>, RouteError> {
        let mut in_flight = FuturesUnordered::new();
        let mut started: SmallVec<[(ModelIndex, Instant); 2]> = SmallVec::new();
        let mut hedge_at: Option<Instant> = None;
        loop {
            if in_flight.is_empty() {
                let Some(admitted) = self.next_candidate(shared) else {
                    return Err(self.exhausted(shared));
                };
                let prefill = requests.for_model(shared.spec(admitted.index));
                started.push((admitted.index, self.now));
                in_flight.push(run_model::<M>(shared.clone(), admitted, prefill, self.now));
                hedge_at = Some(self.now + hedge_after);
            }
            let hedge_timer = async {
                match hedge_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(run) = in_flight.next() => {
                    started.retain(|(index, _)| *index != run.index);
                    if run.result.is_ok() {
                        // The losers were tried before the winner answered:
                        // their entries come first in the trail.
                        let now = Instant::now().max(self.now);
                        for (index, at) in started.drain(..) {
                            let duration = now.saturating_duration_since(at);
                            shared.emit_attempt(index, AttemptOutcome::Cancelled, duration);
                            self.trail.push(Attempt {
                                model: shared.model_id(index).clone(),
                                outcome: AttemptOutcome::Cancelled,
                                status: None,
                                duration,
                                message: None,
                            });
                            self.upstream_calls += 1;
                        }
                    }
                    match self.absorb(shared, run) {
                        Step::Won(winner) => {
                            // Dropping the losers cancels them; their guards
                            // report the timeouts and release budget holds.
                            shared.dropping_hedge_losers.store(true, Ordering::Relaxed);
                            drop(in_flight);
                            shared.dropping_hedge_losers.store(false, Ordering::Relaxed);
                            return Ok(winner);
                        }
                        Step::Stop(error) => return Err(error),
                        Step::Continue => {
                            hedge_at = (!in_flight.is_empty()).then(|| self.now + hedge_after);
                        }
                    }
                }
                () = hedge_timer => {
                    hedge_at = None;
                    self.now = Instant::now();
                    if let Some(admitted) = self.next_candidate(shared) {
                        tracing::debug!(model = %shared.model_id(admitted.index), "hedging");
                        let prefill = requests.for_model(shared.spec(admitted.index));
                        started.push((admitted.index, self.now));
                        in_flight.push(run_model::<M>(shared.clone(), admitted, prefill, self.now));
                    }
                }
            }
        }
    }
}

/// Complete (non-streaming) requests.
pub(crate) struct CompleteMode;

impl Mode for CompleteMode {
    type Opened = ChatResponse;
    type Won = ChatResponse;

    async fn open(
        shared: &RunShared,
        provider: &dyn Provider,
        call: Call<'_>,
        deadlines: CallDeadlines,
    ) -> Result<ChatResponse, ProviderError> {
        let (deadline, phase, limit) = deadlines.phase(
            deadlines.start,
            "answer",
            shared.route.policy.timeouts.attempt,
        );
        match tokio::time::timeout_at(deadline, provider.complete(call)).await {
            Err(_) => Err(ProviderError::timeout(phase, limit)),
            Ok(Ok(response)) if response.choices.is_empty() => Err(ProviderError::new(
                FailureKind::InvalidResponse,
                "the response has no choices",
            )),
            Ok(result) => result,
        }
    }

    fn accept(
        shared: &RunShared,
        index: ModelIndex,
        response: ChatResponse,
        call: CallGuard,
        hold: BudgetHold,
        _deadlines: CallDeadlines,
        latency: Duration,
    ) -> ChatResponse {
        call.finish(CallOutcome::Success { latency });
        shared
            .inner
            .ctx
            .latency
            .observe(index, LatencyKind::Total, latency);
        shared.emit_attempt(index, AttemptOutcome::Succeeded, latency);
        shared.note_model_answered(index);
        // An answer without usage still cost something: charge an estimate.
        let estimated;
        let usage = match &response.usage {
            Some(usage) => usage,
            None => {
                estimated = Usage::new(shared.prompt_tokens, estimate_tokens(&response.text()));
                &estimated
            }
        };
        hold.settle(Some(usage));
        response
    }
}

/// Serves a complete request.
pub(crate) async fn complete(
    inner: Arc<RouterInner>,
    route: Arc<Route>,
    request: ChatRequest,
    cx: RequestContext,
) -> Result<FallbackResult, RouteError> {
    let shared = RunShared::new(inner, route, request, cx, false);
    let mut state = RunState::new(&shared);
    match state
        .first_success::<CompleteMode>(&shared, &Requests::ORIGINAL)
        .await
    {
        Ok(winner) => {
            let model_used = shared.model_id(winner.index).clone();
            let mut response = winner.won;
            response.model.clear();
            response.model.push_str(&model_used);
            let annotation = shared.annotate(&state, winner.index, winner.level);
            shared.emit_finished(&state, Some((winner.index, winner.level)), None, state.now);
            Ok(FallbackResult {
                response,
                model_used,
                fallback_level: winner.level,
                attempts: std::mem::take(&mut state.trail),
                warning: annotation.warning,
                limitation: annotation.limitation,
            })
        }
        Err(error) => {
            shared.emit_finished(&state, None, Some(error_name(&error)), state.now);
            Err(error)
        }
    }
}

/// The short name of a route error, for events and metrics.
pub(crate) fn error_name(error: &RouteError) -> &'static str {
    match error {
        RouteError::UnknownRoute(_) => "unknown_route",
        RouteError::Rejected { .. } => "rejected",
        RouteError::AllFailed(_) => "all_failed",
        RouteError::StreamAborted { .. } => "stream_aborted",
    }
}
