//! The instruments exported over OTLP.
//!
//! | instrument | kind, unit | attributes |
//! |---|---|---|
//! | `gen_ai.client.operation.duration` | histogram, s | `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.model`, `server.address`, `error.type` |
//! | `gen_ai.client.token.usage` | histogram, `{token}` | the same (no `error.type`) and `gen_ai.token.type` (`input`, `output`) |
//! | `gen_ai.client.operation.time_to_first_chunk` | histogram, s | as the duration, streams only |
//! | `backstop.requests` | counter | `backstop.scenario`, `backstop.outcome` (`ok` or the error) |
//! | `backstop.fallbacks` | counter | `backstop.scenario`, `backstop.model_used`, `backstop.fallback_level` |
//! | `backstop.skips` | counter | `backstop.model`, `backstop.skip_reason` (`circuit_open`, `over_budget`, ...) |
//! | `backstop.circuit.state` | gauge | `backstop.scope`, `backstop.model`, `backstop.circuit.state`: 1 for the current state |
//! | `backstop.circuit.opened` | counter | circuits opened since start |
//! | `backstop.budget.spent`, `.reserved`, `.limit` | gauges, USD | `backstop.scope`, `backstop.budget.policy` |
//!
//! The first six are recorded as requests run (through the request's
//! trace); circuits and budgets are read from the Router at each export,
//! the same numbers `/metrics` shows.

use std::sync::{Arc, PoisonError, RwLock};

use backstop_core::{AttemptOutcome, CallEnd, CircuitState, RequestFinished, SkipReason};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use super::Following;

/// The semantic conventions' bucket boundaries for durations (s) and
/// token counts.
const DURATION_BOUNDARIES: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
const TOKEN_BOUNDARIES: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

const CIRCUIT_STATES: [CircuitState; 3] = [
    CircuitState::Closed,
    CircuitState::HalfOpen,
    CircuitState::Open,
];

/// What a call's measurements are attributed by.
#[derive(Debug)]
pub(crate) struct CallMetrics {
    pub(crate) operation: &'static str,
    pub(crate) provider: String,
    pub(crate) request_model: String,
    pub(crate) address: Option<String>,
}

/// Every instrument.
#[derive(Debug)]
pub(crate) struct Instruments {
    duration: Histogram<f64>,
    tokens: Histogram<u64>,
    first_chunk: Histogram<f64>,
    requests: Counter<u64>,
    fallbacks: Counter<u64>,
    skips: Counter<u64>,
}

impl Instruments {
    pub(crate) fn new(meter: &Meter, following: &Arc<RwLock<Following>>) -> Self {
        observe_router(meter, following);
        Self {
            duration: meter
                .f64_histogram("gen_ai.client.operation.duration")
                .with_unit("s")
                .with_description("Duration of GenAI client operations (one per upstream call).")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            tokens: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Input and output tokens used per upstream call.")
                .with_boundaries(TOKEN_BOUNDARIES.to_vec())
                .build(),
            first_chunk: meter
                .f64_histogram("gen_ai.client.operation.time_to_first_chunk")
                .with_unit("s")
                .with_description(
                    "Time from the start of a streamed upstream call to its first output chunk.",
                )
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            requests: meter
                .u64_counter("backstop.requests")
                .with_description("Requests finished, by scenario and outcome.")
                .build(),
            fallbacks: meter
                .u64_counter("backstop.fallbacks")
                .with_description("Requests answered by a model other than the primary.")
                .build(),
            skips: meter
                .u64_counter("backstop.skips")
                .with_description("Models of a chain not called, by reason.")
                .build(),
        }
    }

    /// An upstream call ended.
    pub(crate) fn call_ended(&self, call: &CallMetrics, end: &CallEnd<'_>) {
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", call.operation),
            KeyValue::new("gen_ai.provider.name", call.provider.clone()),
            KeyValue::new("gen_ai.request.model", call.request_model.clone()),
        ];
        if let Some(address) = &call.address {
            attributes.push(KeyValue::new("server.address", address.clone()));
        }
        if let Some(model) = end
            .response
            .as_ref()
            .map(|r| r.model)
            .filter(|m| !m.is_empty())
        {
            attributes.push(KeyValue::new("gen_ai.response.model", model.to_owned()));
        }
        if let Some(first) = end.first_output {
            self.first_chunk.record(first.as_secs_f64(), &attributes);
        }
        if let Some(usage) = end.response.as_ref().and_then(|r| r.usage.as_ref()) {
            let mut with_type = attributes.clone();
            with_type.push(KeyValue::new("gen_ai.token.type", "input"));
            self.tokens
                .record(u64::from(usage.prompt_tokens), &with_type);
            if call.operation == "chat" {
                if let Some(last) = with_type.last_mut() {
                    *last = KeyValue::new("gen_ai.token.type", "output");
                }
                self.tokens
                    .record(u64::from(usage.completion_tokens), &with_type);
            }
        }
        match end.outcome {
            AttemptOutcome::Failed(kind) => {
                attributes.push(KeyValue::new("error.type", kind.as_str()))
            }
            AttemptOutcome::Cancelled => attributes.push(KeyValue::new("error.type", "cancelled")),
            AttemptOutcome::Succeeded | AttemptOutcome::Skipped(_) => {}
        }
        self.duration
            .record(end.duration.as_secs_f64(), &attributes);
    }

    /// A request ended.
    pub(crate) fn finished(&self, finished: &RequestFinished<'_>) {
        let scenario = KeyValue::new("backstop.scenario", finished.scenario.to_owned());
        self.requests.add(
            1,
            &[
                scenario.clone(),
                KeyValue::new("backstop.outcome", finished.error.unwrap_or("ok")),
            ],
        );
        if let (Some(level), Some(model)) = (finished.fallback_level, finished.model_used)
            && level > 0
        {
            self.fallbacks.add(
                1,
                &[
                    scenario,
                    KeyValue::new("backstop.model_used", model.to_owned()),
                    KeyValue::new("backstop.fallback_level", level as i64),
                ],
            );
        }
    }

    /// A model was not called.
    pub(crate) fn skipped(&self, model: &str, reason: SkipReason) {
        self.skips.add(
            1,
            &[
                KeyValue::new("backstop.model", model.to_owned()),
                KeyValue::new("backstop.skip_reason", reason.as_str()),
            ],
        );
    }
}

/// Circuits and budgets, read from the Router at each export: one series
/// per distinct health or budget policy instance, scoped by the first
/// scenario that uses it.
fn observe_router(meter: &Meter, following: &Arc<RwLock<Following>>) {
    let current = Arc::clone(following);
    meter
        .u64_observable_gauge("backstop.circuit.state")
        .with_description(
            "1 for the circuit's current state (closed, half_open, open), by scope and model.",
        )
        .with_callback(move |observer| {
            let circuits = current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .router
                .clone();
            let models = circuits.models();
            let mut seen: Vec<(*const (), usize)> = Vec::new();
            for name in circuits.scenario_names().iter() {
                let Some(route) = circuits.route(name) else {
                    continue;
                };
                let health = &route.strategies.health;
                let key = Arc::as_ptr(health).cast::<()>();
                for &index in route.chain.iter() {
                    if seen.contains(&(key, index)) {
                        continue;
                    }
                    seen.push((key, index));
                    let Some(model) = models.get(index) else {
                        continue;
                    };
                    let snap = health.snapshot(index);
                    for state in CIRCUIT_STATES {
                        observer.observe(
                            u64::from(snap.state == state),
                            &[
                                KeyValue::new("backstop.scope", name.to_string()),
                                KeyValue::new("backstop.model", model.id.clone()),
                                KeyValue::new("backstop.circuit.state", state.as_str()),
                            ],
                        );
                    }
                }
            }
        })
        .build();
    let totals = Arc::clone(following);
    meter
        .u64_observable_counter("backstop.circuit.opened")
        .with_description("Circuits that opened since start.")
        .with_callback(move |observer| {
            let opened = totals
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .metrics
                .totals()
                .circuits_opened;
            observer.observe(opened, &[]);
        })
        .build();
    let budget_gauge =
        |name: &'static str,
         description: &'static str,
         read: fn(&backstop_core::BudgetSnapshot) -> Option<f64>| {
            let current = Arc::clone(following);
            meter
                .f64_observable_gauge(name)
                .with_unit("USD")
                .with_description(description)
                .with_callback(move |observer| {
                    let router = current
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .router
                        .clone();
                    let mut seen: Vec<*const ()> = Vec::new();
                    for scenario in router.scenario_names().iter() {
                        let Some(route) = router.route(scenario) else {
                            continue;
                        };
                        let budget = &route.strategies.budget;
                        let key = Arc::as_ptr(budget).cast::<()>();
                        if seen.contains(&key) {
                            continue;
                        }
                        seen.push(key);
                        let snap = budget.snapshot();
                        if let Some(value) = read(&snap) {
                            observer.observe(
                                value,
                                &[
                                    KeyValue::new("backstop.scope", scenario.to_string()),
                                    KeyValue::new("backstop.budget.policy", snap.policy.clone()),
                                ],
                            );
                        }
                    }
                })
                .build();
        };
    budget_gauge(
        "backstop.budget.spent",
        "USD settled in the budget's current window (or in total).",
        |s| Some(s.spent),
    );
    budget_gauge(
        "backstop.budget.reserved",
        "USD held by calls in flight.",
        |s| Some(s.reserved),
    );
    budget_gauge(
        "backstop.budget.limit",
        "The budget's cap per window.",
        |s| s.limit,
    );
}
