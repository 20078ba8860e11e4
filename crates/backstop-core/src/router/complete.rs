//! Step 6 of the map, completing: a complete (non-streaming) request from
//! its first call to its [`FallbackResult`] — the complete [`Mode`] (one
//! call under the attempt deadline; an answer without choices is invalid),
//! and the ResultHandler's annotation that streamed answers share.

use std::sync::Arc;
use std::time::Duration;

use super::attempt::{CallDeadlines, Mode, Requests};
use super::guard::{BudgetHold, CallGuard};
use super::run::{RunShared, RunState, error_name};
use super::{RequestContext, Route, RouterInner};
use crate::chat::{ChatRequest, ChatResponse, Usage, estimate_tokens};
use crate::error::{FailureKind, ProviderError, RouteError};
use crate::model::ModelIndex;
use crate::provider::{Call, Provider};
use crate::result::{Annotation, FallbackResult, Outcome, RouteSummary};
use crate::trace::ResponseFacts;

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
        // An answer without usage still cost something: charge an estimate.
        let estimated;
        let usage = match &response.usage {
            Some(usage) => usage,
            None => {
                estimated = Usage::new(shared.prompt_tokens, estimate_tokens(&response.text()));
                &estimated
            }
        };
        let facts = call.traced().then(|| ResponseFacts::of_chat(&response));
        shared
            .recorder()
            .complete_succeeded(index, call, hold, latency, usage, facts);
        response
    }
}

impl RunShared {
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

    /// Ends a request that the model at `index` answered at `level`
    /// (complete or embeddings): annotates it, records its end, and gives
    /// the `Outcome` it is served with (the trail moves out of `state`).
    pub(crate) fn conclude(
        &self,
        state: &mut RunState,
        index: ModelIndex,
        level: usize,
        usage: Option<Usage>,
    ) -> Outcome {
        let annotation = self.annotate(state, index, level);
        self.recorder()
            .finished(state, Some((index, level)), None, state.now);
        let attempts = std::mem::take(&mut state.trail);
        let upstream_attempts = attempts
            .iter()
            .filter(|a| a.outcome.called_upstream())
            .count() as u32;
        Outcome {
            model_used: self.model_id(index).clone(),
            fallback_level: level,
            attempts,
            upstream_attempts,
            warning: annotation.warning,
            limitation: annotation.limitation,
            usage,
        }
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
            let mut response = winner.won;
            let outcome = shared.conclude(
                &mut state,
                winner.index,
                winner.level,
                response.usage.clone(),
            );
            response.model.clear();
            response.model.push_str(&outcome.model_used);
            Ok(FallbackResult { outcome, response })
        }
        Err(error) => {
            shared
                .recorder()
                .finished(&state, None, Some(error_name(&error)), state.now);
            Err(error)
        }
    }
}
