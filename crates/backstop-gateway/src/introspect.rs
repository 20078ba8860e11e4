//! The endpoints that describe the gateway: `/v1/models`, `/healthz`,
//! `/readyz`, `/metrics` and `/v1/backstop/status`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backstop_config::monitor::RecentFailure;
use backstop_core::{
    BudgetPolicy, BudgetSnapshot, CircuitState, FallbackEvent, HealthPolicy, HealthSnapshot,
    LatencyKind, MidStreamPolicy, ModelIndex, RateLimitSnapshot, Route, Router,
};
use serde::Serialize;
use serde_json::json;

use crate::api_error::ApiError;
use crate::app::Gateway;
use crate::doors;

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = match serde_json::to_string(value) {
        Ok(body) => body,
        Err(e) => {
            return ApiError::unavailable(format!("could not encode the document: {e}"))
                .into_response();
        }
    };
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The distinct health policies of the Router, each with the models of the
/// routes that use it (a policy shared by scenarios is listed once).
fn health_policies(router: &Router) -> Vec<(Arc<dyn HealthPolicy>, Vec<ModelIndex>)> {
    let mut out: Vec<(Arc<dyn HealthPolicy>, Vec<ModelIndex>)> = Vec::new();
    let mut routes: Vec<&Arc<Route>> = router.routes().collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    for route in routes {
        let health = &route.strategies.health;
        let entry = match out.iter_mut().find(|(h, _)| Arc::ptr_eq(h, health)) {
            Some(entry) => entry,
            None => {
                out.push((health.clone(), Vec::new()));
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        for &m in route.chain.iter() {
            if !entry.1.contains(&m) {
                entry.1.push(m);
            }
        }
    }
    for (_, models) in &mut out {
        models.sort_unstable();
    }
    out
}

fn admissible(state: CircuitState) -> bool {
    matches!(state, CircuitState::Closed | CircuitState::HalfOpen)
}

/// `GET /v1/models`: every scenario and model, OpenAI's list shape.
pub async fn models(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = gateway.keys().authenticate(&headers) {
        return e.into_response();
    }
    let router = &gateway.router();
    let mut data = Vec::new();
    for name in router.scenario_names() {
        let chain: Vec<&str> = router
            .route(name)
            .map(|r| {
                r.chain
                    .iter()
                    .map(|&i| router.models()[i].id.as_str())
                    .collect()
            })
            .unwrap_or_default();
        data.push(json!({
            "id": name.as_ref(), "object": "model", "created": 0, "owned_by": "backstop",
            "backstop": {"kind": "scenario", "chain": chain,
                         "doors": doors::serving(router, name)}
        }));
    }
    for model in router.models() {
        data.push(json!({
            "id": model.id, "object": "model", "created": 0, "owned_by": model.provider,
            "backstop": {"kind": "model", "provider": model.provider, "upstream": model.upstream,
                         "doors": doors::serving(router, &model.id)}
        }));
    }
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// `GET /readyz`: every scenario has at least one model whose circuit
/// admits calls, and the gateway is not shutting down.
pub async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    if gateway.is_draining() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "draining"}),
        );
    }
    let router = &gateway.router();
    let mut unready = Vec::new();
    for name in router.scenario_names() {
        let Some(route) = router.route(name) else {
            continue;
        };
        let any = route
            .chain
            .iter()
            .any(|&m| admissible(route.strategies.health.snapshot(m).state));
        if !any {
            unready.push(name.to_string());
        }
    }
    if unready.is_empty() {
        json_response(
            StatusCode::OK,
            &json!({"status": "ready", "scenarios": router.scenario_names().len()}),
        )
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unready", "scenarios_without_admissible_models": unready}),
        )
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    let router = &gateway.router();
    let mut out = String::with_capacity(8192);
    // Circuits by route and model, their windows, budgets and latency
    // estimates.
    backstop_config::monitor::render_router_state(router, &mut out);
    for observer in gateway.observers() {
        observer.render_prometheus(&mut out);
    }
    let mut response = (StatusCode::OK, out).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /v1/backstop/status`: each model's circuit, latency estimates and
/// spend, the rate limits' use, the scenarios, and what the observers add (recent fallbacks,
/// recent failure kinds).
pub async fn status(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = gateway.keys().authenticate(&headers) {
        return e.into_response();
    }
    json_response(StatusCode::OK, &status_document(&gateway))
}

/// The status document of `/v1/backstop/status`: each model's circuit
/// per health policy and latency estimates, the scenarios, the budgets, and
/// what the observers add. Fields are declared in the order they are
/// written (alphabetical, as the document always was).
#[derive(Debug, Serialize)]
pub struct StatusDocument {
    /// The alert rule's window (with the alert observer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertWindow>,
    /// Every distinct budget policy's spend.
    pub budgets: Vec<BudgetSnapshot>,
    /// Requests and fallbacks per step over the last minutes (with the
    /// dashboard's history observer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_history: Option<crate::dashboard::HistoryView>,
    /// Wall clock (Unix ms) when the document was made: what `since_unix_ms`
    /// and event times compare with, whatever the reader's clock says.
    pub generated_unix_ms: u64,
    /// Every model, by index.
    pub models: Vec<ModelStatus>,
    /// Every rate limit (the models' quotas, then each caller that has
    /// called) with its use in the last minute, as this replica counts it.
    pub rate_limits: Vec<RateLimitSnapshot>,
    /// The last fallbacks, oldest first (with the alert observer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_fallbacks: Option<Vec<FallbackEvent>>,
    /// Every scenario, in configured order.
    pub scenarios: Vec<ScenarioStatus>,
    /// The fleet's state store (with the state observer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<StateStatus>,
}

/// `[state]` in the status document.
#[derive(Debug, Serialize)]
pub struct StateStatus {
    /// `local` or `redis`.
    pub backend: &'static str,
    /// Whether the store answers (`true` for `local`).
    pub store_up: bool,
}

/// One model in the status document.
#[derive(Debug, Serialize)]
pub struct ModelStatus {
    /// Its circuit under each health policy whose routes list it, by the
    /// policy's name (`name#2` for a second policy of the same name).
    pub health: BTreeMap<String, CircuitStatus>,
    /// Its id.
    pub id: String,
    /// Latency estimates in milliseconds (`None`: never measured).
    pub latency_ms: LatencyMs,
    /// Its priority.
    pub priority: u32,
    /// Its provider's id.
    pub provider: String,
    /// Its last failures, newest first (with the metrics observer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_failures: Option<Vec<RecentFailure>>,
    /// The upstream model name.
    pub upstream: String,
}

/// A model's circuit under one health policy.
#[derive(Debug, Serialize)]
pub struct CircuitStatus {
    /// The policy's snapshot.
    #[serde(flatten)]
    pub snapshot: HealthSnapshot,
    /// Wall clock (Unix ms) since which the circuit is in its state, when
    /// the policy tracks it.
    pub since_unix_ms: Option<u64>,
}

/// A model's latency estimates, in milliseconds.
#[derive(Debug, Serialize)]
pub struct LatencyMs {
    /// Time to first token of streams.
    pub first_token: Option<f64>,
    /// Total time of complete calls.
    pub total: Option<f64>,
    /// Round trip of background probes (a few tokens; kept apart).
    pub probe: Option<f64>,
}

/// One scenario in the status document.
#[derive(Debug, Serialize)]
pub struct ScenarioStatus {
    /// Its budget policy's name.
    pub budget: String,
    /// Its chain, by model id.
    pub chain: Vec<String>,
    /// The doors (client protocols) that serve it, by name.
    pub doors: Vec<&'static str>,
    /// Its health policy's name.
    pub health: String,
    /// Its hedging delay, if it hedges.
    pub hedge_after_ms: Option<u64>,
    /// Its mid-stream policy.
    pub mid_stream: MidStreamPolicy,
    /// Its name.
    pub name: String,
    /// Its result handler's name.
    pub result: String,
    /// Its selector's name.
    pub selector: String,
}

/// The alert rule's window in the status document.
#[derive(Debug, Serialize)]
pub struct AlertWindow {
    /// Fallback alerts fired since start.
    pub alerts_fired: u64,
    /// fallbacks / requests in the window (0 without requests).
    pub fallback_rate: f64,
    /// Fallbacks in the window.
    pub fallbacks: u64,
    /// Wall clock (Unix ms) of the last fallback alert.
    pub last_alert_unix_ms: Option<u64>,
    /// The threshold.
    pub max_fallbacks: u32,
    /// Requests that ended in the window.
    pub requests: u64,
    /// The window.
    pub window_ms: u64,
}

/// The status document.
pub fn status_document(gateway: &Gateway) -> StatusDocument {
    let router = &gateway.router();
    let policies = health_policies(router);
    let latency = &router.context().latency;
    let now_unix_ms = router.context().clock.unix_ms();
    let models = router
        .models()
        .iter()
        .enumerate()
        .map(|(i, model)| {
            let mut health = BTreeMap::new();
            for (policy, members) in &policies {
                if members.contains(&i) {
                    let key = if health.contains_key(policy.name()) {
                        format!("{}#{}", policy.name(), health.len() + 1)
                    } else {
                        policy.name().to_owned()
                    };
                    let snapshot = policy.snapshot(i);
                    let since_unix_ms = snapshot
                        .in_state_ms
                        .map(|age| now_unix_ms.saturating_sub(age));
                    health.insert(
                        key,
                        CircuitStatus {
                            snapshot,
                            since_unix_ms,
                        },
                    );
                }
            }
            let ms = |kind| latency.estimate(i, kind).map(|d| d.as_secs_f64() * 1000.0);
            ModelStatus {
                health,
                id: model.id.clone(),
                latency_ms: LatencyMs {
                    first_token: ms(LatencyKind::FirstToken),
                    total: ms(LatencyKind::Total),
                    probe: ms(LatencyKind::Probe),
                },
                priority: model.priority,
                provider: model.provider.clone(),
                recent_failures: None,
                upstream: model.upstream.clone(),
            }
        })
        .collect();

    let mut scenarios = Vec::new();
    for name in router.scenario_names() {
        let Some(route) = router.route(name) else {
            continue;
        };
        let s = &route.strategies;
        scenarios.push(ScenarioStatus {
            budget: s.budget.name().to_owned(),
            chain: route
                .chain
                .iter()
                .map(|&i| router.models()[i].id.clone())
                .collect(),
            health: s.health.name().to_owned(),
            doors: doors::serving(router, name).to_vec(),
            hedge_after_ms: route.policy.hedge_after.map(|d| d.as_millis() as u64),
            mid_stream: route.policy.mid_stream,
            name: name.to_string(),
            result: s.result.name().to_owned(),
            selector: s.selector.name().to_owned(),
        });
    }
    let mut budgets = Vec::new();
    let mut seen_budgets: Vec<&Arc<dyn BudgetPolicy>> = Vec::new();
    for route in router.routes() {
        let budget = &route.strategies.budget;
        if !seen_budgets.iter().any(|b| Arc::ptr_eq(b, budget)) {
            seen_budgets.push(budget);
            budgets.push(budget.snapshot());
        }
    }

    let mut doc = StatusDocument {
        alerts: None,
        budgets,
        fallback_history: None,
        generated_unix_ms: now_unix_ms,
        models,
        rate_limits: router
            .rate_limiter()
            .map(|l| l.snapshot())
            .unwrap_or_default(),
        recent_fallbacks: None,
        scenarios,
        state: None,
    };
    for observer in gateway.observers() {
        observer.status(&mut doc);
    }
    doc
}
