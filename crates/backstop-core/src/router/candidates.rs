//! Step 2 of the map, choosing candidates: the Selector orders the chain
//! (last resorts always last), then each model in turn passes the filters —
//! the request's deadline, capabilities (streaming, tools, context window),
//! `HealthPolicy::admit`, `BudgetPolicy::reserve`, `RateLimiter::acquire` —
//! or goes to the trail as a skip with its reason. A caller over its own
//! rate limit ends the request instead.

use std::sync::Arc;

use smallvec::SmallVec;

use super::guard::BudgetHold;
use super::run::{RunShared, RunState};
use crate::error::{Attempt, SkipReason};
use crate::health::{Admission, CallOutcome, Permit};
use crate::model::ModelIndex;
use crate::rate_limit::{RateCall, RateScope};
use crate::selector::Candidate;

/// A model that passed the filters, with its first admission and its
/// budget held.
pub(crate) struct Admitted {
    pub(crate) index: ModelIndex,
    /// Its index in the order tried (0 = primary).
    pub(crate) level: usize,
    pub(crate) permit: Permit,
    pub(crate) hold: BudgetHold,
}

/// The route's chain in the order the request tries it.
pub(crate) fn order(shared: &RunShared) -> SmallVec<[ModelIndex; 8]> {
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
    candidates.iter().map(|c| c.index).collect()
}

impl RunState {
    fn skip(&mut self, shared: &RunShared, index: ModelIndex, reason: SkipReason) {
        tracing::debug!(model = %shared.model_id(index), %reason, "skipped");
        shared.recorder().skipped(index, self.cursor - 1, reason);
        self.trail
            .push(Attempt::skipped(shared.model_id(index).clone(), reason));
    }

    /// The next model that may serve the request, admitted and with its
    /// budget held; skipped ones go to the trail with their reason. It
    /// waits only for a budget a fleet shares (one store round trip,
    /// bounded by the store's timeout).
    pub(crate) async fn next_candidate(&mut self, shared: &Arc<RunShared>) -> Option<Admitted> {
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
            let reserved = if strategies.budget.is_shared() {
                strategies.budget.reserve_shared(index, spec, &facts).await
            } else {
                strategies.budget.reserve(index, spec, &facts)
            };
            let reservation = match reserved {
                Ok(reservation) => reservation,
                Err(over) => {
                    shared
                        .recorder()
                        .health(index, permit, CallOutcome::Cancelled);
                    tracing::debug!(model = %shared.model_id(index), %over, "over budget");
                    self.skip(shared, index, SkipReason::OverBudget);
                    continue;
                }
            };
            let rate = match &shared.inner.rate_limiter {
                None => None,
                Some(limiter) => {
                    let call = RateCall::of(
                        index,
                        &facts,
                        spec.effective_max_tokens(facts.max_tokens),
                        !self.caller_charged,
                    );
                    let taken = if limiter.is_shared() {
                        limiter.acquire_shared(call).await
                    } else {
                        limiter.acquire(&call)
                    };
                    match taken {
                        Ok(hold) => Some(hold),
                        Err(over) => {
                            let recorder = shared.recorder();
                            recorder.health(index, permit, CallOutcome::Cancelled);
                            strategies.budget.settle(reservation, spec, &facts, None);
                            tracing::debug!(model = %shared.model_id(index), %over, "over a rate limit");
                            if over.scope == RateScope::Caller {
                                self.caller_refused = Some(over);
                                return None;
                            }
                            if self
                                .rate_refused
                                .is_none_or(|soonest| over.retry_after < soonest.retry_after)
                            {
                                self.rate_refused = Some(over);
                            }
                            self.skip(shared, index, SkipReason::OverRateLimit);
                            continue;
                        }
                    }
                }
            };
            self.caller_charged = true;
            return Some(Admitted {
                index,
                level,
                permit,
                hold: BudgetHold::new(shared, reservation, rate),
            });
        }
        None
    }
}
