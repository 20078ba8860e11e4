//! # backstop-config
//!
//! Backstop's configuration: one file (TOML; YAML and JSON by extension)
//! layered with `BACKSTOP__SECTION__KEY` environment overrides, validated
//! so that every problem is reported at once with its file and key path,
//! and turned into a ready [`Router`](backstop_core::Router) through a
//! [`Registry`] that maps each `type` name to a factory, for compiled-in
//! and dynamically loaded plugins alike.
//!
//! A gateway serves what [`load`] resolves:
//!
//! ```no_run
//! # async fn serve() -> Result<(), backstop_config::Problems> {
//! use backstop_config::Registry;
//!
//! let resolved = backstop_config::load("examples/backstop.toml", Registry::builtin())?;
//! for warning in &resolved.warnings {
//!     tracing::warn!("{warning}");
//! }
//! let _prober = resolved.spawn_prober(); // probes until dropped
//! let router = resolved.router.clone(); // scenarios and single-model routes
//! let listen = resolved.server.listen; // and the rest of [server]
//! let mut metrics = String::new();
//! resolved.metrics.render_prometheus(&mut metrics); // for /metrics
//! # Ok(()) }
//! ```
//!
//! `backstop check --config FILE` is [`check`]: it loads and builds
//! everything a running gateway would, without serving, and returns the
//! printable [`Report`] (exit 0) or every [`Problem`] found (exit non-zero):
//!
//! ```no_run
//! match backstop_config::check("examples/bad.toml", backstop_config::Registry::builtin()) {
//!     Ok(report) => print!("{report}"),
//!     Err(problems) => eprintln!("{problems}"),
//! }
//! ```
//!
//! The pieces: `source` reads the file and layers the environment with
//! figment; `decode` turns tables into the `schema` types reporting every
//! bad key; `build` resolves section by section through the [`Registry`]
//! (`builtin` wires the compiled-in types, `dynamic` the plugins) and
//! assembles the Router; `report` prints the result.

mod build;
mod builtin;
mod decode;
mod dynamic;
#[cfg(test)]
mod knob_docs;
pub mod problem;
mod registry;
mod reload;
mod report;
mod resolved;
mod schema;
mod source;

use std::path::Path;

use backstop_core::{SharedClock, SystemClock};

pub use decode::parse_config;
pub use problem::{KeyPath, Location, Problem, Problems};
pub use registry::{
    BudgetFactory, DuplicateType, FactoryError, FactoryIssue, HealthFactory, Origin,
    ProviderFactory, Registry, ResultFactory, SeamKind, SelectorFactory, StrategyFactory,
};
pub use reload::{Carried, ConfigFile, Handover, RestartRequired};
pub use report::{
    ModelEntry, PluginEntry, ProviderEntry, Report, RouteEntry, ScenarioEntry, StateEntry,
    StrategyChoice,
};
pub use resolved::{
    ApiKeys, FleetBackend, OtlpProtocol, ProbeSettings, Resolved, ServerSettings, TelemetrySettings,
};
pub use source::{ENV_PREFIX, Format};

/// The concrete monitors config builds (the metrics and alert sinks), for
/// whoever serves them (`/metrics`, the status page): the gateway reaches
/// the strategies through config, not around it.
pub mod monitor {
    pub use backstop_strategies::health::ProberHandle;
    pub use backstop_strategies::monitor::metrics::RecentFailure;
    pub use backstop_strategies::monitor::{
        AlertSink, AlertStatus, Metrics, Totals, render_router_state,
    };
}

/// Reads a plugin library's declaration without registering anything
/// (`backstop plugin inspect`).
pub use backstop_plugin::host::inspect as inspect_plugin;

/// How to load a configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// Merge `BACKSTOP__SECTION__KEY` environment variables over the file.
    pub env: bool,
    /// The clock every strategy and the Router read.
    pub clock: SharedClock,
}

impl Default for Options {
    /// Environment overrides on, the system clock.
    fn default() -> Self {
        Self {
            env: true,
            clock: SystemClock::shared(),
        }
    }
}

/// Loads the file at `path` with the environment over it, loads its
/// `[[plugins]]` into `registry`, and builds everything a running gateway
/// needs. Returns every problem found when there is any.
pub fn load(path: impl AsRef<Path>, registry: Registry) -> Result<Resolved, Problems> {
    load_with(path, registry, Options::default())
}

/// [`load`] with explicit [`Options`].
pub fn load_with(
    path: impl AsRef<Path>,
    registry: Registry,
    options: Options,
) -> Result<Resolved, Problems> {
    load_from(path.as_ref(), registry, &options, None)
}

/// The one way a file is read and built, first load and reload alike.
fn load_from(
    path: &Path,
    mut registry: Registry,
    options: &Options,
    running: Option<&Handover>,
) -> Result<Resolved, Problems> {
    let sources = source::read(path, options.env).map_err(|p| Problems(vec![p]))?;
    build::build(&sources, &mut registry, options.clock.clone(), running)
}

/// `backstop check --config FILE`: loads, validates and builds everything
/// a running gateway would, without serving or spawning anything. `Ok` is
/// the resolved configuration to print (exit 0); `Err` is every problem
/// found (print it, exit non-zero).
pub fn check(path: impl AsRef<Path>, registry: Registry) -> Result<Report, Problems> {
    let resolved = load(path, registry)?;
    tracing::debug!(warnings = resolved.warnings.len(), "configuration checked");
    Ok(resolved.report)
}
