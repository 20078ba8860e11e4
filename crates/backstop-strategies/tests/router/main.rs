//! The strategies composed by name from the catalog, run by a real Router:
//! what the caller gets back and what the upstreams see.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backstop_core::testing::{Script, ScriptedProvider};
use backstop_core::{
    AttemptOutcome, ChatRequest, FailureKind, ManualClock, ModelSpec, RequestContext, RouteError,
    RoutePolicy, Router, Scenario, SkipReason, Strategies, StrategyContext,
};
use backstop_strategies::catalog;
use serde_json::{Value, json};

mod rate_limits;

struct Chain {
    router: Router,
    clock: Arc<ManualClock>,
    providers: Vec<Arc<ScriptedProvider>>,
}

/// A scenario `chat` over `models` (id, output USD per 1k tokens, script),
/// with strategies built by name from `(type, table)` pairs.
fn chain(
    models: Vec<(&str, f64, Arc<ScriptedProvider>)>,
    selector: (&str, Value),
    health: (&str, Value),
    budget: (&str, Value),
    result: (&str, Value),
) -> Chain {
    let clock = ManualClock::shared();
    let specs = models
        .iter()
        .enumerate()
        .map(|(i, (id, output, _))| {
            let mut m = ModelSpec::new(*id, *id);
            m.priority = i as u32 + 1;
            m.input_cost_per_1k = 0.0;
            m.output_cost_per_1k = *output;
            m.max_tokens = 1000;
            m
        })
        .collect();
    let ctx = StrategyContext::new(specs, clock.clone());
    let strategies = Strategies {
        selector: catalog::build_selector(selector.0, &selector.1, &ctx).unwrap(),
        health: catalog::build_health(health.0, &health.1, &ctx).unwrap(),
        budget: catalog::build_budget(budget.0, &budget.1, &ctx).unwrap(),
        result: catalog::build_result(result.0, &result.1, &ctx).unwrap(),
    };
    let mut policy = RoutePolicy::default();
    policy.retries.same_model = 0;
    let mut builder = Router::builder(ctx);
    for (id, _, provider) in &models {
        builder = builder.provider(*id, provider.clone());
    }
    let router = builder
        .scenario(
            Scenario {
                name: "chat".into(),
                chain: models.iter().map(|(id, _, _)| (*id).to_owned()).collect(),
                policy,
            },
            strategies,
        )
        .build()
        .unwrap();
    Chain {
        router,
        clock,
        providers: models.into_iter().map(|(_, _, p)| p).collect(),
    }
}

fn defaults() -> [(&'static str, Value); 4] {
    [
        ("priority", Value::Null),
        ("circuit_breaker", Value::Null),
        ("unlimited", Value::Null),
        ("annotate", Value::Null),
    ]
}

async fn ask(
    router: &Router,
    caller: Option<&str>,
) -> Result<backstop_core::FallbackResult, RouteError> {
    router
        .complete(
            ChatRequest::user("chat", "hello"),
            RequestContext {
                caller: caller.map(Into::into),
                request_id: None,
                trace: None,
            },
        )
        .await
}

fn outcomes(result: &backstop_core::FallbackResult) -> Vec<(String, AttemptOutcome)> {
    result
        .outcome
        .attempts
        .iter()
        .map(|a| (a.model.to_string(), a.outcome))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_is_skipped_then_a_half_open_trial_closes_it() {
    let primary = ScriptedProvider::new(
        (0..5).map(|_| Script::fail(FailureKind::Server)),
        Script::reply("primary again"),
    );
    let [selector, health, budget, result] = defaults();
    let c = chain(
        vec![
            ("primary", 0.0, primary),
            (
                "backup",
                0.0,
                ScriptedProvider::always(Script::reply("backup")),
            ),
        ],
        selector,
        health,
        budget,
        result,
    );
    for _ in 0..5 {
        assert_eq!(
            ask(&c.router, None).await.unwrap().outcome.fallback_level,
            1
        );
    }
    // Open: the primary is skipped without a call.
    let r = ask(&c.router, None).await.unwrap();
    assert_eq!(
        outcomes(&r),
        [
            (
                "primary".into(),
                AttemptOutcome::Skipped(SkipReason::CircuitOpen)
            ),
            ("backup".into(), AttemptOutcome::Succeeded)
        ]
    );
    assert_eq!(
        r.outcome.warning.as_deref(),
        Some("a backup model (backup) answered; quality may differ")
    );
    assert_eq!(c.providers[0].calls(), 5);
    // After the break, one trial call goes through and closes the circuit.
    c.clock.advance(Duration::from_millis(5_000));
    let r = ask(&c.router, None).await.unwrap();
    assert_eq!(
        (&*r.outcome.model_used, r.outcome.fallback_level),
        ("primary", 0)
    );
    assert_eq!(r.outcome.warning, None);
    let r = ask(&c.router, None).await.unwrap();
    assert_eq!(&*r.outcome.model_used, "primary");
    assert_eq!(c.providers[0].calls(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_rolling_budget_skips_what_it_cannot_afford_and_a_cheaper_model_serves() {
    // Each call may produce 1000 tokens: 0.01 USD on "pricey", 0.001 on
    // "cheap". alice may spend 0.015 per hour.
    let [selector, health, _, _] = defaults();
    let c = chain(
        vec![
            (
                "pricey",
                0.01,
                // Slow enough that concurrent requests overlap.
                ScriptedProvider::always(Script::After(
                    Duration::from_millis(100),
                    Box::new(Script::reply("a b c")),
                )),
            ),
            (
                "cheap",
                0.001,
                ScriptedProvider::always(Script::reply("d e")),
            ),
        ],
        selector,
        health,
        (
            "rolling",
            json!({"window_ms": 3_600_000, "max_cost_per_caller": 0.015}),
        ),
        ("annotate", json!({"locale": "zh-CN"})),
    );
    // Settled at actual usage (3 words = 3 tokens), so the hold is freed.
    assert_eq!(
        ask(&c.router, Some("alice"))
            .await
            .unwrap()
            .outcome
            .fallback_level,
        0
    );
    // Concurrent requests: one hold of 0.01 fits, a second does not.
    let (a, b) = tokio::join!(ask(&c.router, Some("alice")), ask(&c.router, Some("alice")));
    let mut levels = [
        a.unwrap().outcome.fallback_level,
        b.unwrap().outcome.fallback_level,
    ];
    levels.sort_unstable();
    assert_eq!(levels, [0, 1]);
    // bob has his own allowance.
    assert_eq!(
        ask(&c.router, Some("bob"))
            .await
            .unwrap()
            .outcome
            .fallback_level,
        0
    );
    let snap = c.router.route("chat").unwrap().strategies.budget.snapshot();
    assert_eq!(snap.reserved, 0.0);
    assert!(snap.spent > 0.0);
}

#[tokio::test(start_paused = true)]
async fn over_budget_models_show_in_the_trail_and_level_two_carries_the_limitation() {
    let [selector, health, _, _] = defaults();
    let c = chain(
        vec![
            ("gpt-4o", 0.01, ScriptedProvider::always(Script::reply("x"))),
            ("claude", 0.02, ScriptedProvider::always(Script::reply("y"))),
            ("qwen", 0.0, ScriptedProvider::always(Script::reply("z"))),
        ],
        selector,
        health,
        ("per_request", json!({"max_cost": 0.005})),
        ("annotate", json!({"locale": "zh-CN"})),
    );
    let r = ask(&c.router, None).await.unwrap();
    assert_eq!(
        outcomes(&r),
        [
            (
                "gpt-4o".into(),
                AttemptOutcome::Skipped(SkipReason::OverBudget)
            ),
            (
                "claude".into(),
                AttemptOutcome::Skipped(SkipReason::OverBudget)
            ),
            ("qwen".into(), AttemptOutcome::Succeeded)
        ]
    );
    assert_eq!(r.outcome.fallback_level, 2);
    assert_eq!(
        r.outcome.warning.as_deref(),
        Some("当前使用了备用模型(qwen)，输出质量可能有所差异")
    );
    assert_eq!(
        r.outcome.limitation.as_deref(),
        Some("由于主服务不可用，部分高级功能(如长文本生成)可能受限")
    );
    assert_eq!(c.providers[0].calls() + c.providers[1].calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn cost_aware_sends_the_request_to_the_cheapest_model_first() {
    let [_, health, budget, result] = defaults();
    let c = chain(
        vec![
            ("gpt-4o", 0.01, ScriptedProvider::always(Script::reply("x"))),
            ("mini", 0.0006, ScriptedProvider::always(Script::reply("y"))),
        ],
        ("cost_aware", Value::Null),
        health,
        budget,
        result,
    );
    let r = ask(&c.router, None).await.unwrap();
    // The order tried starts with the cheapest: it is level 0, the primary.
    assert_eq!(
        (&*r.outcome.model_used, r.outcome.fallback_level),
        ("mini", 0)
    );
    assert_eq!(r.outcome.warning, None);
}
