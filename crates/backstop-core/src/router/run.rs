//! One request's run down its chain: what stays fixed for the request
//! ([`RunShared`]), what changes as it goes ([`RunState`]), and the loop
//! that ties the steps of the map together — choose the next candidate
//! ([`candidates`](super::candidates)), run one attempt with its retries
//! ([`attempt`](super::attempt)), let the failure table decide what follows
//! ([`decide`](super::decide)), or hedge ([`hedge`](super::hedge)) — until
//! a model answers or none is left. Complete and streamed requests both
//! start here.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use smallvec::SmallVec;
use tokio::time::Instant;

use super::attempt::{Mode, ModelRun, Requests, run_model};
use super::decide::Next;
use super::{RequestContext, Route, RouterInner, candidates};
use crate::chat::ChatRequest;
use crate::error::{
    AllModelsFailed, Attempt, AttemptOutcome, FailureKind, ProviderError, RouteError, SkipReason,
};
use crate::facts::RequestFacts;
use crate::model::{ModelIndex, ModelSpec};
use crate::rate_limit::{OverRateLimit, RateScope};

/// What stays fixed for the whole request; shared by every call of it.
pub(crate) struct RunShared {
    pub(crate) inner: Arc<RouterInner>,
    pub(crate) route: Arc<Route>,
    pub(crate) request: ChatRequest,
    /// The embeddings request, for an embeddings run (`request` then only
    /// measures it).
    pub(crate) embeddings: Option<crate::embeddings::EmbeddingsRequest>,
    pub(crate) cx: RequestContext,
    pub(crate) prompt_tokens: u32,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) stream: bool,
    tools: bool,
    /// When the request started (the Router measures durations and
    /// deadlines on tokio's clock; strategies read the injected Clock).
    pub(crate) started: Instant,
    /// End-to-end deadline.
    pub(crate) deadline: Instant,
    /// Set while the losers of a hedge are dropped: their calls stayed
    /// silent past `hedge_after`, and health hears of them as timeouts, so
    /// a hung primary's circuit opens even when hedging hides it.
    pub(crate) dropping_hedge_losers: AtomicBool,
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
            embeddings: None,
            cx,
            started,
            deadline,
            dropping_hedge_losers: AtomicBool::new(false),
        })
    }

    /// The shared part of an embeddings run: `measure` stands for the
    /// request in the candidate filters (its prompt is `prompt_tokens`, its
    /// output none).
    pub(crate) fn for_embeddings(
        inner: Arc<RouterInner>,
        route: Arc<Route>,
        measure: ChatRequest,
        request: crate::embeddings::EmbeddingsRequest,
        prompt_tokens: u32,
        cx: RequestContext,
    ) -> Arc<Self> {
        let started = Instant::now();
        let deadline = started + route.policy.timeouts.total;
        Arc::new(Self {
            prompt_tokens,
            max_tokens: Some(0),
            tools: false,
            stream: false,
            inner,
            route,
            request: measure,
            embeddings: Some(request),
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

    pub(crate) fn model_id(&self, index: ModelIndex) -> &Arc<str> {
        &self.inner.entries[index].id
    }
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

/// What a model run means for the request.
pub(crate) enum Step<W> {
    Won(Winner<W>),
    Continue,
    Stop(RouteError),
}

/// The mutable part of a run: where in the order it is and what happened.
pub(crate) struct RunState {
    /// The chain in the order this request tries it.
    pub(crate) order: SmallVec<[ModelIndex; 8]>,
    /// The next position of `order` to consider.
    pub(crate) cursor: usize,
    /// After a context-length error, only windows larger than this.
    pub(crate) min_window: u32,
    /// The last upstream failure was a context-length error.
    context_error: Option<(Arc<str>, ProviderError)>,
    pub(crate) trail: Vec<Attempt>,
    pub(crate) first_cause: Option<ProviderError>,
    pub(crate) upstream_calls: u32,
    /// The latest time the run knows of: its start, or the end of its last
    /// call (read once per call rather than at every step).
    pub(crate) now: Instant,
    /// A model was admitted, so the caller's rate limits were checked and
    /// one request counted on them.
    pub(crate) caller_charged: bool,
    /// The caller's own rate limit refused the request.
    pub(crate) caller_refused: Option<OverRateLimit>,
    /// Of the models skipped for their rate limit, the refusal that ends
    /// soonest.
    pub(crate) rate_refused: Option<OverRateLimit>,
}

impl RunState {
    pub(crate) fn new(shared: &RunShared) -> Self {
        Self {
            order: candidates::order(shared),
            cursor: 0,
            min_window: 0,
            context_error: None,
            trail: Vec::with_capacity(2),
            first_cause: None,
            upstream_calls: 0,
            now: shared.started,
            caller_charged: false,
            caller_refused: None,
            rate_refused: None,
        }
    }

    /// The model tried first.
    pub(crate) fn primary(&self) -> Option<ModelIndex> {
        self.order.first().copied()
    }

    /// Takes a model run's trail and result into the request's.
    pub(crate) fn absorb<W>(&mut self, shared: &RunShared, run: ModelRun<W>) -> Step<W> {
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
        if let Some(over) = self.caller_refused.take() {
            return RouteError::RateLimited {
                scenario: shared.route.name.clone(),
                scope: RateScope::Caller,
                cause: over.cause,
                limit: over.limit,
                retry_after: over.retry_after,
                attempts,
            };
        }
        if let Some(over) = self.rate_refused
            && !attempts.is_empty()
            && attempts
                .iter()
                .all(|a| a.outcome == AttemptOutcome::Skipped(SkipReason::OverRateLimit))
        {
            return RouteError::RateLimited {
                scenario: shared.route.name.clone(),
                scope: RateScope::Model,
                cause: over.cause,
                limit: over.limit,
                retry_after: over.retry_after,
                attempts,
            };
        }
        if let Some((model, error)) = self.context_error.take() {
            return RouteError::Rejected {
                model,
                error,
                attempts,
            };
        }
        if !attempts.is_empty() && attempts.iter().all(|a| is_window_problem(a.outcome)) {
            return RouteError::NoWindowFits {
                scenario: shared.route.name.clone(),
                prompt_tokens: shared.prompt_tokens,
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
            let Some(admitted) = self.next_candidate(shared).await else {
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
}

/// Whether a trail entry says only that the request is too long for the
/// model.
fn is_window_problem(outcome: AttemptOutcome) -> bool {
    matches!(
        outcome,
        AttemptOutcome::Skipped(SkipReason::ContextWindow)
            | AttemptOutcome::Failed(FailureKind::ContextLength)
    )
}

/// The short name of a route error, for events and metrics.
pub(crate) fn error_name(error: &RouteError) -> &'static str {
    match error {
        RouteError::UnknownRoute(_) => "unknown_route",
        RouteError::Rejected { .. } => "rejected",
        RouteError::AllFailed(_) => "all_failed",
        RouteError::NoWindowFits { .. } => "no_window_fits",
        RouteError::StreamAborted { .. } => "stream_aborted",
        RouteError::RateLimited { .. } => "rate_limited",
    }
}
