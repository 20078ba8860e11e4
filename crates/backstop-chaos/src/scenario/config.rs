//! Renders a scenario's Backstop config (the `[server]`, `[providers]`,
//! `[models]`, `[scenarios]` and `[strategies]` tables of the config file
//! contract) pointing at the running fakes.
//!
//! Each fake becomes a provider `fake_<model>` of its API's type and a
//! model `<model>` served by it; the template rung becomes a `template`
//! provider that stands in as a model under its own id. Chain order is
//! also priority order. The fakes take any key; Anthropic providers insist
//! on a key variable, so theirs is [`FAKE_KEY_ENV`], which the driver sets
//! (to [`FAKE_KEY`]) in the gateway's environment. OpenAI-compatible
//! providers on a local URL need none.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use backstop_core::{ContentPolicyAction, MidStreamPolicy};
use serde::Serialize;

use super::{Breaker, Probe, RetriesMs, ScenarioSpec, TimeoutsMs};
use crate::error::ConfigError;

/// The environment variable the rendered Anthropic providers read their
/// key from. The gateway process must have it set.
pub const FAKE_KEY_ENV: &str = "BACKSTOP_CHAOS_FAKE_KEY";

/// A value for [`FAKE_KEY_ENV`]; the fakes accept any.
pub const FAKE_KEY: &str = "chaos-fake-key";

/// What the driver decides, not the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    /// `server.listen` of the gateway.
    pub listen: SocketAddr,
}

#[derive(Serialize)]
struct File {
    server: Server,
    providers: BTreeMap<String, Provider>,
    models: BTreeMap<String, Model>,
    scenarios: BTreeMap<String, Scenario>,
    strategies: Strategies,
}

#[derive(Serialize)]
struct Server {
    listen: String,
}

#[derive(Serialize)]
struct Provider {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_env: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

#[derive(Serialize)]
struct Model {
    provider: String,
    model: String,
    priority: u32,
    context_window: u32,
    supports_prefill: bool,
}

#[derive(Serialize)]
struct Scenario {
    chain: Vec<String>,
    mid_stream: MidStreamPolicy,
    on_content_policy: ContentPolicyAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    hedge_after_ms: Option<u64>,
    timeouts: TimeoutsMs,
    retries: RetriesMs,
}

#[derive(Serialize)]
struct Typed<T> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    knobs: T,
}

#[derive(Serialize)]
struct NoKnobs {}

#[derive(Serialize)]
struct Strategies {
    selector: Typed<NoKnobs>,
    health: Typed<Breaker>,
    probe: Probe,
}

fn provider_id(model: &str) -> String {
    format!("fake_{model}")
}

/// The Backstop config (TOML) that serves `spec` as a scenario of the same
/// name, with every fake at the base URL `urls` gives for its model id (as
/// [`FakeSet::urls`](crate::FakeSet::urls) returns them).
pub fn render_config(
    spec: &ScenarioSpec,
    urls: &BTreeMap<String, String>,
    options: &RenderOptions,
) -> Result<String, ConfigError> {
    let mut providers = BTreeMap::new();
    let mut models = BTreeMap::new();
    for fake in &spec.fakes {
        let url = urls
            .get(&fake.model)
            .ok_or_else(|| ConfigError::MissingUrl {
                scenario: spec.name.to_owned(),
                model: fake.model.clone(),
            })?;
        providers.insert(
            provider_id(&fake.model),
            Provider {
                kind: fake.api.provider_type(),
                base_url: Some(url.clone()),
                api_key_env: (fake.api == crate::behaviour::Api::Anthropic).then_some(FAKE_KEY_ENV),
                text: None,
            },
        );
        let priority = spec
            .chain
            .iter()
            .position(|m| *m == fake.model)
            .map_or(u32::MAX, |i| u32::try_from(i + 1).unwrap_or(u32::MAX));
        models.insert(
            fake.model.clone(),
            Model {
                provider: provider_id(&fake.model),
                model: fake.model.clone(),
                priority,
                context_window: fake.declared_window(),
                supports_prefill: fake.prefill == crate::behaviour::Prefill::Continue,
            },
        );
    }
    if let Some(template) = &spec.template {
        providers.insert(
            template.model.clone(),
            Provider {
                kind: "template",
                base_url: None,
                api_key_env: None,
                text: Some(template.text.clone()),
            },
        );
    }
    let policy = spec.policy;
    let mut scenarios = BTreeMap::new();
    scenarios.insert(
        spec.name.to_owned(),
        Scenario {
            chain: spec.chain.clone(),
            mid_stream: policy.mid_stream,
            on_content_policy: policy.on_content_policy,
            hedge_after_ms: policy.hedge_after_ms,
            timeouts: policy.timeouts,
            retries: policy.retries,
        },
    );
    let file = File {
        server: Server {
            listen: options.listen.to_string(),
        },
        providers,
        models,
        scenarios,
        strategies: Strategies {
            selector: Typed {
                kind: "priority",
                knobs: NoKnobs {},
            },
            health: Typed {
                kind: "circuit_breaker",
                knobs: policy.breaker,
            },
            probe: policy.probe,
        },
    };
    let body = toml::to_string(&file).map_err(|source| ConfigError::Serialize {
        scenario: spec.name.to_owned(),
        source,
    })?;
    Ok(format!(
        "# Backstop config for chaos scenario `{}`: {}.\n# Generated by backstop-chaos; the fakes listen on 127.0.0.1.\n\n{body}",
        spec.name, spec.summary
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Mode, SCENARIO_NAMES, scenario};

    fn urls(spec: &ScenarioSpec) -> BTreeMap<String, String> {
        spec.fakes
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    f.model.clone(),
                    format!("http://127.0.0.1:{}/v1", 40000 + i),
                )
            })
            .collect()
    }

    fn options() -> RenderOptions {
        RenderOptions {
            listen: "127.0.0.1:18080".parse().unwrap(),
        }
    }

    #[test]
    fn every_scenario_renders_valid_toml_with_its_chain() {
        for name in SCENARIO_NAMES {
            let spec = scenario(name, Mode::Quick).unwrap();
            let text = render_config(&spec, &urls(&spec), &options()).unwrap();
            let doc: toml::Table =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            let chain = doc["scenarios"][name]["chain"].as_array().unwrap();
            let chain: Vec<&str> = chain.iter().map(|v| v.as_str().unwrap()).collect();
            assert_eq!(
                chain,
                spec.chain.iter().map(String::as_str).collect::<Vec<_>>()
            );
            for model in &spec.chain {
                let known = doc["models"].get(model.as_str()).is_some()
                    || doc["providers"][model.as_str()]["type"].as_str() == Some("template");
                assert!(
                    known,
                    "{name}: chain entry {model} is neither a model nor a template"
                );
            }
            assert_eq!(doc["server"]["listen"].as_str(), Some("127.0.0.1:18080"));
            assert_eq!(
                doc["strategies"]["health"]["type"].as_str(),
                Some("circuit_breaker")
            );
        }
    }

    #[test]
    fn fakes_become_providers_and_models_with_declared_capabilities() {
        let spec = scenario("context_length", Mode::Full).unwrap();
        let text = render_config(&spec, &urls(&spec), &options()).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let primary = &doc["models"]["primary"];
        assert_eq!(primary["provider"].as_str(), Some("fake_primary"));
        assert_eq!(primary["context_window"].as_integer(), Some(16_384));
        assert_eq!(primary["priority"].as_integer(), Some(1));
        assert_eq!(
            doc["models"]["secondary"]["supports_prefill"].as_bool(),
            Some(true)
        );
        assert_eq!(
            doc["providers"]["fake_primary"]["type"].as_str(),
            Some("openai")
        );
        assert_eq!(
            doc["providers"]["fake_secondary"]["type"].as_str(),
            Some("anthropic")
        );
        assert_eq!(
            doc["providers"]["fake_primary"]["base_url"].as_str(),
            Some("http://127.0.0.1:40000/v1")
        );
        assert!(doc["providers"]["rules"]["text"].as_str().is_some());
        assert_eq!(
            doc["providers"]["fake_secondary"]["api_key_env"].as_str(),
            Some(FAKE_KEY_ENV)
        );
        assert!(
            doc["providers"]["fake_primary"]
                .get("api_key_env")
                .is_none()
        );
    }

    #[test]
    fn policy_keys_follow_the_contract() {
        let spec = scenario("primary_hang", Mode::Full).unwrap();
        let text = render_config(&spec, &urls(&spec), &options()).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let s = &doc["scenarios"]["primary_hang"];
        assert_eq!(s["hedge_after_ms"].as_integer(), Some(100));
        assert_eq!(s["mid_stream"].as_str(), Some("continue"));
        assert_eq!(s["on_content_policy"].as_str(), Some("return"));
        assert_eq!(s["timeouts"]["first_token_ms"].as_integer(), Some(1000));
        assert_eq!(s["retries"]["retry_after_cap_ms"].as_integer(), Some(1000));
        assert_eq!(
            doc["strategies"]["probe"]["interval_ms"].as_integer(),
            Some(500)
        );
        assert_eq!(
            doc["strategies"]["health"]["min_calls"].as_integer(),
            Some(5)
        );
        let baseline = scenario("baseline", Mode::Full).unwrap();
        let text = render_config(&baseline, &urls(&baseline), &options()).unwrap();
        assert!(!text.contains("hedge_after_ms"));
    }

    #[test]
    fn a_missing_url_is_named() {
        let spec = scenario("cascade", Mode::Quick).unwrap();
        let mut u = urls(&spec);
        u.remove("tertiary");
        let err = render_config(&spec, &u, &options()).unwrap_err();
        assert!(err.to_string().contains("tertiary"), "{err}");
    }
}
