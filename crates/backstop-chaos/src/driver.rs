//! The chaos benchmark end to end: for each scenario, start its fakes,
//! render its config, have `backstop check` accept it, start `backstop
//! serve` on it, drive the load, stop the gateway; then build, write and
//! check the report. `cargo xtask chaos` and the gateway's `chaos_quick`
//! test are thin layers over [`run`].
//!
//! Scenarios run one after another, each against a gateway of its own
//! (fresh circuits, fresh latency estimates). `baseline` always runs first,
//! added when not asked for: it is every scenario's latency reference.
//! While a scenario runs, its gateway's `/dashboard` shows it live (the URL
//! is printed with the progress lines); when its load has finished, the
//! dashboard's figures (circuits, fallback history) are read from
//! `/v1/backstop/status` into the run, then the gateway stops.
//! The output directory gets `report.json`, `report.md`, `timeline.svg`,
//! and, per scenario, the rendered config (`configs/NAME.toml`) and the
//! gateway's log (`logs/NAME.log`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::dashboard;
use crate::error::ChaosError;
use crate::fake::FakeSet;
use crate::fleet::{self, FLEET_SCENARIO_NAMES};
use crate::load::Outcome;
use crate::process::{GatewayCommand, Stopped};
use crate::report::{MissedTarget, Report, ReportPaths, check_targets, write_report};
use crate::run::{ScenarioRun, ScenarioRunner};
use crate::scenario::{
    FAKE_KEY, FAKE_KEY_ENV, Mode, RenderOptions, SCENARIO_NAMES, ScenarioSpec, render_config,
    scenario,
};

/// The scenario every other one is measured against.
pub const BASELINE: &str = "baseline";

/// Longest wait from spawning the gateway to `/readyz` answering 200.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// Longest wait after SIGTERM before the gateway is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to run and where to write it.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// The `backstop` binary (and how to run it).
    pub gateway: GatewayCommand,
    /// Full or quick sizes.
    pub mode: Mode,
    /// Scenario names; empty runs the whole catalog.
    pub scenarios: Vec<String>,
    /// Where the report, configs and logs go.
    pub out_dir: PathBuf,
    /// Progress bars and one line per scenario on stderr.
    pub progress: bool,
    /// `report.json`'s version string.
    pub version: String,
    /// Run the fleet scenarios that `scenarios` selects (all of them when
    /// it is empty). Default on; without `redis-server` they are skipped
    /// (and named in the report) unless one was asked for by name.
    pub fleet: bool,
    /// Keep the last scenario's gateway serving this long after its load
    /// (its dashboard stays open to look at); zero by default.
    pub hold_last: Duration,
}

impl DriverOptions {
    /// Every scenario of `mode` with the binary at `binary`, written to
    /// `out_dir`, without progress output.
    pub fn new(binary: impl Into<PathBuf>, mode: Mode, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            gateway: GatewayCommand::new(binary),
            mode,
            scenarios: Vec::new(),
            out_dir: out_dir.into(),
            progress: false,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            fleet: true,
            hold_last: Duration::ZERO,
        }
    }
}

/// What a driver run produced.
#[derive(Debug, Clone)]
pub struct ChaosOutcome {
    /// `report.json`'s content.
    pub report: Report,
    /// Every missed target, naming scenario and figure.
    pub missed: Vec<MissedTarget>,
    /// Where the report files are.
    pub paths: ReportPaths,
    /// Every run's raw measurements, in run order.
    pub runs: Vec<ScenarioRun>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// The specs to run for `names` (empty: the catalog), in catalog order,
/// each once, with `baseline` first whether asked for or not. An unknown
/// name is an error naming the known ones.
pub fn plan(names: &[String], mode: Mode) -> Result<Vec<ScenarioSpec>, ChaosError> {
    for name in names {
        if !FLEET_SCENARIO_NAMES.contains(&name.as_str()) {
            scenario(name, mode)?;
        }
    }
    SCENARIO_NAMES
        .iter()
        .filter(|&&n| n == BASELINE || names.is_empty() || names.iter().any(|m| m == n))
        .map(|n| scenario(n, mode))
        .collect()
}

/// Runs the scenarios of `options`, writes the report and returns it with
/// the missed targets. A missed target is a measurement, not an error; an
/// error is the harness failing (a config the checker rejects, a gateway
/// that does not start or dies, a file that cannot be written).
pub async fn run(options: &DriverOptions) -> Result<ChaosOutcome, ChaosError> {
    let started = Instant::now();
    let specs = plan(&options.scenarios, options.mode)?;
    let fleet_names = if options.fleet {
        fleet::plan(&options.scenarios)
    } else {
        Vec::new()
    };
    let asked_for_fleet = options
        .scenarios
        .iter()
        .any(|n| FLEET_SCENARIO_NAMES.contains(&n.as_str()));
    let fleet_skipped = match fleet::redis_available() {
        Err(why) if asked_for_fleet => return Err(ChaosError::Fleet(why)),
        Err(why) if !fleet_names.is_empty() => Some(why),
        _ => None,
    };
    for dir in ["configs", "logs"] {
        let path = options.out_dir.join(dir);
        std::fs::create_dir_all(&path).map_err(|source| ChaosError::Write { path, source })?;
    }
    // Plain-text logs: they go to files.
    let gateway = options
        .gateway
        .clone()
        .env(FAKE_KEY_ENV, FAKE_KEY)
        .env("NO_COLOR", "1");
    let runner = ScenarioRunner::new().progress(options.progress);
    let mut runs = Vec::with_capacity(specs.len());
    let total = specs.len();
    for (i, spec) in specs.iter().enumerate() {
        if options.progress {
            eprintln!("[{}/{total}] {}: {}", i + 1, spec.name, spec.summary);
        }
        let scenario_started = Instant::now();
        let hold = if i + 1 == total {
            options.hold_last
        } else {
            Duration::ZERO
        };
        let run = run_scenario_holding(spec, &gateway, &runner, &options.out_dir, hold)
            .await
            .map_err(|source| ChaosError::Scenario {
                scenario: spec.name.to_owned(),
                source: Box::new(source),
            })?;
        if options.progress {
            eprintln!(
                "        {} in {:.1} s",
                tally(&run),
                scenario_started.elapsed().as_secs_f64()
            );
        }
        runs.push(run);
    }
    let mut report = Report::build(options.version.clone(), options.mode == Mode::Quick, &runs);
    if let Some(why) = &fleet_skipped {
        if options.progress {
            eprintln!("fleet scenarios skipped: {why}");
        }
        report.fleet_skipped = fleet_skipped.clone();
    } else if !fleet_names.is_empty() {
        report.fleet = fleet::run(
            &fleet_names,
            options.mode,
            &gateway,
            &options.out_dir,
            options.progress,
        )
        .await?;
    }
    let paths = write_report(&options.out_dir, &report, &runs)?;
    let missed = check_targets(&report);
    Ok(ChaosOutcome {
        report,
        missed,
        paths,
        runs,
        elapsed: started.elapsed(),
    })
}

/// `750 requests: 750 ok, 0 clean errors, 0 lost`.
fn tally(run: &ScenarioRun) -> String {
    let ok = run
        .records
        .iter()
        .filter(|r| r.outcome == Outcome::Succeeded)
        .count();
    let clean = run
        .records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::FailedClean { .. }))
        .count();
    let lost = run.records.len() - ok - clean;
    format!(
        "{} requests: {ok} ok, {clean} clean errors, {lost} lost",
        run.records.len()
    )
}

/// One scenario: fakes up, config checked, gateway up, load, gateway and
/// fakes down (also when a step fails).
pub async fn run_scenario(
    spec: &ScenarioSpec,
    gateway: &GatewayCommand,
    runner: &ScenarioRunner,
    out_dir: &Path,
) -> Result<ScenarioRun, ChaosError> {
    run_scenario_holding(spec, gateway, runner, out_dir, Duration::ZERO).await
}

/// [`run_scenario`], keeping the gateway (and its fakes) up for `hold`
/// after the load so that its dashboard can still be looked at.
pub async fn run_scenario_holding(
    spec: &ScenarioSpec,
    gateway: &GatewayCommand,
    runner: &ScenarioRunner,
    out_dir: &Path,
    hold: Duration,
) -> Result<ScenarioRun, ChaosError> {
    let fakes = spec.start_fakes().await?;
    let result = drive(spec, &fakes, gateway, runner, out_dir, hold).await;
    fakes.shutdown().await;
    result
}

async fn drive(
    spec: &ScenarioSpec,
    fakes: &FakeSet,
    gateway: &GatewayCommand,
    runner: &ScenarioRunner,
    out_dir: &Path,
    hold: Duration,
) -> Result<ScenarioRun, ChaosError> {
    let options = RenderOptions {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let toml = render_config(spec, &fakes.urls(), &options)?;
    let config = out_dir.join("configs").join(format!("{}.toml", spec.name));
    std::fs::write(&config, toml).map_err(|source| ChaosError::Write {
        path: config.clone(),
        source,
    })?;
    gateway.check(&config).await?;
    let log = out_dir.join("logs").join(format!("{}.log", spec.name));
    // Killed on drop: an error below (or a panic) leaves nothing running.
    let process = gateway.serve(&config, &log, READY_WITHIN).await?;
    tracing::debug!(scenario = spec.name, addr = %process.addr(), pid = process.pid(), "gateway ready");
    if runner.shows_progress() {
        eprintln!(
            "        dashboard: {}",
            dashboard::dashboard_url(process.addr())
        );
    }
    let mut run = runner.run(spec, fakes, &process.base_url()).await?;
    run.dashboard =
        Some(dashboard::fetch(process.addr(), runner.key(), run.load_start_unix_ms).await?);
    if !hold.is_zero() {
        eprintln!(
            "        holding the gateway for {} s: {}",
            hold.as_secs(),
            dashboard::dashboard_url(process.addr())
        );
        tokio::time::sleep(hold).await;
    }
    match process.stop(STOP_GRACE).await? {
        Stopped::Graceful(status) if !status.success() => {
            tracing::warn!(scenario = spec.name, %status, "the gateway exited with an error after SIGTERM");
        }
        Stopped::Killed => {
            tracing::warn!(
                scenario = spec.name,
                "the gateway ignored SIGTERM for {} s and was killed",
                STOP_GRACE.as_secs()
            );
        }
        Stopped::Graceful(_) => {}
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_puts_baseline_first_and_keeps_catalog_order() {
        let names = vec!["recovery".to_owned(), "primary_down".to_owned()];
        let specs = plan(&names, Mode::Quick).unwrap();
        let got: Vec<&str> = specs.iter().map(|s| s.name).collect();
        assert_eq!(got, ["baseline", "primary_down", "recovery"]);

        let all = plan(&[], Mode::Full).unwrap();
        assert_eq!(all.len(), SCENARIO_NAMES.len());
        assert_eq!(all[0].name, BASELINE);

        let twice = vec!["baseline".to_owned(), "baseline".to_owned()];
        assert_eq!(plan(&twice, Mode::Quick).unwrap().len(), 1);
    }

    #[test]
    fn plan_names_an_unknown_scenario() {
        let err = plan(&["primary_dwn".to_owned()], Mode::Quick).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("primary_dwn") && text.contains("primary_down"),
            "{text}"
        );
    }
}
