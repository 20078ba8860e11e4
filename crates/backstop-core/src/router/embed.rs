//! Embeddings requests: the same run down the chain as chat requests —
//! candidates, admission, budgets, retries, the failure table, recording,
//! annotation — with one call to [`Provider::embed`] per attempt. An answer
//! is accepted only with one vector per input, each of the length the
//! model declares (`dimensions`), so vectors of different models never
//! reach the caller mixed.

use std::sync::Arc;
use std::time::Duration;

use super::attempt::{CallDeadlines, Mode, Requests};
use super::guard::{BudgetHold, CallGuard};
use super::run::{RunShared, RunState, error_name};
use super::{RequestContext, Route, RouterInner};
use crate::chat::{ChatRequest, Usage};
use crate::embeddings::{EmbeddingsRequest, EmbeddingsResponse, EmbeddingsUsage};
use crate::error::{FailureKind, ProviderError, RouteError};
use crate::model::ModelIndex;
use crate::provider::{Call, EmbedCall, Provider};
use crate::result::Outcome;
use crate::trace::ResponseFacts;

/// An embeddings answer and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsResult {
    /// The vectors; `model` is the model that answered.
    pub response: EmbeddingsResponse,
    /// How it was served (its `usage` counts prompt tokens only).
    pub outcome: Outcome,
}

/// Embeddings requests: a call succeeds with a well-formed answer.
pub(crate) struct EmbedMode;

fn invalid(message: String) -> ProviderError {
    ProviderError::new(FailureKind::InvalidResponse, message)
}

impl Mode for EmbedMode {
    type Opened = EmbeddingsResponse;
    type Won = EmbeddingsResponse;

    async fn open(
        shared: &RunShared,
        provider: &dyn Provider,
        call: Call<'_>,
        deadlines: CallDeadlines,
    ) -> Result<EmbeddingsResponse, ProviderError> {
        let Some(request) = shared.embeddings.as_ref() else {
            return Err(ProviderError::new(
                FailureKind::Unsupported,
                "no embeddings request",
            ));
        };
        let spec = call.model;
        let Some(dimensions) = spec.dimensions else {
            return Err(ProviderError::new(
                FailureKind::Unsupported,
                format!(
                    "`{}` declares no `dimensions`: not an embedding model",
                    spec.id
                ),
            ));
        };
        let embed = EmbedCall {
            scenario: call.scenario,
            model: spec,
            request,
            connect_timeout: call.connect_timeout,
            request_id: call.request_id,
            headers: call.headers,
        };
        let (deadline, phase, limit) = deadlines.phase(
            deadlines.start,
            "answer",
            shared.route.policy.timeouts.attempt,
        );
        let mut response = match tokio::time::timeout_at(deadline, provider.embed(embed)).await {
            Err(_) => return Err(ProviderError::timeout(phase, limit)),
            Ok(result) => result?,
        };
        let expected = request.input.len();
        if response.data.len() != expected {
            return Err(invalid(format!(
                "the answer has {} vectors for {expected} inputs",
                response.data.len()
            )));
        }
        response.data.sort_by_key(|e| e.index);
        for (i, e) in response.data.iter().enumerate() {
            if e.index as usize != i {
                return Err(invalid(format!("the answer has no vector for input {i}")));
            }
            if e.embedding.len() != dimensions as usize {
                return Err(invalid(format!(
                    "`{}` returned a vector of {} dimensions; it declares {dimensions}",
                    spec.id,
                    e.embedding.len()
                )));
            }
        }
        Ok(response)
    }

    fn accept(
        shared: &RunShared,
        index: ModelIndex,
        response: EmbeddingsResponse,
        call: CallGuard,
        hold: BudgetHold,
        _deadlines: CallDeadlines,
        latency: Duration,
    ) -> EmbeddingsResponse {
        let prompt = response
            .usage
            .map_or(shared.prompt_tokens, |u| u.prompt_tokens);
        let facts = call
            .traced()
            .then(|| ResponseFacts::of_embeddings(&response));
        shared.recorder().complete_succeeded(
            index,
            call,
            hold,
            latency,
            &Usage::new(prompt, 0),
            facts,
        );
        response
    }
}

/// The chat request an embeddings run is measured by: the inputs' token
/// estimate as its prompt (for context windows and budgets) and no output.
fn measure(request: &EmbeddingsRequest) -> ChatRequest {
    let mut proxy = ChatRequest::user(request.model.clone(), String::new());
    proxy.max_tokens = Some(0);
    proxy
}

/// Serves an embeddings request.
pub(crate) async fn embed(
    inner: Arc<RouterInner>,
    route: Arc<Route>,
    request: EmbeddingsRequest,
    cx: RequestContext,
) -> Result<EmbeddingsResult, RouteError> {
    let prompt_tokens = request.input.estimated_tokens();
    let shared =
        RunShared::for_embeddings(inner, route, measure(&request), request, prompt_tokens, cx);
    let mut state = RunState::new(&shared);
    match state
        .first_success::<EmbedMode>(&shared, &Requests::ORIGINAL)
        .await
    {
        Ok(winner) => {
            let mut response = winner.won;
            let usage = response.usage.unwrap_or(EmbeddingsUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            });
            response.usage = Some(usage);
            let outcome = shared.conclude(
                &mut state,
                winner.index,
                winner.level,
                Some(Usage::new(usage.prompt_tokens, 0)),
            );
            response.model = outcome.model_used.to_string();
            Ok(EmbeddingsResult { outcome, response })
        }
        Err(error) => {
            shared
                .recorder()
                .finished(&state, None, Some(error_name(&error)), state.now);
            Err(error)
        }
    }
}
