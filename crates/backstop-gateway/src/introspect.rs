//! The endpoints that describe the gateway: `/v1/models`, `/healthz`,
//! `/readyz`, `/metrics` and `/v1/backstop/status`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backstop_core::{CircuitState, HealthPolicy, LatencyKind, ModelIndex, Route, Router};
use serde_json::{Map, Value, json};

use crate::app::Gateway;

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
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
    let router = gateway.router();
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
            "backstop": {"kind": "scenario", "chain": chain}
        }));
    }
    for model in router.models() {
        data.push(json!({
            "id": model.id, "object": "model", "created": 0, "owned_by": model.provider,
            "backstop": {"kind": "model", "provider": model.provider, "upstream": model.upstream}
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
    let router = gateway.router();
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
    let router = gateway.router();
    let mut out = String::with_capacity(8192);
    // Circuits by route and model, their windows, budgets and latency
    // estimates.
    backstop_strategies::monitor::render_router_state(router, &mut out);
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
/// spend, the scenarios, and what the observers add (recent fallbacks,
/// recent failure kinds).
pub async fn status(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = gateway.keys().authenticate(&headers) {
        return e.into_response();
    }
    json_response(StatusCode::OK, &status_document(&gateway))
}

/// The status document.
pub fn status_document(gateway: &Gateway) -> Value {
    let router = gateway.router();
    let policies = health_policies(router);
    let latency = &router.context().latency;
    let models: Vec<Value> = router
        .models()
        .iter()
        .enumerate()
        .map(|(i, model)| {
            let mut health = Map::new();
            for (policy, members) in &policies {
                if members.contains(&i) {
                    let key = if health.contains_key(policy.name()) {
                        format!("{}#{}", policy.name(), health.len() + 1)
                    } else {
                        policy.name().to_owned()
                    };
                    health.insert(key, json!(policy.snapshot(i)));
                }
            }
            let ms = |kind| latency.estimate(i, kind).map(|d| d.as_secs_f64() * 1000.0);
            json!({
                "id": model.id,
                "provider": model.provider,
                "upstream": model.upstream,
                "priority": model.priority,
                "health": health,
                "latency_ms": {"first_token": ms(LatencyKind::FirstToken), "total": ms(LatencyKind::Total)},
            })
        })
        .collect();

    let mut scenarios = Vec::new();
    let mut budgets: Vec<Value> = Vec::new();
    let mut seen_budgets = Vec::new();
    for name in router.scenario_names() {
        let Some(route) = router.route(name) else {
            continue;
        };
        let s = &route.strategies;
        scenarios.push(json!({
            "name": name.as_ref(),
            "chain": route.chain.iter().map(|&i| router.models()[i].id.as_str()).collect::<Vec<_>>(),
            "selector": s.selector.name(),
            "health": s.health.name(),
            "budget": s.budget.name(),
            "result": s.result.name(),
            "mid_stream": route.policy.mid_stream,
            "hedge_after_ms": route.policy.hedge_after.map(|d| d.as_millis() as u64),
        }));
    }
    for route in router.routes() {
        let budget = &route.strategies.budget;
        if !seen_budgets.iter().any(|b| Arc::ptr_eq(b, budget)) {
            seen_budgets.push(budget.clone());
            budgets.push(json!(budget.snapshot()));
        }
    }

    let mut doc = Map::new();
    doc.insert("models".into(), Value::Array(models));
    doc.insert("scenarios".into(), Value::Array(scenarios));
    doc.insert("budgets".into(), Value::Array(budgets));
    for observer in gateway.observers() {
        observer.status(&mut doc);
    }
    Value::Object(doc)
}
