//! backstop-config end to end: files in a figment `Jail` (its own working
//! directory and environment), loaded, validated and built into a Router.

// Test scaffolding may panic: a panic is a failed test. `Jail` closures
// return figment's own (large) error type.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod example;
mod layering;
mod limits;
mod plugins;
mod reload;
mod state;
mod telemetry;
mod validation;

use backstop_config::{Problems, Registry, Resolved};
use figment::Jail;

/// The example configuration, as shipped.
pub const EXAMPLE: &str = include_str!("../../../../examples/backstop.toml");

/// Sets the keys the example's providers read.
pub fn set_keys(jail: &mut Jail) {
    jail.set_env("OPENAI_API_KEY", "sk-test-openai");
    jail.set_env("ANTHROPIC_API_KEY", "sk-test-anthropic");
}

/// Loads `file` (in the jail's directory) with the built-in registry.
pub fn load(file: &str) -> Result<Resolved, Problems> {
    backstop_config::load(file, Registry::builtin())
}

/// The problems of `file`, one line each.
pub fn problems(file: &str) -> Vec<String> {
    match load(file) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}
