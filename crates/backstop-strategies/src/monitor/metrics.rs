//! `metrics`: counters and histograms for Prometheus.
//!
//! What it does: counts, in atomics, what the Router reports —
//!
//! - `backstop_requests_total{scenario, outcome}`: requests by scenario and
//!   outcome (`ok`, or the error: `rejected`, `no_window_fits`, `all_failed`,
//!   `stream_aborted`, `rate_limited`, `cancelled`, `unknown_route`);
//! - `backstop_request_duration_seconds{scenario}`: end-to-end latency
//!   histogram;
//! - `backstop_attempts_total{model, outcome}`: upstream calls by model and
//!   outcome (`ok`, a failure kind, `cancelled`);
//! - `backstop_attempt_duration_seconds{model}`: per-call latency histogram;
//! - `backstop_fallbacks_total{level}`: answers by a backup, by fallback
//!   level;
//! - `backstop_circuit_transitions_total{model, to}`: circuit changes;
//!
//! and renders them in the Prometheus text format
//! ([`Metrics::render_prometheus`]). [`render_router_state`] adds what only
//! the Router knows now: each route's circuit states and window, its
//! budget's spend, and each rate limit's use in the last minute
//! (`backstop_rate_limit_requests`, `_tokens`, `_per_minute`,
//! `_refused_total`, by `scope` and `name`).
//!
//! Scenario labels come from requests; past `max_scenarios` distinct names
//! the rest are counted under `scenario="_other"`, so a flood of unknown
//! names cannot grow the metrics without bound.
//!
//! When to pick it: whenever something scrapes the gateway's `/metrics`.
//!
//! Knobs (defaults):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `max_scenarios` | `256` | distinct scenario labels kept |

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use backstop_core::clock::duration_to_nanos;
use backstop_core::{
    AttemptOutcome, CircuitState, Event, EventSink, FailureKind, LatencyKind, ModelIndex, Route,
    Router, SharedClock, SkipReason, StrategyContext,
};
use serde::Deserialize;

use crate::error::{StrategyError, check_non_zero};

/// The config name.
pub const NAME: &str = "metrics";

/// Knobs of the metrics sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Distinct scenario labels kept. Default 256.
    pub max_scenarios: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { max_scenarios: 256 }
    }
}

/// Upper bounds of the latency histograms' buckets, in seconds.
const BOUNDS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A latency histogram in atomics.
#[derive(Debug)]
struct Histogram {
    bounds_nanos: [u64; BOUNDS.len()],
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            bounds_nanos: BOUNDS.map(|s| duration_to_nanos(Duration::from_secs_f64(s))),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let nanos = duration_to_nanos(d);
        let bucket = self.bounds_nanos.partition_point(|&b| b < nanos);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, label: &str, value: &str) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = BOUNDS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{}\",le=\"{le}\"}} {cumulative}",
                escape(value)
            );
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{label}=\"{}\"}} {sum}", escape(value));
        let _ = writeln!(
            out,
            "{name}_count{{{label}=\"{}\"}} {cumulative}",
            escape(value)
        );
    }
}

/// Request outcomes, by the Router's error names.
const REQUEST_OUTCOMES: [&str; 9] = [
    "ok",
    "rejected",
    "no_window_fits",
    "all_failed",
    "stream_aborted",
    "rate_limited",
    "cancelled",
    "unknown_route",
    "other",
];

fn request_outcome(error: Option<&str>) -> usize {
    match error {
        None => 0,
        Some(name) => REQUEST_OUTCOMES
            .iter()
            .position(|&o| o == name)
            .unwrap_or(REQUEST_OUTCOMES.len() - 1),
    }
}

const SKIPS: [SkipReason; 7] = [
    SkipReason::CircuitOpen,
    SkipReason::OverBudget,
    SkipReason::OverRateLimit,
    SkipReason::ContextWindow,
    SkipReason::NoStreaming,
    SkipReason::NoTools,
    SkipReason::Deadline,
];

/// Attempt outcomes: ok, every failure kind, every skip reason, cancelled.
const ATTEMPT_OUTCOMES: usize = 1 + FailureKind::ALL.len() + SKIPS.len() + 1;

fn attempt_outcome(outcome: AttemptOutcome) -> usize {
    match outcome {
        AttemptOutcome::Succeeded => 0,
        AttemptOutcome::Failed(kind) => {
            1 + FailureKind::ALL
                .iter()
                .position(|&k| k == kind)
                .unwrap_or(0)
        }
        AttemptOutcome::Skipped(reason) => {
            1 + FailureKind::ALL.len() + SKIPS.iter().position(|&r| r == reason).unwrap_or(0)
        }
        AttemptOutcome::Cancelled => ATTEMPT_OUTCOMES - 1,
    }
}

fn attempt_outcome_name(index: usize) -> &'static str {
    let kinds = FailureKind::ALL.len();
    match index {
        0 => "ok",
        i if i <= kinds => FailureKind::ALL[i - 1].as_str(),
        i if i <= kinds + SKIPS.len() => SKIPS[i - 1 - kinds].as_str(),
        _ => "cancelled",
    }
}

const STATES: [CircuitState; 5] = [
    CircuitState::Closed,
    CircuitState::Open,
    CircuitState::HalfOpen,
    CircuitState::CoolingDown,
    CircuitState::Disabled,
];

fn state_index(state: CircuitState) -> usize {
    STATES.iter().position(|&s| s == state).unwrap_or(0)
}

/// The last failures of a model, for a status page: a lock-free ring, each
/// slot holding `unix_ms << 8 | kind + 1` (0 = empty). Written only when a
/// call fails.
#[derive(Debug, Default)]
struct RecentFailures {
    slots: [AtomicU64; RECENT_FAILURES],
    next: AtomicU64,
}

/// Failures kept per model.
const RECENT_FAILURES: usize = 8;

impl RecentFailures {
    fn push(&self, kind: FailureKind, unix_ms: u64) {
        let code = FailureKind::ALL
            .iter()
            .position(|&k| k == kind)
            .unwrap_or(0) as u64
            + 1;
        let slot = (self.next.fetch_add(1, Ordering::Relaxed) as usize) % RECENT_FAILURES;
        self.slots[slot].store(unix_ms << 8 | code, Ordering::Relaxed);
    }

    fn newest_first(&self) -> Vec<RecentFailure> {
        let mut out: Vec<RecentFailure> = self
            .slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&v| v != 0)
            .filter_map(|v| {
                let kind = *FailureKind::ALL.get((v & 0xff) as usize - 1)?;
                Some(RecentFailure {
                    kind: kind.as_str(),
                    unix_ms: v >> 8,
                })
            })
            .collect();
        out.sort_by_key(|f| std::cmp::Reverse(f.unix_ms));
        out
    }
}

/// Counts since start; see [`Metrics::totals`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests finished.
    pub requests: u64,
    /// Requests that ended in an error.
    pub errors: u64,
    /// Requests a backup answered.
    pub fallbacks: u64,
    /// Upstream calls that failed.
    pub failed_calls: u64,
    /// Circuits that opened.
    pub circuits_opened: u64,
}

impl Totals {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            fallbacks: self.fallbacks.saturating_sub(earlier.fallbacks),
            failed_calls: self.failed_calls.saturating_sub(earlier.failed_calls),
            circuits_opened: self.circuits_opened.saturating_sub(earlier.circuits_opened),
        }
    }
}

/// One recent failure of a model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecentFailure {
    /// The failure kind.
    pub kind: &'static str,
    /// When, in Unix milliseconds.
    pub unix_ms: u64,
}

#[derive(Debug)]
struct ModelMetrics {
    attempts: [AtomicU64; ATTEMPT_OUTCOMES],
    latency: Histogram,
    transitions: [AtomicU64; STATES.len()],
    recent: RecentFailures,
}

#[derive(Debug)]
struct ScenarioMetrics {
    outcomes: [AtomicU64; REQUEST_OUTCOMES.len()],
    latency: Histogram,
}

impl ModelMetrics {
    fn new() -> Self {
        Self {
            attempts: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Histogram::new(),
            transitions: std::array::from_fn(|_| AtomicU64::new(0)),
            recent: RecentFailures::default(),
        }
    }
}

impl ScenarioMetrics {
    fn new() -> Self {
        Self {
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Histogram::new(),
        }
    }
}

const SHARDS: usize = 8;
const OTHER_SCENARIO: &str = "_other";

/// The metrics sink; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    model_ids: Box<[Box<str>]>,
    by_id: HashMap<Box<str>, usize>,
    /// Shared with a successor built by [`Metrics::continuing`].
    models: Box<[Arc<ModelMetrics>]>,
    /// Fallbacks by level; the last slot counts deeper levels.
    fallbacks: Arc<[AtomicU64]>,
    hasher: RandomState,
    scenarios: [RwLock<HashMap<Box<str>, Arc<ScenarioMetrics>>>; SHARDS],
    scenario_count: AtomicU64,
    max_scenarios: u64,
    other: Arc<ScenarioMetrics>,
    clock: SharedClock,
}

impl Metrics {
    /// Metrics for the models of `ctx`.
    pub fn new(config: MetricsConfig, ctx: &StrategyContext) -> Result<Self, StrategyError> {
        check_non_zero("max_scenarios", config.max_scenarios as u64)?;
        Ok(Self {
            model_ids: ctx.models.iter().map(|m| m.id.as_str().into()).collect(),
            by_id: ctx
                .models
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id.as_str().into(), i))
                .collect(),
            models: ctx
                .models
                .iter()
                .map(|_| Arc::new(ModelMetrics::new()))
                .collect(),
            clock: ctx.clock.clone(),
            fallbacks: (0..=ctx.models.len().max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            hasher: RandomState::new(),
            scenarios: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            scenario_count: AtomicU64::new(0),
            max_scenarios: config.max_scenarios as u64,
            other: Arc::new(ScenarioMetrics::new()),
        })
    }

    /// Metrics for the models of `ctx` that go on counting where
    /// `previous` counts (a configuration reload): a model of both tables
    /// and every scenario share their counters and histograms with
    /// `previous`, so what the requests still running on the old Router
    /// record is counted too; a new model starts at zero and a removed one
    /// is no longer rendered. Fallbacks by level are shared when the
    /// number of levels is the same, else carried over by value.
    pub fn continuing(
        previous: &Metrics,
        config: MetricsConfig,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        let mut next = Self::new(config, ctx)?;
        for (id, slot) in next.model_ids.iter().zip(next.models.iter_mut()) {
            if let Some(&i) = previous.by_id.get(id)
                && let Some(running) = previous.models.get(i)
            {
                *slot = Arc::clone(running);
            }
        }
        if next.fallbacks.len() == previous.fallbacks.len() {
            next.fallbacks = Arc::clone(&previous.fallbacks);
        } else {
            let deepest = next.fallbacks.len() - 1;
            for (level, count) in previous.fallbacks.iter().enumerate() {
                next.fallbacks[level.min(deepest)]
                    .fetch_add(count.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        // The same hasher puts every scenario in the same shard.
        next.hasher = previous.hasher.clone();
        for (shard, running) in next.scenarios.iter().zip(&previous.scenarios) {
            *shard.write().unwrap_or_else(PoisonError::into_inner) = running
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
        }
        next.scenario_count = AtomicU64::new(previous.scenario_count.load(Ordering::Relaxed));
        next.other = Arc::clone(&previous.other);
        Ok(next)
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }

    fn with_scenario(&self, name: &str, f: impl FnOnce(&ScenarioMetrics)) {
        let shard = &self.scenarios[(self.hasher.hash_one(name) as usize) % SHARDS];
        if let Some(m) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return f(m);
        }
        if self.scenario_count.load(Ordering::Relaxed) >= self.max_scenarios {
            return f(&self.other);
        }
        let metrics = {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            if !map.contains_key(name) {
                // The count may overshoot by the number of racing writers;
                // the bound is on memory, not exact.
                if self.scenario_count.fetch_add(1, Ordering::Relaxed) >= self.max_scenarios {
                    drop(map);
                    return f(&self.other);
                }
            }
            map.entry(name.into())
                .or_insert_with(|| Arc::new(ScenarioMetrics::new()))
                .clone()
        };
        f(&metrics);
    }
    fn model(&self, id: &str) -> Option<&ModelMetrics> {
        self.by_id
            .get(id)
            .and_then(|&i| self.models.get(i))
            .map(|m| &**m)
    }

    /// Counts since start, summed over every label: what a periodic log
    /// summary reports (as the difference of two readings).
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        let mut add_scenario = |m: &ScenarioMetrics| {
            for (outcome, count) in REQUEST_OUTCOMES.iter().zip(&m.outcomes) {
                let count = count.load(Ordering::Relaxed);
                t.requests += count;
                if *outcome != "ok" {
                    t.errors += count;
                }
            }
        };
        for shard in &self.scenarios {
            for m in shard
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
            {
                add_scenario(m);
            }
        }
        add_scenario(&self.other);
        t.fallbacks = self
            .fallbacks
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        for m in self.models.iter() {
            for kind in FailureKind::ALL {
                t.failed_calls += m.attempts[attempt_outcome(AttemptOutcome::Failed(kind))]
                    .load(Ordering::Relaxed);
            }
            t.circuits_opened +=
                m.transitions[state_index(CircuitState::Open)].load(Ordering::Relaxed);
        }
        t
    }

    /// The model's last failures (up to 8), newest first.
    pub fn recent_failures(&self, model: &str) -> Vec<RecentFailure> {
        self.model(model)
            .map(|m| m.recent.newest_first())
            .unwrap_or_default()
    }

    /// Writes every counter and histogram in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let mut scenarios: Vec<(Box<str>, Arc<ScenarioMetrics>)> = self
            .scenarios
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        scenarios.sort_by(|a, b| a.0.cmp(&b.0));
        let all = scenarios
            .iter()
            .map(|(name, m)| (&**name, &**m))
            .chain(std::iter::once((OTHER_SCENARIO, &*self.other)));

        header(
            out,
            "backstop_requests_total",
            "counter",
            "Requests by scenario and outcome.",
        );
        let mut latency_lines = String::new();
        for (name, m) in all {
            for (outcome, count) in REQUEST_OUTCOMES.iter().zip(&m.outcomes) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "backstop_requests_total{{scenario=\"{}\",outcome=\"{outcome}\"}} {count}",
                        escape(name)
                    );
                }
            }
            if m.latency.count() > 0 {
                m.latency.render(
                    &mut latency_lines,
                    "backstop_request_duration_seconds",
                    "scenario",
                    name,
                );
            }
        }
        header(
            out,
            "backstop_request_duration_seconds",
            "histogram",
            "End-to-end request latency by scenario.",
        );
        out.push_str(&latency_lines);

        header(
            out,
            "backstop_attempts_total",
            "counter",
            "Upstream calls by model and outcome.",
        );
        for (id, m) in self.model_ids.iter().zip(self.models.iter()) {
            for (i, count) in m.attempts.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "backstop_attempts_total{{model=\"{}\",outcome=\"{}\"}} {count}",
                        escape(id),
                        attempt_outcome_name(i)
                    );
                }
            }
        }
        header(
            out,
            "backstop_attempt_duration_seconds",
            "histogram",
            "Upstream call latency by model.",
        );
        for (id, m) in self.model_ids.iter().zip(self.models.iter()) {
            if m.latency.count() > 0 {
                m.latency
                    .render(out, "backstop_attempt_duration_seconds", "model", id);
            }
        }

        header(
            out,
            "backstop_fallbacks_total",
            "counter",
            "Answers by a backup model, by fallback level.",
        );
        let deepest = self.fallbacks.len() - 1;
        for (level, count) in self.fallbacks.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count > 0 {
                let label = if level == deepest {
                    format!("{level}+")
                } else {
                    level.to_string()
                };
                let _ = writeln!(out, "backstop_fallbacks_total{{level=\"{label}\"}} {count}");
            }
        }

        header(
            out,
            "backstop_circuit_transitions_total",
            "counter",
            "Circuit state changes by model and new state.",
        );
        for (id, m) in self.model_ids.iter().zip(self.models.iter()) {
            for (state, count) in STATES.iter().zip(&m.transitions) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "backstop_circuit_transitions_total{{model=\"{}\",to=\"{}\"}} {count}",
                        escape(id),
                        state.as_str()
                    );
                }
            }
        }
    }
}

impl EventSink for Metrics {
    fn record(&self, event: &Event<'_>) {
        match event {
            Event::RequestFinished(f) => {
                let outcome = request_outcome(f.error);
                let latency = f.latency;
                self.with_scenario(f.scenario, |m| {
                    m.outcomes[outcome].fetch_add(1, Ordering::Relaxed);
                    m.latency.observe(latency);
                });
            }
            Event::Fallback(f) => {
                let slot = f.level.min(self.fallbacks.len() - 1);
                self.fallbacks[slot].fetch_add(1, Ordering::Relaxed);
            }
            Event::Attempt {
                model,
                outcome,
                duration,
                ..
            } => {
                if let Some(m) = self.model(model) {
                    m.attempts[attempt_outcome(*outcome)].fetch_add(1, Ordering::Relaxed);
                    if outcome.called_upstream() {
                        m.latency.observe(*duration);
                    }
                    if let AttemptOutcome::Failed(kind) = outcome {
                        m.recent.push(*kind, self.clock.unix_ms());
                    }
                }
            }
            Event::Health { model, transition } => {
                if let Some(m) = self.model(model) {
                    m.transitions[state_index(transition.to)].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A strategy instance of the Router, where it is used, and the models its
/// routes reach. One instance shared by several routes (the `[strategies]`
/// defaults serve every scenario without an override and every model's
/// single-model route) is one instance: exported once, so a sum over the
/// series counts each spend, each circuit, once.
struct Instance<T: ?Sized> {
    strategy: Arc<T>,
    /// `default` for the instance of the single-model routes (the
    /// `[strategies]` defaults), else the scenarios using it, sorted and
    /// joined by `,`.
    scope: String,
    models: Vec<ModelIndex>,
}

fn instances<T: ?Sized>(router: &Router, pick: impl Fn(&Route) -> &Arc<T>) -> Vec<Instance<T>> {
    struct Seen<'r, T: ?Sized> {
        strategy: Arc<T>,
        default: bool,
        scenarios: Vec<&'r str>,
        models: Vec<ModelIndex>,
    }
    let mut seen: Vec<Seen<'_, T>> = Vec::new();
    for route in router.routes() {
        let strategy = pick(route);
        let i = match seen
            .iter()
            .position(|s| std::ptr::addr_eq(Arc::as_ptr(&s.strategy), Arc::as_ptr(strategy)))
        {
            Some(i) => i,
            None => {
                seen.push(Seen {
                    strategy: strategy.clone(),
                    default: false,
                    scenarios: Vec::new(),
                    models: Vec::new(),
                });
                seen.len() - 1
            }
        };
        let entry = &mut seen[i];
        if route.single_model {
            entry.default = true;
        } else {
            entry.scenarios.push(&route.name);
        }
        entry.models.extend(route.chain.iter().copied());
    }
    let mut out: Vec<Instance<T>> = seen
        .into_iter()
        .map(|mut s| {
            s.scenarios.sort_unstable();
            s.models.sort_unstable();
            s.models.dedup();
            Instance {
                strategy: s.strategy,
                scope: if s.default {
                    "default".to_owned()
                } else {
                    s.scenarios.join(",")
                },
                models: s.models,
            }
        })
        .collect();
    out.sort_by(|a, b| a.scope.cmp(&b.scope));
    out
}

/// Writes the Router's current state, once per strategy instance (see
/// [`Instance`]): per health policy and model, the circuit's state (one
/// series per state, 1 for the current one), the calls and failure ratio
/// in its window; per budget, its spend; per model, its latency estimates.
/// The `scope` label is `default` for the `[strategies]` instance, else the
/// scenarios that use the instance.
pub fn render_router_state(router: &Router, out: &mut String) {
    let models = router.models();

    header(
        out,
        "backstop_circuit_state",
        "gauge",
        "1 for the circuit's current state, by health policy scope and model.",
    );
    let mut window_calls = String::new();
    let mut failure_ratio = String::new();
    for instance in instances(router, |r| &r.strategies.health) {
        for &index in &instance.models {
            let Some(model) = models.get(index) else {
                continue;
            };
            let snap = instance.strategy.snapshot(index);
            let labels = format!(
                "scope=\"{}\",model=\"{}\"",
                escape(&instance.scope),
                escape(&model.id)
            );
            for state in STATES {
                let _ = writeln!(
                    out,
                    "backstop_circuit_state{{{labels},state=\"{}\"}} {}",
                    state.as_str(),
                    u8::from(snap.state == state)
                );
            }
            let _ = writeln!(
                window_calls,
                "backstop_circuit_window_calls{{{labels}}} {}",
                snap.window_calls
            );
            let _ = writeln!(
                failure_ratio,
                "backstop_circuit_failure_ratio{{{labels}}} {}",
                snap.failure_ratio
            );
        }
    }
    header(
        out,
        "backstop_circuit_window_calls",
        "gauge",
        "Calls in the circuit's sliding window.",
    );
    out.push_str(&window_calls);
    header(
        out,
        "backstop_circuit_failure_ratio",
        "gauge",
        "Failure ratio in the circuit's sliding window.",
    );
    out.push_str(&failure_ratio);

    let mut reserved = String::new();
    let mut limit = String::new();
    header(
        out,
        "backstop_budget_spent_usd",
        "gauge",
        "USD settled in the budget's current window (or in total), once per budget instance.",
    );
    for instance in instances(router, |r| &r.strategies.budget) {
        let snap = instance.strategy.snapshot();
        let labels = format!(
            "scope=\"{}\",policy=\"{}\"",
            escape(&instance.scope),
            escape(&snap.policy)
        );
        let _ = writeln!(out, "backstop_budget_spent_usd{{{labels}}} {}", snap.spent);
        let _ = writeln!(
            reserved,
            "backstop_budget_reserved_usd{{{labels}}} {}",
            snap.reserved
        );
        if let Some(cap) = snap.limit {
            let _ = writeln!(limit, "backstop_budget_limit_usd{{{labels}}} {cap}");
        }
    }
    header(
        out,
        "backstop_budget_reserved_usd",
        "gauge",
        "USD held by calls in flight, once per budget instance.",
    );
    out.push_str(&reserved);
    header(
        out,
        "backstop_budget_limit_usd",
        "gauge",
        "The budget's cap per window, once per budget instance.",
    );
    out.push_str(&limit);

    render_rate_limits(router, out);

    header(
        out,
        "backstop_latency_estimate_seconds",
        "gauge",
        "Peak-EWMA latency estimate of a model, by kind (first_token for streams, total otherwise, probe for background probes).",
    );
    let latency = &router.context().latency;
    for (index, model) in models.iter().enumerate() {
        for kind in [
            LatencyKind::FirstToken,
            LatencyKind::Total,
            LatencyKind::Probe,
        ] {
            let label = kind.as_str();
            if let Some(estimate) = latency.estimate(index, kind) {
                let _ = writeln!(
                    out,
                    "backstop_latency_estimate_seconds{{model=\"{}\",kind=\"{label}\"}} {:.6}",
                    escape(&model.id),
                    estimate.as_secs_f64()
                );
            }
        }
    }
}

/// Each rate limit's use in the last minute, its limits and its refusals
/// (as counted by this replica); nothing without rate limits.
fn render_rate_limits(router: &Router, out: &mut String) {
    let Some(limiter) = router.rate_limiter() else {
        return;
    };
    let snapshots = limiter.snapshot();
    let labels: Vec<String> = snapshots
        .iter()
        .map(|s| {
            format!(
                "scope=\"{}\",name=\"{}\"",
                s.scope.as_str(),
                escape(&s.name)
            )
        })
        .collect();
    header(
        out,
        "backstop_rate_limit_requests",
        "gauge",
        "Requests counted on a rate limit in the last minute, by scope (model or caller) and name.",
    );
    for (snap, labels) in snapshots.iter().zip(&labels) {
        let _ = writeln!(
            out,
            "backstop_rate_limit_requests{{{labels}}} {}",
            snap.requests
        );
    }
    header(
        out,
        "backstop_rate_limit_tokens",
        "gauge",
        "Tokens counted on a rate limit in the last minute (estimates of calls in flight included).",
    );
    for (snap, labels) in snapshots.iter().zip(&labels) {
        let _ = writeln!(
            out,
            "backstop_rate_limit_tokens{{{labels}}} {}",
            snap.tokens
        );
    }
    header(
        out,
        "backstop_rate_limit_per_minute",
        "gauge",
        "A rate limit's allowance per minute, by unit (rpm or tpm).",
    );
    for (snap, labels) in snapshots.iter().zip(&labels) {
        for (unit, value) in [("rpm", snap.rpm), ("tpm", snap.tpm)] {
            if let Some(value) = value {
                let _ = writeln!(
                    out,
                    "backstop_rate_limit_per_minute{{{labels},unit=\"{unit}\"}} {value}"
                );
            }
        }
    }
    header(
        out,
        "backstop_rate_limit_refused_total",
        "counter",
        "Calls a rate limit refused: models skipped (over_rate_limit) and callers answered 429.",
    );
    for (snap, labels) in snapshots.iter().zip(&labels) {
        let _ = writeln!(
            out,
            "backstop_rate_limit_refused_total{{{labels}}} {}",
            snap.refused
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests;
