//! Project tasks, run as `cargo xtask ...` (an alias in `.cargo/config.toml`
//! for `cargo run --release --package xtask --`; not `--quiet`, so a cold
//! build shows cargo's progress instead of minutes of silence).
//!
//! - `cargo xtask chaos [--quick] [--scenario NAME]... [--out DIR] [--no-progress]`:
//!   the outage chaos benchmark (see `chaos.rs`).
//! - `cargo xtask bench gateway [--out DIR] [--no-pin]`: the gateway's
//!   overhead against a direct call to the same mock (see `bench/`).
//! - `cargo xtask bench fleet [--out DIR] [--no-pin]`: what the Redis
//!   fleet backend adds to a request against the local one (see
//!   `bench/fleet.rs`).
//! - `cargo xtask test [--no-install] [NEXTEST ARGS]...`: installs what the
//!   test suite needs when it is missing (`redis-server`, `cargo-nextest`),
//!   then runs `cargo nextest run --workspace` (see `test.rs`).
//!
//! `chaos` and `bench` build the `backstop` binary in release first, need no API keys and
//! no network (everything runs on 127.0.0.1), and exit non-zero when a
//! target is missed.

// A task runner reports on stdout.
#![allow(clippy::print_stdout)]

// Linked only so the gateway's dependencies are built once (Cargo.toml).
use backstop_gateway as _;

mod bench;
mod build;
mod chaos;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Backstop's project tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the outage chaos benchmark against the release gateway.
    Chaos(chaos::ChaosArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        bench: BenchTask,
    },
    /// Install what the test suite needs when missing (redis-server,
    /// cargo-nextest), then run `cargo nextest run --workspace [ARGS]`.
    Test(test::TestArgs),
}

#[derive(Debug, Subcommand)]
enum BenchTask {
    /// The gateway's added latency, throughput, CPU and memory against a
    /// direct call to the same mock upstream.
    Gateway(bench::GatewayArgs),
    /// What the Redis fleet backend adds to a request against the local
    /// one, side by side (needs redis-server).
    Fleet(bench::fleet::FleetArgs),
    /// The minimal hyper proxy `bench gateway` measures as the floor
    /// (started by it; serves until killed).
    #[command(hide = true)]
    FloorProxy(bench::FloorArgs),
}

/// What went wrong in a task: a message with its context.
#[derive(Debug)]
pub struct TaskError(String);

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TaskError {}

impl TaskError {
    /// An error saying `what` failed because of `cause`.
    pub fn new(what: impl std::fmt::Display, cause: impl std::fmt::Display) -> Self {
        Self(format!("{what}: {cause}"))
    }

    /// An error with only a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.task {
        Task::Chaos(args) => chaos::run(&args),
        Task::Bench {
            bench: BenchTask::Gateway(args),
        } => bench::run(&args),
        Task::Bench {
            bench: BenchTask::Fleet(args),
        } => bench::fleet::run(&args),
        Task::Bench {
            bench: BenchTask::FloorProxy(args),
        } => bench::serve_floor_proxy(&args),
        Task::Test(args) => test::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
