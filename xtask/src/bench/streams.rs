//! The stream benchmarks of `cargo xtask bench gateway` (issue 18): what
//! the gateway costs per relayed chunk and per open stream, side by side
//! in one run against the same streaming mock ([`super::stream_mock`]).
//!
//! 1. Relay cost: the same streams straight to the mock and through the
//!    gateway (and through a `--before` build when given), taking turns
//!    over rounds: 200 chunks back to back at concurrency 1 and 16, and
//!    50 chunks paced 1 ms apart at concurrency 1 and 16. Per side: the
//!    gateway's CPU per relayed chunk (`/proc/PID/stat` utime + stime),
//!    its system calls per stream (`/proc/PID/io` `syscw`, `syscr`), the
//!    transit of every chunk and the gap it added (see
//!    [`super::stream_client`]), the time to first token.
//!    The floor proxy ([`super::floor_proxy`], a minimal hyper proxy that
//!    streams the answer's bytes through) takes its turn in the same
//!    rounds, on the gateway's core: the gateway's CPU per chunk over it.
//! 2. Many open streams: a fresh gateway, the file-descriptor limit
//!    raised, `--many-streams` streams (default 10,000) ramped up, each a
//!    chunk every 50 ms for 30 s; the same load straight to the mock
//!    first, for what the harness itself adds, and through a fresh floor
//!    proxy after the gateway, for what any hyper proxy pays. Reports the
//!    gateway's and the floor's RSS per open stream and CPU per second at
//!    the plateau, the added gap p50/p99, every stream's ending, whether
//!    the mock kept its pace, and the gateway's ratios to the floor.
//! 3. Failover under many streams: `--failover-streams` streams (default
//!    2,000) across two scenarios (`mid_stream = "continue"` and
//!    `"restart"`), primary and secondary mocks answering the same words;
//!    once they are all open the primary cuts every stream. Every stream
//!    must end complete with the exact text.
//!
//! Every loop is bounded: fixed stream counts, a deadline per stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backstop_chaos::{GatewayCommand, GatewayProcess};
use clap::{Args, ValueEnum};
use tokio::time::Instant;

use super::floor_proxy::FloorProxy;
use super::paced::{PacedHarness, PacedRun};
use super::paced_client::PacedPlan;
use super::paced_mock::Pacing;
use super::pin::Pinning;
use super::stream_client::{self, Gauge, StreamPlan, StreamRun};
use super::stream_mock::{Ask, StreamMock};
use super::stream_report::{
    FailoverStreams, GatewaySide, HarnessSide, ManyStreams, ManyStreamsRun, Plateau, StreamPair,
    StreamSample, StreamsBench, ratio,
};
use super::{procfs, start_gateway, stop};
use crate::TaskError;

/// Which parts of `cargo xtask bench gateway` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// Non-streaming requests and streams.
    All,
    /// Non-streaming requests only.
    Requests,
    /// Streams only (writes `streams.json` and `streams.md`).
    Streams,
}

/// The stream benchmarks' options.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Part::All)]
    pub part: Part,
    /// Open streams of the many-streams run (0: skip it).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub many_streams: usize,
    /// Interleaved rounds of the relay-cost loads (0: skip them).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub relay_rounds: usize,
    /// Open streams of the failover-under-many-streams run (0: skip it).
    #[arg(long, value_name = "N", default_value_t = 2_000)]
    pub failover_streams: usize,
    /// Another `backstop` binary (an earlier build) measured side by side
    /// in the relay-cost rounds.
    #[arg(long, value_name = "BINARY")]
    pub before: Option<PathBuf>,
}

const SCENARIO: &str = "bench";
/// The many-open-streams run's streams: a chunk every 50 ms for 30 s.
const MANY_GAP: Duration = Duration::from_millis(50);
const MANY_CHUNKS: u32 = 600;
/// The per-chunk CPU the issue measured before the batched relay, the
/// base of its "5x less" target.
pub const BEFORE_CPU_PER_CHUNK_US: f64 = 14.5;

fn config(mock_url: &str, max_connections: usize) -> String {
    format!(
        r#"# cargo xtask bench gateway (streams): one openai provider at the streaming mock.
[server]
listen = "127.0.0.1:0"
max_connections = {max_connections}

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

fn failover_config(primary_url: &str, secondary_url: &str, max_connections: usize) -> String {
    format!(
        r#"# cargo xtask bench gateway (streams): the primary's streams are cut
# mid-answer; the secondary answers the same words. One scenario per
# mid-stream policy that carries on.
[server]
listen = "127.0.0.1:0"
max_connections = {max_connections}

[providers.primary]
type = "openai"
base_url = "{primary_url}"

[providers.secondary]
type = "openai"
base_url = "{secondary_url}"

[models.primary]
provider = "primary"
priority = 1

[models.secondary]
provider = "secondary"
priority = 2
supports_prefill = true

[scenarios.bench-continue]
chain = ["primary", "secondary"]
mid_stream = "continue"

[scenarios.bench-restart]
chain = ["primary", "secondary"]
mid_stream = "restart"
"#
    )
}

/// Raises this process's open-file limit (gateways started afterwards
/// inherit it) to at least `want` when allowed (the hard limit too, up to
/// `fs.nr_open`, when running as root), otherwise to the hard limit;
/// returns the soft limit in force.
fn raise_fd_limit(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum.filter(|h| *h < want) {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let raised = want.min(nr_open).max(hard);
        let both = Rlimit {
            current: Some(raised),
            maximum: Some(raised),
        };
        if raised > hard && setrlimit(Resource::Nofile, both).is_ok() {
            return raised;
        }
    }
    let soft_to_hard = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if setrlimit(Resource::Nofile, soft_to_hard).is_ok() {
        return limit.maximum.unwrap_or(u64::MAX);
    }
    limit.current.unwrap_or(u64::MAX)
}

/// Where one side's streams go and whose counters to read.
#[derive(Debug, Clone)]
struct Where {
    authority: String,
    models: Vec<String>,
    pid: Option<u32>,
}

impl Where {
    fn direct(mock: &StreamMock) -> Self {
        Self {
            authority: authority(&mock.api_base_url()),
            models: vec!["mock-upstream".to_owned()],
            pid: None,
        }
    }

    fn floor(floor: &FloorProxy) -> Result<Self, TaskError> {
        Ok(Self {
            authority: floor.addr()?.to_string(),
            models: vec!["mock-upstream".to_owned()],
            pid: Some(floor.pid()),
        })
    }

    fn gateway(gateway: &GatewayProcess, models: &[&str]) -> Self {
        Self {
            authority: gateway.addr().to_string(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            pid: Some(gateway.pid()),
        }
    }
}

fn authority(base_url: &str) -> String {
    base_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// One load: what each stream asks for, how many, how many at once.
#[derive(Debug, Clone, Copy)]
struct Load {
    ask: Ask,
    streams: usize,
    concurrency: usize,
    ramp: Duration,
    deadline: Duration,
}

/// Counters read around a run.
struct Counters {
    cpu: Option<Duration>,
    io: Option<procfs::IoCounts>,
    own_cpu: Duration,
}

fn read_counters(pid: Option<u32>) -> Result<Counters, TaskError> {
    Ok(Counters {
        cpu: pid.map(procfs::cpu_time).transpose()?,
        io: pid.map(procfs::io_counts).transpose()?,
        own_cpu: procfs::cpu_time(std::process::id())?,
    })
}

/// Runs `load` at `side` once, returning the run and the counters' deltas.
async fn run_once(side: &Where, load: &Load) -> Result<(StreamRun, Deltas), TaskError> {
    let plan = Arc::new(StreamPlan {
        authority: side.authority.clone(),
        path: "/v1/chat/completions".to_owned(),
        models: side.models.clone(),
        ask: load.ask,
        streams: load.streams,
        concurrency: load.concurrency,
        ramp: load.ramp,
        deadline: load.deadline,
    });
    let before = read_counters(side.pid)?;
    let run = stream_client::run(plan, Arc::new(Gauge::default())).await;
    let after = read_counters(side.pid)?;
    Ok((run, Deltas::between(&before, &after)))
}

/// What the counters moved by over one run.
#[derive(Debug, Clone, Copy, Default)]
struct Deltas {
    cpu: Option<Duration>,
    syscr: Option<u64>,
    syscw: Option<u64>,
    own_cpu: Duration,
}

impl Deltas {
    fn between(a: &Counters, b: &Counters) -> Self {
        Self {
            cpu: a.cpu.zip(b.cpu).map(|(a, b)| b.saturating_sub(a)),
            syscr: a.io.zip(b.io).map(|(a, b)| b.syscr.saturating_sub(a.syscr)),
            syscw: a.io.zip(b.io).map(|(a, b)| b.syscw.saturating_sub(a.syscw)),
            own_cpu: b.own_cpu.saturating_sub(a.own_cpu),
        }
    }

    fn add(&mut self, o: &Deltas) {
        let sum = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        let sum_u = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.cpu = sum(self.cpu, o.cpu);
        self.syscr = sum_u(self.syscr, o.syscr);
        self.syscw = sum_u(self.syscw, o.syscw);
        self.own_cpu += o.own_cpu;
    }
}

/// Pools runs of one side into a sample.
struct Pool {
    run: Option<StreamRun>,
    deltas: Deltas,
}

impl Pool {
    fn new() -> Self {
        Self {
            run: None,
            deltas: Deltas::default(),
        }
    }

    fn add(&mut self, run: StreamRun, deltas: Deltas) {
        self.deltas.add(&deltas);
        match &mut self.run {
            None => self.run = Some(run),
            Some(pooled) => {
                let _ = pooled.timings.transit.add(&run.timings.transit);
                let _ = pooled.timings.gap_added.add(&run.timings.gap_added);
                let _ = pooled.timings.first_token.add(&run.timings.first_token);
                pooled.complete += run.complete;
                pooled.cut += run.cut;
                pooled.lost += run.lost;
                pooled.chunks += run.chunks;
                pooled.wall += run.wall;
                if pooled.first_problem.is_none() {
                    pooled.first_problem = run.first_problem;
                }
            }
        }
    }

    fn sample(self) -> StreamSample {
        let deltas = self.deltas;
        self.run
            .map(|run| {
                StreamSample::of(&run, deltas.cpu, deltas.syscr, deltas.syscw, deltas.own_cpu)
            })
            .unwrap_or_default()
    }
}

/// The same load at every side, the sides taking turns over rounds.
async fn interleaved(
    label: &str,
    sides: &[(&str, &Where)],
    load: Load,
    rounds: usize,
) -> Result<Vec<StreamSample>, TaskError> {
    // Warm-up: a few streams each, on connections the runs then reuse
    // (each run opens its own; the gateway's upstream pool warms here).
    let warm = Load {
        streams: load.concurrency.max(4),
        ..load
    };
    for (_, side) in sides {
        run_once(side, &warm).await?;
    }
    let mut pools: Vec<Pool> = sides.iter().map(|_| Pool::new()).collect();
    for _ in 0..rounds {
        for ((_, side), pool) in sides.iter().zip(&mut pools) {
            let (run, deltas) = run_once(side, &load).await?;
            pool.add(run, deltas);
        }
    }
    let samples: Vec<StreamSample> = pools.into_iter().map(Pool::sample).collect();
    for ((name, _), s) in sides.iter().zip(&samples) {
        eprintln!(
            "  {label} [{name}]: {} streams ({} cut, {} lost), transit p50 {:.1} us p99 {:.1} us, gap added p99 {:.1} us, TTFT p50 {:.1} us, CPU/chunk {}, syscw/stream {}",
            s.complete,
            s.cut,
            s.lost,
            s.transit_p50_us,
            s.transit_p99_us,
            s.gap_added_p99_us,
            s.first_token_p50_us,
            s.cpu_us_per_chunk
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2} us")),
            s.syscw_per_stream
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")),
        );
    }
    Ok(samples)
}

/// Runs the stream benchmarks.
pub async fn bench(
    binary: &Path,
    out: &Path,
    pinning: &Pinning,
    args: &StreamArgs,
) -> Result<StreamsBench, TaskError> {
    let load_before = procfs::load_average();
    // Through the gateway, this process holds both ends' sockets of the
    // many-streams run: two per stream, and the gateway as many.
    let fd_limit =
        raise_fd_limit((args.many_streams.max(args.failover_streams) as u64) * 3 + 4_096);
    eprintln!("streams: open-file limit {fd_limit}");
    let mut command = GatewayCommand::new(binary)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let mut before_command = args.before.as_ref().map(|b| {
        GatewayCommand::new(b)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
    });
    if let Some(wrapper) = pinning.gateway_wrapper() {
        command = command.wrapper(wrapper.clone());
        before_command = before_command.map(|c| c.wrapper(wrapper));
    }
    let max_connections = args.many_streams.max(args.failover_streams).max(1_000) * 2;

    let mock = StreamMock::start().await?;
    let gateway = start_gateway(
        &command,
        out,
        "gateway-streams",
        &config(&mock.api_base_url(), max_connections),
    )
    .await?;
    let before = match &before_command {
        Some(c) => Some(
            start_gateway(
                c,
                out,
                "gateway-streams-before",
                &config(&mock.api_base_url(), max_connections),
            )
            .await?,
        ),
        None => None,
    };
    // The floor: a minimal hyper proxy on the gateway's core, in front of
    // the same mock.
    let mock_origin = mock.api_base_url();
    let mock_origin = mock_origin.strip_suffix("/v1").unwrap_or(&mock_origin);
    let floor = FloorProxy::start(
        mock_origin,
        pinning.gateway_wrapper(),
        &out.join("floor-proxy-streams.log"),
    )
    .await?;
    let direct = Where::direct(&mock);
    let through = Where::gateway(&gateway, &[SCENARIO]);
    let through_before = before.as_ref().map(|b| Where::gateway(b, &[SCENARIO]));
    let through_floor = Where::floor(&floor)?;
    let mut sides = vec![("direct", &direct), ("gateway", &through)];
    if let Some(b) = &through_before {
        sides.push(("before", b));
    }
    sides.push(("floor", &through_floor));

    let loads = [
        (
            "200 chunks back to back, concurrency 1",
            Load {
                ask: Ask {
                    chunks: 200,
                    gap: Duration::ZERO,
                    timestamps: true,
                },
                streams: 100,
                concurrency: 1,
                ramp: Duration::ZERO,
                deadline: Duration::from_secs(10),
            },
        ),
        (
            "200 chunks back to back, concurrency 16",
            Load {
                ask: Ask {
                    chunks: 200,
                    gap: Duration::ZERO,
                    timestamps: true,
                },
                streams: 320,
                concurrency: 16,
                ramp: Duration::ZERO,
                deadline: Duration::from_secs(10),
            },
        ),
        (
            "50 chunks 1 ms apart, concurrency 1",
            Load {
                ask: Ask {
                    chunks: 50,
                    gap: Duration::from_millis(1),
                    timestamps: true,
                },
                streams: 20,
                concurrency: 1,
                ramp: Duration::ZERO,
                deadline: Duration::from_secs(10),
            },
        ),
        (
            "50 chunks 1 ms apart, concurrency 16",
            Load {
                ask: Ask {
                    chunks: 50,
                    gap: Duration::from_millis(1),
                    timestamps: true,
                },
                streams: 160,
                concurrency: 16,
                ramp: Duration::from_millis(1),
                deadline: Duration::from_secs(10),
            },
        ),
    ];
    let mut pairs = Vec::new();
    let rounds = args.relay_rounds;
    for (label, load) in loads.into_iter().filter(|_| rounds > 0) {
        eprintln!("streams: {label}, {rounds} interleaved rounds");
        let samples = interleaved(label, &sides, load, rounds).await?;
        let side = |name: &str| {
            sides
                .iter()
                .zip(&samples)
                .find(|((n, _), _)| *n == name)
                .map(|(_, s)| s.clone())
        };
        let gateway = side("gateway").unwrap_or_default();
        let floor = side("floor");
        pairs.push(StreamPair {
            label: label.to_owned(),
            chunks_per_stream: load.ask.chunks,
            concurrency: load.concurrency,
            direct: side("direct").unwrap_or_default(),
            gateway_over_floor_cpu: ratio(
                gateway.cpu_us_per_chunk,
                floor.as_ref().and_then(|f| f.cpu_us_per_chunk),
            ),
            gateway,
            before: side("before"),
            floor,
        });
    }
    floor.stop().await?;
    stop(gateway).await?;
    if let Some(b) = before {
        stop(b).await?;
    }

    mock.shutdown().await;
    let many = if args.many_streams > 0 {
        Some(
            many_streams(
                &command,
                pinning.gateway_wrapper(),
                out,
                args.many_streams,
                fd_limit,
                max_connections,
            )
            .await?,
        )
    } else {
        None
    };

    let failover = if args.failover_streams > 0 {
        Some(failover_streams(&command, out, args.failover_streams, max_connections).await?)
    } else {
        None
    };

    let mut bench = StreamsBench {
        load_average: [load_before, procfs::load_average()],
        fd_limit,
        before_binary: args.before.as_ref().map(|b| b.display().to_string()),
        pairs,
        many,
        failover,
        targets: Vec::new(),
    };
    bench.targets = super::stream_report::evaluate(&bench);
    Ok(bench)
}

/// What the sampler saw once a second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Tick {
    /// Seconds since sampling began.
    pub at_s: f64,
    /// The gateway's CPU time so far (zero without a gateway).
    pub gateway_cpu_s: f64,
    /// This process's (the harness's) CPU time so far.
    pub harness_cpu_s: f64,
    /// Streams open.
    pub open: u64,
    /// Content chunks received so far.
    pub chunks: u64,
    /// The gateway's RSS (zero without a gateway).
    pub rss: u64,
}

/// Samples once a second until told to stop (bounded by the run, which
/// its deadline bounds).
async fn sample(
    gateway: Option<u32>,
    gauge: Arc<Gauge>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Tick> {
    let mut stop = stop;
    let start = Instant::now();
    let me = std::process::id();
    let mut ticks = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        ticks.push(Tick {
            at_s: start.elapsed().as_secs_f64(),
            gateway_cpu_s: gateway
                .and_then(|pid| procfs::cpu_time(pid).ok())
                .unwrap_or_default()
                .as_secs_f64(),
            harness_cpu_s: procfs::cpu_time(me).unwrap_or_default().as_secs_f64(),
            open: gauge.open(),
            chunks: gauge.chunks(),
            rss: gateway
                .and_then(|pid| procfs::rss_bytes(pid).ok())
                .unwrap_or(0),
        });
    }
    ticks
}

/// Runs `plan` on the harness, sampling around it; the process's own CPU
/// over the whole run as well.
async fn paced_run(
    harness: &PacedHarness,
    plan: PacedPlan,
    gateway: Option<u32>,
) -> Result<(PacedRun, Plateau, Deltas), TaskError> {
    let gauge = Arc::new(Gauge::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(sample(gateway, gauge.clone(), stop_rx));
    let before = read_counters(gateway)?;
    let run = harness.run(plan, gauge).await;
    let after = read_counters(gateway);
    let _ = stop_tx.send(());
    let ticks = sampler.await.unwrap_or_default();
    let run = run?;
    Ok((run, Plateau::of(&ticks), Deltas::between(&before, &after?)))
}

fn late_share(p: &Pacing) -> f64 {
    if p.paced == 0 {
        0.0
    } else {
        p.late as f64 / p.paced as f64
    }
}

/// The many-open-streams run at `n` streams: straight to the paced mock,
/// then (when `with_gateway`) through a fresh gateway and through a fresh
/// floor proxy (under `floor_wrapper`, the gateway's `taskset`).
async fn many_at(
    harness: &PacedHarness,
    command: &GatewayCommand,
    floor_wrapper: Option<Vec<String>>,
    out: &Path,
    n: usize,
    max_connections: usize,
    with_gateway: bool,
) -> Result<ManyStreamsRun, TaskError> {
    let ask = Ask {
        chunks: MANY_CHUNKS,
        gap: MANY_GAP,
        timestamps: true,
    };
    // About 1,000 new streams a second, at least 5 s.
    let ramp = Duration::from_secs_f64((n as f64 / 1_000.0).max(5.0));
    let plan = |addr: std::net::SocketAddr, model: &str| PacedPlan {
        addr,
        path: "/v1/chat/completions".to_owned(),
        model: model.to_owned(),
        ask,
        streams: n,
        ramp,
        deadline: ask.gap * ask.chunks + ramp + Duration::from_secs(30),
    };
    eprintln!(
        "streams: {n} open streams, a chunk every {} ms for {:.0} s, ramped over {:.0} s; straight to the mock{}",
        ask.gap.as_millis(),
        (ask.gap * ask.chunks).as_secs_f64(),
        ramp.as_secs_f64(),
        if with_gateway {
            ", then through the gateway, then through the floor proxy"
        } else {
            ""
        }
    );
    let (direct_run, direct_plateau, d) =
        paced_run(harness, plan(harness.mock_addr(), "mock-upstream"), None).await?;
    let direct = HarnessSide {
        sample: StreamSample::of(&direct_run.run, None, None, None, d.own_cpu),
        late_share: late_share(&direct_run.pacing),
        plateau: direct_plateau,
    };
    eprintln!(
        "  direct: {} complete, {} cut, {} lost{}; gap added p50 {:.1} us p99 {:.1} us; mock late {:.2} %; harness {} s/s, {} per chunk",
        direct.sample.complete,
        direct.sample.cut,
        direct.sample.lost,
        direct
            .sample
            .first_problem
            .as_deref()
            .map_or_else(String::new, |p| format!(" (first: {p})")),
        direct.sample.gap_added_p50_us,
        direct.sample.gap_added_p99_us,
        direct.late_share * 100.0,
        opt2(direct.plateau.harness_cpu_per_s),
        opt2(direct.sample.harness_cpu_us_per_chunk) + " us",
    );
    let mut run = ManyStreamsRun {
        streams: n,
        ramp_s: ramp.as_secs_f64(),
        direct,
        gateway: None,
        floor: None,
        floor_ratios: None,
    };
    if !with_gateway {
        return Ok(run);
    }
    let gateway = start_gateway(
        command,
        out,
        &format!("gateway-many-streams-{n}"),
        &config(&harness.api_base_url(), max_connections),
    )
    .await?;
    let measured = proxied(harness, plan(gateway.addr(), SCENARIO), gateway.pid()).await;
    // Stopped also when the run failed.
    let stopped = stop(gateway).await;
    let through = measured?;
    stopped?;
    say_proxied("gateway", &through);
    run.gateway = Some(through);

    let floor = FloorProxy::start(
        &format!("http://{}", harness.mock_addr()),
        floor_wrapper,
        &out.join(format!("floor-proxy-many-streams-{n}.log")),
    )
    .await?;
    let measured = match floor.addr() {
        Ok(addr) => proxied(harness, plan(addr, "mock-upstream"), floor.pid()).await,
        Err(e) => Err(e),
    };
    let stopped = floor.stop().await;
    let floor = measured?;
    stopped?;
    say_proxied("floor proxy", &floor);
    run.floor = Some(floor);
    run.floor_ratios = run.ratios_to_floor();
    if let Some(r) = &run.floor_ratios {
        eprintln!(
            "  gateway / floor: RSS per open stream {}x, CPU per paced chunk {}x, CPU s/s {}x, added gap p99 {}x",
            opt2(r.rss_per_stream),
            opt2(r.cpu_us_per_paced_chunk),
            opt2(r.cpu_per_s),
            opt2(r.added_gap_p99),
        );
    }
    Ok(run)
}

/// `plan` through the proxy `pid` (the gateway or the floor proxy): its
/// idle RSS after half a second, then the run with its counters.
async fn proxied(
    harness: &PacedHarness,
    plan: PacedPlan,
    pid: u32,
) -> Result<GatewaySide, TaskError> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = procfs::rss_bytes(pid)?;
    let (through_run, plateau, d) = paced_run(harness, plan, Some(pid)).await?;
    Ok(GatewaySide {
        sample: StreamSample::of(&through_run.run, d.cpu, d.syscr, d.syscw, d.own_cpu),
        late_share: late_share(&through_run.pacing),
        idle_rss_bytes: idle_rss,
        plateau,
    })
}

fn say_proxied(name: &str, through: &GatewaySide) {
    eprintln!(
        "  {name}: {} complete, {} cut, {} lost{}; gap added p50 {:.1} us p99 {:.1} us; RSS {:.1} MiB at {} open ({} KiB per stream); CPU {} s/s, {} us per paced chunk at the plateau; mock late {:.2} %; harness {} s/s",
        through.sample.complete,
        through.sample.cut,
        through.sample.lost,
        through
            .sample
            .first_problem
            .as_deref()
            .map_or_else(String::new, |p| format!(" (first: {p})")),
        through.sample.gap_added_p50_us,
        through.sample.gap_added_p99_us,
        through.plateau.peak_rss_bytes as f64 / 1048576.0,
        through.plateau.peak_open,
        opt2(through.rss_per_stream_kib()),
        opt2(through.plateau.gateway_cpu_per_s),
        opt2(through.plateau.gateway_cpu_us_per_chunk),
        through.late_share * 100.0,
        opt2(through.plateau.harness_cpu_per_s),
    );
}

fn opt2(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// Lower counts tried when the harness does not hold the asked one.
const MAX_LOWER_STEPS: usize = 3;

/// The many-open-streams run: at `n` (or the most the open-file limit
/// allows, [`fd_cap`]), both sides; when the harness did not hold it
/// (straight to the mock: streams lost or cut, or more than 1 % of the
/// mock's chunks late), lower counts straight to the mock
/// ([`lower_count`], at most [`MAX_LOWER_STEPS`]) until one holds, and
/// that one through the gateway as well.
async fn many_streams(
    command: &GatewayCommand,
    floor_wrapper: Option<Vec<String>>,
    out: &Path,
    n: usize,
    fd_limit: u64,
    max_connections: usize,
) -> Result<ManyStreams, TaskError> {
    let cap = fd_cap(fd_limit);
    let first = n.min(cap);
    if first < n {
        eprintln!(
            "streams: the open-file limit ({fd_limit}) allows {cap} streams, not {n}: the gateway and the harness each hold two sockets per stream"
        );
    }
    let harness = PacedHarness::start(MANY_GAP)?;
    let at = |count: usize, with_gateway: bool| {
        many_at(
            &harness,
            command,
            floor_wrapper.clone(),
            out,
            count,
            max_connections,
            with_gateway,
        )
    };
    let mut runs = vec![at(first, true).await?];
    let mut count = first;
    for _ in 0..MAX_LOWER_STEPS {
        let last = runs.last().map(|r: &ManyStreamsRun| &r.direct);
        let Some(last) = last.filter(|d| !d.held()) else {
            break;
        };
        let per_chunk = last
            .plateau
            .harness_cpu_us_per_chunk
            .or(last.sample.harness_cpu_us_per_chunk);
        let Some(lower) = lower_count(count, per_chunk.map(|us| pace_capacity(us, MANY_GAP)))
        else {
            break;
        };
        count = lower;
        eprintln!(
            "streams: the harness could not hold {} streams; trying {count} straight to the mock",
            runs.last().map_or(first, |r| r.streams)
        );
        let mut run = at(count, false).await?;
        if run.direct.held() {
            run = at(count, true).await?;
            runs.push(run);
            break;
        }
        runs.push(run);
    }
    drop(harness);
    Ok(ManyStreams {
        asked: n,
        fd_limit,
        fd_cap: (first < n).then_some(cap),
        chunk_gap_ms: MANY_GAP.as_secs_f64() * 1e3,
        chunks_per_stream: MANY_CHUNKS,
        runs,
    })
}

/// The most streams an open-file limit allows: the gateway holds two
/// sockets per stream (the caller's and the upstream's), and so does the
/// harness (the client's and the mock's); 256 spare, in hundreds.
pub(super) fn fd_cap(fd_limit: u64) -> usize {
    let streams = fd_limit.saturating_sub(256) / 2;
    usize::try_from(streams / 100 * 100).unwrap_or(usize::MAX)
}

/// The streams one core paces at 80 % busy when a chunk costs
/// `us_per_chunk` and each stream sends one every `gap`.
pub(super) fn pace_capacity(us_per_chunk: f64, gap: Duration) -> usize {
    let chunks_per_s = 1.0 / gap.as_secs_f64().max(1e-6);
    (0.8e6 / us_per_chunk.max(0.01) / chunks_per_s) as usize
}

/// The next count to try after a run at `n` the harness did not hold:
/// `estimate` (what its CPU per chunk says a core paces, [`pace_capacity`];
/// half of `n` when unknown), kept between a quarter and three quarters
/// of `n`, rounded down to 500 (100 under 2,000); `None` under 100.
pub(super) fn lower_count(n: usize, estimate: Option<usize>) -> Option<usize> {
    let next = estimate.unwrap_or(n / 2).clamp(n / 4, n * 3 / 4);
    let step = if next >= 2_000 { 500 } else { 100 };
    let next = next / step * step;
    (next >= 100 && next < n).then_some(next)
}

async fn failover_streams(
    command: &GatewayCommand,
    out: &Path,
    n: usize,
    max_connections: usize,
) -> Result<FailoverStreams, TaskError> {
    let primary = StreamMock::start().await?;
    let secondary = StreamMock::start().await?;
    let gateway = start_gateway(
        command,
        out,
        "gateway-failover-streams",
        &failover_config(
            &primary.api_base_url(),
            &secondary.api_base_url(),
            max_connections,
        ),
    )
    .await?;
    let ask = Ask {
        chunks: 200,
        gap: Duration::from_millis(50),
        timestamps: false,
    };
    let ramp = Duration::from_secs_f64((n as f64 / 1_000.0).max(2.0));
    let plan = Arc::new(StreamPlan {
        authority: gateway.addr().to_string(),
        path: "/v1/chat/completions".to_owned(),
        models: vec!["bench-continue".to_owned(), "bench-restart".to_owned()],
        ask,
        streams: n,
        concurrency: n,
        ramp,
        deadline: ask.gap * ask.chunks * 2 + ramp + Duration::from_secs(30),
    });
    eprintln!(
        "streams: failover with {n} open streams ({:.0} s each, half `continue`, half `restart`); the primary cuts them all once open",
        (ask.gap * ask.chunks).as_secs_f64()
    );
    let gauge = Arc::new(Gauge::default());
    let started = Instant::now();
    let client = tokio::spawn(stream_client::run(plan, gauge.clone()));
    // Cut once every stream is open (bounded: at most the ramp + 10 s).
    let give_up = Instant::now() + ramp + Duration::from_secs(10);
    while (primary.open() as usize) < n && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_at_cut = primary.open();
    let cut_at = Instant::now();
    primary.cut();
    let run = client
        .await
        .map_err(|e| TaskError::msg(format!("the failover client failed: {e}")))?;
    let sample = StreamSample::of(&run, None, None, None, Duration::ZERO);
    let failover = FailoverStreams {
        streams: n,
        open_at_cut,
        secondary_streams: secondary.streams(),
        cut_after_s: cut_at.duration_since(started).as_secs_f64(),
        sample,
    };
    eprintln!(
        "  {} open at the cut; {} complete, {} cut, {} lost; the secondary served {} streams{}",
        failover.open_at_cut,
        failover.sample.complete,
        failover.sample.cut,
        failover.sample.lost,
        failover.secondary_streams,
        run.first_problem
            .as_deref()
            .map_or_else(String::new, |p| format!("; first problem: {p}"))
    );
    stop(gateway).await?;
    primary.shutdown().await;
    secondary.shutdown().await;
    Ok(failover)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_counts_follow_the_harness_cost_within_bounds() {
        // 8 us per chunk, a chunk every 50 ms: 5,000 streams at 80 %.
        assert_eq!(pace_capacity(8.0, Duration::from_millis(50)), 5_000);
        assert_eq!(lower_count(10_000, Some(5_000)), Some(5_000));
        // Never over three quarters, never under a quarter.
        assert_eq!(lower_count(10_000, Some(9_000)), Some(7_500));
        assert_eq!(lower_count(10_000, Some(100)), Some(2_500));
        // 3,555 rounded down to 500.
        assert_eq!(lower_count(4_000, Some(3_555)), Some(3_000));
        // Unknown: half.
        assert_eq!(lower_count(10_000, None), Some(5_000));
        assert_eq!(lower_count(1_000, None), Some(500));
        // Small counts step by 100 and stop under 100.
        assert_eq!(lower_count(300, Some(1_000)), Some(200));
        assert_eq!(lower_count(150, Some(1_000)), Some(100));
        assert_eq!(lower_count(120, Some(1_000)), None);
    }

    #[test]
    fn the_open_file_limit_caps_the_streams_at_two_sockets_each() {
        assert_eq!(fd_cap(20_000), 9_800);
        assert_eq!(fd_cap(1_048_576), 524_100);
        assert_eq!(fd_cap(100), 0);
    }
}
