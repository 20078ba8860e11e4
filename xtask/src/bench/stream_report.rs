//! The stream benchmarks' results: the targets of issue 18 checked, a
//! Markdown section, and the JSON behind it.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::measure::round1;
use super::report::Target;
use super::stream_client::StreamRun;
use super::streams::BEFORE_CPU_PER_CHUNK_US;

/// One side of one stream load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamSample {
    /// Streams that ended complete.
    pub complete: u64,
    /// Streams that ended without their whole answer.
    pub cut: u64,
    /// Streams that got no answer.
    pub lost: u64,
    /// Content chunks received.
    pub chunks: u64,
    /// One example of what went wrong, if anything did.
    pub first_problem: Option<String>,
    /// Arrival minus the mock's timestamp, per chunk, microseconds.
    pub transit_p50_us: f64,
    /// 99th percentile.
    pub transit_p99_us: f64,
    /// Gap before a chunk as the client saw it minus the mock's gap,
    /// microseconds (earlier-than-paced counts as zero).
    pub gap_added_p50_us: f64,
    /// 99th percentile.
    pub gap_added_p99_us: f64,
    /// Request to first content chunk, microseconds.
    pub first_token_p50_us: f64,
    /// 99th percentile.
    pub first_token_p99_us: f64,
    /// The gateway's CPU time per relayed content chunk, microseconds.
    pub cpu_us_per_chunk: Option<f64>,
    /// The gateway's read system calls per stream (`/proc/PID/io` syscr).
    pub syscr_per_stream: Option<f64>,
    /// The gateway's write system calls per stream (`syscw`).
    pub syscw_per_stream: Option<f64>,
    /// The harness's own CPU (client and mock) per chunk, microseconds.
    pub harness_cpu_us_per_chunk: Option<f64>,
}

fn q(h: &Histogram<u64>, quantile: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        round1(h.value_at_quantile(quantile) as f64 / 1000.0)
    }
}

impl StreamSample {
    /// Summarizes a run and the counters around it.
    pub fn of(
        run: &StreamRun,
        cpu: Option<Duration>,
        syscr: Option<u64>,
        syscw: Option<u64>,
        own_cpu: Duration,
    ) -> Self {
        let t = &run.timings;
        let chunks = run.chunks.max(1) as f64;
        let streams = (run.complete + run.cut + run.lost).max(1) as f64;
        let per_chunk = |d: Duration| (d.as_secs_f64() * 1e6 / chunks * 100.0).round() / 100.0;
        Self {
            complete: run.complete,
            cut: run.cut,
            lost: run.lost,
            chunks: run.chunks,
            first_problem: run.first_problem.clone(),
            transit_p50_us: q(&t.transit, 0.5),
            transit_p99_us: q(&t.transit, 0.99),
            gap_added_p50_us: q(&t.gap_added, 0.5),
            gap_added_p99_us: q(&t.gap_added, 0.99),
            first_token_p50_us: q(&t.first_token, 0.5),
            first_token_p99_us: q(&t.first_token, 0.99),
            cpu_us_per_chunk: cpu.filter(|_| run.chunks > 0).map(per_chunk),
            syscr_per_stream: syscr.map(|n| round1(n as f64 / streams)),
            syscw_per_stream: syscw.map(|n| round1(n as f64 / streams)),
            harness_cpu_us_per_chunk: (!own_cpu.is_zero()).then(|| per_chunk(own_cpu)),
        }
    }
}

/// One stream load straight to the mock and through the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct StreamPair {
    /// What the load is.
    pub label: String,
    /// Content chunks per stream.
    pub chunks_per_stream: u32,
    /// Streams at once.
    pub concurrency: usize,
    /// Straight to the mock.
    pub direct: StreamSample,
    /// Through the gateway.
    pub gateway: StreamSample,
    /// Through the `--before` build, when one ran.
    pub before: Option<StreamSample>,
    /// Through the floor proxy (a minimal hyper proxy streaming the bytes
    /// through), when it ran.
    pub floor: Option<StreamSample>,
    /// The gateway's CPU per chunk over the floor proxy's.
    pub gateway_over_floor_cpu: Option<f64>,
}

impl StreamPair {
    fn added(&self, f: fn(&StreamSample) -> f64) -> f64 {
        round1(f(&self.gateway) - f(&self.direct))
    }
}

/// What the once-a-second samples of a many-streams run say about its
/// plateau (the samples with at least 95 % of the peak open streams).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Plateau {
    /// The most streams open at once.
    pub peak_open: u64,
    /// The gateway's RSS at the peak (the highest with that many open);
    /// zero without a gateway.
    pub peak_rss_bytes: u64,
    /// Seconds the plateau lasted (first to last sample).
    pub seconds: f64,
    /// Content chunks received per second.
    pub chunks_per_s: Option<f64>,
    /// The gateway's CPU seconds per second.
    pub gateway_cpu_per_s: Option<f64>,
    /// The gateway's CPU per chunk received, microseconds.
    pub gateway_cpu_us_per_chunk: Option<f64>,
    /// The harness's (this process's) CPU seconds per second.
    pub harness_cpu_per_s: Option<f64>,
    /// The harness's CPU per chunk received, microseconds.
    pub harness_cpu_us_per_chunk: Option<f64>,
}

impl Plateau {
    /// From samples in time order.
    pub(super) fn of(ticks: &[super::streams::Tick]) -> Self {
        let mut out = Plateau::default();
        for t in ticks {
            if t.open > out.peak_open || (t.open == out.peak_open && t.rss > out.peak_rss_bytes) {
                out.peak_open = t.open;
                out.peak_rss_bytes = t.rss;
            }
        }
        let full = out.peak_open as f64 * 0.95;
        let mut on = ticks.iter().filter(|t| t.open > 0 && t.open as f64 >= full);
        let (Some(a), Some(b)) = (on.next(), on.next_back()) else {
            return out;
        };
        let seconds = b.at_s - a.at_s;
        if seconds <= 0.0 {
            return out;
        }
        out.seconds = round1(seconds);
        let chunks = b.chunks.saturating_sub(a.chunks) as f64;
        let per_s = |v: f64| Some((v / seconds * 1000.0).round() / 1000.0);
        let per_chunk =
            |cpu: f64| (chunks > 0.0).then(|| (cpu * 1e6 / chunks * 100.0).round() / 100.0);
        out.chunks_per_s = per_s(chunks).map(|c| c.round());
        let gateway = b.gateway_cpu_s - a.gateway_cpu_s;
        if b.gateway_cpu_s > 0.0 {
            out.gateway_cpu_per_s = per_s(gateway);
            out.gateway_cpu_us_per_chunk = per_chunk(gateway);
        }
        let harness = b.harness_cpu_s - a.harness_cpu_s;
        out.harness_cpu_per_s = per_s(harness);
        out.harness_cpu_us_per_chunk = per_chunk(harness);
        out
    }
}

/// More than this share of the mock's paced chunks late: the harness did
/// not keep its pace.
pub const LATE_BOUND: f64 = 0.01;

/// The gateway's core counts as saturated from this many CPU seconds per
/// second.
pub const SATURATED: f64 = 0.9;

/// Many slow streams straight to the mock: the harness alone.
#[derive(Debug, Clone, Serialize)]
pub struct HarnessSide {
    /// How every stream went; `harness_cpu_us_per_chunk` over the whole run.
    pub sample: StreamSample,
    /// Share of the mock's paced chunks more than 5 ms late (or not taken
    /// by the socket when due).
    pub late_share: f64,
    /// At the plateau.
    pub plateau: Plateau,
}

impl HarnessSide {
    /// Every stream complete and at most 1 % of the chunks late.
    pub fn held(&self) -> bool {
        self.sample.cut == 0
            && self.sample.lost == 0
            && self.sample.complete > 0
            && self.late_share <= LATE_BOUND
    }
}

/// Many slow streams through a fresh gateway, or through a fresh floor
/// proxy (then the plateau's `gateway_*` figures are the floor proxy's).
#[derive(Debug, Clone, Serialize)]
pub struct GatewaySide {
    /// How every stream went; the gateway's CPU per chunk and system calls
    /// over the whole run.
    pub sample: StreamSample,
    /// The mock's late share during this run.
    pub late_share: f64,
    /// The gateway's RSS before the load.
    pub idle_rss_bytes: u64,
    /// At the plateau: the gateway's RSS and CPU, the chunks relayed.
    pub plateau: Plateau,
}

impl GatewaySide {
    /// (Peak RSS - idle RSS) / streams open, KiB.
    pub fn rss_per_stream_kib(&self) -> Option<f64> {
        (self.plateau.peak_open > 0).then(|| {
            round1(
                self.plateau
                    .peak_rss_bytes
                    .saturating_sub(self.idle_rss_bytes) as f64
                    / 1024.0
                    / self.plateau.peak_open as f64,
            )
        })
    }

    /// Whether the gateway's core was (nearly) full at the plateau.
    pub fn saturated(&self) -> bool {
        self.plateau
            .gateway_cpu_per_s
            .is_some_and(|c| c >= SATURATED)
    }
}

/// One count of the many-streams run.
#[derive(Debug, Clone, Serialize)]
pub struct ManyStreamsRun {
    /// Streams, all open at the plateau when the harness holds.
    pub streams: usize,
    /// Over how long the streams were started, seconds.
    pub ramp_s: f64,
    /// Straight to the mock.
    pub direct: HarnessSide,
    /// Through the gateway (not run at a lower count the harness did not
    /// hold either).
    pub gateway: Option<GatewaySide>,
    /// Through the floor proxy, right after the gateway, measured the
    /// same way (its process's RSS, CPU and syscalls).
    pub floor: Option<GatewaySide>,
    /// The gateway's figures over the floor proxy's.
    pub floor_ratios: Option<StreamFloorRatios>,
}

/// The gateway's figure over the floor proxy's, at one count of the
/// many-streams run ([`ratio`]: `None` when either is missing or the
/// floor's is not above zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StreamFloorRatios {
    /// RSS per open stream.
    pub rss_per_stream: Option<f64>,
    /// CPU per paced chunk at the plateau.
    pub cpu_us_per_paced_chunk: Option<f64>,
    /// CPU seconds per second at the plateau.
    pub cpu_per_s: Option<f64>,
    /// Added inter-chunk gap p50 (each minus straight to the mock).
    pub added_gap_p50: Option<f64>,
    /// Added inter-chunk gap p99.
    pub added_gap_p99: Option<f64>,
}

/// `gateway / floor`, to two decimals; `None` when either is missing or
/// the floor is not above zero.
pub fn ratio(gateway: Option<f64>, floor: Option<f64>) -> Option<f64> {
    let (g, f) = gateway.zip(floor)?;
    (f > 0.0 && g.is_finite()).then(|| (g / f * 100.0).round() / 100.0)
}

/// A target's verdict with the floor figure next to it: `met`, or
/// `missed (floor X)`; a floor that misses the limit too is said so
/// (`floor X, over the target too`: no proxy on hyper's defaults meets
/// it on this machine).
pub fn judged(met: bool, floor: Option<f64>, limit: f64, unit: &str) -> String {
    let floor = floor.map_or_else(
        || "floor not measured".to_owned(),
        |f| {
            format!(
                "floor {f:.1}{unit}{}",
                if f > limit {
                    ", over the target too"
                } else {
                    ""
                }
            )
        },
    );
    if met {
        format!("met ({floor})")
    } else {
        format!("missed ({floor})")
    }
}

impl ManyStreamsRun {
    /// The harness held this count straight to the mock and kept its pace
    /// through the gateway: the added latency is the gateway's.
    pub fn harness_held(&self) -> bool {
        self.direct.held()
            && self
                .gateway
                .as_ref()
                .is_some_and(|g| g.late_share <= LATE_BOUND)
    }

    /// Gateway gap-added percentile minus the direct run's, microseconds.
    pub fn added_gap_us(&self, p99: bool) -> Option<f64> {
        self.added_by(self.gateway.as_ref(), p99)
    }

    /// The same through the floor proxy.
    pub fn floor_added_gap_us(&self, p99: bool) -> Option<f64> {
        self.added_by(self.floor.as_ref(), p99)
    }

    fn added_by(&self, side: Option<&GatewaySide>, p99: bool) -> Option<f64> {
        let pick = |s: &StreamSample| {
            if p99 {
                s.gap_added_p99_us
            } else {
                s.gap_added_p50_us
            }
        };
        side.map(|g| round1(pick(&g.sample) - pick(&self.direct.sample)))
    }

    /// The harness held this count straight to the mock and kept its pace
    /// through the floor proxy.
    pub fn floor_held(&self) -> bool {
        self.direct.held()
            && self
                .floor
                .as_ref()
                .is_some_and(|f| f.late_share <= LATE_BOUND)
    }

    /// The gateway's figures over the floor's, when both ran.
    pub fn ratios_to_floor(&self) -> Option<StreamFloorRatios> {
        let (g, f) = self.gateway.as_ref().zip(self.floor.as_ref())?;
        Some(StreamFloorRatios {
            rss_per_stream: ratio(g.rss_per_stream_kib(), f.rss_per_stream_kib()),
            cpu_us_per_paced_chunk: ratio(
                g.plateau.gateway_cpu_us_per_chunk,
                f.plateau.gateway_cpu_us_per_chunk,
            ),
            cpu_per_s: ratio(g.plateau.gateway_cpu_per_s, f.plateau.gateway_cpu_per_s),
            added_gap_p50: ratio(self.added_gap_us(false), self.floor_added_gap_us(false)),
            added_gap_p99: ratio(self.added_gap_us(true), self.floor_added_gap_us(true)),
        })
    }
}

/// Many slow streams open at once.
#[derive(Debug, Clone, Serialize)]
pub struct ManyStreams {
    /// Streams asked for (`--many-streams`).
    pub asked: usize,
    /// The open-file limit the run had.
    pub fd_limit: u64,
    /// The most streams that limit allows ([`super::streams::fd_cap`]),
    /// when under the asked count: the run was at this count instead.
    pub fd_cap: Option<usize>,
    /// Between chunks, milliseconds.
    pub chunk_gap_ms: f64,
    /// Chunks per stream.
    pub chunks_per_stream: u32,
    /// The asked count first, then any lower counts tried because the
    /// harness did not hold it.
    pub runs: Vec<ManyStreamsRun>,
}

impl ManyStreams {
    /// The run at the asked count.
    pub fn asked_run(&self) -> Option<&ManyStreamsRun> {
        self.runs.first()
    }

    /// The lower count the harness held, with its gateway side, when the
    /// asked one was not held.
    pub fn lower_held(&self) -> Option<&ManyStreamsRun> {
        self.runs
            .iter()
            .skip(1)
            .find(|r| r.gateway.is_some() && r.direct.held())
    }
}

/// Failover with many streams open.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverStreams {
    /// Streams asked for.
    pub streams: usize,
    /// Streams open on the primary when it cut them.
    pub open_at_cut: u64,
    /// Streams the secondary served (continuations and restarts).
    pub secondary_streams: u64,
    /// When the cut came, seconds after the first stream started.
    pub cut_after_s: f64,
    /// How every stream ended.
    pub sample: StreamSample,
}

/// Everything the stream benchmarks measured.
#[derive(Debug, Clone, Serialize)]
pub struct StreamsBench {
    /// The 1-minute load average before and after.
    pub load_average: [Option<f64>; 2],
    /// The open-file limit the harness ran with.
    pub fd_limit: u64,
    /// The `--before` binary, when one ran beside.
    pub before_binary: Option<String>,
    /// Relay cost per load.
    pub pairs: Vec<StreamPair>,
    /// Many open streams.
    pub many: Option<ManyStreams>,
    /// Failover under many streams.
    pub failover: Option<FailoverStreams>,
    /// Every target, met or not.
    pub targets: Vec<Target>,
}

fn target(figure: &str, measured: String, target: String, met: bool) -> Target {
    Target {
        figure: figure.to_owned(),
        measured,
        target,
        met,
    }
}

/// The targets of issue 18.
pub fn evaluate(bench: &StreamsBench) -> Vec<Target> {
    let mut out = Vec::new();
    for pair in bench
        .pairs
        .iter()
        .filter(|p| p.label.contains("back to back"))
    {
        let cpu = pair.gateway.cpu_us_per_chunk;
        let floor = pair.floor.as_ref().and_then(|f| f.cpu_us_per_chunk);
        out.push(target(
            &format!("gateway CPU per relayed chunk, {}", pair.label),
            cpu.map_or_else(
                || "not measured".into(),
                |c| match floor {
                    Some(f) => format!(
                        "{c:.2} us (floor proxy {f:.2} us: {}x)",
                        opt(pair.gateway_over_floor_cpu, "")
                    ),
                    None => format!("{c:.2} us"),
                },
            ),
            "<= 2 us".into(),
            cpu.is_some_and(|c| c <= 2.0),
        ));
        // The issue's own figure: its harness measured 14.5 us per chunk
        // before the batched relay. A `--before` build is shown beside in
        // the samples table, not judged: it may already relay in batches.
        let before = BEFORE_CPU_PER_CHUNK_US;
        let ratio = cpu.filter(|c| *c > 0.0).map(|c| before / c);
        out.push(target(
            &format!(
                "CPU per chunk, issue 18's {before} us / now, {}",
                pair.label
            ),
            ratio.map_or_else(|| "not measured".into(), |r| format!("{r:.1}x")),
            ">= 5x".into(),
            ratio.is_some_and(|r| r >= 5.0),
        ));
    }
    let clean = |s: &StreamSample| s.cut == 0 && s.lost == 0 && s.complete > 0;
    let all_clean = bench.pairs.iter().all(|p| clean(&p.gateway));
    // `--relay-rounds 0` skips the relay loads: nothing to judge.
    if !bench.pairs.is_empty() {
        out.push(target(
            "relayed streams complete",
            format!(
                "{} cut, {} lost",
                bench.pairs.iter().map(|p| p.gateway.cut).sum::<u64>(),
                bench.pairs.iter().map(|p| p.gateway.lost).sum::<u64>()
            ),
            "0 cut, 0 lost".into(),
            all_clean,
        ));
    }
    if let Some(m) = &bench.many {
        if let Some(r) = m.asked_run() {
            many_targets(&mut out, r, &format!("{} open streams", r.streams), true);
        }
        if let Some(r) = m.lower_held() {
            let label = format!(
                "{} open streams (the most the harness held; {} asked)",
                r.streams, m.asked
            );
            many_targets(&mut out, r, &label, false);
        }
    }
    if let Some(f) = &bench.failover {
        out.push(target(
            &format!(
                "failover with {} open streams: every stream completes",
                f.streams
            ),
            format!(
                "{} complete, {} cut, {} lost",
                f.sample.complete, f.sample.cut, f.sample.lost
            ),
            "0 cut, 0 lost".into(),
            clean(&f.sample) && f.sample.complete == f.streams as u64,
        ));
    }
    out
}

/// The targets at one count of the many-streams run; `whole`: with the
/// stream-count row (the asked count).
fn many_targets(out: &mut Vec<Target>, r: &ManyStreamsRun, label: &str, whole: bool) {
    let clean = |s: &StreamSample| s.cut == 0 && s.lost == 0 && s.complete > 0;
    let held = r.harness_held();
    let ratios = r.floor_ratios.or_else(|| r.ratios_to_floor());
    // A harness that could not hold the count straight to the mock has no
    // straight run to subtract (its own gaps were the lag): the gaps
    // through each proxy are then stated as seen, not net of it.
    let direct_held = r.direct.held();
    let as_seen = |side: Option<&GatewaySide>| side.map(|g| round1(g.sample.gap_added_p99_us));
    let (gap, floor_gap) = if direct_held {
        (r.added_gap_us(true), r.floor_added_gap_us(true))
    } else {
        (as_seen(r.gateway.as_ref()), as_seen(r.floor.as_ref()))
    };
    let gap_ratio = ratios.and_then(|x| x.added_gap_p99).filter(|_| direct_held);
    let gap_met = held && gap.is_some_and(|g| g <= 1000.0);
    let gap_measured = match gap {
        None => "not measured".into(),
        Some(g) if held => format!("{g:.1} us"),
        Some(g) if !direct_held => format!(
            "{g:.1} us as seen through the gateway, not net of the harness (the harness could not hold {}: {} lost or cut, {:.1} % of the mock's chunks late straight to it, gap p99 {:.1} us there)",
            r.streams,
            r.direct.sample.lost + r.direct.sample.cut,
            r.direct.late_share * 100.0,
            r.direct.sample.gap_added_p99_us
        ),
        Some(g) => format!(
            "{g:.1} us (the harness did not hold its pace through the gateway: {:.1} % of the mock's chunks late)",
            r.gateway.as_ref().map_or(0.0, |g| g.late_share * 100.0)
        ),
    };
    out.push(target(
        &format!("added inter-chunk p99, {label}"),
        with_floor(
            gap_measured,
            r.floor.as_ref().map(|f| {
                (
                    judged(gap_met, floor_gap, 1000.0, " us"),
                    gap_ratio,
                    (f.late_share > LATE_BOUND).then(|| {
                        format!(
                            "the harness did not hold its pace through the floor proxy: {:.1} % late",
                            f.late_share * 100.0
                        )
                    }),
                )
            }),
        ),
        "<= 1000 us".into(),
        gap_met,
    ));
    let rss = r.gateway.as_ref().and_then(GatewaySide::rss_per_stream_kib);
    let rss_met = rss.is_some_and(|r| r <= 16.0);
    out.push(target(
        &format!("RSS per open stream, {label}"),
        with_floor(
            rss.map_or_else(|| "not measured".into(), |r| format!("{r:.1} KiB")),
            r.floor.as_ref().map(|f| {
                (
                    judged(rss_met, f.rss_per_stream_kib(), 16.0, " KiB"),
                    ratios.and_then(|x| x.rss_per_stream),
                    None,
                )
            }),
        ),
        "<= 16 KiB".into(),
        rss_met,
    ));
    if whole {
        let g = r.gateway.as_ref();
        out.push(target(
            &format!("streams complete, {label}"),
            g.map_or_else(
                || "not measured".into(),
                |g| format!("{} cut, {} lost", g.sample.cut, g.sample.lost),
            ),
            "0 cut, 0 lost".into(),
            g.is_some_and(|g| clean(&g.sample)),
        ));
    }
}

/// `measured`, then (when the floor proxy ran) the verdict with the floor
/// figure, the gateway's ratio to it and a note on the floor's run.
fn with_floor(measured: String, floor: Option<(String, Option<f64>, Option<String>)>) -> String {
    let Some((verdict, ratio, note)) = floor else {
        return measured;
    };
    let mut out = format!("{measured}: {verdict}");
    if let Some(r) = ratio {
        let _ = write!(out, "; {r:.2}x the floor");
    }
    if let Some(note) = note {
        let _ = write!(out, " ({note})");
    }
    out
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}{unit}"))
}

/// The Markdown section: targets, then the figures behind them.
pub fn render_markdown(bench: &StreamsBench) -> String {
    let mut out = String::new();
    let load = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |l| format!("{l:.2}"));
    let _ = writeln!(
        out,
        "## Streams\n\nLoad average {} before, {} after; open-file limit {}{}.\n",
        load(bench.load_average[0]),
        load(bench.load_average[1]),
        bench.fd_limit,
        bench
            .before_binary
            .as_deref()
            .map_or_else(String::new, |b| format!("; `before`: {b}")),
    );
    out.push_str("| figure | measured | target | |\n|---|--:|---|---|\n");
    for t in &bench.targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.figure,
            t.measured,
            t.target,
            if t.met { "✅" } else { "❌" }
        );
    }
    out.push_str("\n| load | side | streams ok/cut/lost | CPU per chunk | syscw per stream | syscr per stream | transit p50 | transit p99 | gap added p50 | gap added p99 | first token p50 |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for p in &bench.pairs {
        let mut sides = vec![("direct", &p.direct), ("gateway", &p.gateway)];
        if let Some(b) = &p.before {
            sides.push(("before", b));
        }
        if let Some(f) = &p.floor {
            sides.push(("floor proxy", f));
        }
        for (name, s) in sides {
            let _ = writeln!(
                out,
                "| {} | {name} | {}/{}/{} | {} | {} | {} | {:.1} us | {:.1} us | {:.1} us | {:.1} us | {:.1} us |",
                p.label,
                s.complete,
                s.cut,
                s.lost,
                opt(s.cpu_us_per_chunk, " us"),
                opt(s.syscw_per_stream, ""),
                opt(s.syscr_per_stream, ""),
                s.transit_p50_us,
                s.transit_p99_us,
                s.gap_added_p50_us,
                s.gap_added_p99_us,
                s.first_token_p50_us,
            );
        }
        let _ = writeln!(
            out,
            "| {} | added by the gateway | | {} | | | {:+.1} us | {:+.1} us | {:+.1} us | {:+.1} us | {:+.1} us |",
            p.label,
            p.gateway_over_floor_cpu
                .map_or_else(String::new, |r| format!("{r:.2}x the floor")),
            p.added(|s| s.transit_p50_us),
            p.added(|s| s.transit_p99_us),
            p.added(|s| s.gap_added_p50_us),
            p.added(|s| s.gap_added_p99_us),
            p.added(|s| s.first_token_p50_us),
        );
    }
    if let Some(m) = &bench.many {
        render_many(&mut out, m);
    }
    if let Some(f) = &bench.failover {
        let _ = writeln!(
            out,
            "\nFailover under many streams: {} streams (half `mid_stream = \"continue\"`, half `\"restart\"`), {} open on the primary when it cut them all ({:.1} s in); {} complete with the exact text, {} cut, {} lost; the secondary served {} streams.{}",
            f.streams,
            f.open_at_cut,
            f.cut_after_s,
            f.sample.complete,
            f.sample.cut,
            f.sample.lost,
            f.secondary_streams,
            f.sample
                .first_problem
                .as_deref()
                .map_or_else(String::new, |p| format!(" First problem: {p}.")),
        );
    }
    out
}

/// One proxy's row of the many-streams table.
fn proxy_row(out: &mut String, streams: usize, name: &str, g: &GatewaySide) {
    let _ = writeln!(
        out,
        "| {streams} | {name} | {}/{}/{} | {:.1} us | {:.1} us | {:.2} % | {} | {} | {}{} | {} | {} KiB |",
        g.sample.complete,
        g.sample.cut,
        g.sample.lost,
        g.sample.gap_added_p50_us,
        g.sample.gap_added_p99_us,
        g.late_share * 100.0,
        opt(g.plateau.harness_cpu_per_s, ""),
        opt(g.plateau.harness_cpu_us_per_chunk, " us"),
        opt(g.plateau.gateway_cpu_per_s, ""),
        if g.saturated() { " (saturated)" } else { "" },
        opt(g.plateau.gateway_cpu_us_per_chunk, " us"),
        opt(g.rss_per_stream_kib(), ""),
    );
}

/// What one proxy did at the plateau of a many-streams run.
fn proxy_note(name: &str, g: &GatewaySide, streams: usize, chunk_gap_ms: f64) -> String {
    format!(
        "the {name} relayed {:.0} chunks/s at the plateau ({} s with {} open), {} s of CPU per second, {} per paced chunk{}; RSS {:.1} MiB idle, {:.1} MiB at the peak",
        g.plateau.chunks_per_s.unwrap_or_default(),
        g.plateau.seconds,
        g.plateau.peak_open,
        opt(g.plateau.gateway_cpu_per_s, ""),
        opt(g.plateau.gateway_cpu_us_per_chunk, " us"),
        if g.saturated() {
            format!(
                ": its core was saturated, so it cannot relay {streams} streams' {:.0} paced chunks/s on one core",
                streams as f64 * 1000.0 / chunk_gap_ms.max(1.0)
            )
        } else {
            String::new()
        },
        g.idle_rss_bytes as f64 / 1048576.0,
        g.plateau.peak_rss_bytes as f64 / 1048576.0,
    )
}

fn render_many(out: &mut String, m: &ManyStreams) {
    let _ = writeln!(
        out,
        "\nMany open streams: a chunk every {:.0} ms, {} chunks each, from the paced mock; mock and client on one thread of the harness's core, the gateway on its own. Straight to the mock (the harness alone), then through a fresh gateway, then through a fresh floor proxy (a minimal hyper proxy that streams the bytes through, on the gateway's core); added = through the proxy minus straight to the mock; gateway / floor = the gateway's figure over the floor proxy's. The harness holds a count when every stream ends complete straight to the mock and at most 1 % of the mock's chunks are more than 5 ms late.\n",
        m.chunk_gap_ms, m.chunks_per_stream,
    );
    out.push_str("| open streams | side | ok/cut/lost | gap added p50 | gap added p99 | mock chunks late | harness CPU s/s | harness CPU per chunk | proxy CPU s/s | proxy CPU per paced chunk | proxy RSS per open stream |\n|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in &m.runs {
        let d = &r.direct;
        // A straight run that could not hold the count measured its own
        // lag: there is nothing to subtract (see `many_targets`).
        let added = |v: Option<f64>| match v {
            Some(v) if d.held() => format!("{v:+.1} us"),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | direct{} | {}/{}/{} | {:.1} us | {:.1} us | {:.2} % | {} | {} | | | |",
            r.streams,
            if d.held() { "" } else { " (not held)" },
            d.sample.complete,
            d.sample.cut,
            d.sample.lost,
            d.sample.gap_added_p50_us,
            d.sample.gap_added_p99_us,
            d.late_share * 100.0,
            opt(d.plateau.harness_cpu_per_s, ""),
            opt(d.plateau.harness_cpu_us_per_chunk, " us"),
        );
        if let Some(g) = &r.gateway {
            proxy_row(out, r.streams, "gateway", g);
            let _ = writeln!(
                out,
                "| {} | added by the gateway | | {} | {} | | | | | | |",
                r.streams,
                added(r.added_gap_us(false)),
                added(r.added_gap_us(true)),
            );
        }
        if let Some(f) = &r.floor {
            proxy_row(out, r.streams, "floor proxy", f);
            let _ = writeln!(
                out,
                "| {} | added by the floor proxy | | {} | {} | | | | | | |",
                r.streams,
                added(r.floor_added_gap_us(false)),
                added(r.floor_added_gap_us(true)),
            );
        }
        if let Some(x) = r.floor_ratios.or_else(|| r.ratios_to_floor()) {
            let x2 = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"));
            let _ = writeln!(
                out,
                "| {} | gateway / floor | | {} (added) | {} (added) | | | | {} | {} | {} |",
                r.streams,
                x2(x.added_gap_p50.filter(|_| d.held())),
                x2(x.added_gap_p99.filter(|_| d.held())),
                x2(x.cpu_per_s),
                x2(x.cpu_us_per_paced_chunk),
                x2(x.rss_per_stream),
            );
        }
    }
    for r in &m.runs {
        let mut notes = Vec::new();
        if !r.direct.held() {
            notes.push(format!(
                "the harness could not hold {} streams straight to the mock ({} lost, {} cut, {:.1} % of the mock's chunks late{})",
                r.streams,
                r.direct.sample.lost,
                r.direct.sample.cut,
                r.direct.late_share * 100.0,
                r.direct
                    .sample
                    .first_problem
                    .as_deref()
                    .map_or_else(String::new, |p| format!("; first problem: {p}")),
            ));
        } else if r.gateway.is_some() && !r.harness_held() {
            notes.push(
                "the harness held this count straight to the mock but fell behind its pace through the gateway".to_owned(),
            );
        }
        if r.floor.is_some() && r.direct.held() && !r.floor_held() {
            notes.push("the harness fell behind its pace through the floor proxy".to_owned());
        }
        for (name, g) in [("gateway", &r.gateway), ("floor proxy", &r.floor)] {
            if let Some(g) = g {
                notes.push(proxy_note(name, g, r.streams, m.chunk_gap_ms));
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(out, "\n{} streams: {}.", r.streams, notes.join("; "));
        }
    }
    if let Some(cap) = m.fd_cap {
        let _ = writeln!(
            out,
            "\nThe open-file limit ({}, which this process could not raise) allows {cap} streams, not the {} asked: the gateway and the harness each hold two sockets per stream. The run is at {cap}.",
            m.fd_limit, m.asked
        );
    }
    if m.asked_run().is_some_and(|r| !r.direct.held()) {
        let _ = writeln!(
            out,
            "\n{}",
            match m.lower_held() {
                Some(r) => format!(
                    "The harness could not hold {}; the figures at {} (the most it held) are the gateway's at that count.",
                    m.runs[0].streams, r.streams
                ),
                None => format!(
                    "The harness could not hold {}, nor any lower count tried ({}).",
                    m.runs[0].streams,
                    m.runs
                        .iter()
                        .skip(1)
                        .map(|r| r.streams.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::streams::Tick;
    use super::*;

    fn sample(cpu: Option<f64>, gap_p99: f64) -> StreamSample {
        StreamSample {
            complete: 10,
            chunks: 2000,
            gap_added_p99_us: gap_p99,
            cpu_us_per_chunk: cpu,
            ..StreamSample::default()
        }
    }

    fn many_run(streams: usize, direct_p99: f64, gateway_p99: f64) -> ManyStreamsRun {
        ManyStreamsRun {
            streams,
            ramp_s: 10.0,
            direct: HarnessSide {
                sample: sample(None, direct_p99),
                late_share: 0.0,
                plateau: Plateau {
                    harness_cpu_per_s: Some(0.5),
                    ..Plateau::default()
                },
            },
            gateway: Some(GatewaySide {
                sample: sample(Some(3.0), gateway_p99),
                late_share: 0.0,
                idle_rss_bytes: 10 << 20,
                plateau: Plateau {
                    peak_open: streams as u64,
                    peak_rss_bytes: (10 << 20) + streams as u64 * 15 * 1024,
                    gateway_cpu_per_s: Some(0.5),
                    ..Plateau::default()
                },
            }),
            floor: None,
            floor_ratios: None,
        }
    }

    fn bench() -> StreamsBench {
        StreamsBench {
            load_average: [None, None],
            fd_limit: 1024,
            before_binary: None,
            pairs: vec![StreamPair {
                label: "200 chunks back to back, concurrency 1".into(),
                chunks_per_stream: 200,
                concurrency: 1,
                direct: sample(None, 1.0),
                gateway: sample(Some(1.9), 1.0),
                before: Some(sample(Some(10.0), 50.0)),
                floor: None,
                gateway_over_floor_cpu: None,
            }],
            many: Some(ManyStreams {
                asked: 10_000,
                fd_limit: 1 << 20,
                fd_cap: None,
                chunk_gap_ms: 50.0,
                chunks_per_stream: 600,
                runs: vec![many_run(10_000, 300.0, 1200.0)],
            }),
            failover: Some(FailoverStreams {
                streams: 10,
                open_at_cut: 10,
                secondary_streams: 10,
                cut_after_s: 2.0,
                sample: sample(None, 0.0),
            }),
            targets: Vec::new(),
        }
    }

    fn met(b: &StreamsBench) -> Vec<bool> {
        evaluate(b).iter().map(|t| t.met).collect()
    }

    #[test]
    fn targets_follow_issue_18() {
        let mut b = bench();
        assert!(met(&b).iter().all(|m| *m), "{:?}", evaluate(&b));
        // Per chunk above 2 us but 5x under the issue's 14.5 us...
        b.pairs[0].gateway.cpu_us_per_chunk = Some(2.1);
        assert_eq!(&met(&b)[..2], &[false, true]);
        // ...and above 2.9 us, less than 5x under it, whatever a
        // `--before` build measured.
        b.pairs[0].gateway.cpu_us_per_chunk = Some(3.0);
        if let Some(before) = b.pairs[0].before.as_mut() {
            before.cpu_us_per_chunk = Some(100.0);
        }
        assert_eq!(&met(&b)[..2], &[false, false]);
        // A cut stream, 16.1 KiB per stream, a lost failover stream.
        b.pairs[0].gateway.cut = 1;
        if let Some(g) = b.many.as_mut().and_then(|m| m.runs[0].gateway.as_mut()) {
            g.plateau.peak_rss_bytes = (10 << 20) + 10_000 * 16_500;
        }
        if let Some(f) = b.failover.as_mut() {
            f.sample.lost = 1;
        }
        let t = evaluate(&b);
        assert!(!t[2].met && !t[4].met && !t[6].met, "{t:?}");
    }

    #[test]
    fn a_harness_that_did_not_hold_cannot_meet_the_latency_target() {
        let mut b = bench();
        assert!(evaluate(&b)[3].met);
        if let Some(m) = b.many.as_mut() {
            m.runs[0].direct.sample.lost = 5;
        }
        assert!(!evaluate(&b)[3].met);
        let mut b = bench();
        if let Some(g) = b.many.as_mut().and_then(|m| m.runs[0].gateway.as_mut()) {
            g.late_share = 0.2;
        }
        let t = &evaluate(&b)[3];
        assert!(!t.met && t.measured.contains("did not hold"), "{t:?}");
        // Over 1 % late straight to the mock is not held either, and says so.
        let mut b = bench();
        if let Some(m) = b.many.as_mut() {
            m.runs[0].direct.late_share = 0.011;
        }
        let t = &evaluate(&b)[3];
        assert!(
            !t.met && t.measured.contains("could not hold 10000"),
            "{t:?}"
        );
        // The straight run's gaps were its own lag: nothing is subtracted
        // from the gaps seen through the gateway, so no figure goes below
        // zero however late the harness was.
        let mut b = bench();
        if let Some(m) = b.many.as_mut() {
            m.runs[0] = with_floor(m.runs[0].clone(), 30, 10.0, 500.0);
            let r = &mut m.runs[0];
            r.direct.late_share = 0.8;
            r.direct.sample.gap_added_p99_us = 700_000.0;
        }
        let t = &evaluate(&b)[3];
        let seen = b
            .many
            .as_ref()
            .and_then(|m| m.runs[0].gateway.as_ref())
            .map(|g| g.sample.gap_added_p99_us)
            .unwrap_or_default();
        assert!(
            !t.met
                && t.measured
                    .starts_with(&format!("{seen:.1} us as seen through the gateway"))
                && t.measured.contains("gap p99 700000.0 us there")
                && t.measured.contains("missed (floor ")
                && !t.measured.contains("x the floor")
                && !t.measured.contains(" -"),
            "{t:?}"
        );
        let md = render_markdown(&b);
        assert!(
            md.contains("| 10000 | added by the gateway | | - | - |")
                && md.contains("| 10000 | added by the floor proxy | | - | - |")
                && md.contains("| 10000 | gateway / floor | | - (added) | - (added) |"),
            "{md}"
        );
    }

    #[test]
    fn a_lower_count_the_harness_held_gets_its_own_labelled_targets() {
        let mut b = bench();
        if let Some(m) = b.many.as_mut() {
            m.runs[0].direct.late_share = 0.3;
            // A count it did not hold either: straight to the mock only.
            let mut not_held = many_run(7_500, 300.0, 0.0);
            not_held.direct.late_share = 0.05;
            not_held.gateway = None;
            m.runs.push(not_held);
            m.runs.push(many_run(5_000, 400.0, 900.0));
        }
        let t = evaluate(&b);
        let rows: Vec<&Target> = t
            .iter()
            .filter(|t| {
                t.figure
                    .contains("5000 open streams (the most the harness held; 10000 asked)")
            })
            .collect();
        assert_eq!(rows.len(), 2, "{t:?}");
        assert_eq!(rows[0].measured, "500.0 us");
        assert!(rows[0].met && rows[1].met, "{rows:?}");
        // The asked count stays not met.
        assert!(!t[3].met, "{t:?}");
        assert!(!t.iter().any(|t| t.figure.contains("7500")), "{t:?}");
        let md = render_markdown(&b);
        assert!(
            md.contains("the figures at 5000 (the most it held)"),
            "{md}"
        );
        assert!(md.contains("| 7500 | direct (not held) |"), "{md}");
    }

    fn tick(at_s: f64, open: u64, chunks: u64, gateway_cpu_s: f64, harness_cpu_s: f64) -> Tick {
        Tick {
            at_s,
            gateway_cpu_s,
            harness_cpu_s,
            open,
            chunks,
            rss: open * 1000,
        }
    }

    #[test]
    fn the_plateau_is_the_samples_with_95_percent_of_the_peak_open() {
        let ticks = [
            tick(1.0, 1_000, 0, 0.1, 0.2),
            tick(2.0, 9_600, 100_000, 0.5, 0.6),
            tick(3.0, 10_000, 300_000, 1.4, 1.2),
            tick(4.0, 9_900, 500_000, 2.3, 1.8),
            tick(5.0, 2_000, 550_000, 2.5, 2.0),
        ];
        let p = Plateau::of(&ticks);
        assert_eq!((p.peak_open, p.peak_rss_bytes), (10_000, 10_000_000));
        assert_eq!(p.seconds, 2.0);
        assert_eq!(p.chunks_per_s, Some(200_000.0));
        assert_eq!(p.gateway_cpu_per_s, Some(0.9));
        assert_eq!(p.gateway_cpu_us_per_chunk, Some(4.5));
        assert_eq!(p.harness_cpu_per_s, Some(0.6));
        assert_eq!(p.harness_cpu_us_per_chunk, Some(3.0));
        // Without a gateway its figures stay empty; one sample is no plateau.
        let direct: Vec<Tick> = ticks
            .iter()
            .map(|t| Tick {
                gateway_cpu_s: 0.0,
                ..*t
            })
            .collect();
        assert_eq!(Plateau::of(&direct).gateway_cpu_per_s, None);
        assert_eq!(Plateau::of(&ticks[..1]).chunks_per_s, None);
    }

    #[test]
    fn ratios_to_the_floor_need_both_figures_and_a_floor_above_zero() {
        assert_eq!(ratio(Some(37.4), Some(30.0)), Some(1.25));
        assert_eq!(ratio(Some(3.0), None), None);
        assert_eq!(ratio(None, Some(3.0)), None);
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(Some(3.0), Some(-1.0)), None);
    }

    #[test]
    fn a_target_is_judged_met_or_missed_with_the_floor_beside_it() {
        assert_eq!(
            judged(false, Some(30.24), 16.0, " KiB"),
            "missed (floor 30.2 KiB, over the target too)"
        );
        assert_eq!(
            judged(false, Some(9.0), 16.0, " KiB"),
            "missed (floor 9.0 KiB)"
        );
        assert_eq!(judged(true, Some(9.0), 16.0, " KiB"), "met (floor 9.0 KiB)");
        assert_eq!(
            judged(false, None, 1000.0, " us"),
            "missed (floor not measured)"
        );
    }

    /// `many_run` with a floor proxy beside the gateway: `kib` per open
    /// stream, `cpu_us` per paced chunk, `p99` us added gap.
    fn with_floor(mut r: ManyStreamsRun, kib: u64, cpu_us: f64, p99: f64) -> ManyStreamsRun {
        let streams = r.streams as u64;
        let mut floor = r
            .gateway
            .clone()
            .unwrap_or_else(|| panic!("a gateway side"));
        floor.sample.gap_added_p99_us = r.direct.sample.gap_added_p99_us + p99;
        floor.plateau.peak_rss_bytes = floor.idle_rss_bytes + streams * kib * 1024;
        floor.plateau.gateway_cpu_us_per_chunk = Some(cpu_us);
        floor.plateau.gateway_cpu_per_s = Some(0.25);
        if let Some(g) = r.gateway.as_mut() {
            g.plateau.gateway_cpu_us_per_chunk = Some(12.0);
        }
        r.floor = Some(floor);
        r.floor_ratios = r.ratios_to_floor();
        r
    }

    #[test]
    fn the_gateway_is_stated_over_the_floor_proxy_at_the_same_count() {
        // Gateway: 15 KiB, 12 us, +900 us; floor: 10 KiB, 8 us, +300 us.
        let r = with_floor(many_run(2_000, 300.0, 1200.0), 10, 8.0, 300.0);
        let x = r.floor_ratios.unwrap_or_else(|| panic!("ratios"));
        assert_eq!(x.rss_per_stream, Some(1.5));
        assert_eq!(x.cpu_us_per_paced_chunk, Some(1.5));
        assert_eq!(x.cpu_per_s, Some(2.0));
        assert_eq!(x.added_gap_p99, Some(3.0));
        assert_eq!(r.floor_added_gap_us(true), Some(300.0));
        // No floor side: no ratios.
        assert_eq!(many_run(2_000, 300.0, 1200.0).ratios_to_floor(), None);
    }

    #[test]
    fn the_many_streams_targets_carry_the_floor_and_its_verdict() {
        let mut b = bench();
        if let Some(m) = b.many.as_mut() {
            // Gateway 15 KiB (met) and +900 us (met); the floor 20 KiB and
            // +1,100 us, over both targets.
            m.runs[0] = with_floor(many_run(10_000, 300.0, 1200.0), 20, 8.0, 1100.0);
        }
        let t = evaluate(&b);
        let find = |figure: &str| {
            t.iter()
                .find(|t| t.figure == figure)
                .unwrap_or_else(|| panic!("{figure}: {t:?}"))
        };
        let gap = find("added inter-chunk p99, 10000 open streams");
        assert!(gap.met, "{gap:?}");
        assert_eq!(
            gap.measured,
            "900.0 us: met (floor 1100.0 us, over the target too); 0.82x the floor"
        );
        let rss = find("RSS per open stream, 10000 open streams");
        assert_eq!(
            rss.measured,
            "15.0 KiB: met (floor 20.0 KiB, over the target too); 0.75x the floor"
        );
        // The gateway over 16 KiB with a floor under it: missed, floor said.
        if let Some(g) = b.many.as_mut().and_then(|m| m.runs[0].gateway.as_mut()) {
            g.plateau.peak_rss_bytes = g.idle_rss_bytes + 10_000 * 40 * 1024;
        }
        if let Some(f) = b.many.as_mut().and_then(|m| m.runs[0].floor.as_mut()) {
            f.plateau.peak_rss_bytes = f.idle_rss_bytes + 10_000 * 12 * 1024;
            f.late_share = 0.05;
        }
        if let Some(r) = b.many.as_mut().map(|m| &mut m.runs[0]) {
            r.floor_ratios = r.ratios_to_floor();
        }
        let t = evaluate(&b);
        let rss = t
            .iter()
            .find(|t| t.figure == "RSS per open stream, 10000 open streams")
            .unwrap_or_else(|| panic!("{t:?}"));
        assert!(!rss.met);
        assert_eq!(
            rss.measured,
            "40.0 KiB: missed (floor 12.0 KiB); 3.33x the floor"
        );
        let gap = t
            .iter()
            .find(|t| t.figure == "added inter-chunk p99, 10000 open streams")
            .unwrap_or_else(|| panic!("{t:?}"));
        assert!(
            gap.measured.ends_with(
                "(the harness did not hold its pace through the floor proxy: 5.0 % late)"
            ),
            "{gap:?}"
        );
        let md = render_markdown(&b);
        assert!(md.contains("| 10000 | floor proxy | 10/0/0 |"), "{md}");
        assert!(
            md.contains("| 10000 | added by the floor proxy | | +0.0 us | +1100.0 us |"),
            "{md}"
        );
        assert!(
            md.contains("| 10000 | gateway / floor | | - (added) | 0.82x (added) | | | | 2.00x | 1.50x | 3.33x |"),
            "{md}"
        );
        assert!(md.contains("the floor proxy relayed"), "{md}");
        assert!(
            md.contains("the harness fell behind its pace through the floor proxy"),
            "{md}"
        );
        // Not held straight to the mock (said already) while the floor's
        // run kept its pace: no note on the floor's run.
        if let Some(r) = b.many.as_mut().map(|m| &mut m.runs[0]) {
            r.direct.late_share = 0.5;
            if let Some(f) = r.floor.as_mut() {
                f.late_share = 0.009;
            }
        }
        let t = evaluate(&b);
        let gap = t
            .iter()
            .find(|t| t.figure == "added inter-chunk p99, 10000 open streams")
            .unwrap_or_else(|| panic!("{t:?}"));
        assert!(
            gap.measured.contains("could not hold 10000")
                && !gap.measured.contains("through the floor proxy"),
            "{gap:?}"
        );
    }

    #[test]
    fn the_relay_rows_carry_the_floor_proxy_and_the_cpu_ratio() {
        let mut b = bench();
        b.pairs[0].floor = Some(sample(Some(0.95), 1.0));
        b.pairs[0].gateway_over_floor_cpu = ratio(Some(1.9), Some(0.95));
        let t = evaluate(&b);
        assert_eq!(t[0].measured, "1.90 us (floor proxy 0.95 us: 2.00x)");
        assert!(t[0].met);
        let md = render_markdown(&b);
        assert!(
            md.contains(
                "| 200 chunks back to back, concurrency 1 | floor proxy | 10/0/0 | 0.95 us |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| added by the gateway | | 2.00x the floor |"),
            "{md}"
        );
    }

    #[test]
    fn a_saturated_gateway_core_is_said() {
        let mut b = bench();
        if let Some(g) = b.many.as_mut().and_then(|m| m.runs[0].gateway.as_mut()) {
            g.plateau.gateway_cpu_per_s = Some(0.95);
            g.plateau.chunks_per_s = Some(190_000.0);
        }
        let md = render_markdown(&b);
        assert!(
            md.contains("its core was saturated, so it cannot relay 10000 streams' 200000 paced chunks/s on one core"),
            "{md}"
        );
    }
}
