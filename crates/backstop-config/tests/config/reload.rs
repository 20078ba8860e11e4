//! `ConfigFile::reload`: what a reloaded configuration takes over from the
//! running one (the same instances, state and all) and what it builds
//! anew, which changes wait for a restart, and that an invalid file is
//! refused with the problems `check` reports.

use std::sync::Arc;
use std::time::Duration;

use backstop_config::{ConfigFile, Options, Registry, Resolved};
use backstop_core::{
    Admission, CallOutcome, ChatRequest, CircuitState, FailureKind, HealthPolicy, ModelIndex,
    RequestContext,
};
use figment::Jail;

const BASE: &str = r#"
[providers.primary]
type = "openai"
base_url = "http://127.0.0.1:9/v1"

[providers.rules]
type = "template"

[models.gpt]
provider = "primary"

[models.mini]
provider = "primary"
priority = 2

[strategies]
health = { type = "circuit_breaker", min_calls = 2 }

[scenarios.chat]
chain = ["gpt", "mini", "rules"]
timeouts = { attempt_ms = 50000 }

[scenarios.cheap]
chain = ["mini", "rules"]
health = { type = "circuit_breaker", min_calls = 5 }
"#;

fn file() -> ConfigFile {
    ConfigFile::new("c.toml", Registry::builtin(), Options::default())
}

fn health(resolved: &Resolved, route: &str) -> Arc<dyn HealthPolicy> {
    Arc::clone(
        &resolved
            .router
            .route(route)
            .expect("the route exists")
            .strategies
            .health,
    )
}

fn index(resolved: &Resolved, id: &str) -> ModelIndex {
    resolved.router.context().index_of(id).expect("the model")
}

/// `BASE` with `from` replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} is in BASE");
    BASE.replace(from, to)
}

#[test]
fn an_unchanged_file_hands_every_instance_over() {
    Jail::expect_with(|jail| {
        jail.create_file("c.toml", BASE)?;
        let file = file();
        let first = file.load().expect("loads");
        assert!(
            first.handover.carried().kept.is_empty(),
            "a first load took nothing over"
        );
        let second = file.reload(&first.handover).expect("reloads");
        let carried = second.handover.carried();
        assert!(carried.models_unchanged);
        assert!(carried.built.is_empty(), "{carried:?}");
        for kept in [
            "latency estimates",
            "metrics",
            "alerts",
            "health circuit_breaker #1",
            "health circuit_breaker #2",
            "provider primary",
            "provider rules",
        ] {
            assert!(
                carried.kept.iter().any(|k| k == kept),
                "{kept}: {carried:?}"
            );
        }
        assert!(Arc::ptr_eq(
            &health(&first, "chat"),
            &health(&second, "chat")
        ));
        assert!(Arc::ptr_eq(
            &health(&first, "cheap"),
            &health(&second, "cheap")
        ));
        assert!(Arc::ptr_eq(&first.metrics, &second.metrics));
        assert!(Arc::ptr_eq(&first.alerts, &second.alerts));
        assert!(Arc::ptr_eq(
            &first.router.context().latency,
            &second.router.context().latency
        ));
        Ok(())
    });
}

#[test]
fn a_new_scenario_and_a_changed_timeout_keep_the_open_circuit() {
    Jail::expect_with(|jail| {
        jail.create_file("c.toml", BASE)?;
        let file = file();
        let first = file.load().expect("loads");
        // Open gpt's circuit: the breaker learns from outcomes the Router
        // reports to it.
        let breaker = health(&first, "chat");
        let gpt = index(&first, "gpt");
        while let Admission::Admit(permit) = breaker.admit(gpt) {
            let failed = CallOutcome::Failure {
                kind: FailureKind::Server,
                retry_after: None,
                latency: Duration::ZERO,
            };
            breaker.record(gpt, permit, failed);
        }
        assert_eq!(breaker.snapshot(gpt).state, CircuitState::Open);

        jail.create_file(
            "c.toml",
            &(edited("attempt_ms = 50000", "attempt_ms = 45000")
                + "\n[scenarios.fast]\nchain = [\"mini\", \"rules\"]\n"),
        )?;
        let second = file.reload(&first.handover).expect("reloads");
        assert!(
            second.router.route("fast").is_some(),
            "the new scenario is served"
        );
        assert_eq!(
            second
                .router
                .route("chat")
                .expect("chat")
                .policy
                .timeouts
                .attempt,
            Duration::from_millis(45_000)
        );
        let kept = health(&second, "chat");
        assert!(Arc::ptr_eq(&breaker, &kept));
        assert_eq!(kept.snapshot(gpt).state, CircuitState::Open, "still open");
        assert!(matches!(kept.admit(gpt), Admission::Reject { .. }));
        // The new scenario uses the default health table: the same breaker.
        assert!(Arc::ptr_eq(&breaker, &health(&second, "fast")));
        assert!(second.handover.carried().built.is_empty());
        Ok(())
    });
}

#[test]
fn a_changed_strategy_table_builds_only_that_instance_anew() {
    Jail::expect_with(|jail| {
        jail.create_file("c.toml", BASE)?;
        let file = file();
        let first = file.load().expect("loads");
        jail.create_file("c.toml", &edited("min_calls = 5", "min_calls = 7"))?;
        let second = file.reload(&first.handover).expect("reloads");
        assert!(Arc::ptr_eq(
            &health(&first, "chat"),
            &health(&second, "chat")
        ));
        assert!(!Arc::ptr_eq(
            &health(&first, "cheap"),
            &health(&second, "cheap")
        ));
        let carried = second.handover.carried();
        assert!(
            carried
                .kept
                .iter()
                .any(|k| k == "health circuit_breaker #1"),
            "{carried:?}"
        );
        assert!(
            carried
                .built
                .iter()
                .any(|k| k == "health circuit_breaker #2"),
            "{carried:?}"
        );
        assert!(Arc::ptr_eq(&first.metrics, &second.metrics));
        Ok(())
    });
}

#[test]
fn a_changed_model_table_starts_every_strategy_afresh_but_keeps_providers() {
    Jail::expect_with(|jail| {
        jail.create_file("c.toml", BASE)?;
        let file = file();
        let first = file.load().expect("loads");
        for changed in [
            // A model added...
            BASE.to_owned() + "\n[models.big]\nprovider = \"primary\"\npriority = 3\n",
            // ...or one of its settings changed: state is indexed by the table.
            edited("priority = 2", "priority = 4"),
        ] {
            jail.create_file("c.toml", &changed)?;
            let second = file.reload(&first.handover).expect("reloads");
            let carried = second.handover.carried();
            assert!(!carried.models_unchanged);
            assert!(!Arc::ptr_eq(
                &health(&first, "chat"),
                &health(&second, "chat")
            ));
            assert!(!Arc::ptr_eq(&first.metrics, &second.metrics));
            assert!(
                carried.built.iter().any(|k| k == "latency estimates"),
                "{carried:?}"
            );
            assert!(
                carried
                    .built
                    .iter()
                    .any(|k| k == "health circuit_breaker #1")
            );
            assert!(
                carried.kept.iter().any(|k| k == "provider primary"),
                "{carried:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn a_changed_provider_table_builds_that_provider_anew() {
    Jail::expect_with(|jail| {
        jail.create_file("c.toml", BASE)?;
        let file = file();
        let first = file.load().expect("loads");
        jail.create_file(
            "c.toml",
            &edited("http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"),
        )?;
        let second = file.reload(&first.handover).expect("reloads");
        let carried = second.handover.carried();
        assert!(
            carried.built.iter().any(|k| k == "provider primary"),
            "{carried:?}"
        );
        assert!(
            carried.kept.iter().any(|k| k == "provider rules"),
            "{carried:?}"
        );
        // Who serves a model is not part of the model table: strategies stay.
        assert!(carried.models_unchanged);
        Ok(())
    });
}

#[test]
fn what_only_a_restart_changes_keeps_its_running_value_and_is_named() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "c.toml",
            &format!("[server]\nlisten = \"127.0.0.1:8080\"\n{BASE}"),
        )?;
        let file = file();
        let first = file.load().expect("loads");
        jail.set_env("FLEET_URL", "redis://127.0.0.1:6399/0");
        jail.create_file(
            "c.toml",
            &format!(
                "[server]\nlisten = \"127.0.0.1:9090\"\nmax_connections = 7\n{BASE}\n[state]\nbackend = \"redis\"\nurl_env = \"FLEET_URL\"\n\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n"
            ),
        )?;
        let second = file.reload(&first.handover).expect("reloads");
        let keys: Vec<(&str, &str, &str)> = second
            .handover
            .restart_required()
            .iter()
            .map(|r| (r.key.as_str(), r.running.as_str(), r.configured.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("server.listen", "127.0.0.1:8080", "127.0.0.1:9090"),
                ("server.max_connections", "10000", "7"),
                ("state", "local", "redis (FLEET_URL)"),
                (
                    "telemetry",
                    "off",
                    "http/protobuf to http://127.0.0.1:4318 as backstop, every 60000 ms, timeout 10000 ms"
                ),
            ]
        );
        assert_eq!(
            second.telemetry.endpoint, None,
            "the exporters run as started"
        );
        // The running values stay, and the report says what runs.
        assert_eq!(second.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(second.server.max_connections, 10_000);
        assert_eq!(second.fleet.name(), "local");
        assert_eq!(second.report.state.backend, "local");
        // Everything else was reloaded and handed over.
        assert!(Arc::ptr_eq(
            &health(&first, "chat"),
            &health(&second, "chat")
        ));
        Ok(())
    });
}

#[test]
fn an_invalid_file_is_refused_with_the_problems_check_reports() {
    Jail::expect_with(|jail| {
        jail.create_file("c.toml", BASE)?;
        let file = file();
        let first = file.load().expect("loads");
        let bad = edited(
            "chain = [\"mini\", \"rules\"]",
            "chain = [\"mini\", \"nope\"]",
        );
        jail.create_file("c.toml", &bad)?;
        let problems = file.reload(&first.handover).expect_err("refused");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text, crate::problems("c.toml"), "the same words as check");
        assert!(
            text.iter()
                .any(|t| t.starts_with("c.toml: scenarios.cheap.chain[1]: unknown model \"nope\"")),
            "{text:?}"
        );
        // The running configuration is untouched and can still hand over.
        jail.create_file("c.toml", BASE)?;
        let again = file.reload(&first.handover).expect("reloads");
        assert!(Arc::ptr_eq(
            &health(&first, "chat"),
            &health(&again, "chat")
        ));
        Ok(())
    });
}

#[tokio::test]
async fn the_handed_over_router_still_answers() {
    let mut loaded = None;
    Jail::expect_with(|jail| {
        jail.create_file("c.toml", BASE)?;
        let file = file();
        let first = file.load().expect("loads");
        let second = file.reload(&first.handover).expect("reloads");
        loaded = Some(second);
        Ok(())
    });
    let second = loaded.expect("the jail ran");
    // gpt and mini are unreachable (port 9); the template answers.
    let answer = second
        .router
        .complete(ChatRequest::user("cheap", "hi"), RequestContext::default())
        .await
        .expect("the template answers");
    assert_eq!(&*answer.outcome.model_used, "rules");
}

#[test]
fn metrics_keep_counting_when_the_model_table_changes() {
    Jail::expect_with(|jail| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let ask = |resolved: &Resolved| {
            runtime
                .block_on(
                    resolved
                        .router
                        .complete(ChatRequest::user("cheap", "hi"), RequestContext::default()),
                )
                .expect("the template answers");
        };
        jail.create_file("c.toml", BASE)?;
        let file = file();
        let first = file.load().expect("loads");
        ask(&first);
        jail.create_file(
            "c.toml",
            &(BASE.to_owned() + "\n[models.big]\nprovider = \"primary\"\npriority = 3\n"),
        )?;
        let second = file.reload(&first.handover).expect("reloads");
        assert!(!second.handover.carried().models_unchanged);
        assert_eq!(
            second.metrics.totals().requests,
            1,
            "counted before the reload"
        );
        // A request still running on the old Router is counted by both.
        ask(&first);
        ask(&second);
        assert_eq!(second.metrics.totals().requests, 3);
        let mut text = String::new();
        second.metrics.render_prometheus(&mut text);
        assert!(
            text.contains("backstop_attempts_total{model=\"rules\",outcome=\"ok\"} 3"),
            "{text}"
        );
        Ok(())
    });
}

#[test]
fn rate_limit_windows_are_kept_while_limits_and_models_are_unchanged() {
    Jail::expect_with(|jail| {
        let limits = |rpm: u32| format!("{BASE}\n[limits]\nper_caller = {{ rpm = {rpm} }}\n");
        let limiter =
            |resolved: &Resolved| Arc::clone(resolved.router.rate_limiter().expect("limits"));
        jail.create_file("c.toml", &limits(10))?;
        let file = file();
        let first = file.load().expect("loads");
        jail.create_file(
            "c.toml",
            &(limits(10) + "\n[scenarios.fast]\nchain = [\"mini\", \"rules\"]\n"),
        )?;
        let second = file.reload(&first.handover).expect("reloads");
        assert!(Arc::ptr_eq(&limiter(&first), &limiter(&second)));
        assert!(
            second
                .handover
                .carried()
                .kept
                .iter()
                .any(|k| k == "rate limits")
        );
        jail.create_file("c.toml", &limits(20))?;
        let third = file.reload(&second.handover).expect("reloads");
        assert!(!Arc::ptr_eq(&limiter(&second), &limiter(&third)));
        assert!(
            third
                .handover
                .carried()
                .built
                .iter()
                .any(|k| k == "rate limits")
        );
        Ok(())
    });
}
