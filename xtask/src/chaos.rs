//! `cargo xtask chaos`: builds the gateway in release, runs the outage
//! scenarios of `backstop-chaos` through it (fake providers on 127.0.0.1,
//! no keys, no network), prints the report table, writes `report.json`,
//! `report.md` and `timeline.svg`, and exits 1 naming every missed target.

use std::path::PathBuf;
use std::process::ExitCode;

use backstop_chaos::driver::{self, DriverOptions};
use backstop_chaos::fleet::{FLEET_SCENARIO_NAMES, render_fleet_markdown};
use backstop_chaos::report::render_markdown;
use backstop_chaos::{Mode, SCENARIO_NAMES};
use clap::Args;

use crate::{TaskError, build, workspace_root};

/// `cargo xtask chaos` options.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Reduced sizes (CI): under 30 s for the whole catalog.
    #[arg(long)]
    quick: bool,
    /// Run only this scenario (repeatable); `baseline` always runs too.
    /// The `fleet_*` scenarios need `redis-server`.
    #[arg(long = "scenario", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(SCENARIO_NAMES.iter().chain(FLEET_SCENARIO_NAMES.iter()).copied()))]
    scenarios: Vec<String>,
    /// Where the report goes [default: target/chaos/].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// No progress bars or per-scenario lines on stderr.
    #[arg(long)]
    no_progress: bool,
    /// Keep the last scenario's gateway (and its dashboard) up this many
    /// seconds after its load.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    hold: u64,
}

/// Runs the chaos benchmark; exit 0 when every target is met, 1 when one
/// is missed.
pub fn run(args: &ChaosArgs) -> Result<ExitCode, TaskError> {
    let binary = build::release_gateway()?;
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("target").join("chaos"));
    let mode = if args.quick { Mode::Quick } else { Mode::Full };
    let mut options = DriverOptions::new(binary, mode, &out_dir);
    options.scenarios.clone_from(&args.scenarios);
    options.progress = !args.no_progress;
    options.version = build::version();
    options.hold_last = std::time::Duration::from_secs(args.hold);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| TaskError::new("cannot start the async runtime", e))?;
    let outcome = runtime
        .block_on(driver::run(&options))
        .map_err(|e| TaskError::new("chaos run failed", e))?;

    let markdown = render_markdown(&outcome.report);
    // The table (and the lines right after it) is what a person reads.
    let table: Vec<&str> = markdown
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    println!("{}", table.join("\n"));
    println!();
    let report = &outcome.report;
    if let Some(why) = &report.fleet_skipped {
        println!("fleet scenarios skipped: {why}");
        println!();
    } else if !report.fleet.is_empty() {
        let fleet = render_fleet_markdown(&report.fleet, None);
        let table: Vec<&str> = fleet
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .collect();
        println!("{}", table.join("\n"));
        println!();
    }
    println!(
        "{} scenarios and {} fleet runs ({} mode) in {:.1} s; report: {}, {}, {}",
        outcome.report.scenarios.len(),
        outcome.report.fleet.len(),
        if args.quick { "quick" } else { "full" },
        outcome.elapsed.as_secs_f64(),
        outcome.paths.json.display(),
        outcome.paths.markdown.display(),
        outcome.paths.timeline.display(),
    );
    if outcome.missed.is_empty() {
        println!("every target met");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} target(s) missed:", outcome.missed.len());
        for missed in &outcome.missed {
            eprintln!("  {missed}");
        }
        Ok(ExitCode::FAILURE)
    }
}
