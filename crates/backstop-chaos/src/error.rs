//! What can go wrong in the harness itself, grouped by phase: starting the
//! fake providers, rendering a scenario's config, driving load, writing the
//! report. Failures of the system under test are never errors here: they
//! are measurements (a request classified `lost`, a missed target).

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Starting or steering a fake provider.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// The loopback port could not be bound or listened on.
    #[error("cannot bind a loopback port for fake provider `{model}`: {source}")]
    Bind {
        /// The fake's model id.
        model: String,
        /// The socket error.
        source: io::Error,
    },
    /// The fake's backend cannot produce one of its scripted behaviours
    /// (wiremock buffers whole bodies and has no connection-level faults).
    #[error(
        "fake provider `{model}` runs on wiremock, which cannot do `{behaviour}`; use the fault server"
    )]
    Unsupported {
        /// The fake's model id.
        model: String,
        /// The behaviour's name.
        behaviour: &'static str,
    },
    /// A timeline that cannot be evaluated (a zero flapping period, a
    /// duty cycle outside 0..=1, phases out of order).
    #[error("fake provider `{model}` has an invalid schedule: {reason}")]
    Schedule {
        /// The fake's model id.
        model: String,
        /// What is wrong.
        reason: String,
    },
    /// Two fakes of one scenario share a model id.
    #[error("two fake providers are named `{0}`")]
    Duplicate(String),
}

/// Rendering a scenario's Backstop config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No base URL was given for a fake the scenario's chain uses.
    #[error("scenario `{scenario}`: no base URL for fake provider `{model}`")]
    MissingUrl {
        /// The scenario.
        scenario: String,
        /// The fake's model id.
        model: String,
    },
    /// The TOML serializer refused the document.
    #[error("scenario `{scenario}`: cannot serialize the config: {source}")]
    Serialize {
        /// The scenario.
        scenario: String,
        /// The serializer's error.
        source: toml::ser::Error,
    },
}

/// Driving load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plan cannot run (zero rate, zero requests, zero duration).
    #[error("invalid load plan: {0}")]
    Plan(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The target URL does not parse.
    #[error("invalid target URL `{url}`: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// Writing the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// report.json could not be serialized.
    #[error("cannot serialize report.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Checking, starting or stopping the `backstop` binary.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The binary could not be started.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The binary's path.
        binary: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `backstop check` rejected a rendered config: the renderer and the
    /// config loader disagree.
    #[error("`backstop check` rejected {config} ({status}):\n{output}")]
    ConfigRejected {
        /// The config file.
        config: PathBuf,
        /// The checker's exit status.
        status: ExitStatus,
        /// Everything the checker printed.
        output: String,
    },
    /// `backstop check` did not finish in time.
    #[error("`backstop check --config {config}` did not finish within {} s", after.as_secs())]
    CheckTimeout {
        /// The config file.
        config: PathBuf,
        /// The time limit.
        after: Duration,
    },
    /// The gateway's log file could not be created.
    #[error("cannot create the gateway log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The gateway started but did not become ready.
    #[error("the gateway did not become ready: {reason}; log {log}:\n{log_tail}")]
    NotReady {
        /// What was missing.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },
    /// The gateway exited while it should have been serving.
    #[error("the gateway exited unexpectedly ({}); log {log}:\n{log_tail}", status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string()))]
    Exited {
        /// Its exit status, when it could be read.
        status: Option<ExitStatus>,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },
    /// `/v1/backstop/status` (the dashboard's document) could not be read
    /// at the end of a scenario.
    #[error("cannot read the gateway's status document {url}: {reason}")]
    Status {
        /// The status URL.
        url: String,
        /// What failed: transport, HTTP status, or the field that did not
        /// parse.
        reason: String,
    },
    /// The gateway could not be killed.
    #[error("cannot kill the gateway (pid {pid}): {source}")]
    Kill {
        /// Its process id.
        pid: u32,
        /// The OS error.
        source: io::Error,
    },
}

/// Any harness error, for callers that drive every phase.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Starting or steering a fake provider.
    #[error(transparent)]
    Fake(#[from] FakeError),
    /// Rendering a config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Driving load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Writing the report.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// Checking, starting or stopping the gateway.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// A file of the run (a rendered config, the output directory) could
    /// not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A step of one scenario failed.
    #[error("scenario `{scenario}`: {source}")]
    Scenario {
        /// The scenario.
        scenario: String,
        /// What failed.
        source: Box<ChaosError>,
    },
    /// The fleet scenarios' store could not be run (not installed, did
    /// not start).
    #[error("fleet scenarios: {0}")]
    Fleet(String),
    /// No scenario of the catalog has this name.
    #[error("no scenario is named `{name}`; known: {known}")]
    UnknownScenario {
        /// The name asked for.
        name: String,
        /// The catalog's names, comma-separated.
        known: String,
    },
}
