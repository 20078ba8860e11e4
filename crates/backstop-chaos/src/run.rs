//! Runs one scenario's load against a gateway that serves the scenario's
//! rendered config, and gathers what the fakes saw.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::behaviour::Behaviour;
use crate::dashboard::{DashboardFigures, unix_ms};
use crate::error::{ChaosError, FakeError, LoadError};
use crate::fake::{FakeSet, FakeStats, ServedRequest};
use crate::load::{AnswerCheck, LoadGenerator, LoadPlan, RequestRecord, Target};
use crate::scenario::{FailoverTarget, ScenarioSpec};

/// What one fake provider saw during a run.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeRun {
    /// Counts over its log.
    pub stats: FakeStats,
    /// Its request log.
    pub requests: Vec<ServedRequest>,
    /// Calls the gateway's attempt trails report to this model while its
    /// port refused connections: a closed port cannot count them itself.
    pub refused_attempts: u64,
}

/// Everything measured in one scenario run.
#[derive(Debug, Clone)]
pub struct ScenarioRun {
    /// The scenario.
    pub spec: ScenarioSpec,
    /// One record per request, by index.
    pub records: Vec<RequestRecord>,
    /// From the epoch to the last answer.
    pub elapsed: Duration,
    /// Model id -> what its fake saw.
    pub fakes: BTreeMap<String, FakeRun>,
    /// The primary's outage windows, since the epoch.
    pub outages: Vec<(Duration, Duration)>,
    /// The median round trip of a request straight to the primary fake,
    /// measured before the run when a target needs it.
    pub upstream_round_trip_ms: Option<f64>,
    /// Wall clock (Unix ms) of the epoch: what the dashboard's times are
    /// compared with.
    pub load_start_unix_ms: u64,
    /// What the gateway's dashboard showed when the load had finished
    /// (the driver reads it before stopping the gateway).
    pub dashboard: Option<DashboardFigures>,
}

impl ScenarioSpec {
    /// Starts this scenario's fake providers.
    pub async fn start_fakes(&self) -> Result<FakeSet, FakeError> {
        FakeSet::start(&self.fakes).await
    }
}

/// Drives scenarios at a gateway.
#[derive(Debug, Clone, Default)]
pub struct ScenarioRunner {
    progress: bool,
    api_key: Option<String>,
}

/// Requests sent straight to the primary to measure its round trip.
const ROUND_TRIP_SAMPLES: usize = 15;

impl ScenarioRunner {
    /// A runner without a progress bar or API key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Shows a progress bar on stderr while the load runs.
    #[must_use]
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// The bearer key the gateway expects, if it has one configured.
    #[must_use]
    pub fn api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    /// Whether it shows progress on stderr.
    pub fn shows_progress(&self) -> bool {
        self.progress
    }

    /// The bearer key it sends, if any.
    pub fn key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// Runs `spec` at the gateway's OpenAI-compatible base URL
    /// (`http://127.0.0.1:PORT/v1`). The gateway must already serve the
    /// config [`render_config`](crate::render_config) made for `fakes`.
    ///
    /// Measures the primary's round trip when a target needs it, arms every
    /// fake's timeline at the load's epoch, drives the load, and collects
    /// the fakes' logs.
    pub async fn run(
        &self,
        spec: &ScenarioSpec,
        fakes: &FakeSet,
        gateway_base_url: &str,
    ) -> Result<ScenarioRun, ChaosError> {
        let upstream_round_trip_ms = match spec.expect.failover {
            Some(FailoverTarget::RoundTripPlus { .. }) => match fakes.get(spec.primary()) {
                Some(primary) => measure_round_trip(&primary.endpoint_url()).await?,
                None => None,
            },
            _ => None,
        };
        let generator = LoadGenerator::new(
            LoadPlan::for_scenario(spec),
            AnswerCheck::new(spec.expected_texts()),
        )?
        .progress(self.progress);
        let target = Target {
            base_url: gateway_base_url.to_owned(),
            api_key: self.api_key.clone(),
        };
        // A short lead so the first request is not late by the time the
        // load loop starts.
        let epoch = Instant::now() + Duration::from_millis(5);
        let load_start_unix_ms = unix_ms(SystemTime::now() + Duration::from_millis(5));
        fakes.arm(epoch);
        tracing::info!(
            scenario = spec.name,
            requests = spec.load().requests,
            "scenario load starts"
        );
        let load = generator.run(&target, epoch).await?;

        let mut runs = BTreeMap::new();
        for fake in fakes.fakes() {
            let refused_attempts = load
                .records
                .iter()
                .flat_map(|r| {
                    r.trail
                        .iter()
                        .filter(|e| e.model == fake.model() && e.called_upstream())
                        .map(move |_| r.intended_at)
                })
                .filter(|&t| fake.behaviour_at(t) == Behaviour::Refused)
                .count() as u64;
            runs.insert(
                fake.model().to_owned(),
                FakeRun {
                    stats: fake.stats(),
                    requests: fake.requests(),
                    refused_attempts,
                },
            );
        }
        Ok(ScenarioRun {
            outages: spec.outage_windows(),
            spec: spec.clone(),
            records: load.records,
            elapsed: load.elapsed,
            fakes: runs,
            upstream_round_trip_ms,
            load_start_unix_ms,
            dashboard: None,
        })
    }
}

/// The median time of a small non-streaming request straight to `url`,
/// whatever the answer (an error's round trip is what a failover pays).
async fn measure_round_trip(url: &str) -> Result<Option<f64>, LoadError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .map_err(LoadError::Client)?;
    let body = serde_json::json!({
        "model": "round-trip", "max_tokens": 256,
        "messages": [{"role": "user", "content": "ping"}]
    });
    let mut samples = Vec::with_capacity(ROUND_TRIP_SAMPLES);
    for _ in 0..ROUND_TRIP_SAMPLES {
        let started = Instant::now();
        let call = async {
            if let Ok(resp) = client.post(url).json(&body).send().await {
                // Read the body: the gateway pays for all of it.
                let _ = resp.bytes().await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .is_ok()
        {
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples.get(samples.len() / 2).copied())
}
