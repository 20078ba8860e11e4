//! The report's figures, targets and files, from synthetic runs.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use backstop_chaos::load::{LostReason, TrailEntry};
use backstop_chaos::run::FakeRun;
use backstop_chaos::{
    Mode, Outcome, Report, RequestRecord, ScenarioRun, check_targets, scenario, write_report,
};
use serde_json::Value;

fn ms(n: f64) -> Duration {
    Duration::from_secs_f64(n / 1000.0)
}

fn trail(entries: &[(&str, &str)]) -> Vec<TrailEntry> {
    entries
        .iter()
        .map(|(m, k)| TrailEntry {
            model: (*m).into(),
            kind: (*k).into(),
            status: None,
            ms: Some(0.0),
        })
        .collect()
}

fn record(
    index: u64,
    at_ms: f64,
    latency_ms: f64,
    model: &str,
    level: u32,
    t: Vec<TrailEntry>,
) -> RequestRecord {
    RequestRecord {
        index,
        stream: index % 2 == 1,
        flagged: false,
        intended_at: ms(at_ms),
        latency: ms(latency_ms),
        first_text: None,
        outcome: Outcome::Succeeded,
        model: Some(model.into()),
        fallback_level: Some(level),
        attempts_header: Some(t.iter().filter(|e| e.called_upstream()).count() as u32),
        trail: t,
        usage_present: true,
        missing_done: false,
    }
}

fn run_of(name: &str, records: Vec<RequestRecord>, fakes: &[(&str, u64)]) -> ScenarioRun {
    let spec = scenario(name, Mode::Quick).unwrap();
    ScenarioRun {
        outages: spec.outage_windows(),
        spec,
        records,
        elapsed: Duration::from_secs(1),
        fakes: fakes
            .iter()
            .map(|(m, n)| {
                (
                    (*m).to_owned(),
                    FakeRun {
                        stats: backstop_chaos::FakeStats {
                            requests: *n,
                            probes: 0,
                            by_behaviour: BTreeMap::new(),
                        },
                        requests: Vec::new(),
                        refused_attempts: 0,
                    },
                )
            })
            .collect(),
        upstream_round_trip_ms: None,
        load_start_unix_ms: 0,
        dashboard: None,
    }
}

fn baseline() -> ScenarioRun {
    let records = (0..100)
        .map(|i| {
            record(
                i,
                i as f64 * 10.0,
                20.0,
                "primary",
                0,
                trail(&[("primary", "ok")]),
            )
        })
        .collect();
    run_of("baseline", records, &[("primary", 100), ("secondary", 0)])
}

/// primary_down: five requests try the refused primary (+1 ms), then its
/// circuit is open and the rest skip it (+0.1 ms).
fn primary_down() -> ScenarioRun {
    let records = (0..100)
        .map(|i| {
            if i < 5 {
                record(
                    i,
                    i as f64 * 10.0,
                    21.0,
                    "secondary",
                    1,
                    trail(&[("primary", "connect"), ("secondary", "ok")]),
                )
            } else {
                record(
                    i,
                    i as f64 * 10.0,
                    20.1,
                    "secondary",
                    1,
                    trail(&[("primary", "circuit_open"), ("secondary", "ok")]),
                )
            }
        })
        .collect();
    run_of(
        "primary_down",
        records,
        &[("primary", 0), ("secondary", 100)],
    )
}

#[test]
fn failover_figures_split_by_circuit_state() {
    let report = Report::build("0.1.0", true, &[baseline(), primary_down()]);
    let down = &report.scenarios[1];
    assert_eq!((down.requests, down.succeeded, down.lost), (100, 100, 0));
    assert_eq!(down.success_rate, 1.0);
    // HdrHistogram keeps 3 significant digits.
    assert!((down.baseline_latency_ms.unwrap().p50 - 20.0).abs() < 0.03);
    let before = down.failover_added_before_open_ms.unwrap();
    assert!((before.p99 - 1.0).abs() < 0.05, "{before:?}");
    let open = down.failover_added_open_ms.unwrap();
    assert!((open.p99 - 0.1).abs() < 0.05, "{open:?}");
    assert_eq!(down.time_to_detect_ms, Some(50.0));
    assert_eq!(down.retry_amplification, 1.0);
    assert_eq!(
        down.fallback_levels,
        BTreeMap::from([("1".to_owned(), 100)])
    );
    assert_eq!(down.answered_by["secondary"], 100);
    assert!(
        check_targets(&report).is_empty(),
        "{:?}",
        check_targets(&report)
    );
    // Baseline has no outage: nothing detected, amplification from counts.
    let base = &report.scenarios[0];
    assert_eq!(base.time_to_detect_ms, None);
    assert_eq!(base.retry_amplification, 1.0);
}

/// `trail` with the answering (last) entry timed at `answer_ms` and the
/// entries before it at `failed_ms` each.
fn timed(entries: &[(&str, &str)], failed_ms: f64, answer_ms: f64) -> Vec<TrailEntry> {
    let mut t = trail(entries);
    let last = t.len() - 1;
    for (i, e) in t.iter_mut().enumerate() {
        e.ms = Some(if i == last {
            answer_ms
        } else if e.called_upstream() {
            failed_ms
        } else {
            0.0
        });
    }
    t
}

#[test]
fn failover_added_leaves_out_the_answering_models_generation_time() {
    // Baseline: 20 ms answers, 18 ms of it the primary generating.
    let mut base = baseline();
    for r in &mut base.records {
        r.trail = timed(&[("primary", "ok")], 0.0, 18.0);
    }
    // The secondary generates slower and with jitter (25..35 ms); the
    // refused primary costs 0.5 ms before its circuit opens, nothing after.
    let mut down = primary_down();
    for (i, r) in down.records.iter_mut().enumerate() {
        let generation = 25.0 + (i % 11) as f64;
        let tried = i < 5;
        let failed = if tried { 0.5 } else { 0.0 };
        let entries: &[(&str, &str)] = if tried {
            &[("primary", "connect"), ("secondary", "ok")]
        } else {
            &[("primary", "circuit_open"), ("secondary", "ok")]
        };
        r.trail = timed(entries, failed, generation);
        r.latency = ms(2.0 + failed + generation);
    }
    let report = Report::build("0.1.0", false, &[base, down]);
    let down = &report.scenarios[1];
    let outside = down.baseline_outside_answer_ms.unwrap();
    assert!((outside.p99 - 2.0).abs() < 0.01, "{outside:?}");
    let open = down.failover_added_open_ms.unwrap();
    assert!(open.p99 < 0.01, "{open:?}");
    let before = down.failover_added_before_open_ms.unwrap();
    assert!((before.p99 - 0.5).abs() < 0.01, "{before:?}");
    // The raw latencies differ by the generation time, which is not
    // failover's doing.
    assert!(down.latency_ms.p99 - down.baseline_latency_ms.unwrap().p99 > 10.0);
    assert!(
        check_targets(&report).is_empty(),
        "{:?}",
        check_targets(&report)
    );
}

#[test]
fn missed_targets_name_scenario_and_figure() {
    let mut down = primary_down();
    down.records[50].outcome = Outcome::Lost(LostReason::Truncated);
    for r in &mut down.records[60..] {
        // The primary is tried again on every request: no circuit.
        r.trail = trail(&[
            ("primary", "connect"),
            ("primary", "connect"),
            ("secondary", "ok"),
        ]);
        r.latency = ms(25.0);
    }
    let report = Report::build("0.1.0", false, &[baseline(), down]);
    let missed = check_targets(&report);
    let figures: Vec<(&str, &str)> = missed
        .iter()
        .map(|m| (m.scenario.as_str(), m.figure.as_str()))
        .collect();
    assert!(figures.contains(&("primary_down", "lost")), "{figures:?}");
    assert!(figures.contains(&("primary_down", "success_rate")));
    assert!(figures.contains(&("primary_down", "failover_added_before_open_ms.p99")));
    let lost = missed.iter().find(|m| m.figure == "lost").unwrap();
    assert_eq!(lost.to_string(), "primary_down: lost = 1 (target = 0)");
    assert_eq!(report.scenarios[1].lost_reasons["truncated"], 1);
}

#[test]
fn recovery_is_measured_from_the_outage_end() {
    let spec = scenario("recovery", Mode::Quick).unwrap();
    let (start, end) = spec.outage_windows()[0];
    let back_after = 600.0;
    let records: Vec<RequestRecord> = (0..300)
        .map(|i| {
            let at = i as f64 * 10.0;
            let t = ms(at);
            if t < start || t >= end + ms(back_after) {
                record(i, at, 20.0, "primary", 0, trail(&[("primary", "ok")]))
            } else if t < start + ms(40.0) {
                record(
                    i,
                    at,
                    22.0,
                    "secondary",
                    1,
                    trail(&[("primary", "connect"), ("secondary", "ok")]),
                )
            } else {
                record(
                    i,
                    at,
                    20.5,
                    "secondary",
                    1,
                    trail(&[("primary", "circuit_open"), ("secondary", "ok")]),
                )
            }
        })
        .collect();
    let mut run = run_of("recovery", records, &[("primary", 200), ("secondary", 100)]);
    let report = Report::build("v", true, &[baseline(), run.clone()]);
    let s = &report.scenarios[1];
    assert_eq!(s.time_to_recover_ms, Some(back_after));
    assert_eq!(s.time_to_detect_ms, Some(40.0));
    assert_eq!(s.outages_ms.len(), 1);
    assert!(
        check_targets(&report).is_empty(),
        "{:?}",
        check_targets(&report)
    );

    // The primary never answers again.
    for r in &mut run.records {
        if r.intended_at >= end {
            r.model = Some("secondary".into());
            r.fallback_level = Some(1);
        }
    }
    let report = Report::build("v", true, &[baseline(), run]);
    assert_eq!(report.scenarios[1].time_to_recover_ms, None);
    let missed = check_targets(&report);
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0].figure, "time_to_recover_ms");
    assert!(
        missed[0].to_string().contains("never came back"),
        "{}",
        missed[0]
    );
}

#[test]
fn one_failure_in_thousands_still_misses_the_success_rate() {
    let mut records: Vec<RequestRecord> = (0..3000)
        .map(|i| {
            record(
                i,
                i as f64,
                20.0,
                "secondary",
                1,
                trail(&[("primary", "circuit_open"), ("secondary", "ok")]),
            )
        })
        .collect();
    records[1500].outcome = Outcome::FailedClean { status: 503 };
    let report = Report::build("v", false, &[run_of("primary_down", records, &[])]);
    assert!(report.scenarios[0].success_rate < 1.0);
    let missed: Vec<String> = check_targets(&report)
        .into_iter()
        .map(|m| m.figure)
        .collect();
    assert!(missed.contains(&"success_rate".to_owned()), "{missed:?}");
}

#[test]
fn content_policy_expects_exactly_the_flagged_to_fail_clean() {
    let records: Vec<RequestRecord> = (0..8)
        .map(|i| {
            let mut r = record(
                i,
                i as f64 * 10.0,
                20.0,
                "primary",
                0,
                trail(&[("primary", "ok")]),
            );
            if i % 4 == 3 {
                r.flagged = true;
                r.outcome = Outcome::FailedClean { status: 400 };
            }
            r
        })
        .collect();
    let run = run_of(
        "content_policy",
        records,
        &[("primary", 8), ("secondary", 0)],
    );
    let report = Report::build("v", true, std::slice::from_ref(&run));
    assert_eq!(report.scenarios[0].failed_clean, 2);
    assert!(
        check_targets(&report).is_empty(),
        "{:?}",
        check_targets(&report)
    );

    let mut wrong = run;
    wrong.records[0].outcome = Outcome::FailedClean { status: 400 };
    let report = Report::build("v", true, &[wrong]);
    let figures: Vec<String> = check_targets(&report)
        .into_iter()
        .map(|m| m.figure)
        .collect();
    assert_eq!(figures, ["failed_clean", "succeeded"]);
}

#[test]
fn report_json_has_the_contract_shape() {
    let contract: Value = serde_json::from_str(
        r#"{"version": "...", "quick": false, "scenarios": [{
          "name": "primary_down", "requests": 2000, "succeeded": 2000, "failed_clean": 0, "lost": 0,
          "success_rate": 1.0,
          "latency_ms": {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0},
          "baseline_latency_ms": {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0},
          "failover_added_ms": {"p50": 0.0, "p95": 0.0, "p99": 0.0},
          "time_to_detect_ms": 0.0, "time_to_recover_ms": null,
          "upstream_attempts": {"primary": 0, "secondary": 0},
          "retry_amplification": 1.0,
          "fallback_levels": {"0": 0, "1": 2000}}]}"#,
    )
    .unwrap();
    let report = Report::build("0.1.0", false, &[baseline(), primary_down()]);
    let ours = serde_json::to_value(&report).unwrap();
    for key in ["version", "quick", "scenarios"] {
        assert!(ours.get(key).is_some(), "missing {key}");
    }
    let theirs = &contract["scenarios"][0];
    let mine = &ours["scenarios"][1];
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    for (key, value) in theirs.as_object().unwrap() {
        let got = mine.get(key).unwrap_or_else(|| panic!("missing {key}"));
        if !value.is_null() && !got.is_null() {
            assert_eq!(kind(got), kind(value), "{key}");
        }
        if let (Some(a), Some(b)) = (value.as_object(), got.as_object())
            && key != "upstream_attempts"
            && key != "fallback_levels"
        {
            let ka: Vec<&String> = a.keys().collect();
            let kb: Vec<&String> = b.keys().collect();
            assert_eq!(ka, kb, "{key}");
        }
    }
    assert_eq!(mine["upstream_attempts"]["primary"], 0);
    assert_eq!(mine["upstream_attempts"]["secondary"], 100);
    // It reads back.
    let back: Report = serde_json::from_value(ours).unwrap();
    assert_eq!(back, report);
}

#[test]
fn files_are_written() {
    let runs = [baseline(), primary_down()];
    let report = Report::build("0.1.0", true, &runs);
    let dir = std::env::temp_dir().join(format!("backstop-chaos-report-{}", std::process::id()));
    let paths = write_report(&dir, &report, &runs).unwrap();
    let json: Value = serde_json::from_slice(&std::fs::read(&paths.json).unwrap()).unwrap();
    assert_eq!(json["scenarios"].as_array().unwrap().len(), 2);
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(
        md.contains("| `primary_down` | 100 | 100 | 0 | 0 | 100.0 % |"),
        "{md}"
    );
    assert!(md.contains("Every target met."));
    let svg = std::fs::read_to_string(&paths.timeline).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(svg.trim_end().ends_with("</svg>"));
    // One mark per answered request (each a zero-length stroke in a
    // path per role and shape), plus the legend.
    let marks: usize = svg
        .split(r#"class="answers" data-count=""#)
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(marks, 200);
    assert_eq!(svg.matches("h0").count(), 200);
    assert!(
        svg.contains("primary&apos;s scripted outage") || svg.contains("primary's scripted outage")
    );
    assert!(svg.contains("latency, ms (log)") && svg.contains("time since the load started, s"));
    // Each target with its measured value.
    assert!(
        md.contains("| `primary_down` | `lost` | 0 | = 0 | ✅ |"),
        "{md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dashboard_figures_go_to_report_json_and_md() {
    use backstop_chaos::{CircuitFigure, DashboardFigures, HistoryFigure};
    let mut down = primary_down();
    down.dashboard = Some(DashboardFigures {
        url: "http://127.0.0.1:1/dashboard".into(),
        generated_unix_ms: 11_000,
        load_start_unix_ms: 10_000,
        circuits: vec![CircuitFigure {
            model: "primary".into(),
            policy: "circuit".into(),
            state: "open".into(),
            since_ms: Some(40.0),
        }],
        step_ms: 5000,
        fallback_history: vec![HistoryFigure {
            end_ms: 1000.0,
            requests: 100,
            fallbacks: 100,
            errors: 0,
        }],
    });
    let runs = [baseline(), down];
    let report = Report::build("0.1.0", true, &runs);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["scenarios"][0].get("dashboard").is_none());
    let dash = &json["scenarios"][1]["dashboard"];
    assert_eq!(dash["circuits"][0]["state"], "open");
    assert_eq!(dash["fallback_history"][0]["fallbacks"], 100);
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
    let md = backstop_chaos::report::render_markdown(&report);
    assert!(
        md.contains(
            "  - dashboard at the end: primary (circuit) OPEN since +40 ms; \
             fallbacks/requests by 5 s step: 100/100\n"
        ),
        "{md}"
    );
}
