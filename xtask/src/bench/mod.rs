//! `cargo xtask bench gateway`: what the gateway costs, measured side by
//! side in one run against a direct call to the same mock upstream.
//!
//! 1. Builds the gateway in release; pins this process (the load
//!    generator and the mocks) to CPU 1 and runs every gateway under
//!    `taskset -c 0`, when `taskset` exists and there are two CPUs.
//! 2. Starts two mock upstreams of `backstop-chaos` (its fault server, no
//!    token pacing, non-streaming answers): one healthy, one answering
//!    every request with a 500.
//! 3. Starts three gateways, `backstop check`ed first: the healthy config
//!    (one `openai` provider pointing at the healthy mock; its idle RSS is
//!    read before any load), the same with `RUST_LOG=warn`, and the
//!    failover config (primary: the 500 mock; secondary: the healthy one;
//!    no same-model retry and a circuit that never opens, so every request
//!    pays exactly one failed call). Each waits idle until its turn.
//!    Then the floor (`floor_proxy.rs`): a minimal hyper proxy on the
//!    gateway's core in front of the same healthy mock.
//! 4. Drives open-loop, fixed-rate load (the chaos load generator: latency
//!    from the intended send time, HdrHistogram), the sides of each
//!    comparison taking turns over several rounds so a drifting shared
//!    machine affects them alike: straight to the mock vs through the
//!    gateway (and, at 500 req/s and for CPU, through the floor proxy),
//!    one request at a time (500 req/s, and 2,000 req/s for
//!    comparison: less idle time between requests) and in bursts of 32
//!    (3,200 req/s), with sends timed to the microsecond; the gateway's
//!    CPU time per request (`/proc/PID/stat` utime + stime) at 5,000
//!    req/s with its default log level vs `RUST_LOG=warn` vs the floor
//!    proxy; the failover
//!    gateway vs the healthy one (end to end, and by the gateway's attempt
//!    trail: what falling over added outside the answering call against
//!    the failed call's own duration, the extra round trip) and a direct
//!    call to the 500 mock; then a bounded ramp of rates, through the
//!    gateway and straight to the mock, for the highest rate each
//!    sustains.
//! 5. Prints the table, writes `gateway.json` and `gateway.md`, and exits
//!    1 when a target of issue 8 is missed.
//!
//! Every loop is bounded: a fixed list of loads and rounds, each with a
//! request count, a sending time limit and a per-request deadline.

pub mod fleet;
mod floor_proxy;
mod measure;
mod paced;
mod paced_client;
mod paced_mock;
mod pin;
mod procfs;
mod report;
mod stream_client;
mod stream_mock;
mod stream_report;
mod streams;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use backstop_chaos::{
    Api, Behaviour, ErrorKind, FakeProvider, FakeSpec, GatewayCommand, GatewayProcess, Pacing,
    Target, Timeline,
};
use clap::Args;

use crate::{TaskError, build, workspace_root};
use floor_proxy::FloorProxy;
pub use floor_proxy::{FloorArgs, serve as serve_floor_proxy};
use measure::{Load, Sample, Side, interleaved, measure, round1};
use pin::Pinning;
use report::{Failover, Floor, GatewayBench, Pair, Throughput};

/// `cargo xtask bench gateway` options.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Where `gateway.json` and `gateway.md` go [default: target/bench/].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Do not pin the gateway and the load generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// The stream benchmarks' options (`--part`, `--many-streams`...).
    #[command(flatten)]
    streams: streams::StreamArgs,
}

/// The scenario name every request asks for.
const SCENARIO: &str = "bench";

/// The gateway's log level (its default).
const LOG_LEVEL: &str = "info";

/// Ramp steps, requests per second; each runs for [`RAMP_STEP_SECONDS`].
const RAMP: [f64; 10] = [
    2_500.0, 5_000.0, 7_500.0, 10_000.0, 12_500.0, 15_000.0, 17_500.0, 20_000.0, 25_000.0, 30_000.0,
];
const RAMP_STEP_SECONDS: f64 = 1.5;
/// A step fails with more errors than this share of its requests...
const MAX_ERROR_SHARE: f64 = 0.01;
/// ...or when answers fall behind this share of the offered rate.
const MIN_KEEP_UP: f64 = 0.95;

const READY_WITHIN: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What every gateway benchmark starts from: the release binary, the
/// output folder, this process pinned to one core (or why not) and a
/// runtime sized for it.
struct Setup {
    binary: PathBuf,
    out: PathBuf,
    pinning: Pinning,
    runtime: tokio::runtime::Runtime,
}

impl Setup {
    fn new(out: Option<PathBuf>, no_pin: bool) -> Result<Self, TaskError> {
        let binary = build::release_gateway()?;
        let out = out.unwrap_or_else(|| workspace_root().join("target").join("bench"));
        std::fs::create_dir_all(&out)
            .map_err(|e| TaskError::new(format!("creating {}", out.display()), e))?;
        // Before any thread starts: threads inherit the affinity.
        let pinning = if no_pin {
            Pinning::Off("--no-pin".to_owned())
        } else {
            pin::pin_self()
        };
        eprintln!("{}", pinning.describe());
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        if pinning == Pinning::Pinned {
            // One core: more workers would only contend for it.
            runtime.worker_threads(1);
        }
        let runtime = runtime
            .enable_all()
            .build()
            .map_err(|e| TaskError::new("cannot start the async runtime", e))?;
        Ok(Self {
            binary,
            out,
            pinning,
            runtime,
        })
    }
}

/// Runs the benchmark; exit 0 when every target is met, 1 when one is
/// missed.
pub fn run(args: &GatewayArgs) -> Result<ExitCode, TaskError> {
    let Setup {
        binary,
        out,
        pinning,
        runtime,
    } = Setup::new(args.out.clone(), args.no_pin)?;
    if args.streams.part == streams::Part::Streams {
        let bench = runtime.block_on(streams::bench(&binary, &out, &pinning, &args.streams))?;
        let markdown = stream_report::render_markdown(&bench);
        let json = serde_json::to_string_pretty(&bench)
            .map_err(|e| TaskError::new("serializing streams.json", e))?;
        return write_and_judge(&out, "streams", json, markdown, &bench.targets);
    }
    let mut bench = runtime.block_on(bench(&binary, &out, &pinning))?;
    if args.streams.part == streams::Part::All {
        bench.streams =
            Some(runtime.block_on(streams::bench(&binary, &out, &pinning, &args.streams))?);
    }

    let markdown = report::render_markdown(&bench);
    let json = serde_json::to_string_pretty(&bench)
        .map_err(|e| TaskError::new("serializing gateway.json", e))?;
    let mut targets = bench.targets.clone();
    if let Some(streams) = &bench.streams {
        targets.extend(streams.targets.iter().cloned());
    }
    write_and_judge(&out, "gateway", json, markdown, &targets)
}

/// Writes `name.json` and `name.md` to `out`, prints the Markdown, and
/// exits 1 when a target is missed.
fn write_and_judge(
    out: &Path,
    name: &str,
    json: String,
    markdown: String,
    targets: &[report::Target],
) -> Result<ExitCode, TaskError> {
    let json_name = format!("{name}.json");
    let md_name = format!("{name}.md");
    for (name, body) in [
        (json_name.as_str(), json + "\n"),
        (md_name.as_str(), markdown.clone()),
    ] {
        let path = out.join(name);
        std::fs::write(&path, body)
            .map_err(|e| TaskError::new(format!("writing {}", path.display()), e))?;
    }
    println!("{markdown}");
    println!(
        "written: {}, {}",
        out.join(&json_name).display(),
        out.join(&md_name).display()
    );
    let missed: Vec<&report::Target> = targets.iter().filter(|t| !t.met).collect();
    if missed.is_empty() {
        println!("every target met");
        Ok(ExitCode::SUCCESS)
    } else {
        for t in &missed {
            eprintln!(
                "target missed: {} = {} (target {})",
                t.figure, t.measured, t.target
            );
        }
        Ok(ExitCode::FAILURE)
    }
}

/// A mock upstream that answers at once (no token pacing).
async fn mock(model: &str, behaviour: Behaviour) -> Result<FakeProvider, TaskError> {
    let spec = FakeSpec::new(model, Api::OpenAi)
        .pacing(Pacing {
            first_token: Duration::ZERO,
            token_interval: Duration::ZERO,
        })
        .schedule(Timeline::steady(behaviour))
        .hold_max(Duration::from_secs(5));
    FakeProvider::start(spec)
        .await
        .map_err(|e| TaskError::new(format!("starting the {model} mock"), e))
}

fn healthy_config(mock_url: &str) -> String {
    format!(
        r#"# cargo xtask bench gateway: one openai provider at the healthy mock.
[server]
listen = "127.0.0.1:0"

[providers.mock]
type = "openai"
base_url = "{mock_url}"

[models.mock]
provider = "mock"

[scenarios.{SCENARIO}]
chain = ["mock"]
"#
    )
}

fn failover_config(failing_url: &str, mock_url: &str) -> String {
    format!(
        r#"# cargo xtask bench gateway: the primary answers 500, the secondary is
# the healthy mock. No same-model retry and a circuit that never opens, so
# every request pays exactly one failed call before falling over.
[server]
listen = "127.0.0.1:0"

[providers.failing]
type = "openai"
base_url = "{failing_url}"

[providers.mock]
type = "openai"
base_url = "{mock_url}"

[models.primary]
provider = "failing"
priority = 1

[models.secondary]
provider = "mock"
priority = 2

[scenarios.{SCENARIO}]
chain = ["primary", "secondary"]
retries = {{ same_model = 0 }}
health = {{ type = "circuit_breaker", min_calls = 4294967295 }}
"#
    )
}

/// Writes `config` to `out/name.toml`, has `backstop check` accept it and
/// starts a gateway on it (logs to `out/name.log`).
async fn start_gateway(
    command: &GatewayCommand,
    out: &Path,
    name: &str,
    config: &str,
) -> Result<GatewayProcess, TaskError> {
    let path = out.join(format!("{name}.toml"));
    std::fs::write(&path, config)
        .map_err(|e| TaskError::new(format!("writing {}", path.display()), e))?;
    command
        .check(&path)
        .await
        .map_err(|e| TaskError::new(format!("checking {}", path.display()), e))?;
    let gateway = command
        .serve(&path, &out.join(format!("{name}.log")), READY_WITHIN)
        .await
        .map_err(|e| TaskError::new(format!("starting the gateway on {}", path.display()), e))?;
    eprintln!(
        "{name}: gateway pid {} on {} (CPUs {})",
        gateway.pid(),
        gateway.addr(),
        procfs::cpus_allowed(gateway.pid()).unwrap_or_else(|e| e.to_string())
    );
    Ok(gateway)
}

async fn stop(gateway: GatewayProcess) -> Result<(), TaskError> {
    gateway
        .stop(STOP_GRACE)
        .await
        .map(|_| ())
        .map_err(|e| TaskError::new("stopping the gateway", e))
}

fn sustained(s: &Sample) -> bool {
    s.error_share() <= MAX_ERROR_SHARE && s.achieved_rps >= s.offered_rps * MIN_KEEP_UP
}

/// Runs the ramp at `target` until a step is not sustained.
async fn ramp(
    label: &str,
    target: &Target,
    cpu_of: Option<u32>,
) -> Result<(Vec<Sample>, Option<f64>), TaskError> {
    let mut steps = Vec::new();
    let mut best = None;
    for rate in RAMP {
        let side = Side {
            target: target.clone(),
            cpu_of,
            load: Load::steady(rate, RAMP_STEP_SECONDS),
        };
        let s = measure(&side, SCENARIO).await?;
        let ok = sustained(&s);
        eprintln!(
            "  ramp {label} {rate:>6.0} req/s: answered {:>7.0} req/s, {} errors, p99 {:.0} us, harness CPU {:.1} us/req{}",
            s.achieved_rps,
            s.errors,
            s.p99_us,
            s.harness_cpu_us_per_request.unwrap_or(f64::NAN),
            if ok { "" } else { "  <- not sustained" }
        );
        steps.push(s);
        if !ok {
            break;
        }
        best = Some(rate);
    }
    Ok((steps, best))
}

/// The same load at `direct` and through `gateway`, in interleaved rounds.
async fn pair(
    direct: &Target,
    gateway: &Target,
    pid: u32,
    load: Load,
    rounds: usize,
) -> Result<Pair, TaskError> {
    let sides = [
        Side {
            target: direct.clone(),
            cpu_of: None,
            load,
        },
        Side {
            target: gateway.clone(),
            cpu_of: Some(pid),
            load,
        },
    ];
    let mut samples = interleaved(&sides, SCENARIO, rounds).await?.into_iter();
    match (samples.next(), samples.next()) {
        (Some(direct), Some(gateway)) => Ok(Pair { direct, gateway }),
        _ => Err(TaskError::msg("a measurement returned no sample")),
    }
}

fn report_pair(label: &str, pair: &Pair) {
    eprintln!(
        "  {label}: p50 {:.1} -> {:.1} us (+{:.1}), p99 {:.1} -> {:.1} us (+{:.1})",
        pair.direct.p50_us,
        pair.gateway.p50_us,
        pair.added_p50_us(),
        pair.direct.p99_us,
        pair.gateway.p99_us,
        pair.added_p99_us()
    );
}

/// Rounds of every interleaved measurement.
const ROUNDS: usize = 5;

async fn bench(binary: &Path, out: &Path, pinning: &Pinning) -> Result<GatewayBench, TaskError> {
    let load_before = procfs::load_average();
    let healthy_mock = mock("mock", Behaviour::Healthy).await?;
    let failing_mock = mock("failing", Behaviour::Error(ErrorKind::Server)).await?;
    let direct = Target::new(healthy_mock.api_base_url());
    let direct_failing = Target::new(failing_mock.api_base_url());

    let mut command = GatewayCommand::new(binary)
        .env("RUST_LOG", LOG_LEVEL)
        .env("NO_COLOR", "1");
    if let Some(wrapper) = pinning.gateway_wrapper() {
        command = command.wrapper(wrapper);
    }
    let healthy_toml = healthy_config(&healthy_mock.api_base_url());
    let gateway = start_gateway(&command, out, "gateway", &healthy_toml).await?;
    let pid = gateway.pid();
    // Settled after startup, before any request but /readyz.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss_bytes = procfs::rss_bytes(pid)?;
    eprintln!("idle RSS {:.1} MiB", idle_rss_bytes as f64 / 1048576.0);
    // Two more gateways, idle until their turn: the failover config, and
    // the healthy config without per-request logs.
    let failover_gateway = start_gateway(
        &command,
        out,
        "gateway-failover",
        &failover_config(&failing_mock.api_base_url(), &healthy_mock.api_base_url()),
    )
    .await?;
    let quiet = start_gateway(
        &command.clone().env("RUST_LOG", "warn"),
        out,
        "gateway-quiet-logs",
        &healthy_toml,
    )
    .await?;
    let through = Target::new(gateway.base_url());
    // The floor: a minimal hyper proxy on the gateway's core, in front of
    // the same mock.
    let mock_origin = healthy_mock.api_base_url();
    let mock_origin = mock_origin.strip_suffix("/v1").unwrap_or(&mock_origin);
    let floor = FloorProxy::start(
        mock_origin,
        pinning.gateway_wrapper(),
        &out.join("floor-proxy.log"),
    )
    .await?;
    eprintln!(
        "floor proxy: pid {} on {} (CPUs {})",
        floor.pid(),
        floor.base_url(),
        procfs::cpus_allowed(floor.pid()).unwrap_or_else(|e| e.to_string())
    );

    eprintln!("latency, one request at a time (500 and 2,000 req/s), {ROUNDS} interleaved rounds");
    let c1_load = Load {
        precise: true,
        ..Load::steady(500.0, 0.8)
    };
    let floor_through = Target::new(floor.base_url());
    let c1_sides = [
        Side {
            target: direct.clone(),
            cpu_of: None,
            load: c1_load,
        },
        Side {
            target: through.clone(),
            cpu_of: Some(pid),
            load: c1_load,
        },
        Side {
            target: floor_through.clone(),
            cpu_of: Some(floor.pid()),
            load: c1_load,
        },
    ];
    let mut c1_samples = interleaved(&c1_sides, SCENARIO, ROUNDS).await?.into_iter();
    let (Some(c1_direct), Some(c1_gateway), Some(floor_c1)) =
        (c1_samples.next(), c1_samples.next(), c1_samples.next())
    else {
        return Err(TaskError::msg("the c1 measurement returned no sample"));
    };
    let c1 = Pair {
        direct: c1_direct,
        gateway: c1_gateway,
    };
    report_pair("c1", &c1);
    eprintln!(
        "  c1 floor proxy: p50 {:.1} us (+{:.1})",
        floor_c1.p50_us,
        round1(floor_c1.p50_us - c1.direct.p50_us)
    );
    // Still one at a time (a request every 500 us), but the gateway's
    // core idles far less between requests.
    let c1_busier_load = Load {
        precise: true,
        ..Load::steady(2_000.0, 0.4)
    };
    let c1_busier = pair(&direct, &through, pid, c1_busier_load, ROUNDS).await?;
    report_pair("c1 at 2,000 req/s", &c1_busier);

    eprintln!("latency, bursts of 32 (3,200 req/s), {ROUNDS} interleaved rounds");
    let c32_load = Load {
        burst: 32,
        precise: true,
        ..Load::steady(3_200.0, 0.4)
    };
    let c32 = pair(&direct, &through, pid, c32_load, ROUNDS).await?;
    report_pair("c32", &c32);

    eprintln!("gateway CPU per request (5,000 req/s), default logs and RUST_LOG=warn interleaved");
    let cpu_load = Load::steady(5_000.0, 2.0);
    let cpu_sides = [
        Side {
            target: through.clone(),
            cpu_of: Some(pid),
            load: cpu_load,
        },
        Side {
            target: Target::new(quiet.base_url()),
            cpu_of: Some(quiet.pid()),
            load: cpu_load,
        },
        Side {
            target: floor_through,
            cpu_of: Some(floor.pid()),
            load: cpu_load,
        },
    ];
    let mut cpu_samples = interleaved(&cpu_sides, SCENARIO, 3).await?.into_iter();
    let (Some(cpu), Some(cpu_quiet_logs), Some(floor_cpu)) =
        (cpu_samples.next(), cpu_samples.next(), cpu_samples.next())
    else {
        return Err(TaskError::msg("the CPU measurement returned no sample"));
    };
    eprintln!(
        "  {:.1} us per request, {:.1} us with RUST_LOG=warn, floor proxy {:.1} us",
        cpu.cpu_us_per_request.unwrap_or(f64::NAN),
        cpu_quiet_logs.cpu_us_per_request.unwrap_or(f64::NAN),
        floor_cpu.cpu_us_per_request.unwrap_or(f64::NAN)
    );
    stop(quiet).await?;
    floor.stop().await?;

    eprintln!("failover on a 500 primary (500 req/s), {ROUNDS} interleaved rounds");
    let failover_sides = [
        Side {
            target: through.clone(),
            cpu_of: None,
            load: c1_load,
        },
        Side {
            target: Target::new(failover_gateway.base_url()),
            cpu_of: None,
            load: c1_load,
        },
        Side {
            target: direct_failing,
            cpu_of: None,
            load: Load {
                errors_expected: true,
                ..c1_load
            },
        },
    ];
    let mut f = interleaved(&failover_sides, SCENARIO, ROUNDS)
        .await?
        .into_iter();
    let (Some(healthy), Some(failing_primary), Some(extra_round_trip)) =
        (f.next(), f.next(), f.next())
    else {
        return Err(TaskError::msg(
            "the failover measurement returned no sample",
        ));
    };
    let failover = Failover {
        healthy,
        failing_primary,
        extra_round_trip,
    };
    eprintln!(
        "  p50 {:.1} -> {:.1} us (+{:.1}); extra round trip p50 {:.1} us",
        failover.healthy.p50_us,
        failover.failing_primary.p50_us,
        failover.added_p50_us(),
        failover.extra_round_trip.p50_us
    );
    stop(failover_gateway).await?;

    eprintln!("throughput ramp");
    let (gateway_steps, gateway_max_rps) = ramp("gateway", &through, Some(pid)).await?;
    let (direct_steps, direct_max_rps) = ramp("direct ", &direct, None).await?;
    stop(gateway).await?;
    healthy_mock.shutdown().await;
    failing_mock.shutdown().await;

    let mut bench = GatewayBench {
        version: build::version(),
        pinning: pinning.describe(),
        load_average: [load_before, procfs::load_average()],
        log_level: LOG_LEVEL.to_owned(),
        c1,
        c1_busier,
        c32,
        throughput: Throughput {
            max_error_share: MAX_ERROR_SHARE,
            min_keep_up: MIN_KEEP_UP,
            direct_steps,
            gateway_steps,
            direct_max_rps,
            gateway_max_rps,
        },
        cpu,
        cpu_quiet_logs,
        idle_rss_bytes,
        failover,
        floor: Floor {
            c1: floor_c1,
            cpu: floor_cpu,
        },
        floor_ratios: None,
        streams: None,
        targets: Vec::new(),
    };
    bench.floor_ratios = Some(bench.floor_ratios());
    bench.targets = report::evaluate(&bench);
    Ok(bench)
}
