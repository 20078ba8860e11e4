//! `cargo xtask bench fleet`: what sharing a fleet's state through Redis
//! adds to a request, against the same gateway sharing nothing, side by
//! side in one run.
//!
//! 1. Builds the gateway in release and pins it as `bench gateway` does.
//! 2. Starts one healthy mock upstream (no token pacing) and one
//!    `redis-server` on a free loopback port (stopped when the run ends,
//!    fails or panics).
//! 3. Starts four gateways on the same mock: `backend = "local"` and
//!    `backend = "redis"`, each without a budget (the store is never on the
//!    request path: admission reads local atomics, outcomes are queued) and
//!    with a rolling budget (one reservation round trip to the store per
//!    request, the hot path's only one).
//! 4. Drives one request at a time at 500 req/s (sends timed to the
//!    microsecond), the four taking turns over five rounds, and reports
//!    each pair's p50 / p99 and what Redis added.
//! 5. Writes `fleet.json` and `fleet.md` and exits 1 when Redis adds more
//!    than 0.3 ms at the median (issue 14's target).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use backstop_chaos::fleet::RedisServer;
use backstop_chaos::{Behaviour, GatewayCommand, Target};
use clap::Args;
use serde::Serialize;

use super::measure::{Load, Sample, Side, interleaved};
use super::pin::Pinning;
use super::{LOG_LEVEL, ROUNDS, SCENARIO, Setup, mock, procfs, start_gateway, stop};
use crate::{TaskError, build};

/// Added p50 the Redis backend may cost a request, in microseconds.
const TARGET_ADDED_P50_US: f64 = 300.0;

/// The variable the configs read the store's URL from.
const URL_ENV: &str = "BACKSTOP_BENCH_REDIS_URL";

/// `cargo xtask bench fleet` options.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Where `fleet.json` and `fleet.md` go [default: target/bench/].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Do not pin the gateways and the load generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,
}

/// One comparison: the same config on both backends.
#[derive(Debug, Clone, Serialize)]
pub struct BackendPair {
    /// What the config does (`no budget`, `rolling budget`).
    pub config: String,
    /// `backend = "local"`.
    pub local: Sample,
    /// `backend = "redis"`.
    pub redis: Sample,
}

impl BackendPair {
    fn added_p50_us(&self) -> f64 {
        self.redis.p50_us - self.local.p50_us
    }

    fn added_p99_us(&self) -> f64 {
        self.redis.p99_us - self.local.p99_us
    }
}

/// `fleet.json`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetBench {
    /// Backstop's version.
    pub version: String,
    /// How the processes were pinned.
    pub pinning: String,
    /// The machine's load average before and after.
    pub load_average: [Option<f64>; 2],
    /// The load of every side.
    pub method: String,
    /// The comparisons.
    pub pairs: Vec<BackendPair>,
    /// Added p50 allowed, microseconds.
    pub target_added_p50_us: f64,
    /// Whether every pair met it.
    pub met: bool,
}

fn config(mock_url: &str, budget: bool, redis: bool) -> String {
    let mut toml = format!(
        r#"# cargo xtask bench fleet: one openai provider at the healthy mock.
[server]
listen = "127.0.0.1:0"

[providers.mock]
type = "openai"
base_url = "{mock_url}"

[models.mock]
provider = "mock"
cost_per_1k = 0.001

[scenarios.{SCENARIO}]
chain = ["mock"]
"#
    );
    if budget {
        // A cap never reached: every request reserves and settles.
        toml.push_str("\n[strategies]\nbudget = { type = \"rolling\", max_cost = 1000000 }\n");
    }
    if redis {
        toml.push_str(&format!(
            "\n[state]\nbackend = \"redis\"\nurl_env = \"{URL_ENV}\"\nkey_prefix = \"bench\"\ntimeout_ms = 20\n"
        ));
    }
    toml
}

/// Runs the benchmark; exit 0 when the target is met, 1 when it is missed.
pub fn run(args: &FleetArgs) -> Result<ExitCode, TaskError> {
    let Setup {
        binary,
        out,
        pinning,
        runtime,
    } = Setup::new(args.out.clone(), args.no_pin)?;
    let bench = runtime.block_on(bench(&binary, &out, &pinning))?;
    let markdown = render_markdown(&bench);
    let json = serde_json::to_string_pretty(&bench)
        .map_err(|e| TaskError::new("serializing fleet.json", e))?;
    for (name, body) in [("fleet.json", json + "\n"), ("fleet.md", markdown.clone())] {
        let path = out.join(name);
        std::fs::write(&path, body)
            .map_err(|e| TaskError::new(format!("writing {}", path.display()), e))?;
    }
    println!("{markdown}");
    if bench.met {
        println!("every target met");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "target missed: the Redis backend added more than {TARGET_ADDED_P50_US} us at p50"
        );
        Ok(ExitCode::FAILURE)
    }
}

async fn bench(binary: &Path, out: &Path, pinning: &Pinning) -> Result<FleetBench, TaskError> {
    let load_before = procfs::load_average();
    let redis = tokio::task::spawn_blocking(RedisServer::try_start)
        .await
        .map_err(|e| TaskError::new("starting redis-server", e))?
        .map_err(|e| TaskError::new("starting redis-server", e))?;
    let healthy_mock = mock("mock", Behaviour::Healthy).await?;
    let mut command = GatewayCommand::new(binary)
        .env("RUST_LOG", LOG_LEVEL)
        .env("NO_COLOR", "1")
        .env(URL_ENV, redis.url());
    if let Some(wrapper) = pinning.gateway_wrapper() {
        command = command.wrapper(wrapper);
    }
    let url = healthy_mock.api_base_url();
    let mut gateways = Vec::new();
    for (name, budget, shared) in [
        ("fleet-local", false, false),
        ("fleet-redis", false, true),
        ("fleet-local-budget", true, false),
        ("fleet-redis-budget", true, true),
    ] {
        gateways.push(start_gateway(&command, out, name, &config(&url, budget, shared)).await?);
    }
    // Let the Redis replicas connect and subscribe.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load = Load {
        precise: true,
        ..Load::steady(500.0, 0.8)
    };
    let sides: Vec<Side> = gateways
        .iter()
        .map(|g| Side {
            target: Target::new(g.base_url()),
            cpu_of: Some(g.pid()),
            load,
        })
        .collect();
    eprintln!(
        "latency, one request at a time (500 req/s), {ROUNDS} interleaved rounds over 4 gateways"
    );
    let mut samples = interleaved(&sides, SCENARIO, ROUNDS).await?.into_iter();
    let mut pairs = Vec::new();
    for config in ["no budget", "rolling budget"] {
        let (Some(local), Some(redis)) = (samples.next(), samples.next()) else {
            return Err(TaskError::msg("a measurement returned no sample"));
        };
        let pair = BackendPair {
            config: config.to_owned(),
            local,
            redis,
        };
        eprintln!(
            "  {config}: p50 {:.1} -> {:.1} us (+{:.1}), p99 {:.1} -> {:.1} us (+{:.1})",
            pair.local.p50_us,
            pair.redis.p50_us,
            pair.added_p50_us(),
            pair.local.p99_us,
            pair.redis.p99_us,
            pair.added_p99_us()
        );
        pairs.push(pair);
    }
    for gateway in gateways {
        stop(gateway).await?;
    }
    healthy_mock.shutdown().await;
    drop(redis);
    let met = pairs
        .iter()
        .all(|p| p.added_p50_us() <= TARGET_ADDED_P50_US);
    Ok(FleetBench {
        version: build::version(),
        pinning: pinning.describe(),
        load_average: [load_before, procfs::load_average()],
        method: format!(
            "one request at a time at 500 req/s, 400 requests per round, {ROUNDS} rounds, the four gateways taking turns; latency from the intended send time"
        ),
        pairs,
        target_added_p50_us: TARGET_ADDED_P50_US,
        met,
    })
}

fn render_markdown(bench: &FleetBench) -> String {
    let mut out = String::from("# The fleet backend's cost per request\n\n");
    out.push_str(&format!(
        "Version {}; {}; {}.\n\n",
        bench.version, bench.pinning, bench.method
    ));
    out.push_str("| config | local p50 us | redis p50 us | added p50 us | local p99 us | redis p99 us | added p99 us |\n");
    out.push_str("|---|--:|--:|--:|--:|--:|--:|\n");
    for p in &bench.pairs {
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:+.1} | {:.1} | {:.1} | {:+.1} |\n",
            p.config,
            p.local.p50_us,
            p.redis.p50_us,
            p.added_p50_us(),
            p.local.p99_us,
            p.redis.p99_us,
            p.added_p99_us()
        ));
    }
    out.push_str(&format!(
        "\nTarget: added p50 <= {} us: {}\n",
        bench.target_added_p50_us,
        if bench.met { "met" } else { "missed" }
    ));
    out
}
