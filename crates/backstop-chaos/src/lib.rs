//! # backstop-chaos
//!
//! Proves that Backstop keeps answering when models fail: fake LLM
//! providers that fail on purpose, the catalog of outage scenarios, an
//! open-loop load generator that checks every answer, and the report.
//!
//! A driver (`cargo xtask chaos`) runs each scenario in four steps:
//!
//! 1. [`FakeSet::start`] the scenario's fake providers
//!    ([`ScenarioSpec::fakes`]) on loopback ports;
//! 2. [`render_config`] the Backstop config that points the gateway at them,
//!    write it, start the gateway and wait until it is ready;
//! 3. [`ScenarioRunner::run`] arms the fakes' timelines and drives load at
//!    the gateway's base URL, checking every answer;
//! 4. [`Report::build`] turns the runs into `report.json`'s contract shape,
//!    [`write_report`] writes `report.json`, `report.md` and
//!    `timeline.svg`, and [`check_targets`] lists every missed target.

pub mod answer;
pub mod behaviour;
pub mod error;
pub mod fake;
pub mod timeline;

pub use answer::{FLAGGED_MARKER, KNOWN_TEXT, TEMPLATE_TEXT};
pub use behaviour::{Api, Behaviour, ErrorKind, Pacing, Prefill};
pub use error::{ChaosError, ConfigError, FakeError, LoadError, ReportError};
pub use fake::{Backend, FakeProvider, FakeSet, FakeSpec, FakeStats, ServedRequest};
pub use timeline::{Phase, PhaseMode, Schedule, Timeline};
pub mod scenario;
pub use scenario::{
    FAKE_KEY, FAKE_KEY_ENV, Mode, RenderOptions, SCENARIO_NAMES, ScenarioSpec, catalog,
    render_config, scenario,
};
pub mod load;
pub use load::{AnswerCheck, LoadGenerator, LoadPlan, LoadRun, Outcome, RequestRecord, Target};
pub mod report;
pub mod run;
pub use report::{MissedTarget, Report, ScenarioReport, check_targets, write_report};
pub use run::{FakeRun, ScenarioRun, ScenarioRunner};
