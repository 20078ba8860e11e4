//! The provider's configuration (a `[providers.<id>]` table without its
//! `type` key).
//!
//! ```toml
//! [providers.primary]
//! type = "simulated"
//! latency_ms = 300
//! failure_rate = 0.0
//! failure = "server"
//! ```

use backstop_core::FailureKind;
use serde::Deserialize;

/// Configuration of a simulated provider; see the crate docs for each knob.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    /// The answer; `{model}` is the answering model's id.
    #[serde(default = "default_reply")]
    pub reply: String,
    /// Milliseconds before the answer or the first streamed chunk.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: u64,
    /// Milliseconds between streamed words.
    #[serde(default = "default_chunk_ms")]
    pub chunk_ms: u64,
    /// Share of calls that fail, 0..=1.
    #[serde(default)]
    pub failure_rate: f64,
    /// How a failing call fails.
    #[serde(default = "default_failure")]
    pub failure: FailureKind,
}

/// A knob out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimulatedBuildError {
    /// `failure_rate` is not a share.
    #[error("must be within 0..=1 (got {0})")]
    FailureRate(f64),
}

impl SimulatedConfig {
    /// Checks the knobs.
    pub fn validate(&self) -> Result<(), SimulatedBuildError> {
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(SimulatedBuildError::FailureRate(self.failure_rate));
        }
        Ok(())
    }
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        Self {
            reply: default_reply(),
            latency_ms: default_latency_ms(),
            chunk_ms: default_chunk_ms(),
            failure_rate: 0.0,
            failure: default_failure(),
        }
    }
}

fn default_reply() -> String {
    "Hello from {model}, a simulated model on this machine.".to_owned()
}

fn default_latency_ms() -> u64 {
    100
}

fn default_chunk_ms() -> u64 {
    20
}

fn default_failure() -> FailureKind {
    FailureKind::Server
}
