//! The provider: waits, then answers or fails as configured.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use backstop_core::{
    Call, ChatChunk, ChatResponse, ChunkStream, FailureKind, Provider, ProviderError, Role, Usage,
};
use futures::StreamExt;

use crate::config::{SimulatedBuildError, SimulatedConfig};
use crate::switchboard::Switchboard;

/// A model on this machine with configurable latency and failures.
#[derive(Debug)]
pub struct SimulatedProvider {
    config: SimulatedConfig,
    switchboard: Arc<Switchboard>,
    /// Calls so far, which spreads failures evenly and numbers answers.
    calls: AtomicU64,
}

/// How one call goes, after the switchboard's override.
struct Plan {
    latency: Duration,
    failure: Option<FailureKind>,
}

impl SimulatedProvider {
    /// A provider reading run-time changes from the process's switchboard.
    pub fn new(config: SimulatedConfig) -> Result<Self, SimulatedBuildError> {
        Self::with_switchboard(config, Switchboard::global())
    }

    /// A provider reading run-time changes from `switchboard`.
    pub fn with_switchboard(
        config: SimulatedConfig,
        switchboard: Arc<Switchboard>,
    ) -> Result<Self, SimulatedBuildError> {
        config.validate()?;
        Ok(Self {
            config,
            switchboard,
            calls: AtomicU64::new(0),
        })
    }

    /// Decides this call: the n-th call fails when the running count of
    /// failures due, `floor(n * rate)`, steps up, so any rate is met
    /// exactly and evenly without randomness.
    fn plan(&self, model: &str) -> (u64, Plan) {
        let change = self.switchboard.get(model);
        let rate = change.failure_rate.unwrap_or(self.config.failure_rate);
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let due = |k: u64| (k as f64 * rate).floor();
        let fails = due(n + 1) > due(n);
        let plan = Plan {
            latency: Duration::from_millis(change.latency_ms.unwrap_or(self.config.latency_ms)),
            failure: fails.then(|| change.failure.unwrap_or(self.config.failure)),
        };
        (n, plan)
    }

    /// Waits out the latency, then fails if the plan says so; a `timeout`
    /// failure never returns (the Router's timeouts end the call).
    async fn begin(&self, plan: &Plan) -> Result<(), ProviderError> {
        tokio::time::sleep(plan.latency).await;
        match plan.failure {
            None => Ok(()),
            Some(FailureKind::Timeout) => std::future::pending().await,
            Some(kind) => Err(failure(kind)),
        }
    }

    fn words(&self, call: &Call<'_>) -> (Vec<String>, bool) {
        let text = self.config.reply.replace("{model}", &call.model.id);
        let mut words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
        let limit = usize::try_from(call.max_tokens).unwrap_or(usize::MAX);
        let cut = words.len() > limit;
        words.truncate(limit);
        (words, cut)
    }
}

/// The error an upstream failing this way would have been classified as.
fn failure(kind: FailureKind) -> ProviderError {
    let error = ProviderError::new(kind, format!("simulated {kind} failure"));
    match kind {
        FailureKind::RateLimited => error
            .with_status(429)
            .with_retry_after(Duration::from_secs(1)),
        FailureKind::QuotaExhausted => error.with_status(429).with_code("insufficient_quota"),
        FailureKind::Overloaded => error.with_status(529),
        FailureKind::Server | FailureKind::StreamInterrupted | FailureKind::InvalidResponse => {
            error.with_status(500)
        }
        FailureKind::Auth => error.with_status(401),
        FailureKind::ModelNotFound => error.with_status(404),
        FailureKind::ContextLength
        | FailureKind::ContentPolicy
        | FailureKind::BadRequest
        | FailureKind::Unsupported => error.with_status(400),
        FailureKind::Connect | FailureKind::Timeout => error,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage(call: &Call<'_>, words: usize) -> Usage {
    Usage::new(
        call.request.estimated_prompt_tokens(),
        u32::try_from(words).unwrap_or(u32::MAX),
    )
}

#[async_trait]
impl Provider for SimulatedProvider {
    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        let (n, plan) = self.plan(&call.model.id);
        self.begin(&plan).await?;
        let (words, cut) = self.words(&call);
        let mut response = ChatResponse::assistant(
            format!("chatcmpl-simulated-{n}"),
            call.model.upstream.as_str(),
            now(),
            words.concat(),
            Some(usage(&call, words.len())),
        );
        if cut {
            for choice in &mut response.choices {
                choice.finish_reason = Some("length".to_owned());
            }
        }
        Ok(response)
    }

    async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let (n, plan) = self.plan(&call.model.id);
        self.begin(&plan).await?;
        let (words, cut) = self.words(&call);
        let (id, model, created) = (
            format!("chatcmpl-simulated-{n}"),
            call.model.upstream.clone(),
            now(),
        );
        let usage = call
            .request
            .wants_stream_usage()
            .then(|| usage(&call, words.len()));
        let mut chunks: Vec<ChatChunk> = words
            .into_iter()
            .map(|word| ChatChunk::text(&id, &model, created, word))
            .collect();
        if let Some(first) = chunks.first_mut().and_then(|c| c.choices.first_mut()) {
            first.delta.role = Some(Role::Assistant);
        }
        chunks.push(ChatChunk::finish(
            &id,
            &model,
            created,
            if cut { "length" } else { "stop" },
        ));
        chunks.extend(usage.map(|u| ChatChunk::usage_only(&id, &model, created, u)));
        let gap = Duration::from_millis(self.config.chunk_ms);
        let stream = futures::stream::iter(chunks.into_iter().enumerate()).then(
            move |(i, chunk)| async move {
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                Ok(chunk)
            },
        );
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use backstop_core::{ChatRequest, ModelSpec};

    use super::*;
    use crate::switchboard::Override;

    fn call<'a>(model: &'a ModelSpec, request: &'a ChatRequest) -> Call<'a> {
        Call {
            scenario: "demo",
            model,
            request,
            max_tokens: 64,
            connect_timeout: Duration::from_secs(1),
            request_id: None,
            headers: &[],
        }
    }

    fn provider(config: serde_json::Value) -> SimulatedProvider {
        let config: SimulatedConfig = serde_json::from_value(config).unwrap();
        SimulatedProvider::with_switchboard(config, Arc::default()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn answers_after_its_latency_naming_the_model() {
        let p = provider(serde_json::json!({"latency_ms": 300}));
        let model = ModelSpec::new("primary", "sim");
        let request = ChatRequest::user("demo", "hi");
        let started = tokio::time::Instant::now();
        let r = p.complete(call(&model, &request)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(
            r.text(),
            "Hello from primary, a simulated model on this machine."
        );
        assert_eq!(r.usage.unwrap().completion_tokens, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn fails_exactly_its_share_of_calls_evenly() {
        let p = provider(serde_json::json!({"failure_rate": 0.25, "latency_ms": 0}));
        let model = ModelSpec::new("m", "sim");
        let request = ChatRequest::user("demo", "hi");
        let mut outcomes = Vec::new();
        for _ in 0..8 {
            outcomes.push(p.complete(call(&model, &request)).await.is_err());
        }
        assert_eq!(
            outcomes,
            [false, false, false, true, false, false, false, true]
        );
        let e = provider(serde_json::json!({"failure_rate": 1.0}))
            .complete(call(&model, &request))
            .await
            .unwrap_err();
        assert_eq!((e.kind, e.status), (FailureKind::Server, Some(500)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_switchboard_breaks_and_restores_one_model() {
        let board = Arc::new(Switchboard::default());
        let p =
            SimulatedProvider::with_switchboard(SimulatedConfig::default(), board.clone()).unwrap();
        let (primary, backup) = (
            ModelSpec::new("primary", "sim"),
            ModelSpec::new("backup", "sim"),
        );
        let request = ChatRequest::user("demo", "hi");
        board.set(
            "primary",
            Override {
                failure_rate: Some(1.0),
                failure: Some(FailureKind::RateLimited),
                latency_ms: None,
            },
        );
        let e = p.complete(call(&primary, &request)).await.unwrap_err();
        assert_eq!(
            (e.kind, e.retry_after),
            (FailureKind::RateLimited, Some(Duration::from_secs(1)))
        );
        assert!(p.complete(call(&backup, &request)).await.is_ok());
        board.set("primary", Override::default());
        assert!(p.complete(call(&primary, &request)).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_failure_never_answers() {
        let p = provider(serde_json::json!({"failure_rate": 1.0, "failure": "timeout"}));
        let model = ModelSpec::new("m", "sim");
        let request = ChatRequest::user("demo", "hi");
        let waited = tokio::time::timeout(
            Duration::from_secs(3600),
            p.complete(call(&model, &request)),
        )
        .await;
        assert!(waited.is_err(), "a hung simulated call must not answer");
    }

    #[tokio::test(start_paused = true)]
    async fn streams_word_by_word_then_finish_and_usage() {
        let p = provider(serde_json::json!({"reply": "one two three", "latency_ms": 0}));
        let model = ModelSpec::new("m", "sim");
        let mut request = ChatRequest::user("demo", "hi");
        request.stream_options = Some(backstop_core::StreamOptions {
            include_usage: true,
            extra: Default::default(),
        });
        let chunks: Vec<ChatChunk> = p
            .stream(call(&model, &request))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let text: String = chunks.iter().filter_map(ChatChunk::content).collect();
        assert_eq!(text, "one two three");
        assert_eq!(chunks[3].finish_reason(), Some("stop"));
        assert_eq!(chunks[4].usage.as_ref().unwrap().completion_tokens, 3);
    }

    #[test]
    fn knobs_are_checked() {
        let bad: SimulatedConfig =
            serde_json::from_value(serde_json::json!({"failure_rate": 1.5})).unwrap();
        let e = SimulatedProvider::new(bad).unwrap_err();
        assert_eq!(e.to_string(), "must be within 0..=1 (got 1.5)");
        assert!(
            serde_json::from_value::<SimulatedConfig>(serde_json::json!({"latency": 5})).is_err()
        );
        assert!(
            serde_json::from_value::<SimulatedConfig>(serde_json::json!({"failure": "on_fire"}))
                .is_err()
        );
    }
}
