//! The dashboard's figures at the end of a scenario, so that the report and
//! the gateway's live dashboard (`GET /dashboard`) can be compared.
//!
//! While a scenario runs, its gateway's dashboard shows it live (the driver
//! prints the URL when the gateway is ready). When the load has finished,
//! and before the gateway stops, [`fetch`] reads the document the page
//! draws, `GET /v1/backstop/status`, and keeps what the page's two main
//! figures are made of: each model's circuit state and since when (under
//! every health policy), and the fallback history in 5 s steps. Times are
//! kept as milliseconds since the load started, the report's own time
//! axis, next to the gateway's wall clock.
//!
//! The gateway's status types are `Serialize`-only and live in the
//! `backstop` binary's crate (which depends on this one for its tests), so
//! this module reads just the fields it keeps; a missing or renamed field
//! is an error naming it, not a silent gap.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::GatewayError;

/// Longest wait for the status document.
const FETCH_WITHIN: Duration = Duration::from_secs(10);

/// What the dashboard showed at the end of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardFigures {
    /// The page (`http://127.0.0.1:PORT/dashboard`); gone with the gateway.
    pub url: String,
    /// The gateway's wall clock (Unix ms) when the document was made.
    pub generated_unix_ms: u64,
    /// Wall clock (Unix ms) of the load's start: what the `*_ms` offsets
    /// below count from.
    pub load_start_unix_ms: u64,
    /// Every model's circuit under every health policy, by model id then
    /// policy.
    pub circuits: Vec<CircuitFigure>,
    /// The length of a history step.
    pub step_ms: u64,
    /// The fallback history, oldest first; the last step was in progress.
    pub fallback_history: Vec<HistoryFigure>,
}

/// One model's circuit under one health policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitFigure {
    /// The model id.
    pub model: String,
    /// The health policy's name.
    pub policy: String,
    /// `closed`, `open`, `half_open`, `cooling_down` or `disabled`.
    pub state: String,
    /// Since when it is in that state, in ms since the load started
    /// (negative: since before the load; `null` when the policy does not
    /// track it).
    pub since_ms: Option<f64>,
}

/// One step of the fallback history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistoryFigure {
    /// The step's end, in ms since the load started.
    pub end_ms: f64,
    /// Requests finished in the step.
    pub requests: u64,
    /// Requests a backup answered.
    pub fallbacks: u64,
    /// Requests that ended in an error.
    pub errors: u64,
}

impl DashboardFigures {
    /// The circuits that do not take calls (every state but `closed` and
    /// `half_open`).
    pub fn not_closed(&self) -> impl Iterator<Item = &CircuitFigure> {
        self.circuits
            .iter()
            .filter(|c| c.state != "closed" && c.state != "half_open")
    }

    /// One line for `report.md`: `primary (circuit_breaker) OPEN since
    /// +34 ms, secondary (circuit_breaker) closed since before the load;
    /// fallbacks/requests by 5 s step: 48/50, 12/12` (steps without
    /// requests left out).
    pub fn summary(&self) -> String {
        let circuits = self
            .circuits
            .iter()
            .map(|c| {
                let state = if c.state == "closed" {
                    c.state.clone()
                } else {
                    c.state.to_uppercase()
                };
                let since = match c.since_ms {
                    Some(ms) if ms >= 1000.0 => format!(" since +{:.1} s", ms / 1000.0),
                    Some(ms) if ms >= 0.0 => format!(" since +{ms:.0} ms"),
                    Some(_) => " since before the load".to_owned(),
                    None => String::new(),
                };
                format!("{} ({}) {state}{since}", c.model, c.policy)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let steps = self
            .fallback_history
            .iter()
            .filter(|s| s.requests > 0)
            .map(|s| format!("{}/{}", s.fallbacks, s.requests))
            .collect::<Vec<_>>();
        let steps = if steps.is_empty() {
            "no requests".to_owned()
        } else {
            steps.join(", ")
        };
        format!(
            "{circuits}; fallbacks/requests by {} s step: {steps}",
            self.step_ms as f64 / 1000.0
        )
    }
}

/// The fields of `/v1/backstop/status` kept here.
#[derive(Debug, Deserialize)]
struct StatusDoc {
    generated_unix_ms: u64,
    models: Vec<ModelDoc>,
    fallback_history: Option<HistoryDoc>,
}

#[derive(Debug, Deserialize)]
struct ModelDoc {
    id: String,
    health: BTreeMap<String, CircuitDoc>,
}

#[derive(Debug, Deserialize)]
struct CircuitDoc {
    state: String,
    since_unix_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct HistoryDoc {
    step_ms: u64,
    steps: Vec<StepDoc>,
}

#[derive(Debug, Deserialize)]
struct StepDoc {
    end_unix_ms: u64,
    errors: u64,
    fallbacks: u64,
    requests: u64,
}

/// Wall clock now, in Unix ms.
pub fn unix_ms_now() -> u64 {
    unix_ms(SystemTime::now())
}

/// `t` in Unix ms (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The dashboard page of a gateway listening at `addr`.
pub fn dashboard_url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}/dashboard")
}

fn offset_ms(unix_ms: u64, start: u64) -> f64 {
    // Unix ms fit an f64 exactly for the next few hundred thousand years.
    unix_ms as f64 - start as f64
}

/// Parses a status document's body into the dashboard's figures.
pub fn parse(
    body: &[u8],
    url: String,
    load_start_unix_ms: u64,
) -> Result<DashboardFigures, String> {
    let doc: StatusDoc = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let history = doc
        .fallback_history
        .ok_or("the document has no `fallback_history` (the gateway's history observer is off)")?;
    let circuits = doc
        .models
        .into_iter()
        .flat_map(|m| {
            let id = m.id;
            m.health.into_iter().map(move |(policy, c)| CircuitFigure {
                model: id.clone(),
                policy,
                state: c.state,
                since_ms: c.since_unix_ms.map(|t| offset_ms(t, load_start_unix_ms)),
            })
        })
        .collect();
    Ok(DashboardFigures {
        url,
        generated_unix_ms: doc.generated_unix_ms,
        load_start_unix_ms,
        circuits,
        step_ms: history.step_ms,
        fallback_history: history
            .steps
            .into_iter()
            .map(|s| HistoryFigure {
                end_ms: offset_ms(s.end_unix_ms, load_start_unix_ms),
                requests: s.requests,
                fallbacks: s.fallbacks,
                errors: s.errors,
            })
            .collect(),
    })
}

/// Reads the gateway's status document at `addr` (with `api_key` as the
/// bearer key, when it has one) and keeps the dashboard's figures, with
/// times relative to `load_start_unix_ms`.
pub async fn fetch(
    addr: std::net::SocketAddr,
    api_key: Option<&str>,
    load_start_unix_ms: u64,
) -> Result<DashboardFigures, GatewayError> {
    let status_url = format!("http://{addr}/v1/backstop/status");
    let error = |reason: String| GatewayError::Status {
        url: status_url.clone(),
        reason,
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(FETCH_WITHIN)
        .build()
        .map_err(|e| error(e.to_string()))?;
    let mut request = client.get(&status_url);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|e| error(e.to_string()))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| error(e.to_string()))?;
    if !status.is_success() {
        return Err(error(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    parse(&body, dashboard_url(addr), load_start_unix_ms).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
        "generated_unix_ms": 1000000,
        "budgets": [],
        "models": [
            {"id": "primary", "priority": 0, "health": {"circuit": {"state": "open", "retry_after_ms": 900, "window_calls": 4, "failure_ratio": 1.0, "in_state_ms": 2000, "since_unix_ms": 998100}}},
            {"id": "secondary", "priority": 1, "health": {"circuit": {"state": "closed", "retry_after_ms": null, "window_calls": 0, "failure_ratio": 0.0, "in_state_ms": 9000, "since_unix_ms": 990000}}}
        ],
        "fallback_history": {"span_ms": 900000, "step_ms": 5000, "steps": [
            {"end_unix_ms": 995000, "errors": 0, "fallbacks": 0, "requests": 0},
            {"end_unix_ms": 1000000, "errors": 1, "fallbacks": 40, "requests": 50}
        ]}
    }"#;

    #[test]
    fn keeps_circuits_and_history_relative_to_the_load() {
        let figures = parse(DOC.as_bytes(), "http://x/dashboard".into(), 998000).unwrap();
        assert_eq!(figures.circuits.len(), 2);
        let primary = &figures.circuits[0];
        assert_eq!(
            (primary.model.as_str(), primary.state.as_str()),
            ("primary", "open")
        );
        assert_eq!(primary.since_ms, Some(100.0));
        assert_eq!(figures.circuits[1].since_ms, Some(-8000.0));
        assert_eq!(figures.not_closed().count(), 1);
        assert_eq!(figures.fallback_history[1].end_ms, 2000.0);
        assert_eq!(
            figures.summary(),
            "primary (circuit) OPEN since +100 ms, secondary (circuit) closed since before the load; \
             fallbacks/requests by 5 s step: 40/50"
        );
    }

    #[test]
    fn names_a_missing_history_or_field() {
        let no_history = r#"{"generated_unix_ms": 1, "models": []}"#;
        let err = parse(no_history.as_bytes(), String::new(), 0).unwrap_err();
        assert!(err.contains("fallback_history"), "{err}");
        let no_state = r#"{"generated_unix_ms": 1, "models": [{"id": "a", "health": {"c": {}}}]}"#;
        let err = parse(no_state.as_bytes(), String::new(), 0).unwrap_err();
        assert!(err.contains("state"), "{err}");
    }
}
