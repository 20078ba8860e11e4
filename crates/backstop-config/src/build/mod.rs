//! From the merged configuration to a ready Router, reporting every
//! problem on the way.
//!
//! The sections are resolved in dependency order (server, plugins,
//! providers, models, strategies, scenarios, sinks, limits). A broken item is
//! reported and left out, and the rest goes on being checked, so one run
//! lists every problem of the file. Only when there is none is the Router
//! assembled.

mod limits;
mod models;
mod plugins;
mod policy;
mod providers;
mod scenarios;
mod server;
mod sinks;
mod state;
mod strategies;

use std::sync::Arc;

use backstop_core::{Router, SharedClock, StrategyContext};
use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;

use crate::decode::{Decoded, decode};
use crate::problem::{KeyPath, Problem, Problems, did_you_mean, list};
use crate::registry::Registry;
use crate::report::Report;
use crate::report::StateEntry;
use crate::resolved::{FleetBackend, Resolved};
use crate::schema::SECTIONS;
use crate::source::Sources;

/// Collects problems and warnings while resolving.
pub(crate) struct Builder<'a> {
    src: &'a Sources,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl<'a> Builder<'a> {
    fn new(src: &'a Sources) -> Self {
        Self {
            src,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn problem(&mut self, path: &KeyPath, message: impl Into<String>) {
        let problem = self.src.problem(path, message);
        self.problems.push(problem);
    }

    fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        let warning = self.src.problem(path, message);
        self.warnings.push(warning);
    }

    fn decode<T: DeserializeOwned>(&mut self, path: &KeyPath, value: &Value) -> Option<Decoded<T>> {
        decode(self.src, path, value, &mut self.problems)
    }

    /// The value as a table, or a problem.
    fn table<'v>(&mut self, path: &KeyPath, value: &'v Value, what: &str) -> Option<&'v Dict> {
        match value {
            Value::Dict(_, dict) => Some(dict),
            other => {
                self.problem(
                    path,
                    format!("expected {what}, found {}", other.to_actual()),
                );
                None
            }
        }
    }

    /// The top-level section, if present.
    fn section(&self, name: &str) -> Option<&'a Value> {
        self.src.root.get(name)
    }

    fn check_sections(&mut self) {
        let unknown: Vec<String> = self
            .src
            .root
            .keys()
            .filter(|k| !SECTIONS.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            let message = format!(
                "unknown section {key:?}{}; expected one of {}",
                did_you_mean(&key, SECTIONS),
                list(SECTIONS)
            );
            self.problem(&KeyPath::root().key(key), message);
        }
    }
}

/// Resolves the merged configuration into a Router and everything else a
/// gateway needs. Loads the `[[plugins]]` into `registry` first.
pub(crate) fn build(
    src: &Sources,
    registry: &mut Registry,
    clock: SharedClock,
) -> Result<Resolved, Problems> {
    let mut b = Builder::new(src);
    b.check_sections();
    let server = b.server();
    let plugins = b.plugins(registry);
    let registry: &Registry = registry;

    let providers = b.providers(registry);
    let mut models = b.models(&providers);
    // Models served by a stand-in provider (a template) are last resorts:
    // the Router tries them after every other model, whatever a latency-
    // or cost-ordered selector thinks of an instant, free answer.
    let stand_in = models.stand_in(&providers);
    for (spec, stand_in) in models.specs.iter_mut().zip(stand_in) {
        spec.last_resort |= stand_in;
    }
    let section = b.strategies_section();
    let default_policy = b.default_policy(&section);

    let model_ids: Vec<String> = models.specs.iter().map(|m| m.id.clone()).collect();
    let fleet = b.state(&model_ids);
    let ctx = StrategyContext::new(models.specs.clone(), clock).with_fleet(
        fleet
            .as_ref()
            .map_or_else(|| FleetBackend::Local.state(), FleetBackend::state),
    );
    let mut pools = strategies::Pools::new();
    let defaults = b.default_strategies(&section, registry, &ctx, &mut pools);
    let scenarios = b.scenarios(
        registry,
        &ctx,
        &mut pools,
        &models,
        &providers,
        defaults.as_ref(),
        &default_policy,
    );
    let sinks = b.sinks(&section, &ctx);
    let per_caller = b.limits();

    if !b.problems.is_empty() {
        return Err(Problems(b.problems));
    }
    // Everything below only assembles what was checked above.
    let (Some(defaults), Some(scenarios), Some(sinks), Some(fleet)) =
        (defaults, scenarios, sinks, fleet)
    else {
        // Unreachable in practice: each of them is `None` only after a
        // problem was reported.
        b.problem(&KeyPath::root(), "the configuration could not be resolved");
        return Err(Problems(b.problems));
    };

    let mut builder = Router::builder(ctx.clone());
    for p in &providers {
        if let Some(provider) = &p.provider {
            builder = builder.provider(p.id.clone(), Arc::clone(provider));
        }
    }
    for s in &scenarios.routes {
        builder = builder.scenario(s.scenario.clone(), s.strategies.clone());
    }
    builder = builder.single_model_routes(default_policy, defaults.strategies.clone());
    if let Some(limiter) = backstop_strategies::rate_limit::SlidingMinute::new(&ctx, per_caller) {
        builder = builder.rate_limiter(Arc::new(limiter));
    }
    for sink in sinks.all() {
        builder = builder.event_sink(sink);
    }
    let router = match builder.build() {
        Ok(router) => router,
        Err(e) => {
            b.problem(&KeyPath::root(), e.to_string());
            return Err(Problems(b.problems));
        }
    };

    let single_model_routes = models
        .specs
        .iter()
        .filter(|m| !scenarios.routes.iter().any(|s| s.scenario.name == m.id))
        .map(|m| m.id.clone())
        .collect();
    let report = Report {
        file: src.file.clone(),
        server: server.clone(),
        providers: providers.iter().filter_map(|p| p.entry.clone()).collect(),
        models: models.entries(),
        scenarios: scenarios.routes.iter().map(|s| s.entry.clone()).collect(),
        defaults: defaults.entry(default_policy),
        single_model_routes,
        probe: sinks.probe,
        state: state_entry(&fleet),
        per_caller,
        sinks: sinks.choices.clone(),
        plugins,
        warnings: b.warnings.clone(),
    };
    Ok(Resolved {
        router,
        server,
        metrics: sinks.metrics,
        alerts: sinks.alerts,
        probe: sinks.probe,
        fleet,
        health_policies: pools.health.instances(),
        prober: sinks.prober,
        report,
        warnings: b.warnings,
    })
}

/// What `backstop check` prints of `[state]`: never the URL.
fn state_entry(fleet: &FleetBackend) -> StateEntry {
    match fleet {
        FleetBackend::Local => StateEntry {
            backend: "local".into(),
            url_env: None,
            key_prefix: None,
            timeout_ms: None,
            on_store_failure: None,
        },
        FleetBackend::Redis(state) => {
            let settings = state.settings();
            StateEntry {
                backend: "redis".into(),
                url_env: Some(settings.url_env.clone()),
                key_prefix: Some(settings.key_prefix.clone()),
                timeout_ms: Some(u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX)),
                on_store_failure: Some(match settings.on_store_failure {
                    backstop_core::OnStoreFailure::Local => "local",
                    backstop_core::OnStoreFailure::Closed => "closed",
                }),
            }
        }
    }
}
