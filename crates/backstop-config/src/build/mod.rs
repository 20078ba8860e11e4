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
mod telemetry;

use std::sync::Arc;

use backstop_core::{Router, SharedClock, StrategyContext};
use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;

use crate::decode::{Decoded, decode};
use crate::problem::{KeyPath, Problem, Problems, did_you_mean, list};
use crate::registry::Registry;
use crate::reload::{Carried, Handover};
use crate::report::Report;
use crate::report::StateEntry;
use crate::resolved::{FleetBackend, Resolved};
use crate::schema::SECTIONS;
use crate::source::Sources;

pub(crate) use strategies::Pools;

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
/// gateway needs. Loads the `[[plugins]]` into `registry` first. On a
/// reload, `running` is what the configuration now serving hands over (see
/// [`crate::reload`]); the checks are the same either way.
pub(crate) fn build(
    src: &Sources,
    registry: &mut Registry,
    clock: SharedClock,
    running: Option<&Handover>,
) -> Result<Resolved, Problems> {
    let mut b = Builder::new(src);
    b.check_sections();
    let server = b.server();
    let mut telemetry = b.telemetry();
    let plugins = b.plugins(registry);
    let registry: &Registry = registry;

    let running_providers = running.map_or(&[][..], |r| &r.providers[..]);
    let providers = b.providers(registry, running_providers);
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
    let state = fleet.as_ref().map(state_entry);
    // A reload keeps the running store (its connection and subscription
    // were started with the server); a change of `[state]` waits for a
    // restart.
    let fleet = match running {
        Some(r) => fleet.map(|_| r.fleet.clone()),
        None => fleet,
    };
    let handed_ctx = running.and_then(|r| r.context_for(&models.specs));
    let ctx = match &handed_ctx {
        Some(ctx) => ctx.clone(),
        None => StrategyContext::new(models.specs.clone(), clock).with_fleet(
            fleet
                .as_ref()
                .map_or_else(|| FleetBackend::Local.state(), FleetBackend::state),
        ),
    };
    let mut pools = match (running, &handed_ctx) {
        (Some(r), Some(_)) => Pools::handing_over(&r.pools),
        _ => Pools::new(),
    };
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
    let sinks = b.sinks(&section, &ctx, running, handed_ctx.is_some());
    let per_caller = b.limits();

    if !b.problems.is_empty() {
        return Err(Problems(b.problems));
    }
    // Everything below only assembles what was checked above.
    let (Some(defaults), Some(scenarios), Some(sinks), Some(fleet), Some(state)) =
        (defaults, scenarios, sinks, fleet, state)
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
    // The rate limiter's windows are handed over while the model table
    // (with each model's quota) and `[limits]` are unchanged.
    let rate_limiter = match running {
        Some(r) if handed_ctx.is_some() && r.per_caller == per_caller => r.rate_limiter.clone(),
        _ => backstop_strategies::rate_limit::SlidingMinute::new(&ctx, per_caller)
            .map(|limiter| Arc::new(limiter) as Arc<dyn backstop_core::RateLimiter>),
    };
    if let Some(limiter) = &rate_limiter {
        builder = builder.rate_limiter(Arc::clone(limiter));
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
    let mut server = server;
    let mut carried = Carried::default();
    if let Some(r) = running {
        carried.restart_required =
            crate::reload::restart_required((&r.server, &r.state), (&server, &state));
        if let Some(changed) = crate::reload::telemetry_restart(&r.telemetry, &telemetry) {
            carried.restart_required.push(changed);
            telemetry = r.telemetry.clone();
        }
        // What only a restart changes keeps its running value, so that
        // what is reported is what runs.
        let api_keys = (r.server.api_keys_env.clone(), r.server.api_keys.clone());
        server = crate::resolved::ServerSettings {
            listen: r.server.listen,
            max_connections: r.server.max_connections,
            header_read_timeout: r.server.header_read_timeout,
            shutdown_grace: r.server.shutdown_grace,
            body_limit_bytes: r.server.body_limit_bytes,
            body_read_timeout: r.server.body_read_timeout,
            api_keys_env: api_keys.0,
            api_keys: api_keys.1,
            ..server
        };
        carried.models_unchanged = handed_ctx.is_some();
        if carried.models_unchanged {
            carried.kept.push("latency estimates".to_owned());
        } else {
            carried.built.push("latency estimates".to_owned());
        }
        let metrics = if carried.models_unchanged {
            "metrics"
        } else {
            "metrics (the counters of models kept)"
        };
        for (name, kept) in [
            (metrics, true),
            ("alerts", Arc::ptr_eq(&sinks.alerts, &r.alerts.1)),
        ] {
            let list = if kept {
                &mut carried.kept
            } else {
                &mut carried.built
            };
            list.push(name.to_owned());
        }
        if let Some(limiter) = &rate_limiter {
            let kept = r
                .rate_limiter
                .as_ref()
                .is_some_and(|running| Arc::ptr_eq(running, limiter));
            let list = if kept {
                &mut carried.kept
            } else {
                &mut carried.built
            };
            list.push("rate limits".to_owned());
        }
        crate::reload::describe_pools(
            &mut carried,
            &pools,
            providers.iter().map(|p| (p.id.clone(), p.handed_over)),
        );
    }
    let state = running.map_or(state, |r| r.state.clone());
    let report = Report {
        file: src.file.clone(),
        server: server.clone(),
        providers: providers.iter().filter_map(|p| p.entry.clone()).collect(),
        models: models.entries(),
        scenarios: scenarios.routes.iter().map(|s| s.entry.clone()).collect(),
        defaults: defaults.entry(default_policy),
        single_model_routes,
        probe: sinks.probe,
        state: state.clone(),
        per_caller,
        sinks: sinks.choices.clone(),
        plugins,
        warnings: b.warnings.clone(),
    };
    let handover = Handover {
        ctx,
        providers: providers
            .iter()
            .filter_map(|p| Some((p.key.clone(), Arc::clone(p.provider.as_ref()?))))
            .collect(),
        metrics: Arc::clone(&sinks.metrics),
        alerts: (sinks.alerts_table.clone(), Arc::clone(&sinks.alerts)),
        fleet: fleet.clone(),
        state,
        server: server.clone(),
        telemetry: telemetry.clone(),
        rate_limiter,
        per_caller,
        carried,
        pools: Arc::new(pools),
    };
    Ok(Resolved {
        router,
        server,
        metrics: sinks.metrics,
        alerts: sinks.alerts,
        probe: sinks.probe,
        fleet,
        telemetry,
        health_policies: handover.pools.health.instances(),
        prober: sinks.prober,
        report,
        warnings: b.warnings,
        handover,
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
