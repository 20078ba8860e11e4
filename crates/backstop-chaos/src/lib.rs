//! # backstop-chaos
//!
//! Proves that Backstop keeps answering when models fail: fake LLM
//! providers that fail on purpose, the catalog of outage scenarios, an
//! open-loop load generator that checks every answer, and the report.
//!
//! [`driver::run`] (behind `cargo xtask chaos` and the gateway's
//! `chaos_quick` test) runs each scenario in four steps, against the
//! `backstop` binary it is given by path ([`GatewayCommand`]: `backstop
//! check` on the rendered config, `backstop serve --listen 127.0.0.1:0`,
//! SIGTERM then SIGKILL, killed on drop):
//!
//! 1. `let spec = scenario(name, mode)?;` (or [`catalog`]) and
//!    `let fakes = spec.start_fakes().await?;` start the scenario's fake
//!    providers on 127.0.0.1 ephemeral ports;
//! 2. [`render_config`]`(&spec, &fakes.urls(), &RenderOptions { listen })`
//!    gives the Backstop config (TOML) that serves the scenario under its
//!    own name; the driver writes it, starts the gateway with
//!    [`FAKE_KEY_ENV`] set to [`FAKE_KEY`], and waits for `/readyz`;
//! 3. [`ScenarioRunner::run`]`(&spec, &fakes, "http://127.0.0.1:PORT/v1")`
//!    arms the fakes' timelines at the load's epoch, drives open-loop load
//!    at the gateway, checks every answer and collects what the fakes saw;
//! 4. [`Report::build`]`(version, quick, &runs)` (run `baseline` first: it
//!    is every scenario's latency reference) gives `report.json`'s contract
//!    shape, [`write_report`] writes `report.json`, `report.md` and
//!    `timeline.svg`, and [`check_targets`] lists every missed target,
//!    naming scenario and figure.
//!
//! The parts stand alone too: [`FakeProvider`] for any test that needs an
//! upstream that fails in a precise way (with [`fake::mock`] building
//! wiremock responses in OpenAI's and Anthropic's shapes), and
//! [`LoadGenerator`] for fixed-rate load at any OpenAI-compatible URL.

pub mod answer;
pub mod behaviour;
pub mod dashboard;
pub mod driver;
pub mod error;
pub mod fake;
pub mod fleet;
pub mod load;
pub mod process;
pub mod report;
pub mod run;
pub mod scenario;
pub mod timeline;

pub use answer::{FLAGGED_MARKER, KNOWN_TEXT, TEMPLATE_TEXT};
pub use behaviour::{Api, Behaviour, ErrorKind, Pacing, Prefill};
pub use dashboard::{CircuitFigure, DashboardFigures, HistoryFigure};
pub use driver::{ChaosOutcome, DriverOptions};
pub use error::{ChaosError, ConfigError, FakeError, GatewayError, LoadError, ReportError};
pub use fake::{Backend, FakeProvider, FakeSet, FakeSpec, FakeStats, ServedRequest};
pub use load::{AnswerCheck, LoadGenerator, LoadPlan, LoadRun, Outcome, RequestRecord, Target};
pub use process::{GatewayCommand, GatewayProcess, Stopped};
pub use report::{MissedTarget, Report, ScenarioReport, check_targets, write_report};
pub use run::{FakeRun, ScenarioRun, ScenarioRunner};
pub use scenario::{
    FAKE_KEY, FAKE_KEY_ENV, Mode, RenderOptions, SCENARIO_NAMES, ScenarioSpec, catalog,
    render_config, scenario,
};
pub use timeline::{Phase, PhaseMode, Schedule, Timeline};
