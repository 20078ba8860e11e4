//! The Router's decisions, driven by scripted providers under paused time:
//! every failure kind, retries and their spacing, deadlines, skips,
//! hedging, and the mid-stream policies. One module per row of the failure
//! table (and per other behaviour); the scaffolding they share is here.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backstop_core::testing::{
    AlwaysAdmit, DownList, InOrder, LevelNote, Piece, Recorded, RecordingSink, Refuse, Script,
    ScriptedProvider, Unlimited, simple_strategies,
};
use backstop_core::{
    AttemptOutcome, BudgetPolicy, Capabilities, ChatRequest, ContentPolicyAction, FailureKind,
    HealthPolicy, MidStreamPolicy, ModelSpec, Provider, RequestContext, Role, RouteError,
    RoutePolicy, Router, Scenario, SkipReason, Strategies, StrategyContext, StreamItem,
    SystemClock, Timeouts,
};
use futures::StreamExt;
use tokio::time::Instant;

mod auth_quota_invalid;
mod bad_request;
mod connect;
mod content_policy;
mod context_length;
mod deadlines;
mod hedging;
mod rate_limited;
mod recording;
mod routing;
mod server;
mod skips;
mod stream_interrupted;
mod timeout;
mod trace;

const ANSWER: &str = "The quick brown fox jumps over the lazy dog.";

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

struct Setup {
    router: Router,
    sink: Arc<RecordingSink>,
}

/// A Router whose scenario `chat` chains the given models in order, each
/// served by its own provider.
fn setup(
    models: Vec<(ModelSpec, Arc<dyn Provider>)>,
    policy: RoutePolicy,
    strategies: Strategies,
) -> Setup {
    let specs: Vec<ModelSpec> = models.iter().map(|(m, _)| m.clone()).collect();
    let chain = specs.iter().map(|m| m.id.clone()).collect();
    let ctx = StrategyContext::new(specs, SystemClock::shared());
    let sink = Arc::new(RecordingSink::default());
    let mut builder = Router::builder(ctx).event_sink(sink.clone());
    for (spec, provider) in models {
        builder = builder.provider(spec.provider.clone(), provider);
    }
    let router = builder
        .scenario(
            Scenario {
                name: "chat".into(),
                chain,
                policy,
            },
            strategies.clone(),
        )
        .single_model_routes(policy, strategies)
        .build()
        .expect("router builds");
    Setup { router, sink }
}

fn model(id: &str) -> ModelSpec {
    ModelSpec::new(id, id)
}

fn chain2(a: Arc<ScriptedProvider>, b: Arc<ScriptedProvider>) -> Setup {
    setup(
        vec![(model("primary"), a), (model("backup"), b)],
        RoutePolicy::default(),
        simple_strategies(),
    )
}

fn request() -> ChatRequest {
    ChatRequest::user("chat", "Tell me about foxes.")
}

fn stream_request() -> ChatRequest {
    let mut r = request();
    r.stream = Some(true);
    r
}

fn kinds(attempts: &[backstop_core::Attempt]) -> Vec<(String, &'static str)> {
    attempts
        .iter()
        .map(|a| (a.model.to_string(), a.outcome.as_str()))
        .collect()
}

/// Collects a stream: the text, and the last item.
async fn drain(mut stream: backstop_core::FallbackStream) -> (String, StreamItem) {
    let mut text = String::new();
    let mut last = None;
    while let Some(item) = stream.next().await {
        match item {
            StreamItem::Chunk(chunk) => {
                if let Some(t) = chunk.content() {
                    text.push_str(t);
                }
            }
            other => last = Some(other),
        }
    }
    (text, last.expect("a stream ends with Done or Failed"))
}

fn windowed(id: &str, window: u32) -> ModelSpec {
    let mut m = model(id);
    m.context_window = window;
    m
}

fn mid_stream(policy: MidStreamPolicy) -> RoutePolicy {
    RoutePolicy {
        mid_stream: policy,
        timeouts: Timeouts {
            idle: ms(500),
            ..Timeouts::default()
        },
        ..RoutePolicy::default()
    }
}

fn prefill_model(id: &str) -> ModelSpec {
    let mut m = model(id);
    m.capabilities.assistant_prefill = true;
    m
}

/// A provider that continues ANSWER from wherever a prefill stops.
fn continuing() -> Arc<ScriptedProvider> {
    ScriptedProvider::always(Script::reply(ANSWER))
}

/// Admits everything and never calls a failure an outage in progress,
/// overriding the Router's "previous call failed" memory.
#[derive(Debug, Default)]
struct NeverAnOutage(AlwaysAdmit);

impl HealthPolicy for NeverAnOutage {
    fn name(&self) -> &str {
        "never_an_outage"
    }

    fn admit(&self, model: usize) -> backstop_core::Admission {
        self.0.admit(model)
    }

    fn record(
        &self,
        model: usize,
        permit: backstop_core::Permit,
        outcome: backstop_core::CallOutcome,
    ) -> Option<backstop_core::HealthTransition> {
        self.0.record(model, permit, outcome)
    }

    fn record_probe(
        &self,
        model: usize,
        result: Result<Duration, backstop_core::ProbeFailure>,
    ) -> Option<backstop_core::HealthTransition> {
        self.0.record_probe(model, result)
    }

    fn probe_targets(&self, idle: Duration, out: &mut Vec<usize>) {
        self.0.probe_targets(idle, out);
    }

    fn snapshot(&self, model: usize) -> backstop_core::HealthSnapshot {
        self.0.snapshot(model)
    }

    fn outage_in_progress(&self, _: usize, _: bool) -> bool {
        false
    }
}

/// OpenAI's opening chunk: a role, empty content and `"refusal": null`.
fn openai_opening_chunk() -> backstop_core::ChatChunk {
    serde_json::from_value(serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                     "logprobs": null, "finish_reason": null}]
    }))
    .unwrap()
}

fn choice_chunk(index: u32, text: &str, finish: Option<&str>) -> backstop_core::ChatChunk {
    serde_json::from_value(serde_json::json!({
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}]
    }))
    .unwrap()
}
