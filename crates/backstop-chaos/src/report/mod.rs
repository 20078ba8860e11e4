//! The chaos report: `report.json` (the contract shape of issue 7, plus a
//! few documented extensions), `report.md` (one table a person reads at a
//! glance) and `timeline.svg` (every request's latency over time, coloured
//! by the model that answered, outage windows shaded).
//!
//! Definitions:
//!
//! - `latency_ms`: requests that got an answer or a clean error, from
//!   their intended send time to the end of the answer.
//! - `failover_added_ms`: what falling over added, at each percentile.
//!   For every request the time spent *outside its answering attempt* is
//!   its latency minus the time the model that answered took (the `ms` of
//!   the last `ok` entry of the gateway's attempt trail): routing, failed
//!   attempts, backoffs, skips, the gateway's and the client's own work.
//!   The figure is a percentile of that time over the requests a fallback
//!   answered minus the same percentile over the `baseline` run's requests
//!   (never below 0; zeros when nothing fell over; `null` without a
//!   baseline run). Taking out the answering model's generation time (tens
//!   of milliseconds of paced tokens, the same for every fake) keeps its
//!   jitter out of a sub-millisecond figure; without a trail the whole
//!   latency counts.
//! - `time_to_detect_ms`: from the primary's first outage to the first
//!   request that skipped it (its circuit open).
//! - `time_to_recover_ms`: from the end of an outage to the first request
//!   the primary answered again; the worst over the outages that
//!   recovered, `null` when the last one never did.
//! - `upstream_attempts`: requests each fake received (probes excluded);
//!   while its port refused connections, the calls the attempt trails
//!   report (a closed port cannot count them), when those are more.
//! - `retry_amplification`: upstream calls per request (from the attempt
//!   trails) among requests sent during an outage after it was detected;
//!   without trails or an outage, all upstream attempts / requests.

mod markdown;
mod svg;
mod targets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::ReportError;
use crate::load::{Outcome, RequestRecord};
use crate::run::ScenarioRun;

pub use markdown::render_markdown;
pub use svg::render_timeline;
pub use targets::{MissedTarget, TargetCheck, check_targets};

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Backstop's version (and whatever the driver adds, such as a commit).
    pub version: String,
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// One entry per scenario, in run order.
    pub scenarios: Vec<ScenarioReport>,
    /// Extension: the fleet scenarios, one entry per scenario and backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet: Vec<crate::fleet::FleetScenarioReport>,
    /// Extension: why the fleet scenarios did not run, when they did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_skipped: Option<String>,
}

/// Latency percentiles with the maximum, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// Added latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AddedMs {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Answers that passed but carried a defect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomalies {
    /// Succeeded without usage (template answers excepted).
    pub usage_missing: u64,
    /// Succeeded from a model the scenario does not expect.
    pub unexpected_model: u64,
    /// Succeeded without saying which model answered.
    pub model_unknown: u64,
    /// Streams that ended complete but without `[DONE]`.
    pub missing_done: u64,
}

/// One scenario of `report.json`. The fields up to `fallback_levels` are
/// the contract; the rest are extensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub name: String,
    /// Requests issued.
    pub requests: u64,
    /// Complete, correct answers.
    pub succeeded: u64,
    /// Clean OpenAI-shaped errors.
    pub failed_clean: u64,
    /// Hung past the deadline, transport errors, truncated or garbled
    /// answers presented as success.
    pub lost: u64,
    /// succeeded / requests.
    pub success_rate: f64,
    /// Latency of answered requests.
    pub latency_ms: LatencyMs,
    /// The baseline run's latency (`null` without one).
    pub baseline_latency_ms: Option<LatencyMs>,
    /// Failover added latency (`null` without a baseline run).
    pub failover_added_ms: Option<AddedMs>,
    /// Outage start to the first request that skipped the primary.
    pub time_to_detect_ms: Option<f64>,
    /// Outage end to the first request the primary answered again.
    pub time_to_recover_ms: Option<f64>,
    /// Upstream requests per model, probes excluded.
    pub upstream_attempts: BTreeMap<String, u64>,
    /// Upstream calls per request during a detected outage.
    pub retry_amplification: f64,
    /// Succeeded requests per fallback level.
    pub fallback_levels: BTreeMap<String, u64>,

    /// Extension: what breaks in this scenario.
    pub summary: String,
    /// Extension: time outside the answering attempt of the requests a
    /// fallback answered (what `failover_added_ms` subtracts the baseline
    /// from).
    pub outside_answer_ms: Option<LatencyMs>,
    /// Extension: the same time over the baseline run's requests.
    pub baseline_outside_answer_ms: Option<LatencyMs>,
    /// Extension: failover added latency while the primary was still tried.
    pub failover_added_before_open_ms: Option<AddedMs>,
    /// Extension: failover added latency once the primary's circuit was open.
    pub failover_added_open_ms: Option<AddedMs>,
    /// Extension: the primary's round trip measured directly.
    pub upstream_round_trip_ms: Option<f64>,
    /// Extension: health probes per model.
    pub upstream_probes: BTreeMap<String, u64>,
    /// Extension: succeeded requests per answering model.
    pub answered_by: BTreeMap<String, u64>,
    /// Extension: lost requests per reason.
    pub lost_reasons: BTreeMap<String, u64>,
    /// Extension: defects of passing answers.
    pub anomalies: Anomalies,
    /// Extension: the primary's outage windows, `[start, end]` in ms since
    /// the load's start.
    pub outages_ms: Vec<[f64; 2]>,
    /// Extension: every target of this scenario, met or not.
    pub targets: Vec<TargetCheck>,
    /// Extension: what the gateway's dashboard showed when the load had
    /// finished (each model's circuit and since when, the fallback
    /// history), its times in ms since the load started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<crate::dashboard::DashboardFigures>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A latency histogram in microseconds, 1 us to 1 h, 3 significant digits.
fn histogram<'a>(latencies: impl Iterator<Item = &'a Duration>) -> Option<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).ok()?;
    let mut any = false;
    for d in latencies {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 3_600_000_000);
        // In bounds by the clamp above.
        if h.record(us).is_ok() {
            any = true;
        }
    }
    any.then_some(h)
}

fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    round(h.value_at_quantile(q) as f64 / 1000.0)
}

fn latency_of<'a>(records: impl Iterator<Item = &'a RequestRecord>) -> Option<LatencyMs> {
    let latencies: Vec<Duration> = records.map(|r| r.latency).collect();
    percentiles(&latencies)
}

fn outside_answer_of<'a>(records: impl Iterator<Item = &'a RequestRecord>) -> Option<LatencyMs> {
    let outside: Vec<Duration> = records.map(RequestRecord::outside_answer).collect();
    percentiles(&outside)
}

fn percentiles(durations: &[Duration]) -> Option<LatencyMs> {
    let h = histogram(durations.iter())?;
    Some(LatencyMs {
        p50: percentile_ms(&h, 0.50),
        p95: percentile_ms(&h, 0.95),
        p99: percentile_ms(&h, 0.99),
        max: round(h.max() as f64 / 1000.0),
    })
}

fn added(over: Option<LatencyMs>, baseline: &LatencyMs) -> Option<AddedMs> {
    over.map(|l| AddedMs {
        p50: round((l.p50 - baseline.p50).max(0.0)),
        p95: round((l.p95 - baseline.p95).max(0.0)),
        p99: round((l.p99 - baseline.p99).max(0.0)),
    })
}

fn answered(r: &RequestRecord) -> bool {
    matches!(r.outcome, Outcome::Succeeded | Outcome::FailedClean { .. })
}

/// Whether a fallback answered: level >= 1, or another model than the
/// primary when the level is unknown.
fn fell_over(r: &RequestRecord, primary: &str) -> bool {
    r.outcome == Outcome::Succeeded
        && match (r.fallback_level, r.model.as_deref()) {
            (Some(level), _) => level > 0,
            (None, Some(model)) => model != primary,
            (None, None) => false,
        }
}

fn primary_answered(r: &RequestRecord, primary: &str) -> bool {
    r.outcome == Outcome::Succeeded
        && match (r.model.as_deref(), r.fallback_level) {
            (Some(model), _) => model == primary,
            (None, Some(level)) => level == 0,
            (None, None) => false,
        }
}

/// The `baseline` run's figures every other scenario is measured against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    /// Latency of its answered requests.
    pub latency: LatencyMs,
    /// Time outside the answering attempt of its answered requests.
    pub outside_answer: LatencyMs,
}

impl Baseline {
    /// The reference figures of a baseline run (`None` when nothing was
    /// answered).
    pub fn of(run: &ScenarioRun) -> Option<Self> {
        Some(Self {
            latency: latency_of(run.records.iter().filter(|r| answered(r)))?,
            outside_answer: outside_answer_of(run.records.iter().filter(|r| answered(r)))?,
        })
    }
}

impl ScenarioReport {
    /// Measures one run against the baseline's figures.
    pub fn from_run(run: &ScenarioRun, baseline: Option<&Baseline>) -> Self {
        let spec = &run.spec;
        let primary = spec.primary();
        let records = &run.records;
        let requests = records.len() as u64;
        let count =
            |f: &dyn Fn(&RequestRecord) -> bool| records.iter().filter(|r| f(r)).count() as u64;
        let succeeded = count(&|r| r.outcome == Outcome::Succeeded);
        let failed_clean = count(&|r| matches!(r.outcome, Outcome::FailedClean { .. }));
        let lost = requests - succeeded - failed_clean;

        let latency_ms = latency_of(records.iter().filter(|r| answered(r))).unwrap_or_default();
        let fallbacks = || records.iter().filter(|r| fell_over(r, primary));
        let outside_answer_ms = outside_answer_of(fallbacks());
        let reference = baseline.map(|b| b.outside_answer);
        let failover_added_ms = reference.map(|b| added(outside_answer_ms, &b).unwrap_or_default());
        let failover_added_before_open_ms = reference.and_then(|b| {
            added(
                outside_answer_of(fallbacks().filter(|r| !r.primary_skipped(primary))),
                &b,
            )
        });
        let failover_added_open_ms = reference.and_then(|b| {
            added(
                outside_answer_of(fallbacks().filter(|r| r.primary_skipped(primary))),
                &b,
            )
        });

        // Detection: the first request after the first outage began that
        // skipped the primary.
        let detected_at = run.outages.first().and_then(|&(start, end)| {
            records
                .iter()
                .filter(|r| r.intended_at >= start && r.intended_at < end)
                .find(|r| r.primary_skipped(primary))
                .map(|r| r.intended_at - start)
        });
        let time_to_detect_ms = detected_at.map(|d| round(ms(d)));

        let time_to_recover_ms = recover_time(run, primary);

        let mut upstream_attempts = BTreeMap::new();
        let mut upstream_probes = BTreeMap::new();
        for (model, fake) in &run.fakes {
            // While refusing, the fake only sees requests on connections
            // opened before (and resets them); the trails see every call.
            let seen_refused = fake.stats.by_behaviour.get("refused").copied().unwrap_or(0);
            let attempts = fake.stats.requests - seen_refused.min(fake.stats.requests)
                + seen_refused.max(fake.refused_attempts);
            upstream_attempts.insert(model.clone(), attempts);
            upstream_probes.insert(model.clone(), fake.stats.probes);
        }

        let retry_amplification = round(amplification(run, detected_at, &upstream_attempts));

        let mut fallback_levels = BTreeMap::new();
        let mut answered_by = BTreeMap::new();
        let mut lost_reasons = BTreeMap::new();
        let mut anomalies = Anomalies::default();
        let template = spec.template.as_ref().map(|t| t.model.as_str());
        for r in records {
            match r.outcome {
                Outcome::Succeeded => {
                    if let Some(level) = r.fallback_level {
                        *fallback_levels.entry(level.to_string()).or_insert(0) += 1;
                    }
                    match r.model.as_deref() {
                        Some(model) => {
                            *answered_by.entry(model.to_owned()).or_insert(0) += 1;
                            if !spec.expect.answered_by.iter().any(|m| m == model) {
                                anomalies.unexpected_model += 1;
                            }
                        }
                        None => anomalies.model_unknown += 1,
                    }
                    if !r.usage_present && r.model.as_deref() != template {
                        anomalies.usage_missing += 1;
                    }
                    if r.missing_done {
                        anomalies.missing_done += 1;
                    }
                }
                Outcome::Lost(reason) => {
                    *lost_reasons.entry(reason.as_str().to_owned()).or_insert(0) += 1;
                }
                Outcome::FailedClean { .. } => {}
            }
        }

        let mut report = ScenarioReport {
            name: spec.name.to_owned(),
            requests,
            succeeded,
            failed_clean,
            lost,
            // Not rounded: one failure in thousands must not read as 1.0.
            success_rate: if requests == 0 {
                0.0
            } else {
                succeeded as f64 / requests as f64
            },
            latency_ms,
            baseline_latency_ms: baseline.map(|b| b.latency),
            failover_added_ms,
            time_to_detect_ms,
            time_to_recover_ms,
            upstream_attempts,
            retry_amplification,
            fallback_levels,
            summary: spec.summary.to_owned(),
            outside_answer_ms,
            baseline_outside_answer_ms: reference,
            failover_added_before_open_ms,
            failover_added_open_ms,
            upstream_round_trip_ms: run.upstream_round_trip_ms.map(round),
            upstream_probes,
            answered_by,
            lost_reasons,
            anomalies,
            outages_ms: run
                .outages
                .iter()
                .map(|&(a, b)| [round(ms(a)), round(ms(b))])
                .collect(),
            targets: Vec::new(),
            dashboard: run.dashboard.clone(),
        };
        let flagged = records.iter().filter(|r| r.flagged).count() as u64;
        report.targets = targets::evaluate(&report, spec, flagged);
        report
    }
}

fn recover_time(run: &ScenarioRun, primary: &str) -> Option<f64> {
    let run_end = run.spec.load().duration();
    let mut worst: Option<f64> = None;
    let mut last_recovered = true;
    for (i, &(_, end)) in run.outages.iter().enumerate() {
        if end >= run_end {
            // An outage that lasts the whole run has no recovery to measure.
            last_recovered = true;
            continue;
        }
        let until = run.outages.get(i + 1).map_or(Duration::MAX, |w| w.0);
        let back = run
            .records
            .iter()
            .filter(|r| r.intended_at >= end && r.intended_at < until)
            .find(|r| primary_answered(r, primary))
            .map(|r| ms(r.intended_at - end));
        last_recovered = back.is_some();
        if let Some(t) = back {
            worst = Some(worst.map_or(t, |w| w.max(t)));
        }
    }
    if last_recovered {
        worst.map(round)
    } else {
        None
    }
}

fn amplification(
    run: &ScenarioRun,
    detected_at: Option<Duration>,
    upstream_attempts: &BTreeMap<String, u64>,
) -> f64 {
    if let Some(detect) = detected_at {
        let calls: Vec<usize> = run
            .records
            .iter()
            .filter(|r| {
                run.outages
                    .iter()
                    .any(|&(start, end)| r.intended_at >= start + detect && r.intended_at < end)
            })
            .filter_map(RequestRecord::upstream_calls)
            .collect();
        if !calls.is_empty() {
            return calls.iter().sum::<usize>() as f64 / calls.len() as f64;
        }
    }
    let requests = run.records.len() as f64;
    if requests == 0.0 {
        return 0.0;
    }
    upstream_attempts.values().sum::<u64>() as f64 / requests
}

impl Report {
    /// The report of `runs` (in run order). The run named `baseline`, if
    /// any, is every scenario's latency reference.
    pub fn build(version: impl Into<String>, quick: bool, runs: &[ScenarioRun]) -> Self {
        let baseline = runs
            .iter()
            .find(|r| r.spec.name == "baseline")
            .and_then(Baseline::of);
        Self {
            version: version.into(),
            quick,
            scenarios: runs
                .iter()
                .map(|run| ScenarioReport::from_run(run, baseline.as_ref()))
                .collect(),
            fleet: Vec::new(),
            fleet_skipped: None,
        }
    }
}

/// Where [`write_report`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPaths {
    /// `report.json`.
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `timeline.svg`.
    pub timeline: PathBuf,
}

fn write(path: &Path, contents: &[u8]) -> Result<(), ReportError> {
    std::fs::write(path, contents).map_err(|source| ReportError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Writes `report.json`, `report.md` and `timeline.svg` into `dir`
/// (created if missing).
pub fn write_report(
    dir: &Path,
    report: &Report,
    runs: &[ScenarioRun],
) -> Result<ReportPaths, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let paths = ReportPaths {
        json: dir.join("report.json"),
        markdown: dir.join("report.md"),
        timeline: dir.join("timeline.svg"),
    };
    let mut json = serde_json::to_vec_pretty(report)?;
    json.push(b'\n');
    write(&paths.json, &json)?;
    write(&paths.markdown, render_markdown(report).as_bytes())?;
    write(&paths.timeline, render_timeline(runs).as_bytes())?;
    Ok(paths)
}
