//! The outage chaos scenarios as a CI test: every scenario of
//! `backstop-chaos`, at quick size, through the real `backstop` binary
//! (this package's debug build), one after another in one test.
//!
//! It holds the gateway to the correctness targets of the chaos benchmark:
//! nothing lost, every request answered wherever a model or the template
//! can answer, clean errors only where the scenario expects them (the
//! flagged prompts of `content_policy`), answers only from the models the
//! scenario expects, and traffic back on a recovered primary. Latency
//! targets are not asserted here: a debug build on a shared CI machine
//! says nothing about them; `cargo xtask chaos` measures them in release.
//!
//! `.config/nextest.toml` runs this test alone with a long timeout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backstop_chaos::driver::{self, DriverOptions};
use backstop_chaos::{Mode, SCENARIO_NAMES};

/// The whole catalog takes about 25 s of load; the rest is bounded starts
/// and stops. Past this, something hangs.
const WHOLE_RUN_LIMIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chaos_scenario_keeps_answering_at_quick_size() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos_quick");
    let mut options = DriverOptions::new(env!("CARGO_BIN_EXE_backstop"), Mode::Quick, &out);
    // The fleet scenarios have their own test (chaos_fleet_quick.rs).
    options.fleet = false;
    let started = Instant::now();
    let outcome = tokio::time::timeout(WHOLE_RUN_LIMIT, driver::run(&options))
        .await
        .unwrap_or_else(|_| panic!("the chaos run took over {WHOLE_RUN_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("the chaos harness failed: {e}"));
    eprintln!(
        "{} scenarios in {:.1} s; report in {}",
        outcome.runs.len(),
        started.elapsed().as_secs_f64(),
        outcome.paths.markdown.display()
    );

    let names: Vec<&str> = outcome
        .report
        .scenarios
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, SCENARIO_NAMES, "every scenario ran, in order");

    let mut problems = Vec::new();
    for (report, run) in outcome.report.scenarios.iter().zip(&outcome.runs) {
        let name = &report.name;
        let expect = &run.spec.expect;
        let flagged = run.records.iter().filter(|r| r.flagged).count() as u64;
        assert!(report.requests > 0, "{name}: no request was sent");
        if report.lost != 0 {
            problems.push(format!(
                "{name}: {} lost ({:?})",
                report.lost, report.lost_reasons
            ));
        }
        if expect.all_answer && report.success_rate != 1.0 {
            problems.push(format!(
                "{name}: success_rate {} ({} of {} answered)",
                report.success_rate, report.succeeded, report.requests
            ));
        }
        let expected_clean = if expect.flagged_fail_clean {
            flagged
        } else {
            0
        };
        if report.failed_clean != expected_clean {
            problems.push(format!(
                "{name}: {} clean errors, expected {expected_clean}",
                report.failed_clean
            ));
        }
        if expect.flagged_fail_clean && report.succeeded != report.requests - flagged {
            problems.push(format!(
                "{name}: {} of {} unflagged requests answered",
                report.succeeded,
                report.requests - flagged
            ));
        }
        if report.anomalies.unexpected_model != 0 || report.anomalies.model_unknown != 0 {
            problems.push(format!(
                "{name}: answers from models other than {:?}: {:?}",
                expect.answered_by, report.answered_by
            ));
        }
        if expect.recover_within_ms.is_some() && report.time_to_recover_ms.is_none() {
            problems.push(format!(
                "{name}: traffic never came back to the primary after its outage"
            ));
        }
    }
    // The report carries the dashboard's figures, read from the gateway's
    // /v1/backstop/status before it stopped: with the primary refused for
    // the whole run, its circuit is open and the history counted fallbacks.
    let down = outcome
        .report
        .scenarios
        .iter()
        .find(|s| s.name == "primary_down")
        .unwrap_or_else(|| panic!("primary_down ran"));
    let dashboard = down
        .dashboard
        .as_ref()
        .unwrap_or_else(|| panic!("primary_down: no dashboard figures in the report"));
    let primary = run_primary(&outcome, "primary_down");
    assert!(
        dashboard
            .circuits
            .iter()
            .any(|c| c.model == primary && c.state == "open" && c.since_ms.is_some()),
        "primary_down: the dashboard does not show {primary}'s circuit open: {dashboard:?}"
    );
    let steps = &dashboard.fallback_history;
    assert!(
        steps.iter().map(|s| s.requests).sum::<u64>() >= down.requests,
        "primary_down: the history counts fewer requests than were sent: {steps:?}"
    );
    assert!(
        steps.iter().map(|s| s.fallbacks).sum::<u64>() >= down.succeeded,
        "primary_down: the history counts fewer fallbacks than the secondary answered: {steps:?}"
    );
    let markdown = std::fs::read_to_string(&outcome.paths.markdown)
        .unwrap_or_else(|e| panic!("cannot read report.md: {e}"));
    assert!(
        markdown.contains(&format!("  - dashboard at the end: {primary} (")),
        "report.md has no dashboard line for primary_down"
    );
    for (report, _) in outcome.report.scenarios.iter().zip(&outcome.runs) {
        assert!(
            report.dashboard.is_some(),
            "{}: no dashboard figures",
            report.name
        );
    }

    assert!(
        problems.is_empty(),
        "chaos correctness targets missed (report: {}):\n{}",
        outcome.paths.markdown.display(),
        problems.join("\n")
    );
}

/// The primary model's id of the run named `name`.
fn run_primary(outcome: &backstop_chaos::ChaosOutcome, name: &str) -> String {
    outcome
        .runs
        .iter()
        .find(|r| r.spec.name == name)
        .map(|r| r.spec.primary().to_owned())
        .unwrap_or_else(|| panic!("{name} ran"))
}
