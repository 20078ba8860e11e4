//! The built-in strategies' hot paths.
//!
//! - `circuit_breaker/admit_record_2_threads`: two threads admit and record
//!   a success on the same model at once (the contended case: one circuit,
//!   one window bucket). The time reported is one thread's time per
//!   admit+record pair while the other thread does the same. Target: median
//!   <= 100 ns.
//! - `circuit_breaker/admit_record_2_threads_2_models`: the control, two
//!   threads on two models (nothing shared).
//! - `circuit_breaker/admit_record_1_thread` and `admit_open`: one thread,
//!   and the rejection of an open circuit.
//! - `selector/<name>`: ordering a 4-model chain. Target: <= 200 ns each.
//!   `latency_aware` explores one ordering in ten (the default), the mean
//!   of both paths; `latency_aware_no_explore` is the plain ordering.
//! - `budget/rolling_reserve_settle`: one reservation and its settlement
//!   on a rolling budget with total, caller and scenario caps.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use backstop_core::{
    Admission, BudgetPolicy, CallOutcome, Candidate, FailureKind, HealthPolicy, LatencyKind,
    ModelSpec, RequestFacts, Selector, StrategyContext, SystemClock, Usage,
};
use backstop_strategies::StrategyError;
use backstop_strategies::budget::{Rolling, RollingConfig};
use backstop_strategies::health::{CircuitBreaker, CircuitBreakerConfig};
use backstop_strategies::selector::{
    CostAware, CostAwareConfig, LatencyAware, LatencyAwareConfig, Priority, PriorityConfig,
    Weighted, WeightedConfig,
};
use criterion::{Criterion, criterion_group, criterion_main};

/// A strategy the bench builds from known-good knobs.
fn built<T>(strategy: Result<T, StrategyError>) -> T {
    strategy.unwrap_or_else(|e| panic!("strategy: {e}"))
}

/// The seed's four models: priorities and prices per 1k tokens.
fn context() -> StrategyContext {
    let models = [
        ("gpt-4o", 1, 0.0025, 0.01),
        ("claude-sonnet-4", 2, 0.003, 0.015),
        ("gpt-4o-mini", 3, 0.000_15, 0.000_6),
        ("qwen-7b", 3, 0.0, 0.0),
    ]
    .into_iter()
    .map(|(id, priority, input, output)| {
        let mut m = ModelSpec::new(id, "p");
        m.priority = priority;
        m.input_cost_per_1k = input;
        m.output_cost_per_1k = output;
        m
    })
    .collect();
    StrategyContext::new(models, SystemClock::shared())
}

fn facts() -> RequestFacts<'static> {
    RequestFacts {
        scenario: "realtime_chat",
        caller: Some("team-a"),
        prompt_tokens: 800,
        max_tokens: Some(512),
        stream: false,
        tools: false,
    }
}

const SUCCESS: CallOutcome = CallOutcome::Success {
    latency: Duration::from_millis(20),
};

fn admit_record(breaker: &CircuitBreaker, model: usize) {
    if let Admission::Admit(permit) = breaker.admit(model) {
        black_box(breaker.record(model, permit, SUCCESS));
    }
}

/// Time per admit+record pair of the slower of two threads running at
/// once, the first on `models.0`, the second on `models.1`.
fn two_threads(breaker: &CircuitBreaker, models: (usize, usize), iters: u64) -> Duration {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let threads: Vec<_> = [models.0, models.1]
            .into_iter()
            .map(|model| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let began = Instant::now();
                    for _ in 0..iters {
                        admit_record(breaker, model);
                    }
                    began.elapsed()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .max()
            .unwrap_or_default()
    })
}

fn circuit_breaker(c: &mut Criterion) {
    let ctx = context();
    let breaker = built(CircuitBreaker::new(CircuitBreakerConfig::default(), &ctx));
    let mut group = c.benchmark_group("circuit_breaker");

    group.bench_function("admit_record_1_thread", |b| {
        b.iter(|| admit_record(&breaker, 0));
    });

    group.bench_function("admit_record_2_threads", |b| {
        b.iter_custom(|iters| two_threads(&breaker, (0, 0), iters));
    });

    // The control: two threads on two models share nothing. What it adds
    // over one thread is the machine, not the breaker.
    group.bench_function("admit_record_2_threads_2_models", |b| {
        b.iter_custom(|iters| two_threads(&breaker, (0, 1), iters));
    });

    let open = built(CircuitBreaker::new(
        CircuitBreakerConfig {
            break_ms: 3_600_000,
            max_break_ms: 3_600_000,
            ..CircuitBreakerConfig::default()
        },
        &ctx,
    ));
    for _ in 0..5 {
        if let Admission::Admit(p) = open.admit(0) {
            let failure = CallOutcome::Failure {
                kind: FailureKind::Server,
                retry_after: None,
                latency: Duration::from_millis(5),
            };
            open.record(0, p, failure);
        }
    }
    group.bench_function("admit_open", |b| {
        b.iter(|| black_box(open.admit(black_box(0))));
    });
    group.finish();
}

fn bench_selector(c: &mut Criterion, name: &str, ctx: &StrategyContext, selector: &dyn Selector) {
    let template: Vec<Candidate<'_>> = ctx
        .models
        .iter()
        .enumerate()
        .map(|(index, spec)| Candidate {
            index,
            spec,
            position: index,
        })
        .collect();
    let Ok(template): Result<[Candidate<'_>; 4], _> = template.try_into() else {
        panic!("four models");
    };
    let facts = facts();
    c.bench_function(&format!("selector/{name}"), |b| {
        b.iter(|| {
            let mut chain = template;
            selector.order(black_box(&facts), &mut chain);
            black_box(chain);
        });
    });
}

fn selectors(c: &mut Criterion) {
    let ctx = context();
    // Three of four models measured, one over the limit: every branch of
    // the latency ordering runs.
    ctx.latency
        .observe(0, LatencyKind::Total, Duration::from_millis(900));
    ctx.latency
        .observe(1, LatencyKind::Total, Duration::from_millis(7_000));
    ctx.latency
        .observe(3, LatencyKind::Total, Duration::from_millis(300));
    bench_selector(
        c,
        "priority",
        &ctx,
        &built(Priority::new(PriorityConfig {}, &ctx)),
    );
    bench_selector(
        c,
        "latency_aware",
        &ctx,
        &built(LatencyAware::new(
            LatencyAwareConfig {
                max_latency_ms: Some(5_000),
                // One ordering in ten explores, as by default: the figure
                // is the mean over both paths.
                ..LatencyAwareConfig::default()
            },
            &ctx,
        )),
    );
    bench_selector(
        c,
        "latency_aware_no_explore",
        &ctx,
        &built(LatencyAware::new(
            LatencyAwareConfig {
                max_latency_ms: Some(5_000),
                explore_every: 0,
                ..LatencyAwareConfig::default()
            },
            &ctx,
        )),
    );
    bench_selector(
        c,
        "cost_aware",
        &ctx,
        &built(CostAware::new(CostAwareConfig {}, &ctx)),
    );
    bench_selector(
        c,
        "weighted",
        &ctx,
        &built(Weighted::new(
            WeightedConfig {
                weights: [("gpt-4o-mini".to_owned(), 3.0)].into_iter().collect(),
                seed: Some(7),
            },
            &ctx,
        )),
    );
}

fn budgets(c: &mut Criterion) {
    let ctx = context();
    let rolling = Arc::new(built(Rolling::new(
        RollingConfig {
            max_cost: Some(1e12),
            max_cost_per_caller: Some(1e12),
            max_cost_per_scenario: Some(1e12),
            ..RollingConfig::default()
        },
        &ctx,
    )));
    let facts = facts();
    let model = &ctx.models[2];
    let usage = Usage::new(800, 200);
    c.bench_function("budget/rolling_reserve_settle", |b| {
        b.iter(|| {
            if let Ok(r) = rolling.reserve(2, model, black_box(&facts)) {
                rolling.settle(r, model, &facts, Some(&usage));
            }
        });
    });
}

criterion_group!(benches, circuit_breaker, selectors, budgets);
criterion_main!(benches);
