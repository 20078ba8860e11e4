//! One file, layered with `BACKSTOP__SECTION__KEY` environment overrides;
//! TOML, YAML and JSON alike; defaults for every key left out.

use std::net::SocketAddr;
use std::time::Duration;

use backstop_core::{MidStreamPolicy, RoutePolicy};
use figment::Jail;

use crate::{load, problems};

/// A small configuration: one template provider, two models of a local
/// OpenAI-compatible server, one scenario.
const SMALL: &str = r#"
[server]
listen = "127.0.0.1:9100"

[providers.local]
type = "openai"
base_url = "http://127.0.0.1:9/v1"

[providers.rules]
type = "template"

[models.second]
provider = "local"
priority = 2

[models.first-b]
provider = "local"
priority = 1

[models.first-a]
provider = "local"
priority = 1

[scenarios.chat]
chain = ["first-a", "rules"]
timeouts = { first_token_ms = 3000 }
"#;

fn chain_of(resolved: &backstop_config::Resolved, route: &str) -> Vec<String> {
    let router = &resolved.router;
    let route = router.route(route).expect("the route exists");
    route
        .chain
        .iter()
        .map(|&i| router.models()[i].id.clone())
        .collect()
}

#[test]
fn keys_left_out_take_their_defaults() {
    Jail::expect_with(|jail| {
        jail.create_file("backstop.toml", SMALL)?;
        let resolved = load("backstop.toml").map_err(|p| p.to_string())?;
        let server = &resolved.server;
        assert_eq!(server.api_keys_env, "BACKSTOP_API_KEYS");
        assert_eq!(server.api_keys, None);
        assert_eq!(server.body_limit_bytes, 10 * 1024 * 1024);
        assert_eq!(server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(server.shutdown_grace, Duration::from_secs(30));
        assert_eq!(server.body_read_timeout, Duration::from_secs(30));
        assert_eq!(server.max_connections, 10_000);

        let model = &resolved.router.models()[0];
        assert_eq!(
            (model.id.as_str(), model.upstream.as_str()),
            ("second", "second")
        );
        assert_eq!((model.max_tokens, model.context_window), (4096, 128_000));
        assert!((model.input_cost_per_1k - 0.01).abs() < 1e-12);
        assert!(model.capabilities.streaming && model.capabilities.tools);
        assert!(!model.capabilities.assistant_prefill);

        let chat = resolved.router.route("chat").expect("chat");
        let defaults = RoutePolicy::default();
        assert_eq!(chat.policy.timeouts.first_token, Duration::from_secs(3));
        assert_eq!(chat.policy.timeouts.attempt, defaults.timeouts.attempt);
        assert_eq!(chat.policy.retries, defaults.retries);
        assert_eq!(chat.strategies.selector.name(), "priority");
        assert_eq!(chat.strategies.health.name(), "circuit_breaker");
        assert_eq!(chat.strategies.budget.name(), "unlimited");
        assert_eq!(chat.strategies.result.name(), "annotate");
        assert_eq!(resolved.probe.interval, Duration::from_secs(5));
        assert_eq!(resolved.probe.idle, Duration::from_secs(60));
        Ok(())
    });
}

#[test]
fn environment_overrides_replace_add_and_nest() {
    Jail::expect_with(|jail| {
        jail.create_file("backstop.toml", SMALL)?;
        // Replaces a file value.
        jail.set_env("BACKSTOP__SERVER__LISTEN", "0.0.0.0:9200");
        // Adds a key the file leaves out, under a snake_case key.
        jail.set_env("BACKSTOP__SERVER__BODY_LIMIT_BYTES", "2048");
        // Replaces one key of an inline table, keeping its siblings.
        jail.set_env("BACKSTOP__SCENARIOS__CHAT__TIMEOUTS__ATTEMPT_MS", "9000");
        // Replaces an array, and a scenario key the file leaves out.
        jail.set_env("BACKSTOP__SCENARIOS__CHAT__CHAIN", "[second, rules]");
        jail.set_env("BACKSTOP__SCENARIOS__CHAT__MID_STREAM", "restart");
        // Adds a whole strategy table.
        jail.set_env(
            "BACKSTOP__STRATEGIES__BUDGET",
            "{type=\"per_request\", max_cost=0.5}",
        );
        // Ids with a hyphen are reachable (through `env`, not `export`).
        jail.set_env("BACKSTOP__MODELS__FIRST-A__PRIORITY", "7");
        // A default hedge, and a scenario turning it off with 0.
        jail.set_env("BACKSTOP__STRATEGIES__HEDGE_AFTER_MS", "500");
        jail.set_env("BACKSTOP__SCENARIOS__CHAT__HEDGE_AFTER_MS", "0");
        // Variables without the double-underscore prefix are not ours.
        jail.set_env("BACKSTOP_SERVER__LISTEN", "0.0.0.0:1");
        let resolved = load("backstop.toml").map_err(|p| p.to_string())?;

        assert_eq!(
            resolved.server.listen,
            "0.0.0.0:9200".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(resolved.server.body_limit_bytes, 2048);
        let chat = resolved.router.route("chat").expect("chat");
        assert_eq!(chat.policy.timeouts.attempt, Duration::from_secs(9));
        assert_eq!(chat.policy.timeouts.first_token, Duration::from_secs(3));
        assert_eq!(chat.policy.mid_stream, MidStreamPolicy::Restart);
        assert_eq!(chain_of(&resolved, "chat"), ["second", "rules"]);
        assert_eq!(chat.strategies.budget.name(), "per_request");
        assert_eq!(chat.policy.hedge_after, None);
        let single = resolved.router.route("second").expect("single-model route");
        assert_eq!(single.policy.hedge_after, Some(Duration::from_millis(500)));
        let first_a = resolved
            .router
            .context()
            .index_of("first-a")
            .expect("first-a");
        assert_eq!(resolved.router.models()[first_a].priority, 7);
        Ok(())
    });
}

#[test]
fn a_bad_environment_value_names_its_variable() {
    Jail::expect_with(|jail| {
        jail.create_file("backstop.toml", SMALL)?;
        jail.set_env("BACKSTOP__MODELS__SECOND__PRIORITY", "-3");
        jail.set_env("BACKSTOP__SERVER__LISTN", "0.0.0.0:1");
        assert_eq!(
            problems("backstop.toml"),
            [
                r#"backstop.toml: server.listn: unknown key "listn" (did you mean "listen"?); expected one of "listen", "api_keys_env", "body_limit_bytes", "header_read_timeout_ms", "body_read_timeout_ms", "shutdown_grace_ms", "max_connections", "log_summary_ms" (set by BACKSTOP__SERVER__LISTN)"#,
                "backstop.toml: models.second.priority: expected a whole number from 0 to 4294967295, found signed int `-3` (set by BACKSTOP__MODELS__SECOND__PRIORITY)",
            ]
        );
        Ok(())
    });
}

#[test]
fn api_keys_come_from_the_named_variable_and_never_print() {
    Jail::expect_with(|jail| {
        jail.create_file("backstop.toml", SMALL)?;
        jail.set_env("BACKSTOP_API_KEYS", " key-one, key-two ,");
        let resolved = load("backstop.toml").map_err(|p| p.to_string())?;
        let keys = resolved.server.api_keys.clone().expect("keys");
        assert_eq!(keys.keys(), ["key-one", "key-two"]);
        let debug = format!("{:?}", resolved.server);
        assert!(!debug.contains("key-one"), "{debug}");
        assert!(resolved.warnings.is_empty(), "{:?}", resolved.warnings);

        jail.set_env("BACKSTOP_API_KEYS", " , ");
        assert_eq!(
            problems("backstop.toml"),
            [
                r#"backstop.toml: server.api_keys_env: environment variable "BACKSTOP_API_KEYS" is set but holds no key: set comma-separated keys, or unset it to run without authentication"#
            ]
        );
        Ok(())
    });
}

#[test]
fn a_scenario_without_chain_uses_every_model_by_priority_ties_in_file_order() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "backstop.toml",
            &format!("{SMALL}\n[scenarios.everything]\nmid_stream = \"error\"\n"),
        )?;
        let resolved = load("backstop.toml").map_err(|p| p.to_string())?;
        // Stand-ins join a chain only where one names them.
        assert_eq!(
            chain_of(&resolved, "everything"),
            ["first-b", "first-a", "second"]
        );
        Ok(())
    });
}

#[test]
fn yaml_and_json_load_like_toml() {
    const YAML: &str = "
server:
  listen: 127.0.0.1:9100
providers:
  local: { type: openai, base_url: 'http://127.0.0.1:9/v1' }
  rules: { type: template }
models:
  second: { provider: local, priority: 2 }
  first-b: { provider: local, priority: 1 }
  first-a: { provider: local, priority: 1 }
scenarios:
  chat:
    chain: [first-a, rules]
    timeouts: { first_token_ms: 3000 }
  everything: {}
";
    const JSON: &str = r#"{
  "server": { "listen": "127.0.0.1:9100" },
  "providers": {
    "local": { "type": "openai", "base_url": "http://127.0.0.1:9/v1" },
    "rules": { "type": "template" }
  },
  "models": {
    "second": { "provider": "local", "priority": 2 },
    "first-b": { "provider": "local", "priority": 1 },
    "first-a": { "provider": "local", "priority": 1 }
  },
  "scenarios": {
    "chat": { "chain": ["first-a", "rules"], "timeouts": { "first_token_ms": 3000 } },
    "everything": {}
  }
}"#;
    Jail::expect_with(|jail| {
        jail.create_file("backstop.yaml", YAML)?;
        jail.create_file("backstop.json", JSON)?;
        for file in ["backstop.yaml", "backstop.json"] {
            let resolved = load(file).map_err(|p| format!("{file}: {p}"))?;
            assert_eq!(chain_of(&resolved, "chat"), ["first-a", "rules"], "{file}");
            assert_eq!(
                chain_of(&resolved, "everything"),
                ["first-b", "first-a", "second"],
                "{file}"
            );
            let chat = resolved.router.route("chat").expect("chat");
            assert_eq!(
                chat.policy.timeouts.first_token,
                Duration::from_secs(3),
                "{file}"
            );
        }
        Ok(())
    });
}

#[test]
fn a_file_that_cannot_be_read_is_one_problem() {
    Jail::expect_with(|jail| {
        jail.create_file("backstop.ini", SMALL)?;
        assert_eq!(
            problems("backstop.ini"),
            [
                "backstop.ini: unknown configuration format: name the file .toml, .yaml, .yml or .json"
            ]
        );
        let missing = problems("missing.toml");
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].starts_with("missing.toml: cannot read the configuration file: "),
            "{missing:?}"
        );
        Ok(())
    });
}
