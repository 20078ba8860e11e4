//! Step 3 of the map, one attempt: calling one admitted model under its
//! deadlines (attempt, phase, end-to-end), classifying the result through
//! the failure table (step 4, [`decide`](super::decide)), and retrying the
//! same model where the table allows. Complete and streamed requests share
//! this through the [`Mode`] trait: each says how to open a call and what
//! a success hands back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;
use tokio::time::Instant;

use super::candidates::Admitted;
use super::decide::{Next, decide};
use super::guard::{BudgetHold, CallGuard};
use super::run::RunShared;
use crate::chat::ChatRequest;
use crate::error::{Attempt, AttemptOutcome, ProviderError};
use crate::health::{Admission, CallOutcome};
use crate::model::{ModelIndex, ModelSpec};
use crate::provider::{Call, Provider};

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
    pub(crate) fn for_model(&self, spec: &ModelSpec) -> Option<Arc<ChatRequest>> {
        self.prefill
            .as_ref()
            .filter(|_| spec.capabilities.assistant_prefill)
            .cloned()
    }
}

/// The outcome of one model's calls (its retries included).
pub(crate) struct ModelRun<W> {
    pub(crate) index: ModelIndex,
    pub(crate) level: usize,
    pub(crate) attempts: SmallVec<[Attempt; 2]>,
    pub(crate) calls: u32,
    pub(crate) continues: bool,
    /// When its last call ended.
    pub(crate) ended: Instant,
    pub(crate) result: Result<W, (ProviderError, Next)>,
}

fn jitter() -> f64 {
    rand::random::<f64>()
}

/// Calls one model, retrying it as the failure table allows. The first
/// call starts at `start`; `prefill` replaces the caller's request.
pub(crate) async fn run_model<M: Mode>(
    shared: Arc<RunShared>,
    admitted: Admitted,
    prefill: Option<Arc<ChatRequest>>,
    start: Instant,
) -> ModelRun<M::Won> {
    let Admitted {
        index,
        level,
        mut permit,
        mut hold,
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
        let trace = shared
            .recorder()
            .call_started(index, level, retries_done, request);
        let guard = CallGuard::new(&shared, index, permit, call_start).traced_by(trace);
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
            headers: guard.headers(),
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
                let outage = shared.recorder().call_failed(index, guard, &error, elapsed);
                attempts.push(Attempt::failed(
                    shared.model_id(index).clone(),
                    &error,
                    elapsed,
                ));
                let next = match decide(&error, retries_done, policy, jitter(), outage) {
                    Next::Retry(wait) if ended + wait < shared.deadline => {
                        call_start = if wait.is_zero() {
                            ended
                        } else {
                            tokio::time::sleep(wait).await;
                            Instant::now()
                        };
                        match shared.route.strategies.health.admit(index) {
                            // A retry is one more upstream request: the
                            // model's quota must have room for it too.
                            Admission::Admit(p) if hold.retake_rate(index).await => {
                                permit = p;
                                retries_done += 1;
                                continue;
                            }
                            Admission::Admit(p) => {
                                shared.recorder().health(index, p, CallOutcome::Cancelled);
                                Next::FallOver
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
