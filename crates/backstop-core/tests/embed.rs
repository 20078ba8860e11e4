//! Embeddings through the Router: the same run down the chain as chat
//! requests, with answers checked against the model's declared dimensions.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use backstop_core::testing::{Script, ScriptedProvider, Unlimited, simple_strategies};
use backstop_core::{
    AttemptOutcome, Call, ChatResponse, ChunkStream, EmbedCall, Embedding, EmbeddingInput,
    EmbeddingsRequest, EmbeddingsResponse, Extra, FailureKind, ModelSpec, Provider, ProviderError,
    RequestContext, RouteError, RoutePolicy, Router, Scenario, StrategyContext, SystemClock,
};

/// Embeds every input as a vector of `dimensions` copies of its index;
/// fails its first `failures` calls with a server error.
struct Embedder {
    dimensions: usize,
    failures: usize,
    calls: AtomicUsize,
}

impl Embedder {
    fn new(dimensions: usize, failures: usize) -> Arc<Self> {
        Arc::new(Self {
            dimensions,
            failures,
            calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Provider for Embedder {
    async fn complete(&self, _call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        Err(ProviderError::new(
            FailureKind::Unsupported,
            "embeddings only",
        ))
    }

    async fn stream(&self, _call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        Err(ProviderError::new(
            FailureKind::Unsupported,
            "embeddings only",
        ))
    }

    async fn embed(&self, call: EmbedCall<'_>) -> Result<EmbeddingsResponse, ProviderError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(ProviderError::new(FailureKind::Server, "boom").with_status(500));
        }
        let data = (0..call.request.input.len())
            .map(|i| Embedding {
                index: u32::try_from(i).unwrap(),
                embedding: vec![i as f32; self.dimensions],
            })
            .collect();
        Ok(EmbeddingsResponse {
            model: call.model.upstream.clone(),
            data,
            usage: None,
        })
    }
}

fn embedding_model(id: &str, dimensions: Option<u32>) -> ModelSpec {
    let mut spec = ModelSpec::new(id, id);
    spec.dimensions = dimensions;
    spec
}

fn build(models: Vec<(ModelSpec, Arc<dyn Provider>)>) -> (Router, Arc<Unlimited>) {
    let specs: Vec<ModelSpec> = models.iter().map(|(m, _)| m.clone()).collect();
    let chain = specs.iter().map(|m| m.id.clone()).collect();
    let ctx = StrategyContext::new(specs, SystemClock::shared());
    let mut builder = Router::builder(ctx);
    for (spec, provider) in models {
        builder = builder.provider(spec.provider.clone(), provider);
    }
    let budget = Arc::new(Unlimited::default());
    let mut strategies = simple_strategies();
    strategies.budget = budget.clone();
    let router = builder
        .scenario(
            Scenario {
                name: "vectors".into(),
                chain,
                policy: RoutePolicy::default(),
            },
            strategies,
        )
        .build()
        .unwrap();
    (router, budget)
}

fn request(input: EmbeddingInput) -> EmbeddingsRequest {
    EmbeddingsRequest {
        model: "vectors".into(),
        input,
        dimensions: None,
        user: None,
        extra: Extra::new(),
    }
}

fn kinds(attempts: &[backstop_core::Attempt]) -> Vec<AttemptOutcome> {
    attempts.iter().map(|a| a.outcome).collect()
}

#[tokio::test]
async fn a_provider_without_embeddings_answers_unsupported_and_the_router_falls_over() {
    let chat_only = ScriptedProvider::always(Script::reply("hello"));
    let embedder = Embedder::new(3, 0);
    let (router, budget) = build(vec![
        (embedding_model("chatty", Some(3)), chat_only.clone()),
        (embedding_model("embed", Some(3)), embedder.clone()),
    ]);
    let input = EmbeddingInput::Texts(vec!["fox".into(), "hound".into()]);
    let result = router
        .embed(request(input), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*result.outcome.model_used, "embed");
    assert_eq!(result.outcome.fallback_level, 1);
    assert_eq!(
        kinds(&result.outcome.attempts),
        [
            AttemptOutcome::Failed(FailureKind::Unsupported),
            AttemptOutcome::Succeeded
        ]
    );
    assert_eq!(result.response.data.len(), 2);
    assert_eq!(result.response.data[1].embedding, vec![1.0; 3]);
    assert_eq!(chat_only.calls(), 0, "no chat call was made for embeddings");
    // Without upstream usage, the estimate is charged: prompt tokens only.
    let usage = result.response.usage.unwrap();
    assert!(usage.prompt_tokens > 0);
    let settled = budget.settlements();
    let (index, charged) = settled.last().unwrap();
    assert_eq!(*index, 1);
    assert_eq!(charged.as_ref().unwrap().completion_tokens, 0);
    assert_eq!(budget.open_reservations(), 0);
}

#[tokio::test]
async fn vectors_of_another_length_are_an_invalid_response_and_fall_over() {
    let (router, _) = build(vec![
        (embedding_model("short", Some(4)), Embedder::new(3, 0)),
        (embedding_model("right", Some(4)), Embedder::new(4, 0)),
    ]);
    let result = router
        .embed(
            request(EmbeddingInput::Text("fox".into())),
            RequestContext::default(),
        )
        .await
        .unwrap();
    assert_eq!(&*result.outcome.model_used, "right");
    assert_eq!(
        result.outcome.attempts[0].outcome,
        AttemptOutcome::Failed(FailureKind::InvalidResponse)
    );
}

#[tokio::test]
async fn a_server_error_is_retried_once_and_a_chat_model_never_embeds() {
    let flaky = Embedder::new(2, 1);
    let (router, _) = build(vec![(embedding_model("flaky", Some(2)), flaky.clone())]);
    let result = router
        .embed(
            request(EmbeddingInput::Tokens(vec![1, 2, 3])),
            RequestContext::default(),
        )
        .await
        .unwrap();
    assert_eq!(&*result.outcome.model_used, "flaky");
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    assert_eq!(result.outcome.upstream_attempts, 2);

    let (router, _) = build(vec![(embedding_model("talker", None), Embedder::new(2, 0))]);
    let error = router
        .embed(
            request(EmbeddingInput::Text("fox".into())),
            RequestContext::default(),
        )
        .await
        .unwrap_err();
    let RouteError::AllFailed(all) = error else {
        panic!("expected every model to fail");
    };
    assert_eq!(
        all.attempts[0].outcome,
        AttemptOutcome::Failed(FailureKind::Unsupported)
    );
}
