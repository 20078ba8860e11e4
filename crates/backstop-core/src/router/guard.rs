//! The guards: what keeps the books straight when a call is abandoned.
//! A [`CallGuard`] reports every admitted call to health exactly once, and a
//! [`BudgetHold`] settles every budget reservation exactly once, even when
//! the future holding them is dropped (a hedge won, the caller left). Both
//! report through the [`Recorder`](super::record::Recorder). A call's
//! [`CallTrace`], when the request is traced, rides in its `CallGuard` and
//! is ended once too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::run::RunShared;
use crate::budget::Reservation;
use crate::chat::Usage;
use crate::error::{AttemptOutcome, FailureKind};
use crate::health::{CallOutcome, Permit};
use crate::model::ModelIndex;
use crate::rate_limit::{RateCall, RateHold, RateUse};
use crate::trace::{CallEnd, CallTrace};

/// Holds a model's budget reservation and its rate-limit hold until they
/// are settled; a hold dropped unsettled (a cancelled call) is settled as
/// a call that used nothing known.
pub(crate) struct BudgetHold {
    shared: Arc<RunShared>,
    reservation: Option<(Reservation, Option<RateHold>)>,
}

impl BudgetHold {
    pub(crate) fn new(
        shared: &Arc<RunShared>,
        reservation: Reservation,
        rate: Option<RateHold>,
    ) -> Self {
        Self {
            shared: shared.clone(),
            reservation: Some((reservation, rate)),
        }
    }

    pub(crate) fn settle(mut self, usage: Option<&Usage>) {
        self.settle_inner(usage);
    }

    /// Takes the model's rate limits again for a same-model retry (another
    /// upstream request): the previous call's hold is settled as a failed
    /// call, and the retry holds its own. `false` when the model's quota
    /// refuses the retry (nothing is held for it; the request falls over).
    pub(crate) async fn retake_rate(&mut self, index: ModelIndex) -> bool {
        let shared = self.shared.clone();
        let Some(limiter) = &shared.inner.rate_limiter else {
            return true;
        };
        let Some((_, held)) = &mut self.reservation else {
            return true;
        };
        let facts = shared.facts();
        let spec = shared.spec(index);
        let call = RateCall::of(
            index,
            &facts,
            spec.effective_max_tokens(facts.max_tokens),
            false,
        );
        let taken = if limiter.is_shared() {
            limiter.acquire_shared(call).await
        } else {
            limiter.acquire(&call)
        };
        match taken {
            Ok(hold) => {
                if let Some(previous) = held.replace(hold) {
                    shared
                        .recorder()
                        .rate_settle(previous, RateUse::Sent { tokens: 0 });
                }
                true
            }
            Err(over) => {
                tracing::debug!(model = %shared.model_id(index), %over, "no retry: over a rate limit");
                false
            }
        }
    }

    fn settle_inner(&mut self, usage: Option<&Usage>) {
        if let Some((reservation, rate)) = self.reservation.take() {
            self.shared.recorder().settle(reservation, rate, usage);
        }
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.settle_inner(None);
    }
}

/// One admitted upstream call; reports its outcome to health exactly once,
/// as `Cancelled` if dropped unfinished, and ends its trace (if any) once.
pub(crate) struct CallGuard {
    shared: Arc<RunShared>,
    index: ModelIndex,
    permit: Option<Permit>,
    started: Instant,
    trace: Option<Box<dyn CallTrace>>,
    /// A stream's time to its first output chunk, once it had one.
    pub(crate) first_output: Option<Duration>,
}

impl CallGuard {
    pub(crate) fn new(
        shared: &Arc<RunShared>,
        index: ModelIndex,
        permit: Permit,
        started: Instant,
    ) -> Self {
        Self {
            shared: shared.clone(),
            index,
            permit: Some(permit),
            started,
            trace: None,
            first_output: None,
        }
    }

    /// The same call, traced by `trace`.
    pub(crate) fn traced_by(mut self, trace: Option<Box<dyn CallTrace>>) -> Self {
        self.trace = trace;
        self
    }

    /// Whether the call is traced (response facts are worth gathering).
    pub(crate) fn traced(&self) -> bool {
        self.trace.is_some()
    }

    /// Headers the call's trace sends upstream (none when untraced).
    pub(crate) fn headers(&self) -> &[(String, String)] {
        self.trace.as_deref().map_or(&[], |t| t.headers())
    }

    /// Tells the call's trace how the call ended.
    pub(crate) fn end_trace(&mut self, end: &CallEnd<'_>) {
        if let Some(trace) = self.trace.take() {
            trace.ended(end);
        }
    }

    /// Time from the start of the call to `now`.
    pub(crate) fn elapsed_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    pub(crate) fn finish(mut self, outcome: CallOutcome) {
        if let Some(permit) = self.permit.take() {
            self.shared.recorder().health(self.index, permit, outcome);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.permit.is_none() && self.trace.is_none() {
            return;
        }
        let elapsed = self.elapsed_at(Instant::now());
        // A loser that stayed silent past hedge_after timed out, as far as
        // health goes; one started just before the winner answered merely
        // lost a race.
        let timed_out = self.shared.dropping_hedge_losers.load(Ordering::Relaxed)
            && self
                .shared
                .route
                .policy
                .hedge_after
                .is_some_and(|hedge| elapsed >= hedge);
        let (outcome, attempt) = if timed_out {
            let kind = FailureKind::Timeout;
            let outcome = CallOutcome::Failure {
                kind,
                retry_after: None,
                latency: elapsed,
            };
            (outcome, AttemptOutcome::Failed(kind))
        } else {
            (CallOutcome::Cancelled, AttemptOutcome::Cancelled)
        };
        self.end_trace(&CallEnd {
            outcome: attempt,
            duration: elapsed,
            first_output: self.first_output,
            status: None,
            response: None,
        });
        if let Some(permit) = self.permit.take() {
            self.shared.recorder().health(self.index, permit, outcome);
        }
    }
}
