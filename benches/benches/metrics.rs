//! The metrics sink: Backstop's hand-written atomics and encoder against
//! the `prometheus-client` crate doing the same work, to decide between
//! them by measurement.
//!
//! - `metrics/record_attempt/{hand_written,prometheus_client}`: one upstream
//!   call recorded (the attempt counter by model and outcome, and the
//!   latency histogram by model): what every request pays, on the request
//!   path. For `prometheus-client` the label sets are built once and reused
//!   (its best case; building them per event would allocate).
//! - `metrics/render/{hand_written,prometheus_client}`: encoding the same
//!   series (8 models x 3 outcomes, 8 latency histograms) in the text
//!   format: what a scrape pays.

use std::hint::black_box;
use std::time::Duration;

use backstop_core::StrategyContext;
use backstop_core::{AttemptOutcome, Event, EventSink, FailureKind, ManualClock, ModelSpec};
use backstop_strategies::monitor::{Metrics, MetricsConfig};
use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

const MODELS: usize = 8;
const OUTCOMES: [AttemptOutcome; 3] = [
    AttemptOutcome::Succeeded,
    AttemptOutcome::Failed(FailureKind::Server),
    AttemptOutcome::Failed(FailureKind::Timeout),
];
/// The hand-written histogram's bucket bounds, in seconds.
const BOUNDS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    model: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

fn ids() -> Vec<String> {
    (0..MODELS).map(|i| format!("model-{i}")).collect()
}

fn hand_written() -> Metrics {
    let models = ids().iter().map(|id| ModelSpec::new(id, "p")).collect();
    let ctx = StrategyContext::new(models, ManualClock::shared());
    Metrics::new(MetricsConfig::default(), &ctx).unwrap_or_else(|e| panic!("metrics: {e}"))
}

struct Crate {
    registry: Registry,
    attempts: Family<AttemptLabels, Counter>,
    latency: Family<ModelLabels, Histogram>,
}

fn with_crate() -> Crate {
    let mut registry = Registry::default();
    let attempts = Family::<AttemptLabels, Counter>::default();
    let latency = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
        Histogram::new(BOUNDS.iter().copied())
    });
    registry.register(
        "backstop_attempts",
        "Upstream calls by model and outcome.",
        attempts.clone(),
    );
    registry.register(
        "backstop_attempt_duration_seconds",
        "Upstream call latency by model.",
        latency.clone(),
    );
    Crate {
        registry,
        attempts,
        latency,
    }
}

fn record(c: &mut Criterion) {
    let ids = ids();
    let m = hand_written();
    let mut group = c.benchmark_group("metrics/record_attempt");
    let mut i = 0usize;
    group.bench_function("hand_written", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            m.record(black_box(&Event::Attempt {
                scenario: "chat",
                model: &ids[i % MODELS],
                outcome: OUTCOMES[i % OUTCOMES.len()],
                duration: Duration::from_millis(120),
            }));
        });
    });
    let p = with_crate();
    let attempt_labels: Vec<Vec<AttemptLabels>> = ids
        .iter()
        .map(|id| {
            OUTCOMES
                .iter()
                .map(|o| AttemptLabels {
                    model: id.clone(),
                    outcome: o.as_str().to_owned(),
                })
                .collect()
        })
        .collect();
    let model_labels: Vec<ModelLabels> = ids
        .iter()
        .map(|id| ModelLabels { model: id.clone() })
        .collect();
    let mut i = 0usize;
    group.bench_function("prometheus_client", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let model = i % MODELS;
            p.attempts
                .get_or_create(black_box(&attempt_labels[model][i % OUTCOMES.len()]))
                .inc();
            p.latency
                .get_or_create(black_box(&model_labels[model]))
                .observe(0.120);
        });
    });
    group.finish();

    let mut group = c.benchmark_group("metrics/render");
    let mut out = String::with_capacity(64 * 1024);
    group.bench_function("hand_written", |b| {
        b.iter(|| {
            out.clear();
            m.render_prometheus(&mut out);
            black_box(out.len());
        });
    });
    group.bench_function("prometheus_client", |b| {
        b.iter(|| {
            out.clear();
            let _ = prometheus_client::encoding::text::encode(&mut out, &p.registry);
            black_box(out.len());
        });
    });
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
