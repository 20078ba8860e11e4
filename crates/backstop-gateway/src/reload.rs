//! Reload without a restart: `POST /v1/backstop/reload` and SIGHUP.
//!
//! Both read the configuration file the gateway was started with again and
//! build it exactly as `backstop check` does. A file with any problem
//! changes nothing: the gateway keeps serving what it served, the endpoint
//! answers 422 with every problem as `check` prints it (file, key path,
//! message), and SIGHUP logs them in one warning. A valid file is swapped
//! in whole: requests already running finish on the Router they started
//! with, new ones get the new one. Strategies whose table (and the model
//! table) did not change are handed over with their state — circuits,
//! budget windows, latency estimates, metrics — instead of being rebuilt
//! (see `backstop_config::ConfigFile::reload`). The background prober and
//! the log summary of the old configuration are stopped and started anew
//! for the new one; the fleet's store connection is kept. Keys only a
//! restart can change (`[server] listen`...) keep their running value and
//! are listed in the answer's `restart_required`, and logged.
//!
//! Reloads are serialised: a second one waits for the first to finish.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backstop_config::monitor::Metrics;
use backstop_config::{ConfigFile, Handover, Problems, Resolved};
use serde::Serialize;

use crate::app::{Gateway, Observability, Serving};
use crate::dashboard::HistoryObserver;
use crate::log_summary::LogSummary;
use crate::observe::{AlertObserver, MetricsObserver, StateObserver};

/// Reloads a gateway's configuration file, one reload at a time.
pub struct Reloader {
    file: ConfigFile,
    running: tokio::sync::Mutex<Running>,
    /// The dashboard's fallback history: kept across reloads, it follows
    /// the new metrics.
    history: Arc<HistoryObserver>,
}

/// What the configuration now serving keeps alive.
struct Running {
    handover: Handover,
    /// Dropping it stops the prober.
    prober: Option<backstop_config::monitor::ProberHandle>,
    /// Dropping it stops the summary.
    summary: Option<LogSummary>,
}

impl Running {
    /// Starts the background tasks of `resolved` on the current runtime.
    /// After a reload the prober's first round waits one interval, so that
    /// replacing it adds no round.
    fn start(resolved: &Resolved, reloaded: bool) -> Self {
        let prober = if reloaded {
            resolved
                .prober
                .clone()
                .first_round_after(resolved.probe.interval)
                .spawn(resolved.router.clone())
        } else {
            resolved.spawn_prober()
        };
        Self {
            handover: resolved.handover.clone(),
            prober: Some(prober),
            summary: summary(&resolved.metrics, resolved.server.log_summary),
        }
    }
}

fn summary(metrics: &Arc<Metrics>, every: Option<std::time::Duration>) -> Option<LogSummary> {
    every.map(|every| crate::log_summary::spawn(Arc::clone(metrics), every))
}

impl Reloader {
    /// Starts serving `resolved`, the first load of `file`: spawns its
    /// prober and log summary (on the current tokio runtime) and returns
    /// the reloader and what the gateway serves.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(file: ConfigFile, resolved: &Resolved) -> (Arc<Self>, Serving) {
        let running = Running::start(resolved, false);
        let reloader = Arc::new(Self {
            file,
            running: tokio::sync::Mutex::new(running),
            history: HistoryObserver::spawn(Arc::clone(&resolved.metrics)),
        });
        let serving = reloader.serving(resolved);
        (reloader, serving)
    }

    /// What the gateway serves of a resolved configuration.
    fn serving(&self, resolved: &Resolved) -> Serving {
        let mut observers: Vec<Arc<dyn Observability>> =
            vec![Arc::clone(&self.history) as Arc<dyn Observability>];
        observers.extend(self::observers(resolved));
        Serving {
            router: resolved.router.clone(),
            observers,
            simulated_models: simulated_models(resolved),
        }
    }

    /// Reads and builds the file again and, when it is valid, swaps it
    /// into `gateway`.
    pub(crate) async fn reload(&self, gateway: &Gateway) -> Result<Reloaded, ReloadError> {
        // Held to the end: reloads never interleave.
        let mut running = self.running.lock().await;
        let file = self.file.clone();
        let handover = running.handover.clone();
        // Reading the file, opening plugins and building are blocking work.
        let resolved = tokio::task::spawn_blocking(move || file.reload(&handover))
            .await
            .map_err(|e| ReloadError::Failed(e.to_string()))?
            .map_err(ReloadError::Invalid)?;
        self.history.follow(Arc::clone(&resolved.metrics));
        gateway.swap(self.serving(&resolved));
        if let Some(telemetry) = gateway.telemetry() {
            telemetry.follow(&resolved);
        }
        // The old prober and summary stop before the new ones start, so
        // two never probe side by side.
        running.prober = None;
        running.summary = None;
        *running = Running::start(&resolved, true);
        let reloaded = Reloaded::of(&self.file, &resolved);
        tracing::info!(
            scenarios = reloaded.scenarios.len(),
            models = reloaded.models.len(),
            kept = reloaded.kept.len(),
            built = reloaded.built.len(),
            "configuration reloaded"
        );
        if !reloaded.restart_required.is_empty() {
            let keys: Vec<&str> = reloaded
                .restart_required
                .iter()
                .map(|r| r.message.as_str())
                .collect();
            tracing::warn!(
                "configuration reloaded, but some changes need a restart: {}",
                keys.join("; ")
            );
        }
        Ok(reloaded)
    }
}

/// The contributors to `/metrics` and `/v1/backstop/status`.
fn observers(resolved: &Resolved) -> Vec<Arc<dyn Observability>> {
    vec![
        Arc::new(MetricsObserver(Arc::clone(&resolved.metrics))),
        Arc::new(AlertObserver(Arc::clone(&resolved.alerts))),
        Arc::new(StateObserver(resolved.fleet.clone())),
    ]
}

/// The models whose provider is of type `simulated`.
fn simulated_models(resolved: &Resolved) -> Vec<String> {
    let report = &resolved.report;
    report
        .models
        .iter()
        .filter(|m| {
            report
                .providers
                .iter()
                .any(|p| p.id == m.spec.provider && p.type_name == "simulated")
        })
        .map(|m| m.spec.id.clone())
        .collect()
}

/// What a reload did: the answer of `POST /v1/backstop/reload`.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    /// The file read.
    pub config: String,
    /// Scenarios now served, in file order.
    pub scenarios: Vec<String>,
    /// Models now served.
    pub models: Vec<String>,
    /// Whether the model table was unchanged (otherwise every strategy
    /// starts afresh: their state is indexed by it).
    pub models_unchanged: bool,
    /// What was handed over with its state.
    pub kept: Vec<String>,
    /// What was built anew.
    pub built: Vec<String>,
    /// Changes that wait for a restart; the running value stays.
    pub restart_required: Vec<RestartRequired>,
    /// The configuration's warnings, as `backstop check` prints them.
    pub warnings: Vec<String>,
}

/// A change that waits for a restart.
#[derive(Debug, Clone, Serialize)]
pub struct RestartRequired {
    /// The key (`server.listen`, `state`).
    pub key: String,
    /// The value the gateway runs with.
    pub running: String,
    /// The value the file now says.
    pub configured: String,
    /// All of it, for a person.
    pub message: String,
}

impl Reloaded {
    fn of(file: &ConfigFile, resolved: &Resolved) -> Self {
        let carried = resolved.handover.carried();
        Self {
            config: file.path().display().to_string(),
            scenarios: resolved
                .router
                .scenario_names()
                .iter()
                .map(|n| n.to_string())
                .collect(),
            models: resolved
                .router
                .models()
                .iter()
                .map(|m| m.id.clone())
                .collect(),
            models_unchanged: carried.models_unchanged,
            kept: carried.kept.clone(),
            built: carried.built.clone(),
            restart_required: carried
                .restart_required
                .iter()
                .map(|r| RestartRequired {
                    key: r.key.clone(),
                    running: r.running.clone(),
                    configured: r.configured.clone(),
                    message: r.to_string(),
                })
                .collect(),
            warnings: resolved.warnings.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has problems; the gateway keeps serving the previous
    /// configuration.
    #[error("the configuration was not reloaded: {}", one_line(.0))]
    Invalid(Problems),
    /// The gateway was not started from a configuration file.
    #[error("this gateway was not started from a configuration file: there is nothing to reload")]
    Unavailable,
    /// The reload could not run to its end.
    #[error("the reload failed: {0}")]
    Failed(String),
}

/// Every problem on one line, as `check` words each.
fn one_line(problems: &Problems) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Serialize)]
struct ProblemObject {
    /// As `backstop check` prints it.
    text: String,
    file: String,
    /// The key path (`scenarios.chat.chain[1]`), when at a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    message: String,
}

impl IntoResponse for ReloadError {
    fn into_response(self) -> Response {
        let (status, code, problems) = match &self {
            ReloadError::Invalid(problems) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                problems
                    .iter()
                    .map(|p| ProblemObject {
                        text: p.to_string(),
                        file: p.file.clone(),
                        key: p.path().map(ToString::to_string),
                        message: p.message.clone(),
                    })
                    .collect(),
            ),
            ReloadError::Unavailable => (StatusCode::NOT_IMPLEMENTED, "reload_unavailable", vec![]),
            ReloadError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "reload_failed", vec![]),
        };
        let message = match &self {
            ReloadError::Invalid(problems) => format!(
                "the configuration has {} problem{}; the gateway keeps serving the previous one",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
            other => other.to_string(),
        };
        let body = serde_json::json!({
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "code": code,
                "param": null,
                "problems": problems,
            }
        });
        json_response(status, &body)
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let body = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `POST /v1/backstop/reload`: 200 with what was kept, built and waits
/// for a restart; 422 with every problem of an invalid file (nothing
/// changed); 501 when the gateway has no file to reload.
pub async fn reload(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = gateway.keys().authenticate(&headers) {
        return e.into_response();
    }
    match gateway.reload().await {
        Ok(reloaded) => json_response(StatusCode::OK, &reloaded),
        Err(e) => {
            tracing::warn!("{e}");
            e.into_response()
        }
    }
}

/// Reloads `gateway` on every SIGHUP until the process ends; a refused
/// reload is one warning naming every problem.
#[cfg(unix)]
pub async fn reload_on_sighup(gateway: Arc<Gateway>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /v1/backstop/reload");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        if let Err(e) = gateway.reload().await {
            tracing::warn!("{e}");
        }
    }
}
