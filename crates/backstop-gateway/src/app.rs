//! The gateway's shared state and its routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router as HttpRouter;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use backstop_core::{AttemptOutcome, RouteError, Router, SkipReason};

use crate::api_error::ApiError;
use crate::auth::ApiKeys;
use crate::doors::{chat_completions, embeddings, messages, responses};
use crate::introspect;

/// Default request body limit: 10 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 10 * 1024 * 1024;

/// Default longest wait for a request body once its headers arrived: 30 s.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Something that adds to `/metrics` and `/v1/backstop/status`: the
/// metrics and alert sinks of the strategies, for instance.
pub trait Observability: Send + Sync {
    /// Appends Prometheus text-format lines.
    fn render_prometheus(&self, out: &mut String);
    /// Fills in its part of the status document.
    fn status(&self, status: &mut crate::introspect::StatusDocument);
}

/// How the gateway behaves around the Router.
pub struct GatewayOptions {
    /// Keys callers must present.
    pub keys: ApiKeys,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// How long a caller may take to send the whole body once its headers
    /// arrived; a slower one gets a 408.
    pub body_read_timeout: Duration,
    /// Contributors to `/metrics` and the status page.
    pub observers: Vec<Arc<dyn Observability>>,
    /// Ids of the models served by `simulated` providers, which
    /// `POST /v1/backstop/simulated/{model}` may change.
    pub simulated_models: Vec<String>,
    /// Reloads the configuration (`POST /v1/backstop/reload`, SIGHUP);
    /// without it the endpoint answers that reloading is not available.
    pub reloader: Option<Arc<crate::reload::Reloader>>,
    /// OpenTelemetry export (`[telemetry]`); `None`: off.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            keys: ApiKeys::none(),
            body_limit: DEFAULT_BODY_LIMIT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            observers: Vec::new(),
            simulated_models: Vec::new(),
            reloader: None,
            telemetry: None,
        }
    }
}

/// What a reload replaces as one: the Router and what reads its state.
pub struct Serving {
    /// The Router.
    pub router: Router,
    /// Contributors to `/metrics` and the status page.
    pub observers: Vec<Arc<dyn Observability>>,
    /// Models a `simulated` provider serves.
    pub simulated_models: Vec<String>,
}

/// The gateway: a Router behind an OpenAI-compatible HTTP API.
pub struct Gateway {
    /// Swapped whole by a reload (`arc-swap`: a request reads it without a
    /// lock and keeps the Router it started on until it ends).
    serving: ArcSwap<Serving>,
    options: GatewayOptions,
    id_prefix: String,
    next_id: AtomicU64,
    draining: AtomicBool,
}

impl Gateway {
    /// A gateway in front of `router`.
    pub fn new(router: Router, mut options: GatewayOptions) -> Arc<Self> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let serving = Serving {
            router,
            observers: std::mem::take(&mut options.observers),
            simulated_models: std::mem::take(&mut options.simulated_models),
        };
        Arc::new(Self {
            serving: ArcSwap::from_pointee(serving),
            options,
            id_prefix: format!("{:x}", seed & 0xff_ffff_ffff),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
        })
    }

    /// Serves `next` from now on. Requests already running finish on the
    /// Router they started with.
    pub fn swap(&self, next: Serving) {
        self.serving.store(Arc::new(next));
    }

    /// Reloads the configuration file the gateway was started with: what
    /// `POST /v1/backstop/reload` and SIGHUP do.
    pub async fn reload(&self) -> Result<crate::reload::Reloaded, crate::reload::ReloadError> {
        match &self.options.reloader {
            Some(reloader) => reloader.reload(self).await,
            None => Err(crate::reload::ReloadError::Unavailable),
        }
    }

    /// The HTTP routes.
    pub fn http(self: &Arc<Self>) -> HttpRouter {
        let routes = HttpRouter::new();
        #[cfg(feature = "simulated")]
        let routes = routes.route(
            "/v1/backstop/simulated/{model}",
            post(crate::simulated::set),
        );
        routes
            .route(
                "/v1/chat/completions",
                post(chat_completions::chat_completions),
            )
            .route(
                "/chat/completions",
                post(chat_completions::chat_completions),
            )
            .route("/v1/messages", post(messages::messages))
            .route("/v1/responses", post(responses::responses))
            .route("/v1/embeddings", post(embeddings::embeddings))
            .route("/v1/models", get(introspect::models))
            .route("/healthz", get(introspect::healthz))
            .route("/readyz", get(introspect::readyz))
            .route("/metrics", get(introspect::metrics))
            .route("/v1/backstop/status", get(introspect::status))
            .merge(crate::dashboard::routes())
            .route("/v1/backstop/reload", post(crate::reload::reload))
            .fallback(|uri: Uri| async move { ApiError::no_route(uri.path()).into_response() })
            .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
                ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
            })
            .with_state(self.clone())
    }

    /// The Router new requests run on (a reload may replace it; a request
    /// keeps the one it got).
    pub fn router(&self) -> Router {
        self.serving.load().router.clone()
    }

    /// The caller keys.
    pub fn keys(&self) -> &ApiKeys {
        &self.options.keys
    }

    /// Largest request body.
    pub fn body_limit(&self) -> usize {
        self.options.body_limit
    }

    /// Longest wait for a request body.
    pub fn body_read_timeout(&self) -> Duration {
        self.options.body_read_timeout
    }

    /// Contributors to metrics and status.
    pub fn observers(&self) -> Vec<Arc<dyn Observability>> {
        self.serving.load().observers.clone()
    }

    /// OpenTelemetry export, when on.
    pub fn telemetry(&self) -> Option<&Arc<crate::telemetry::Telemetry>> {
        self.options.telemetry.as_ref()
    }

    /// Models a `simulated` provider serves.
    pub fn simulated_models(&self) -> Vec<String> {
        self.serving.load().simulated_models.clone()
    }

    /// Marks the gateway as shutting down: `/readyz` turns 503 so load
    /// balancers stop sending traffic while in-flight requests finish.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the gateway is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The caller's `x-request-id` (if short and printable) or a new one.
    pub fn request_id(&self, headers: &HeaderMap) -> String {
        if let Some(id) = headers
            .get(crate::annotate::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        {
            return id.to_owned();
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("req-{}-{n}", self.id_prefix)
    }

    /// Maps a Router error, listing the known routes for an unknown one.
    /// When every model was skipped for an open circuit, `Retry-After` says
    /// when the earliest of them admits a trial call.
    pub fn route_error(&self, error: RouteError) -> ApiError {
        let retry_after = self.circuits_reopen_after(&error);
        let router = self.router();
        let api = ApiError::from_route(error, || {
            let mut names: Vec<String> = router
                .scenario_names()
                .iter()
                .map(|n| n.to_string())
                .collect();
            names.extend(router.models().iter().map(|m| m.id.clone()));
            names.join(", ")
        });
        match retry_after {
            Some(after) => api.retry_after(after),
            None => api,
        }
    }

    /// The time until the earliest circuit of the route admits a call,
    /// when every model of the failed request was skipped for its circuit.
    fn circuits_reopen_after(&self, error: &RouteError) -> Option<Duration> {
        let RouteError::AllFailed(all) = error else {
            return None;
        };
        let all_open = !all.attempts.is_empty()
            && all
                .attempts
                .iter()
                .all(|a| a.outcome == AttemptOutcome::Skipped(SkipReason::CircuitOpen));
        if !all_open {
            return None;
        }
        let router = self.router();
        let route = router.route(&all.scenario)?;
        let ctx = router.context();
        all.attempts
            .iter()
            .filter_map(|a| ctx.index_of(&a.model))
            .filter_map(|index| route.strategies.health.snapshot(index).retry_after_ms)
            .min()
            .map(Duration::from_millis)
    }
}
