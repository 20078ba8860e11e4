//! One measured load: open-loop, fixed rate (the chaos load generator),
//! after a warm-up on the same connections, summarized with HdrHistogram,
//! and with the gateway's CPU time over the run when a pid is given.

use std::time::Duration;

use backstop_chaos::scenario::RequestMix;
use backstop_chaos::{AnswerCheck, LoadGenerator, LoadPlan, Outcome, RequestRecord, Target};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::procfs;
use crate::TaskError;

/// A request unanswered this long after its intended send time is lost.
const DEADLINE: Duration = Duration::from_secs(2);

/// Warm-up before every measured run: a quarter of a second of the same
/// load, at least this many requests.
const WARM_UP_MIN: u64 = 50;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Requests per second.
    pub rate: f64,
    /// Requests in one measured run.
    pub requests: u64,
    /// Requests sent together (1: evenly spaced).
    pub burst: u64,
    /// Count a clean error answer as answered (a mock that answers 500).
    pub errors_expected: bool,
    /// Send within microseconds of the intended time (see
    /// `LoadPlan::precise_start`): for latency runs, where tokio's 1 ms
    /// timer would otherwise add up to 1 ms to both sides.
    pub precise: bool,
}

impl Load {
    /// `rate` requests per second for `seconds`, evenly spaced.
    pub fn steady(rate: f64, seconds: f64) -> Self {
        Self {
            rate,
            requests: (rate * seconds).round().max(1.0) as u64,
            burst: 1,
            errors_expected: false,
            precise: false,
        }
    }
}

/// The figures of one measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Requests per second asked for.
    pub offered_rps: f64,
    /// Requests sent together.
    pub burst: u64,
    /// Requests planned, over every round.
    pub planned: u64,
    /// Requests answered as expected.
    pub ok: u64,
    /// Planned requests that were not (lost, wrong answer, never sent).
    pub errors: u64,
    /// Answered requests per second, from the first intended send to the
    /// last answer.
    pub achieved_rps: f64,
    /// Latency from the intended send time, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Maximum, microseconds.
    pub max_us: f64,
    /// The gateway's CPU time (utime + stime) over the run per answered
    /// request, microseconds.
    pub cpu_us_per_request: Option<f64>,
    /// This process's CPU time (load generator and mocks) per answered
    /// request, microseconds: what the harness itself costs.
    pub harness_cpu_us_per_request: Option<f64>,
    /// Median time outside the answering attempt (latency minus the `ms`
    /// the gateway's attempt trail gives the model that answered),
    /// microseconds; `None` without trails (straight to a mock).
    pub outside_answer_p50_us: Option<f64>,
    /// Median total of the failed upstream attempts before the answer, by
    /// the gateway's clock (its attempt trail), over the requests that
    /// had one, microseconds.
    pub failed_attempts_p50_us: Option<f64>,
}

impl Sample {
    /// Errors over planned requests.
    pub fn error_share(&self) -> f64 {
        self.errors as f64 / self.planned.max(1) as f64
    }
}

fn plan(model: &str, load: &Load, requests: u64) -> LoadPlan {
    let seconds = requests as f64 / load.rate;
    LoadPlan {
        model: model.to_owned(),
        rate_per_sec: load.rate,
        requests,
        max_duration: Duration::from_secs_f64(seconds * 1.5 + 1.0),
        deadline: DEADLINE,
        mix: RequestMix {
            stream_share: 0.0,
            prompt_tokens: 0,
            flagged_every: None,
            max_tokens: Some(256),
        },
        max_in_flight: 4096,
        burst: load.burst,
        precise_start: load.precise,
    }
}

/// One side of a measurement: where the load goes and whose CPU to count.
#[derive(Debug, Clone)]
pub struct Side {
    /// Where requests go.
    pub target: Target,
    /// The process whose CPU time is measured (the gateway), if any.
    pub cpu_of: Option<u32>,
    /// The load.
    pub load: Load,
}

/// What one measured run of one side gave.
struct Run {
    records: Vec<RequestRecord>,
    cpu: Option<Duration>,
    harness_cpu: Duration,
}

async fn warm_up(side: &Side, model: &str) -> Result<LoadGenerator, TaskError> {
    let load = &side.load;
    let warm_requests = ((load.rate * 0.25) as u64)
        .max(WARM_UP_MIN)
        .max(load.burst * 4);
    let warm = LoadGenerator::new(plan(model, load, warm_requests), AnswerCheck::default())
        .map_err(|e| TaskError::new("load plan", e))?;
    warm.run(&side.target, Instant::now())
        .await
        .map_err(|e| TaskError::new(format!("warm-up at {}", side.target.base_url), e))?;
    warm.with_plan(plan(model, load, load.requests))
        .map_err(|e| TaskError::new("load plan", e))
}

async fn run_once(side: &Side, generator: &LoadGenerator) -> Result<Run, TaskError> {
    let own = std::process::id();
    let cpu_before = side.cpu_of.map(procfs::cpu_time).transpose()?;
    let own_before = procfs::cpu_time(own)?;
    let run = generator
        .run(&side.target, Instant::now())
        .await
        .map_err(|e| TaskError::new(format!("load at {}", side.target.base_url), e))?;
    let cpu = match (side.cpu_of, cpu_before) {
        (Some(pid), Some(before)) => Some(procfs::cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    Ok(Run {
        records: run.records,
        cpu,
        harness_cpu: procfs::cpu_time(own)?.saturating_sub(own_before),
    })
}

/// Warms up, then runs the side's load once.
pub async fn measure(side: &Side, model: &str) -> Result<Sample, TaskError> {
    let generator = warm_up(side, model).await?;
    let run = run_once(side, &generator).await?;
    Ok(summarize(&side.load, &[run]))
}

/// Warms every side up, then runs each side's load once per round, the
/// sides taking turns, and pools each side's rounds: slow drifts of a
/// shared machine hit every side alike instead of whichever ran last.
pub async fn interleaved(
    sides: &[Side],
    model: &str,
    rounds: usize,
) -> Result<Vec<Sample>, TaskError> {
    let mut generators = Vec::with_capacity(sides.len());
    for side in sides {
        generators.push(warm_up(side, model).await?);
    }
    let mut runs: Vec<Vec<Run>> = sides.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for ((side, generator), side_runs) in sides.iter().zip(&generators).zip(&mut runs) {
            side_runs.push(run_once(side, generator).await?);
        }
    }
    Ok(sides
        .iter()
        .zip(&runs)
        .map(|(side, side_runs)| summarize(&side.load, side_runs))
        .collect())
}

fn answered(load: &Load, r: &RequestRecord) -> bool {
    match r.outcome {
        Outcome::Succeeded => true,
        Outcome::FailedClean { .. } => load.errors_expected,
        Outcome::Lost(_) => false,
    }
}

fn summarize(load: &Load, runs: &[Run]) -> Sample {
    let ok: Vec<&RequestRecord> = runs
        .iter()
        .flat_map(|r| &r.records)
        .filter(|r| answered(load, r))
        .collect();
    let ok_count = ok.len() as u64;
    let planned = load.requests * runs.len() as u64;
    // Nanoseconds, 1 ns to 60 s, 3 significant digits.
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).ok();
    if let Some(h) = h.as_mut() {
        for r in &ok {
            let ns = u64::try_from(r.latency.as_nanos()).unwrap_or(u64::MAX);
            // In bounds after the clamp.
            let _ = h.record(ns.clamp(1, 60_000_000_000));
        }
    }
    let us = |q: f64| {
        h.as_ref()
            .filter(|h| !h.is_empty())
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    };
    // Each run's span, from its epoch to its last answer.
    let span: f64 = runs
        .iter()
        .map(|run| {
            run.records
                .iter()
                .map(|r| r.intended_at + r.latency)
                .max()
                .unwrap_or_default()
                .as_secs_f64()
        })
        .sum();
    let per_request = |d: Duration| round1(d.as_secs_f64() * 1e6 / ok_count as f64);
    let cpu: Option<Duration> = runs.iter().map(|r| r.cpu).sum();
    let harness_cpu: Duration = runs.iter().map(|r| r.harness_cpu).sum();
    Sample {
        offered_rps: load.rate,
        burst: load.burst,
        planned,
        ok: ok_count,
        errors: planned.saturating_sub(ok_count),
        achieved_rps: if span > 0.0 {
            ok_count as f64 / span
        } else {
            0.0
        },
        p50_us: round1(us(0.50)),
        p99_us: round1(us(0.99)),
        max_us: round1(h.as_ref().map_or(0.0, |h| h.max() as f64 / 1000.0)),
        cpu_us_per_request: cpu.filter(|_| ok_count > 0).map(per_request),
        harness_cpu_us_per_request: (ok_count > 0).then(|| per_request(harness_cpu)),
        outside_answer_p50_us: median_us(
            ok.iter()
                .filter(|r| r.answering_attempt().is_some())
                .map(|r| r.outside_answer().as_secs_f64() * 1e6),
        ),
        failed_attempts_p50_us: median_us(ok.iter().filter_map(|r| {
            let failed: Vec<f64> = r
                .trail
                .iter()
                .filter(|e| e.called_upstream() && e.kind != "ok")
                .filter_map(|e| e.ms)
                .collect();
            (!failed.is_empty()).then(|| failed.iter().sum::<f64>() * 1000.0)
        })),
    }
}

/// The median of `values` (microseconds), rounded; `None` when empty.
fn median_us(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().map(round1)
}

/// Rounds to one decimal.
pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
