//! The fleet scenarios' part of the chaos report: one entry per scenario
//! and backend in `report.json` (`fleet`), a table and its targets in
//! `report.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{FleetRecord, REPLICAS, tally};
use crate::report::{LatencyMs, TargetCheck};

/// One fleet scenario run with one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetScenarioReport {
    /// The scenario (`fleet_primary_down`...).
    pub name: String,
    /// `redis` or `local`.
    pub backend: String,
    /// What happens in it.
    pub summary: String,
    /// The figure that matters, in words.
    pub headline: String,
    /// Gateway replicas.
    pub replicas: u32,
    /// Requests sent (round-robin over the replicas).
    pub requests: u64,
    /// Complete, correct answers.
    pub succeeded: u64,
    /// Clean OpenAI-shaped errors.
    pub failed_clean: u64,
    /// Lost: past the deadline, transport errors, wrong answers.
    pub lost: u64,
    /// succeeded / requests.
    pub success_rate: f64,
    /// Lost requests per reason.
    pub lost_reasons: BTreeMap<String, u64>,
    /// Latency of the requests that got an answer or a clean error.
    pub latency_ms: Option<LatencyMs>,
    /// Succeeded requests per answering model.
    pub answered_by: BTreeMap<String, u64>,
    /// The scenario's own figures (`primary_calls`, `spend_usd`...).
    pub figures: BTreeMap<String, f64>,
    /// Every target, met or not.
    pub targets: Vec<TargetCheck>,
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The percentiles of `records`' latencies, in ms.
fn latency<'a>(records: impl Iterator<Item = &'a FleetRecord>) -> Option<LatencyMs> {
    let mut ms: Vec<f64> = records.map(|r| r.latency.as_secs_f64() * 1000.0).collect();
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1;
        round(ms[i])
    };
    Some(LatencyMs {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: round(ms[ms.len() - 1]),
    })
}

/// The p99 latency of `records`, in ms.
pub(crate) fn p99_ms<'a>(records: impl Iterator<Item = &'a FleetRecord>) -> Option<f64> {
    latency(records).map(|l| l.p99)
}

/// A target `figure <= limit` (`basis` says what the limit is made of).
pub(crate) fn at_most(figure: &str, measured: f64, limit: f64, basis: &str) -> TargetCheck {
    TargetCheck {
        figure: figure.to_owned(),
        target: format!("<= {} ({basis})", round(limit)),
        measured: Some(round(measured)),
        met: measured <= limit,
        note: None,
    }
}

/// A target `figure >= floor`.
pub(crate) fn at_least(figure: &str, measured: f64, floor: f64) -> TargetCheck {
    TargetCheck {
        figure: figure.to_owned(),
        target: format!(">= {}", round(floor)),
        measured: Some(round(measured)),
        met: measured >= floor,
        note: None,
    }
}

impl FleetScenarioReport {
    /// The counts and latency of `records`; figures and targets follow.
    pub(crate) fn new(name: &str, backend: &str, records: &[FleetRecord]) -> Self {
        let (succeeded, failed_clean, lost, lost_reasons) = tally(records);
        let mut answered_by = BTreeMap::new();
        for r in records {
            if let super::FleetOutcome::Answered { model, .. } = &r.outcome {
                *answered_by.entry(model.clone()).or_insert(0) += 1;
            }
        }
        let requests = records.len() as u64;
        Self {
            name: name.to_owned(),
            backend: backend.to_owned(),
            summary: String::new(),
            headline: String::new(),
            replicas: REPLICAS as u32,
            requests,
            succeeded,
            failed_clean,
            lost,
            success_rate: if requests == 0 {
                0.0
            } else {
                round(succeeded as f64 / requests as f64)
            },
            lost_reasons,
            latency_ms: latency(
                records
                    .iter()
                    .filter(|r| !matches!(r.outcome, super::FleetOutcome::Lost(_))),
            ),
            answered_by,
            figures: BTreeMap::new(),
            targets: Vec::new(),
        }
    }

    pub(crate) fn figure(&mut self, name: &str, value: f64) {
        self.figures.insert(name.to_owned(), round(value));
    }

    pub(crate) fn target(&mut self, check: TargetCheck) {
        self.targets.push(check);
    }

    /// Adds the targets every fleet run has: nothing lost, every request
    /// answered (a model or the template can always answer).
    pub(crate) fn finish(&mut self) {
        let lost = TargetCheck {
            figure: "lost".into(),
            target: "= 0".into(),
            measured: Some(self.lost as f64),
            met: self.lost == 0,
            note: None,
        };
        let success = TargetCheck {
            figure: "success_rate".into(),
            target: "= 1".into(),
            measured: Some(self.success_rate),
            met: self.requests > 0 && self.succeeded == self.requests,
            note: None,
        };
        self.targets.insert(0, success);
        self.targets.insert(0, lost);
    }
}

/// The fleet scenarios' table and targets, in Markdown (empty without any).
pub fn render_fleet_markdown(fleet: &[FleetScenarioReport], skipped: Option<&str>) -> String {
    let mut out = String::new();
    if fleet.is_empty() && skipped.is_none() {
        return out;
    }
    out.push_str("\n## Fleet scenarios\n\n");
    if let Some(why) = skipped {
        let _ = writeln!(out, "Skipped: {why}.");
        return out;
    }
    let _ = writeln!(
        out,
        "{REPLICAS} gateway replicas, load round-robin over them; `redis`: sharing one redis-server, `local`: sharing nothing.\n"
    );
    out.push_str(
        "| scenario | backend | requests | ok | lost | p50 ms | p99 ms | figure | targets |\n",
    );
    out.push_str("|---|---|--:|--:|--:|--:|--:|---|---|\n");
    for s in fleet {
        let missed = s.targets.iter().filter(|t| !t.met).count();
        let targets = if missed == 0 {
            format!("✅ {}/{}", s.targets.len(), s.targets.len())
        } else {
            format!("❌ {missed} missed")
        };
        let (p50, p99) = s.latency_ms.map_or(("–".to_owned(), "–".to_owned()), |l| {
            (format!("{:.1}", l.p50), format!("{:.1}", l.p99))
        });
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {p50} | {p99} | {} | {targets} |",
            s.name, s.backend, s.requests, s.succeeded, s.lost, s.headline
        );
    }
    out.push_str(
        "\n| scenario | backend | figure | measured | target | |\n|---|---|---|--:|---|---|\n",
    );
    for s in fleet {
        for t in &s.targets {
            let _ = writeln!(
                out,
                "| `{}` | {} | `{}` | {} | {} | {} |",
                s.name,
                s.backend,
                t.figure,
                t.measured
                    .map_or_else(|| "–".to_owned(), |v| format!("{v}")),
                t.target,
                if t.met { "✅" } else { "❌" }
            );
        }
    }
    out.push('\n');
    for s in fleet {
        let _ = writeln!(out, "- `{}` ({}): {}.", s.name, s.backend, s.summary);
    }
    out
}
