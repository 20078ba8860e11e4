//! What can go wrong in the harness itself, grouped by phase: starting the
//! fake providers, rendering a scenario's config, driving load, writing the
//! report. Failures of the system under test are never errors here: they
//! are measurements (a request classified `lost`, a missed target).

use std::io;
use std::path::PathBuf;

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
    /// No scenario of the catalog has this name.
    #[error("no scenario is named `{name}`; known: {known}")]
    UnknownScenario {
        /// The name asked for.
        name: String,
        /// The catalog's names, comma-separated.
        known: String,
    },
}
