//! Fleet scenarios: three gateway replicas sharing one real `redis-server`
//! (`[state] backend = "redis"`), load spread round-robin over them, and
//! the figures that say whether the fleet behaves as one gateway:
//!
//! - `fleet_primary_down`: a primary that answers 500 from the start. How
//!   many calls reach it, fleet-wide, before every replica skips it
//!   (target: at most `min_calls` + 2). Run twice, with `backend =
//!   "redis"` and with `backend = "local"`, for comparison.
//! - `fleet_budget`: a rolling budget of the whole fleet. What the fleet
//!   spends against the cap (target: at most the cap plus the estimates of
//!   the requests in flight); the local backend, for comparison, lets each
//!   replica spend the cap.
//! - `fleet_rpm_quota`: the primary declares an `rpm` quota smaller than
//!   the load. What the upstream sees (target: at most its quota in the
//!   run, which lasts under a minute) and what callers get (target: no
//!   429, as the backup has room); the local backend, for comparison, lets
//!   each replica send the quota.
//! - `fleet_redis_restart`: Redis killed mid-run and restarted (empty),
//!   then the primary answers 429 with a long Retry-After. Nothing lost,
//!   no slower while the store is gone (target: p99 within `timeout_ms` of
//!   the p99 before), every replica back on the store after, and the
//!   cooldown shared again (fewer calls to the primary after its 429 than
//!   replicas: the replica that met it tells the others).
//!
//! The harness starts `redis-server` on a free loopback port and stops it
//! when the run ends, fails or panics (its guard kills it on drop); the
//! gateways are killed on drop too. Without `redis-server` installed, the
//! driver skips these scenarios and says why; asking for one by name is
//! then an error naming the Debian package.

mod load;
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use crate::answer::{KNOWN_TEXT, TEMPLATE_TEXT};
use crate::behaviour::{Api, Behaviour, ErrorKind};
use crate::error::ChaosError;
use crate::fake::{FakeProvider, FakeSpec};
use crate::process::{GatewayCommand, GatewayProcess};
use crate::scenario::Mode;
use crate::timeline::Timeline;

pub use backstop_fleet::testing::RedisServer;
pub use load::{FleetOutcome, FleetRecord};
pub use report::{FleetScenarioReport, render_fleet_markdown};

/// Every fleet scenario, in the order they run.
pub const FLEET_SCENARIO_NAMES: [&str; 4] = [
    "fleet_primary_down",
    "fleet_budget",
    "fleet_rpm_quota",
    "fleet_redis_restart",
];

/// Gateway replicas in a fleet.
pub const REPLICAS: usize = 3;

/// The variable the rendered configs read the store's URL from.
pub const REDIS_URL_ENV: &str = "BACKSTOP_CHAOS_REDIS_URL";

/// The breaker's `min_calls` in every fleet scenario.
const MIN_CALLS: u32 = 5;
/// `[state] timeout_ms`: above the default 20 ms, so a machine busy with
/// three replicas, the fakes and the load does not turn a slow answer
/// into a store failure (each replica then counting alone) mid-run.
const STORE_TIMEOUT_MS: u64 = 50;
/// Longest wait for a replica's `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// Longest wait after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A request unanswered this long after its intended time is lost.
const DEADLINE: Duration = Duration::from_secs(5);
/// Output-token bound of every request (and of the priced model).
const MAX_TOKENS: u32 = 64;
/// USD per 1k completion tokens of the budget scenario's primary.
const OUTPUT_COST_PER_1K: f64 = 1.0;

/// The `rpm` quota of `fleet_rpm_quota`'s primary: a third of the load of
/// a quick run, a tenth of a full one (both shorter than a minute).
fn rpm_quota(mode: Mode) -> u64 {
    match mode {
        Mode::Quick => 20,
        Mode::Full => 45,
    }
}

/// The store behind a fleet run: which backend, and the server when Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Redis,
    Local,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Local => "local",
        }
    }
}

/// The fleet scenarios asked for by `names` (all of them when `names` is
/// empty), in run order. A name that is not a fleet scenario is ignored
/// here (it is the outage catalog's).
pub fn plan(names: &[String]) -> Vec<&'static str> {
    FLEET_SCENARIO_NAMES
        .iter()
        .copied()
        .filter(|n| names.is_empty() || names.iter().any(|m| m == n))
        .collect()
}

/// Whether `redis-server` can be run; `Err` says why not.
pub fn redis_available() -> Result<(), String> {
    backstop_fleet::testing::program().map(|_| ()).ok_or_else(|| {
        "redis-server is not installed (Debian package `redis-server`; `cargo xtask test` installs it)"
            .to_owned()
    })
}

/// How big each scenario is.
#[derive(Debug, Clone, Copy)]
struct Size {
    rate_per_sec: f64,
    requests: u64,
}

fn size(name: &str, mode: Mode) -> Size {
    match (name, mode) {
        ("fleet_redis_restart", Mode::Quick) => Size {
            rate_per_sec: 60.0,
            requests: 300,
        },
        ("fleet_redis_restart", Mode::Full) => Size {
            rate_per_sec: 150.0,
            requests: 1500,
        },
        (_, Mode::Quick) => Size {
            rate_per_sec: 60.0,
            requests: 60,
        },
        (_, Mode::Full) => Size {
            rate_per_sec: 150.0,
            requests: 450,
        },
    }
}

/// The rolling cap of `fleet_budget`.
fn budget_cap(mode: Mode) -> f64 {
    match mode {
        Mode::Quick => 0.5,
        Mode::Full => 2.0,
    }
}

/// What a rendered fleet config needs.
struct Render<'a> {
    scenario: &'a str,
    primary_url: String,
    secondary_url: String,
    backend: Backend,
    /// Chain without the secondary: the primary, then the template.
    budget: Option<f64>,
    /// The primary's `rpm` quota.
    rpm: Option<u64>,
}

fn render(r: &Render<'_>) -> String {
    let mut toml = format!(
        r#"[server]
listen = "127.0.0.1:0"

[providers.fake_primary]
type = "openai"
base_url = "{primary}"

[providers.fake_secondary]
type = "openai"
base_url = "{secondary}"

[providers.rules]
type = "template"
text = "{template}"

[models.primary]
provider = "fake_primary"
model = "primary"
priority = 1
max_tokens = {MAX_TOKENS}
input_cost_per_1k = 0
output_cost_per_1k = {cost}

[models.secondary]
provider = "fake_secondary"
model = "secondary"
priority = 2

[scenarios.{scenario}]
chain = {chain}
retries = {{ same_model = 0 }}

[strategies]
health = {{ type = "circuit_breaker", min_calls = {MIN_CALLS}, failure_ratio = 0.5, window_ms = 10000, break_ms = 60000 }}
probe = {{ interval_ms = 500 }}
"#,
        primary = r.primary_url,
        secondary = r.secondary_url,
        template = TEMPLATE_TEXT,
        cost = if r.budget.is_some() {
            OUTPUT_COST_PER_1K
        } else {
            0.0
        },
        scenario = r.scenario,
        chain = if r.budget.is_some() {
            r#"["primary", "rules"]"#
        } else {
            r#"["primary", "secondary", "rules"]"#
        },
    );
    if let Some(rpm) = r.rpm {
        toml = toml.replace(
            "[models.secondary]",
            &format!("rpm = {rpm}\n\n[models.secondary]"),
        );
    }
    if let Some(cap) = r.budget {
        toml.push_str(&format!(
            "budget = {{ type = \"rolling\", max_cost = {cap} }}\n"
        ));
    }
    if r.backend == Backend::Redis {
        toml.push_str(&format!(
            "\n[state]\nbackend = \"redis\"\nurl_env = \"{REDIS_URL_ENV}\"\nkey_prefix = \"chaos-{}\"\ntimeout_ms = {STORE_TIMEOUT_MS}\n",
            r.scenario
        ));
    }
    toml
}

/// Runs the fleet scenarios `names` with the gateway `gateway`, writing
/// configs and logs under `out_dir`. Starts (and always stops) one
/// `redis-server` per scenario.
pub async fn run(
    names: &[&'static str],
    mode: Mode,
    gateway: &GatewayCommand,
    out_dir: &Path,
    progress: bool,
) -> Result<Vec<FleetScenarioReport>, ChaosError> {
    let mut reports = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let backends: &[Backend] = match *name {
            "fleet_primary_down" | "fleet_budget" | "fleet_rpm_quota" => {
                &[Backend::Redis, Backend::Local]
            }
            _ => &[Backend::Redis],
        };
        for &backend in backends {
            if progress {
                eprintln!(
                    "[fleet {}/{}] {name} ({} backend, {REPLICAS} replicas)",
                    i + 1,
                    names.len(),
                    backend.name()
                );
            }
            let started = Instant::now();
            let report = run_one(name, backend, mode, gateway, out_dir)
                .await
                .map_err(|source| ChaosError::Scenario {
                    scenario: format!("{name} ({})", backend.name()),
                    source: Box::new(source),
                })?;
            if progress {
                eprintln!(
                    "        {} requests: {} ok, {} clean errors, {} lost in {:.1} s",
                    report.requests,
                    report.succeeded,
                    report.failed_clean,
                    report.lost,
                    started.elapsed().as_secs_f64()
                );
            }
            reports.push(report);
        }
    }
    Ok(reports)
}

/// Starts `redis-server` off the async threads (it waits for the port).
async fn start_redis() -> Result<RedisServer, ChaosError> {
    tokio::task::spawn_blocking(RedisServer::try_start)
        .await
        .map_err(|e| ChaosError::Fleet(format!("starting redis-server: {e}")))?
        .map_err(ChaosError::Fleet)
}

async fn run_one(
    name: &'static str,
    backend: Backend,
    mode: Mode,
    gateway: &GatewayCommand,
    out_dir: &Path,
) -> Result<FleetScenarioReport, ChaosError> {
    let size = size(name, mode);
    let run_for = Duration::from_secs_f64(size.requests as f64 / size.rate_per_sec);
    // The restart scenario's script, as fractions of the run.
    let kill_at = run_for.mul_f64(0.2);
    let restart_at = run_for.mul_f64(0.3);
    let fail_at = run_for.mul_f64(0.7);
    let primary_schedule = match name {
        "fleet_primary_down" => Timeline::steady(Behaviour::Error(ErrorKind::Server)),
        "fleet_redis_restart" => Timeline::healthy().then_at(
            fail_at,
            Behaviour::Error(ErrorKind::RateLimited {
                retry_after: Some(Duration::from_secs(60)),
            }),
        ),
        _ => Timeline::healthy(),
    };
    let primary = FakeProvider::start(
        FakeSpec::new("primary", Api::OpenAi)
            .schedule(primary_schedule)
            .hold_max(Duration::from_secs(10)),
    )
    .await?;
    let secondary = FakeProvider::start(FakeSpec::new("secondary", Api::OpenAi)).await?;
    let result = drive(
        name, backend, mode, size, gateway, out_dir, &primary, &secondary, kill_at, restart_at,
        fail_at,
    )
    .await;
    primary.shutdown().await;
    secondary.shutdown().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    name: &'static str,
    backend: Backend,
    mode: Mode,
    size: Size,
    gateway: &GatewayCommand,
    out_dir: &Path,
    primary: &FakeProvider,
    secondary: &FakeProvider,
    kill_at: Duration,
    restart_at: Duration,
    fail_at: Duration,
) -> Result<FleetScenarioReport, ChaosError> {
    // Stopped on drop: an early return or a panic below kills it.
    let redis = match backend {
        Backend::Redis => Some(start_redis().await?),
        Backend::Local => None,
    };
    let budget = (name == "fleet_budget").then(|| budget_cap(mode));
    let rpm = (name == "fleet_rpm_quota").then(|| rpm_quota(mode));
    let toml = render(&Render {
        scenario: name,
        primary_url: primary.api_base_url(),
        secondary_url: secondary.api_base_url(),
        backend,
        budget,
        rpm,
    });
    let stem = format!("{name}-{}", backend.name());
    let config = out_dir.join("configs").join(format!("{stem}.toml"));
    std::fs::write(&config, toml).map_err(|source| ChaosError::Write {
        path: config.clone(),
        source,
    })?;
    let gateway = match &redis {
        Some(redis) => gateway.clone().env(REDIS_URL_ENV, redis.url()),
        None => gateway.clone(),
    };
    gateway.check(&config).await?;
    let mut replicas: Vec<GatewayProcess> = Vec::with_capacity(REPLICAS);
    for i in 0..REPLICAS {
        let log = out_dir.join("logs").join(format!("{stem}-{i}.log"));
        replicas.push(gateway.serve(&config, &log, READY_WITHIN).await?);
    }
    if backend == Backend::Redis {
        for replica in &replicas {
            wait_store_up(replica, Duration::from_secs(10)).await;
        }
    }
    let urls: Vec<String> = replicas.iter().map(GatewayProcess::base_url).collect();
    let expected = vec![
        ("primary".to_owned(), KNOWN_TEXT.to_owned()),
        ("secondary".to_owned(), KNOWN_TEXT.to_owned()),
        ("rules".to_owned(), TEMPLATE_TEXT.to_owned()),
    ];
    let plan = load::FleetLoad {
        replicas: &urls,
        scenario: name,
        rate_per_sec: size.rate_per_sec,
        requests: size.requests,
        max_tokens: MAX_TOKENS,
        deadline: DEADLINE,
        expected: &expected,
    };
    let epoch = Instant::now() + Duration::from_millis(5);
    primary.arm(epoch);
    secondary.arm(epoch);

    let mut redis = redis;
    let mut store_down: Option<(Duration, Duration)> = None;
    let (records, in_flight_max) = if name == "fleet_redis_restart" {
        let server = redis
            .take()
            .ok_or_else(|| ChaosError::Fleet("no redis-server to kill".into()))?;
        let chaos = async move {
            tokio::time::sleep_until(epoch + kill_at).await;
            let mut server = server;
            server.stop();
            let killed = epoch.elapsed();
            tokio::time::sleep_until(epoch + restart_at).await;
            let restarted = tokio::task::spawn_blocking(move || {
                let result = server.try_restart();
                (server, result)
            })
            .await;
            (killed, epoch.elapsed(), restarted)
        };
        let (load, (killed, restarted_at, restarted)) =
            tokio::join!(load::drive(&plan, epoch), chaos);
        let (server, result) =
            restarted.map_err(|e| ChaosError::Fleet(format!("restarting redis-server: {e}")))?;
        redis = Some(server);
        result.map_err(ChaosError::Fleet)?;
        store_down = Some((killed, restarted_at));
        load?
    } else {
        load::drive(&plan, epoch).await?
    };

    // After the load: every replica's view of the store.
    let mut store_up_after = 0;
    if backend == Backend::Redis {
        for replica in &replicas {
            if wait_store_up(replica, Duration::from_secs(5)).await {
                store_up_after += 1;
            }
        }
    }
    for replica in replicas {
        let _ = replica.stop(STOP_GRACE).await;
    }
    drop(redis);

    let primary_log = primary.requests();
    let mut report = FleetScenarioReport::new(name, backend.name(), &records);
    let calls = |from: Duration| -> f64 {
        primary_log
            .iter()
            .filter(|r| !r.probe && r.at >= from)
            .count() as f64
    };
    let min_calls = f64::from(MIN_CALLS);
    match name {
        "fleet_primary_down" => {
            let fleet_calls = calls(Duration::ZERO);
            report.figure("primary_calls", fleet_calls);
            report.figure("min_calls", min_calls);
            report.headline =
                format!("primary called {fleet_calls} times fleet-wide (min_calls {MIN_CALLS})");
            report.summary = format!(
                "a primary answering 500 from the start, {REPLICAS} replicas, {} backend",
                backend.name()
            );
            if backend == Backend::Redis {
                report.target(report::at_most(
                    "primary_calls",
                    fleet_calls,
                    min_calls + 2.0,
                    "min_calls + 2",
                ));
            }
        }
        "fleet_rpm_quota" => {
            let quota = rpm.unwrap_or(0) as f64;
            let seen = calls(Duration::ZERO);
            let rate_limited = records
                .iter()
                .filter(|r| r.outcome == FleetOutcome::Clean { status: 429 })
                .count() as f64;
            report.figure("primary_requests", seen);
            report.figure("rpm", quota);
            report.figure("callers_429", rate_limited);
            report.headline = format!(
                "the primary saw {seen} requests against an rpm of {quota} (the run lasts under a minute); {rate_limited} callers got 429"
            );
            report.summary = format!(
                "a primary with rpm = {quota} under {:.0} requests a minute, a backup with room, {REPLICAS} replicas, {} backend",
                size.rate_per_sec * 60.0,
                backend.name()
            );
            if backend == Backend::Redis {
                report.target(report::at_most(
                    "primary_requests",
                    seen,
                    quota,
                    "rpm: the run lasts under a minute",
                ));
            }
            report.target(report::at_most(
                "callers_429",
                rate_limited,
                0.0,
                "none while the backup has room",
            ));
        }
        "fleet_budget" => {
            let cap = budget.unwrap_or(0.0);
            let spend: f64 = records
                .iter()
                .filter_map(|r| match &r.outcome {
                    FleetOutcome::Answered {
                        model,
                        completion_tokens,
                    } if model == "primary" => {
                        Some(*completion_tokens as f64 * OUTPUT_COST_PER_1K / 1000.0)
                    }
                    _ => None,
                })
                .sum();
            let estimate = f64::from(MAX_TOKENS) * OUTPUT_COST_PER_1K / 1000.0;
            let bound = cap + in_flight_max as f64 * estimate;
            report.figure("spend_usd", spend);
            report.figure("cap_usd", cap);
            report.figure("in_flight_max", in_flight_max as f64);
            report.figure("estimate_usd", estimate);
            report.figure("primary_calls", calls(Duration::ZERO));
            report.headline = format!(
                "spent ${spend:.3} of a ${cap:.2} cap ({:.2}x)",
                spend / cap.max(f64::MIN_POSITIVE)
            );
            report.summary = format!(
                "a rolling budget of ${cap:.2}, {REPLICAS} replicas, {} backend",
                backend.name()
            );
            if backend == Backend::Redis {
                report.target(report::at_most(
                    "spend_usd",
                    spend,
                    bound,
                    "cap + in-flight estimates",
                ));
            }
        }
        _ => {
            let (killed, restarted) = store_down.unwrap_or_default();
            let before = report::p99_ms(records.iter().filter(|r| r.intended_at < killed));
            let during = report::p99_ms(
                records
                    .iter()
                    .filter(|r| r.intended_at >= killed && r.intended_at < restarted),
            );
            let after_failure = calls(fail_at);
            report.figure(
                "store_down_ms",
                restarted.saturating_sub(killed).as_secs_f64() * 1000.0,
            );
            report.figure("replicas_store_up_after", f64::from(store_up_after));
            report.figure("primary_calls_after_failure", after_failure);
            report.headline = format!(
                "store down {:.0} ms; {store_up_after}/{REPLICAS} replicas back; primary called {after_failure} times after it failed",
                restarted.saturating_sub(killed).as_secs_f64() * 1000.0
            );
            report.summary = format!(
                "Redis killed at {:.1} s and restarted empty at {:.1} s, then the primary answers 429 (Retry-After 60 s) from {:.1} s",
                killed.as_secs_f64(),
                restarted.as_secs_f64(),
                fail_at.as_secs_f64()
            );
            if let (Some(before), Some(during)) = (before, during) {
                report.figure("p99_before_ms", before);
                report.figure("p99_store_down_ms", during);
                report.target(report::at_most(
                    "p99_store_down_ms",
                    during,
                    before + STORE_TIMEOUT_MS as f64,
                    "p99 before + timeout_ms",
                ));
            }
            report.target(report::at_least(
                "replicas_store_up_after",
                f64::from(store_up_after),
                REPLICAS as f64,
            ));
            report.target(report::at_most(
                "primary_calls_after_failure",
                after_failure,
                (REPLICAS - 1) as f64,
                "fewer than one per replica",
            ));
        }
    }
    report.finish();
    Ok(report)
}

/// Polls `/metrics` until the replica says its store is up; whether it did
/// within `limit`.
async fn wait_store_up(replica: &GatewayProcess, limit: Duration) -> bool {
    let url = format!("{}/metrics", replica.origin());
    let Ok(client) = reqwest::Client::builder().no_proxy().build() else {
        return false;
    };
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Ok(response) = client.get(&url).send().await
            && let Ok(text) = response.text().await
            && text.contains("backstop_state_store_up{backend=\"redis\"} 1")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Requests per outcome, for the report.
fn tally(records: &[FleetRecord]) -> (u64, u64, u64, BTreeMap<String, u64>) {
    let mut ok = 0;
    let mut clean = 0;
    let mut lost = BTreeMap::new();
    for r in records {
        match &r.outcome {
            FleetOutcome::Answered { .. } => ok += 1,
            FleetOutcome::Clean { .. } => clean += 1,
            FleetOutcome::Lost(reason) => *lost.entry(reason.clone()).or_insert(0) += 1,
        }
    }
    let lost_total = lost.values().sum();
    (ok, clean, lost_total, lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_keeps_fleet_names_in_order_and_ignores_the_others() {
        assert_eq!(plan(&[]), FLEET_SCENARIO_NAMES);
        let names = vec!["fleet_redis_restart".to_owned(), "primary_down".to_owned()];
        assert_eq!(plan(&names), ["fleet_redis_restart"]);
        assert!(plan(&["primary_down".to_owned()]).is_empty());
    }

    #[test]
    fn a_redis_config_names_the_url_variable_and_a_local_one_has_no_state() {
        let r = Render {
            scenario: "fleet_budget",
            primary_url: "http://127.0.0.1:1/v1".into(),
            secondary_url: "http://127.0.0.1:2/v1".into(),
            backend: Backend::Redis,
            budget: Some(0.5),
            rpm: None,
        };
        let toml = render(&r);
        assert!(
            toml.contains("url_env = \"BACKSTOP_CHAOS_REDIS_URL\""),
            "{toml}"
        );
        assert!(toml.contains("max_cost = 0.5"), "{toml}");
        assert!(toml.contains(r#"chain = ["primary", "rules"]"#), "{toml}");
        let local = render(&Render {
            backend: Backend::Local,
            budget: None,
            rpm: Some(20),
            ..r
        });
        assert!(!local.contains("[state]"), "{local}");
        assert!(local.contains(r#"chain = ["primary", "secondary", "rules"]"#));
        assert!(
            local.contains("rpm = 20\n\n[models.secondary]"),
            "the quota is the primary's: {local}"
        );
    }
}
