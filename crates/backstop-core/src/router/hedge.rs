//! Hedging (a route's `hedge_after`): when the model in flight has produced
//! nothing after `hedge_after`, the next candidate starts beside it; the
//! first to answer wins. The losers are dropped: each shows in the trail as
//! `cancelled`, and health hears of a loser silent past `hedge_after` as a
//! timeout (see [`CallGuard`](super::guard::CallGuard)), so a hung primary's
//! circuit opens even when hedging hides it from callers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use smallvec::SmallVec;
use tokio::time::Instant;

use super::attempt::{Mode, Requests, run_model};
use super::run::{RunShared, RunState, Step, Winner};
use crate::error::{Attempt, AttemptOutcome, RouteError};
use crate::model::ModelIndex;

impl RunState {
    /// Like [`Self::first_success`], but hedged after `hedge_after`.
    pub(crate) async fn first_success_hedged<M: Mode>(
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
                let Some(admitted) = self.next_candidate(shared).await else {
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
                            shared.recorder().attempt(index, AttemptOutcome::Cancelled, duration);
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
                    if let Some(admitted) = self.next_candidate(shared).await {
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
