//! Reloading a configuration while its first load serves.
//!
//! [`ConfigFile`] remembers the file a gateway started with, the registry
//! it started from and the plugin libraries it opened. [`ConfigFile::reload`]
//! reads the file again and runs the same build as [`load`](crate::load)
//! and `backstop check` (every problem is found the same way, with its file
//! and key), handing the running configuration's state to the new one:
//!
//! 1. The model table (every model's id, order and settings) decides
//!    whether state can be handed over at all: strategies keep their state
//!    in arrays indexed by the model table, so when it changed every
//!    strategy, the latency estimates and the metrics are built afresh.
//! 2. When it did not change, the strategy context (and with it the
//!    latency estimates) is handed over, and each strategy table (`type`
//!    and knobs) that the running configuration already built is handed
//!    its running instance — circuits, budget windows, cooldowns and all —
//!    instead of a new one. A table that changed builds a new instance.
//!    The rate limiter's windows are kept while `[limits]` is unchanged,
//!    and the alert sink while `[alerts]` is. The metrics keep counting
//!    whatever changed (the counters of models both tables have are
//!    shared).
//! 3. A provider whose table did not change is handed over whatever the
//!    models did (its connections stay warm).
//! 4. What only a restart can change keeps its running value and is
//!    listed in [`Handover::restart_required`]: `[server]`'s `listen`,
//!    `max_connections`, `header_read_timeout_ms`, `shutdown_grace_ms`,
//!    `body_limit_bytes`, `body_read_timeout_ms` and `api_keys_env` (the
//!    accept loop and the caller keys are set up once), `[state]` (the
//!    fleet's store connection and subscription stay as started) and
//!    `[telemetry]` (the OTLP exporters are set up once).
//! 5. Plugin libraries are opened once: a plugin named again registers its
//!    types from the library already open (see [`Registry`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backstop_core::{ModelSpec, Provider, RateLimiter, RateQuota, StrategyContext};
use backstop_strategies::monitor::{AlertSink, Metrics};

use crate::Options;
use crate::build::Pools;
use crate::problem::Problems;
use crate::registry::{Registry, SeamKind};
use crate::report::StateEntry;
use crate::resolved::{FleetBackend, OtlpProtocol, Resolved, ServerSettings, TelemetrySettings};

/// A configuration file, loaded once and reloadable.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    registry: Registry,
    options: Options,
}

impl ConfigFile {
    /// The file at `path`, to be built through (a clone of) `registry`
    /// with `options`. Nothing is read yet.
    pub fn new(path: impl Into<PathBuf>, registry: Registry, options: Options) -> Self {
        Self {
            path: path.into(),
            registry,
            options,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin libraries opened so far.
    pub fn opened_plugins(&self) -> Vec<PathBuf> {
        self.registry.opened_plugins()
    }

    /// Loads the file for the first time: [`load_with`](crate::load_with).
    pub fn load(&self) -> Result<Resolved, Problems> {
        crate::load_from(&self.path, self.registry.clone(), &self.options, None)
    }

    /// Reads the file again and builds it, handing over what `running`
    /// (the handover of the configuration now serving) holds that the new
    /// configuration asks for unchanged. Every problem is reported as
    /// [`load`](crate::load) reports it; then nothing changes.
    pub fn reload(&self, running: &Handover) -> Result<Resolved, Problems> {
        crate::load_from(
            &self.path,
            self.registry.clone(),
            &self.options,
            Some(running),
        )
    }
}

/// What a running configuration hands to its successor: its state, held
/// for as long as it serves. Cheap to clone.
#[derive(Clone)]
pub struct Handover {
    pub(crate) ctx: StrategyContext,
    pub(crate) pools: Arc<Pools>,
    pub(crate) providers: Arc<[(String, Arc<dyn Provider>)]>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) alerts: (serde_json::Value, Arc<AlertSink>),
    pub(crate) fleet: FleetBackend,
    pub(crate) state: StateEntry,
    pub(crate) server: ServerSettings,
    pub(crate) telemetry: TelemetrySettings,
    pub(crate) rate_limiter: Option<Arc<dyn RateLimiter>>,
    pub(crate) per_caller: Option<RateQuota>,
    /// What this configuration took from its predecessor (empty after a
    /// first load).
    pub(crate) carried: Carried,
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover")
            .field("models", &self.ctx.models.len())
            .field("carried", &self.carried)
            .finish_non_exhaustive()
    }
}

impl Handover {
    /// What this configuration took over from the one it replaced.
    pub fn carried(&self) -> &Carried {
        &self.carried
    }

    /// Keys whose change waits for a restart (empty after a first load).
    pub fn restart_required(&self) -> &[RestartRequired] {
        &self.carried.restart_required
    }

    /// The context to build on when the model table is `models`: the
    /// running one (latency estimates and all) when the table did not
    /// change, `None` when it did.
    pub(crate) fn context_for(&self, models: &[ModelSpec]) -> Option<StrategyContext> {
        same_models(&self.ctx.models, models).then(|| self.ctx.clone())
    }
}

/// Whether a model table is unchanged: the same models, in the same order,
/// with the same settings. Strategies index their state by position in
/// this table, so only then can it be handed over.
pub(crate) fn same_models(running: &[ModelSpec], next: &[ModelSpec]) -> bool {
    running == next
}

/// What a reloaded configuration took over from the one it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// Whether the model table was unchanged, so that state could be
    /// handed over at all.
    pub models_unchanged: bool,
    /// What kept its state: `health circuit_breaker #1`, `latency
    /// estimates`, `metrics`, `provider openai`...
    pub kept: Vec<String>,
    /// What was built anew (and starts without state).
    pub built: Vec<String>,
    /// Keys whose new value waits for a restart; the running value stays.
    pub restart_required: Vec<RestartRequired>,
}

/// A key whose change only a restart applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartRequired {
    /// The key (`server.listen`, `state`).
    pub key: String,
    /// The value the gateway runs with, as shown to a person.
    pub running: String,
    /// The value the file now says.
    pub configured: String,
}

impl fmt::Display for RestartRequired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: changed from {} to {}; the running value stays until a restart",
            self.key, self.running, self.configured
        )
    }
}

/// The keys of `[server]` and `[state]` that changed between `running` and
/// `next` but only take effect on a restart.
pub(crate) fn restart_required(
    running: (&ServerSettings, &StateEntry),
    next: (&ServerSettings, &StateEntry),
) -> Vec<RestartRequired> {
    let ((was, was_state), (now, now_state)) = (running, next);
    let mut changed = Vec::new();
    let mut check = |key: &str, running: String, configured: String| {
        if running != configured {
            changed.push(RestartRequired {
                key: key.to_owned(),
                running,
                configured,
            });
        }
    };
    let ms = |d: std::time::Duration| format!("{} ms", d.as_millis());
    check(
        "server.listen",
        was.listen.to_string(),
        now.listen.to_string(),
    );
    check(
        "server.max_connections",
        was.max_connections.to_string(),
        now.max_connections.to_string(),
    );
    check(
        "server.header_read_timeout_ms",
        ms(was.header_read_timeout),
        ms(now.header_read_timeout),
    );
    check(
        "server.shutdown_grace_ms",
        ms(was.shutdown_grace),
        ms(now.shutdown_grace),
    );
    check(
        "server.body_limit_bytes",
        was.body_limit_bytes.to_string(),
        now.body_limit_bytes.to_string(),
    );
    check(
        "server.body_read_timeout_ms",
        ms(was.body_read_timeout),
        ms(now.body_read_timeout),
    );
    // The keys themselves are secrets: only say whether they changed.
    let keys = |s: &ServerSettings| match &s.api_keys {
        Some(keys) => format!("{} ({} keys)", s.api_keys_env, keys.len()),
        None => format!("{} (unset)", s.api_keys_env),
    };
    if was.api_keys_env != now.api_keys_env || was.api_keys != now.api_keys {
        changed.push(RestartRequired {
            key: "server.api_keys_env".to_owned(),
            running: keys(was),
            configured: keys(now),
        });
    }
    let state = |s: &StateEntry| match &s.url_env {
        Some(env) => format!("{} ({env})", s.backend),
        None => s.backend.clone(),
    };
    if was_state != now_state {
        changed.push(RestartRequired {
            key: "state".to_owned(),
            running: state(was_state),
            configured: state(now_state),
        });
    }
    changed
}

/// `[telemetry]`, when it changed: the OTLP exporters are set up at start,
/// so the running settings stay until a restart.
pub(crate) fn telemetry_restart(
    running: &TelemetrySettings,
    next: &TelemetrySettings,
) -> Option<RestartRequired> {
    let shown = |t: &TelemetrySettings| match &t.endpoint {
        None => "off".to_owned(),
        Some(endpoint) => format!(
            "{} to {endpoint} as {}{}, every {} ms, timeout {} ms",
            match t.protocol {
                OtlpProtocol::HttpProtobuf => "http/protobuf",
                OtlpProtocol::Grpc => "grpc",
            },
            t.service_name,
            if t.capture_content {
                " with content"
            } else {
                ""
            },
            t.export_interval.as_millis(),
            t.export_timeout.as_millis(),
        ),
    };
    (running != next).then(|| RestartRequired {
        key: "telemetry".to_owned(),
        running: shown(running),
        configured: shown(next),
    })
}

/// Fills in what `pools` and `providers` say was kept and built.
pub(crate) fn describe_pools(
    carried: &mut Carried,
    pools: &Pools,
    providers: impl Iterator<Item = (String, bool)>,
) {
    for (seam, type_name, instance, kept) in pools.handovers() {
        let label = format!("{} {type_name} #{instance}", seam_word(seam));
        if kept {
            carried.kept.push(label);
        } else {
            carried.built.push(label);
        }
    }
    for (id, kept) in providers {
        let label = format!("provider {id}");
        if kept {
            carried.kept.push(label);
        } else {
            carried.built.push(label);
        }
    }
}

fn seam_word(seam: SeamKind) -> &'static str {
    seam.as_str()
}
