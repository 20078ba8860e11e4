//! The targets of issue 7, checked per scenario:
//!
//! - `lost` = 0 everywhere; `success_rate` = 1.0 wherever a model (or the
//!   template) can answer; in `content_policy`, exactly the flagged
//!   requests fail cleanly and the rest succeed.
//! - Every answer comes from a model the scenario expects.
//! - Failover added latency p99: refused primary <= 2 ms before the circuit
//!   opens and <= 0.3 ms once it is open; 5xx primary <= one upstream round
//!   trip + 1 ms; silent primary <= first-token timeout (or hedge delay)
//!   + 5 ms.
//! - `recovery`: traffic back on the primary within probe interval + 1 s.
//! - Retry amplification <= 1.2 during a persistent outage once the
//!   circuit is open.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Report, ScenarioReport};
use crate::scenario::{FailoverTarget, ScenarioSpec};

/// One target of one scenario, with what was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    /// The figure, as named in report.json (`lost`,
    /// `failover_added_ms.p99`...).
    pub figure: String,
    /// The target, readable (`= 0`, `<= 2 ms`).
    pub target: String,
    /// What was measured (`null` when it could not be).
    pub measured: Option<f64>,
    /// Whether the target was met.
    pub met: bool,
    /// Why a figure is missing, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A target a scenario missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MissedTarget {
    /// The scenario.
    pub scenario: String,
    /// The figure.
    pub figure: String,
    /// The target.
    pub target: String,
    /// What was measured.
    pub measured: Option<f64>,
    /// Why it is missing, when it is.
    pub note: Option<String>,
}

impl fmt::Display for MissedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ", self.scenario, self.figure)?;
        match self.measured {
            Some(v) => write!(f, "= {v}")?,
            None => f.write_str("not measured")?,
        }
        write!(f, " (target {})", self.target)?;
        if let Some(note) = &self.note {
            write!(f, ": {note}")?;
        }
        Ok(())
    }
}

/// Every target missed in `report`, naming scenario and figure.
pub fn check_targets(report: &Report) -> Vec<MissedTarget> {
    report
        .scenarios
        .iter()
        .flat_map(|s| {
            s.targets.iter().filter(|t| !t.met).map(|t| MissedTarget {
                scenario: s.name.clone(),
                figure: t.figure.clone(),
                target: t.target.clone(),
                measured: t.measured,
                note: t.note.clone(),
            })
        })
        .chain(report.fleet.iter().flat_map(|s| {
            s.targets.iter().filter(|t| !t.met).map(|t| MissedTarget {
                scenario: format!("{} ({})", s.name, s.backend),
                figure: t.figure.clone(),
                target: t.target.clone(),
                measured: t.measured,
                note: t.note.clone(),
            })
        }))
        .collect()
}

fn at_most(
    figure: &str,
    measured: Option<f64>,
    limit: f64,
    unit: &str,
    missing: &str,
) -> TargetCheck {
    TargetCheck {
        figure: figure.to_owned(),
        target: format!("<= {limit} {unit}").trim_end().to_owned(),
        measured,
        met: measured.is_some_and(|m| m <= limit),
        note: measured.is_none().then(|| missing.to_owned()),
    }
}

fn equals(figure: &str, measured: f64, expected: f64) -> TargetCheck {
    TargetCheck {
        figure: figure.to_owned(),
        target: format!("= {expected}"),
        measured: Some(measured),
        met: (measured - expected).abs() < 1e-9,
        note: None,
    }
}

/// The targets of `spec`, checked against its report. `flagged` is the
/// number of requests that carried the content-policy marker.
pub(crate) fn evaluate(
    report: &ScenarioReport,
    spec: &ScenarioSpec,
    flagged: u64,
) -> Vec<TargetCheck> {
    let expect = &spec.expect;
    let mut out = vec![equals("lost", report.lost as f64, 0.0)];
    if expect.all_answer {
        out.push(equals("success_rate", report.success_rate, 1.0));
    }
    if expect.flagged_fail_clean {
        out.push(equals(
            "failed_clean",
            report.failed_clean as f64,
            flagged as f64,
        ));
        out.push(equals(
            "succeeded",
            report.succeeded as f64,
            (report.requests - flagged) as f64,
        ));
    }
    let mut answered_by = equals(
        "anomalies.unexpected_model",
        report.anomalies.unexpected_model as f64,
        0.0,
    );
    answered_by.target = format!("= 0 (answered by {})", expect.answered_by.join(" or "));
    out.push(answered_by);

    let no_baseline = "no baseline run to compare with";
    match expect.failover {
        Some(FailoverTarget::Refused { closed_ms, open_ms }) => {
            // Only the first few requests meet a closed circuit; when none
            // did (the gateway learned from a probe first), there is
            // nothing to hold against it.
            if let Some(before) = report.failover_added_before_open_ms {
                out.push(at_most(
                    "failover_added_before_open_ms.p99",
                    Some(before.p99),
                    closed_ms,
                    "ms",
                    no_baseline,
                ));
            } else if report.baseline_latency_ms.is_none() {
                out.push(at_most(
                    "failover_added_before_open_ms.p99",
                    None,
                    closed_ms,
                    "ms",
                    no_baseline,
                ));
            }
            let missing = if report.baseline_latency_ms.is_none() {
                no_baseline
            } else {
                "no request found the primary's circuit open"
            };
            out.push(at_most(
                "failover_added_open_ms.p99",
                report.failover_added_open_ms.map(|a| a.p99),
                open_ms,
                "ms",
                missing,
            ));
        }
        Some(FailoverTarget::RoundTripPlus { ms }) => {
            let limit = report
                .upstream_round_trip_ms
                .map(|rt| ((rt + ms) * 1000.0).round() / 1000.0);
            match limit {
                Some(limit) => out.push(at_most(
                    "failover_added_ms.p99",
                    report.failover_added_ms.map(|a| a.p99),
                    limit,
                    "ms (round trip + 1)",
                    no_baseline,
                )),
                None => out.push(TargetCheck {
                    figure: "failover_added_ms.p99".to_owned(),
                    target: format!("<= upstream round trip + {ms} ms"),
                    measured: report.failover_added_ms.map(|a| a.p99),
                    met: false,
                    note: Some("the upstream round trip could not be measured".to_owned()),
                }),
            }
        }
        Some(FailoverTarget::Within { ms, basis }) => {
            let mut check = at_most(
                "failover_added_ms.p99",
                report.failover_added_ms.map(|a| a.p99),
                ms,
                "ms",
                no_baseline,
            );
            check.target = format!("<= {ms} ms ({basis})");
            out.push(check);
        }
        None => {}
    }
    if let Some(limit) = expect.recover_within_ms {
        let mut check = at_most(
            "time_to_recover_ms",
            report.time_to_recover_ms,
            limit,
            "ms",
            "traffic never came back to the primary",
        );
        check.target = format!("<= {limit} ms (probe interval + 1 s)");
        out.push(check);
    }
    if let Some(limit) = expect.max_retry_amplification {
        out.push(at_most(
            "retry_amplification",
            Some(report.retry_amplification),
            limit,
            "",
            "",
        ));
    }
    out
}
