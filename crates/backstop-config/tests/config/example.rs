//! examples/backstop.toml, round trip: checked, built into a Router, and
//! serving requests through the template rung and through a failing
//! upstream on loopback.

use std::sync::Arc;

use backstop_config::{Registry, Resolved};
use backstop_core::{ChatRequest, RequestContext};
use figment::Jail;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{EXAMPLE, load, set_keys};

/// Loads the example as shipped, in a jail, with dummy keys and the extra
/// environment given.
fn example(env: &[(&str, String)]) -> Resolved {
    let mut resolved = None;
    Jail::expect_with(|jail| {
        jail.create_dir("examples")?;
        jail.create_file("examples/backstop.toml", EXAMPLE)?;
        set_keys(jail);
        for (key, value) in env {
            jail.set_env(key, value);
        }
        resolved = Some(load("examples/backstop.toml").map_err(|p| p.to_string())?);
        Ok(())
    });
    resolved.expect("the jail ran")
}

#[test]
fn the_example_checks_clean_and_reports_its_scenarios() {
    Jail::expect_with(|jail| {
        jail.create_dir("examples")?;
        jail.create_file("examples/backstop.toml", EXAMPLE)?;
        set_keys(jail);
        let report = backstop_config::check("examples/backstop.toml", Registry::builtin())
            .map_err(|p| p.to_string())?
            .to_string();
        for line in [
            "examples/backstop.toml: configuration OK",
            "    chain      gpt-4o-mini -> qwen-7b -> rules",
            "    chain      gpt-4o -> claude-sonnet-4 -> gpt-4o-mini",
            "    chain      gpt-4o -> claude-sonnet-4",
            "    selector   latency_aware #2 { max_latency_ms = 5000 }",
            "    health     circuit_breaker #1 { break_ms = 5000, failure_ratio = 0.5, min_calls = 5, window_ms = 30000 }",
            "    timeouts   connect 2000 ms, first token 3000 ms, idle 5000 ms, attempt 20000 ms, total 30000 ms",
            "    streams    mid-stream restart, hedge off, content policy return",
            "    models     gpt-4o, claude-sonnet-4, gpt-4o-mini, qwen-7b, rules",
            "  alert { max_fallbacks = 10, window_ms = 3600000 }",
        ] {
            assert!(
                report.lines().any(|l| l == line),
                "no line {line:?} in\n{report}"
            );
        }
        // No API keys in this environment: a warning, not a problem.
        assert!(report.contains("the gateway will accept requests WITHOUT authentication"));
        Ok(())
    });
}

#[test]
fn scenarios_and_models_become_routes_with_the_files_chains() {
    let resolved = example(&[]);
    let router = &resolved.router;
    let names: Vec<&str> = router.scenario_names().iter().map(|n| &**n).collect();
    assert_eq!(names, ["realtime_chat", "content_generation", "analysis"]);

    let chain = |route: &str| -> Vec<String> {
        let route = router.route(route).expect("the route exists");
        route
            .chain
            .iter()
            .map(|&i| router.models()[i].id.clone())
            .collect()
    };
    assert_eq!(chain("realtime_chat"), ["gpt-4o-mini", "qwen-7b", "rules"]);
    assert_eq!(
        chain("content_generation"),
        ["gpt-4o", "claude-sonnet-4", "gpt-4o-mini"]
    );
    assert_eq!(chain("analysis"), ["gpt-4o", "claude-sonnet-4"]);

    // A model's id serves it alone, with the defaults.
    let single = router.route("claude-sonnet-4").expect("single-model route");
    assert!(single.single_model);
    assert_eq!(single.strategies.selector.name(), "priority");

    let claude = &router.models()[router
        .context()
        .index_of("claude-sonnet-4")
        .expect("claude")];
    assert_eq!(claude.upstream, "claude-sonnet-4-20250514");
    assert!(claude.capabilities.assistant_prefill);
    assert!((claude.output_cost_per_1k - 0.015).abs() < 1e-12);
}

#[test]
fn scenarios_with_the_same_health_table_share_one_circuit_breaker() {
    let resolved = example(&[]);
    let router = &resolved.router;
    let health = |route: &str| Arc::clone(&router.route(route).expect("route").strategies.health);
    assert!(Arc::ptr_eq(&health("realtime_chat"), &health("analysis")));
    assert!(Arc::ptr_eq(&health("analysis"), &health("gpt-4o")));
    assert_eq!(resolved.health_policies.len(), 1);
    let selector =
        |route: &str| Arc::clone(&router.route(route).expect("route").strategies.selector);
    assert!(!Arc::ptr_eq(
        &selector("realtime_chat"),
        &selector("analysis")
    ));
}

#[tokio::test]
async fn the_template_rung_answers_by_its_own_id() {
    let resolved = example(&[]);
    let answer = resolved
        .router
        .complete(
            ChatRequest::user("rules", "hello"),
            RequestContext::default(),
        )
        .await
        .expect("the template answers");
    assert_eq!(&*answer.outcome.model_used, "rules");
    assert_eq!(
        answer.response.text(),
        "The rules service is busy right now. Please try again in a minute."
    );
}

#[tokio::test]
async fn realtime_chat_falls_over_to_the_template_when_its_upstreams_fail() {
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(503).set_body_json(serde_json::json!({
            "error": { "message": "down for maintenance", "type": "server_error" }
        })))
        .mount(&openai)
        .await;
    // Nothing listens on the local model's port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let local = format!("http://{}/v1", closed.local_addr().expect("its address"));
    drop(closed);

    let resolved = example(&[
        (
            "BACKSTOP__PROVIDERS__OPENAI__BASE_URL",
            format!("{}/v1", openai.uri()),
        ),
        ("BACKSTOP__PROVIDERS__LOCAL__BASE_URL", local),
    ]);
    let answer = resolved
        .router
        .complete(
            ChatRequest::user("realtime_chat", "hi"),
            RequestContext::default(),
        )
        .await
        .expect("the last rung answers");

    assert_eq!(&*answer.outcome.model_used, "rules");
    assert_eq!(answer.outcome.fallback_level, 2);
    assert!(
        answer.outcome.warning.is_some(),
        "a degraded answer is annotated"
    );
    // gpt-4o-mini was tried and retried once (server error), the local
    // model refused twice (connect), then the template answered.
    let seen = openai.received_requests().await.expect("recorded");
    assert_eq!(seen.len(), 2);
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json body");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(answer.outcome.upstream_attempts, 5);
}

#[test]
fn anthropic_models_take_a_prefill_unless_they_say_otherwise() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("PREFILL_TEST_KEY", "sk-ant-test");
        jail.create_file(
            "prefill.toml",
            r#"
[providers.claude]
type = "anthropic"
api_key_env = "PREFILL_TEST_KEY"

[providers.oa]
type = "openai"
base_url = "http://127.0.0.1:9/v1"

[models.sonnet]
provider = "claude"

[models.haiku]
provider = "claude"
supports_prefill = false

[models.mini]
provider = "oa"
"#,
        )?;
        let resolved = backstop_config::load("prefill.toml", backstop_config::Registry::builtin())
            .map_err(|p| p.to_string())?;
        let prefill = |id: &str| {
            resolved
                .router
                .models()
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.capabilities.assistant_prefill)
        };
        assert_eq!(prefill("sonnet"), Some(true));
        assert_eq!(prefill("haiku"), Some(false));
        assert_eq!(prefill("mini"), Some(false));
        Ok(())
    });
}
