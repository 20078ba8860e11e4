//! What the metrics sink counts, and how it renders.

use std::sync::Arc;

use backstop_core::testing::{Script, ScriptedProvider, simple_strategies};
use backstop_core::{
    ChatRequest, FallbackEvent, HealthTransition, ManualClock, ModelSpec, RequestContext,
    RequestFinished, Scenario, Strategies,
};

use super::*;
use crate::health::{CircuitBreaker, CircuitBreakerConfig};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn ctx() -> StrategyContext {
    let models = vec![
        ModelSpec::new("gpt-4o", "openai"),
        ModelSpec::new("qwen-7b", "local"),
    ];
    StrategyContext::new(models, ManualClock::shared())
}

fn metrics(max_scenarios: usize) -> Metrics {
    Metrics::new(MetricsConfig { max_scenarios }, &ctx()).unwrap()
}

fn finished(m: &Metrics, scenario: &str, error: Option<&'static str>, latency: Duration) {
    m.record(&Event::RequestFinished(&RequestFinished {
        scenario,
        model_used: error.is_none().then_some("gpt-4o"),
        fallback_level: error.is_none().then_some(0),
        error,
        latency,
        upstream_attempts: 1,
        stream: false,
    }));
}

fn attempt(m: &Metrics, model: &str, outcome: AttemptOutcome, duration: Duration) {
    m.record(&Event::Attempt {
        scenario: "chat",
        model,
        outcome,
        duration,
    });
}

fn rendered(m: &Metrics) -> String {
    let mut out = String::new();
    m.render_prometheus(&mut out);
    out
}

#[test]
fn counts_requests_by_scenario_and_outcome_with_latency() {
    let m = metrics(256);
    finished(&m, "chat", None, ms(30));
    finished(&m, "chat", None, ms(700));
    finished(&m, "chat", Some("all_failed"), ms(2));
    finished(&m, "batch", Some("something_new"), ms(1));
    let out = rendered(&m);
    assert!(
        out.contains("# TYPE backstop_requests_total counter\n"),
        "{out}"
    );
    assert!(out.contains("backstop_requests_total{scenario=\"chat\",outcome=\"ok\"} 2\n"));
    assert!(out.contains("backstop_requests_total{scenario=\"chat\",outcome=\"all_failed\"} 1\n"));
    assert!(out.contains("backstop_requests_total{scenario=\"batch\",outcome=\"other\"} 1\n"));
    // 2 ms and 30 ms are under 0.05 s; 700 ms is under 1 s.
    assert!(
        out.contains(
            "backstop_request_duration_seconds_bucket{scenario=\"chat\",le=\"0.005\"} 1\n"
        )
    );
    assert!(
        out.contains("backstop_request_duration_seconds_bucket{scenario=\"chat\",le=\"0.05\"} 2\n")
    );
    assert!(
        out.contains("backstop_request_duration_seconds_bucket{scenario=\"chat\",le=\"0.5\"} 2\n")
    );
    assert!(
        out.contains("backstop_request_duration_seconds_bucket{scenario=\"chat\",le=\"1\"} 3\n")
    );
    assert!(
        out.contains("backstop_request_duration_seconds_bucket{scenario=\"chat\",le=\"+Inf\"} 3\n")
    );
    assert!(out.contains("backstop_request_duration_seconds_sum{scenario=\"chat\"} 0.732\n"));
    assert!(out.contains("backstop_request_duration_seconds_count{scenario=\"chat\"} 3\n"));
}

#[test]
fn counts_attempts_by_model_and_kind() {
    let m = metrics(256);
    attempt(
        &m,
        "gpt-4o",
        AttemptOutcome::Failed(FailureKind::Timeout),
        ms(3_000),
    );
    attempt(
        &m,
        "gpt-4o",
        AttemptOutcome::Failed(FailureKind::Timeout),
        ms(3_000),
    );
    attempt(&m, "gpt-4o", AttemptOutcome::Cancelled, ms(10));
    attempt(&m, "qwen-7b", AttemptOutcome::Succeeded, ms(40));
    attempt(
        &m,
        "qwen-7b",
        AttemptOutcome::Skipped(SkipReason::OverBudget),
        ms(0),
    );
    attempt(&m, "not-a-model", AttemptOutcome::Succeeded, ms(1));
    let out = rendered(&m);
    assert!(out.contains("backstop_attempts_total{model=\"gpt-4o\",outcome=\"timeout\"} 2\n"));
    assert!(out.contains("backstop_attempts_total{model=\"gpt-4o\",outcome=\"cancelled\"} 1\n"));
    assert!(out.contains("backstop_attempts_total{model=\"qwen-7b\",outcome=\"ok\"} 1\n"));
    assert!(out.contains("backstop_attempts_total{model=\"qwen-7b\",outcome=\"over_budget\"} 1\n"));
    assert!(!out.contains("not-a-model"));
    // Skips are not calls: they have no latency.
    assert!(out.contains("backstop_attempt_duration_seconds_count{model=\"qwen-7b\"} 1\n"));
    assert!(out.contains("backstop_attempt_duration_seconds_count{model=\"gpt-4o\"} 3\n"));
}

#[test]
fn every_attempt_outcome_has_its_own_series() {
    let mut names: Vec<&str> = (0..ATTEMPT_OUTCOMES).map(attempt_outcome_name).collect();
    let mut outcomes = vec![AttemptOutcome::Succeeded, AttemptOutcome::Cancelled];
    outcomes.extend(FailureKind::ALL.map(AttemptOutcome::Failed));
    outcomes.extend(SKIPS.map(AttemptOutcome::Skipped));
    for o in &outcomes {
        assert_eq!(attempt_outcome_name(attempt_outcome(*o)), o.as_str());
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), ATTEMPT_OUTCOMES);
    assert_eq!(outcomes.len(), ATTEMPT_OUTCOMES);
}

#[test]
fn counts_fallbacks_by_level_and_transitions() {
    let m = metrics(256);
    for level in [1, 1, 2, 9] {
        m.record(&Event::Fallback(&FallbackEvent {
            timestamp_ms: 0,
            scenario: "chat".into(),
            primary: "gpt-4o".into(),
            model_used: "qwen-7b".into(),
            reason: "server",
            level,
            latency: ms(5),
        }));
    }
    m.record(&Event::Health {
        model: "gpt-4o",
        transition: HealthTransition {
            from: CircuitState::Closed,
            to: CircuitState::Open,
            cause: Some(FailureKind::Server),
        },
    });
    let out = rendered(&m);
    assert!(
        out.contains("backstop_fallbacks_total{level=\"1\"} 2\n"),
        "{out}"
    );
    // With two models, level 2 and deeper share the last series.
    assert!(
        out.contains("backstop_fallbacks_total{level=\"2+\"} 2\n"),
        "{out}"
    );
    assert!(out.contains("backstop_circuit_transitions_total{model=\"gpt-4o\",to=\"open\"} 1\n"));
}

#[test]
fn scenario_labels_are_bounded() {
    let m = metrics(2);
    for name in ["a", "b", "c", "d", "a"] {
        finished(&m, name, None, ms(1));
    }
    let out = rendered(&m);
    assert!(out.contains("backstop_requests_total{scenario=\"a\",outcome=\"ok\"} 2\n"));
    assert!(out.contains("backstop_requests_total{scenario=\"b\",outcome=\"ok\"} 1\n"));
    assert!(out.contains("backstop_requests_total{scenario=\"_other\",outcome=\"ok\"} 2\n"));
    assert!(!out.contains("scenario=\"c\""));
}

#[test]
fn label_values_are_escaped() {
    let m = metrics(256);
    finished(&m, "we\"ird\\na\nme", None, ms(1));
    let out = rendered(&m);
    assert!(out.contains("scenario=\"we\\\"ird\\\\na\\nme\""), "{out}");
}

#[tokio::test(start_paused = true)]
async fn renders_circuit_states_and_budgets_from_the_router() {
    let ctx = ctx();
    let mut policy = backstop_core::RoutePolicy::default();
    policy.retries.same_model = 0;
    let breaker = Arc::new(CircuitBreaker::new(CircuitBreakerConfig::default(), &ctx).unwrap());
    let strategies = Strategies {
        health: breaker,
        ..simple_strategies()
    };
    let router = backstop_core::Router::builder(ctx)
        .provider(
            "openai",
            ScriptedProvider::always(Script::fail(FailureKind::Server)),
        )
        .provider("local", ScriptedProvider::always(Script::reply("hi")))
        .scenario(
            Scenario {
                name: "chat".into(),
                chain: vec!["gpt-4o".into(), "qwen-7b".into()],
                policy,
            },
            strategies,
        )
        .build()
        .unwrap();
    for _ in 0..5 {
        router
            .complete(
                ChatRequest::user("chat", "hello"),
                RequestContext::default(),
            )
            .await
            .unwrap();
    }
    let mut out = String::new();
    render_router_state(&router, &mut out);
    assert!(
        out.contains("backstop_circuit_state{scope=\"chat\",model=\"gpt-4o\",state=\"open\"} 1\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "backstop_circuit_state{scope=\"chat\",model=\"gpt-4o\",state=\"closed\"} 0\n"
        )
    );
    assert!(
        out.contains(
            "backstop_circuit_state{scope=\"chat\",model=\"qwen-7b\",state=\"closed\"} 1\n"
        )
    );
    assert!(out.contains("backstop_circuit_failure_ratio{scope=\"chat\",model=\"gpt-4o\"} 1\n"));
    assert!(out.contains("backstop_budget_spent_usd{scope=\"chat\",policy=\"unlimited\"} 0\n"));
}

#[test]
fn keeps_each_models_last_failures_newest_first() {
    let clock = ManualClock::shared();
    let models = vec![
        ModelSpec::new("gpt-4o", "openai"),
        ModelSpec::new("qwen-7b", "local"),
    ];
    let m = Metrics::new(
        MetricsConfig { max_scenarios: 8 },
        &StrategyContext::new(models, clock.clone()),
    )
    .unwrap();
    attempt(&m, "gpt-4o", AttemptOutcome::Succeeded, ms(5));
    assert!(m.recent_failures("gpt-4o").is_empty());
    for kind in [
        FailureKind::Server,
        FailureKind::Timeout,
        FailureKind::RateLimited,
    ] {
        clock.advance(ms(10));
        attempt(&m, "gpt-4o", AttemptOutcome::Failed(kind), ms(5));
    }
    let recent = m.recent_failures("gpt-4o");
    let kinds: Vec<&str> = recent.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, ["rate_limited", "timeout", "server"]);
    assert!(recent[0].unix_ms > recent[2].unix_ms);
    assert!(m.recent_failures("qwen-7b").is_empty());

    // Only the last eight are kept.
    for _ in 0..20 {
        clock.advance(ms(1));
        attempt(
            &m,
            "gpt-4o",
            AttemptOutcome::Failed(FailureKind::Connect),
            ms(1),
        );
    }
    let recent = m.recent_failures("gpt-4o");
    assert_eq!(recent.len(), 8);
    assert!(recent.iter().all(|f| f.kind == "connect"));
}

#[test]
fn latency_estimates_render_per_model_with_escaped_ids() {
    let models = vec![ModelSpec::new("we\"ird", "local")];
    let ctx = StrategyContext::new(models, ManualClock::shared());
    ctx.latency
        .observe(0, LatencyKind::Total, Duration::from_millis(250));
    let router = backstop_core::Router::builder(ctx)
        .provider("local", ScriptedProvider::always(Script::reply("hi")))
        .build()
        .unwrap();
    let mut out = String::new();
    render_router_state(&router, &mut out);
    assert!(
        out.contains(
            "backstop_latency_estimate_seconds{model=\"we\\\"ird\",kind=\"total\"} 0.250000\n"
        ),
        "{out}"
    );
    assert!(!out.contains("kind=\"first_token\""), "{out}");
}
