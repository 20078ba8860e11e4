//! # backstop-gateway
//!
//! An OpenAI-compatible HTTP front for the Backstop fallback Router: point
//! any OpenAI client at it and get failover by changing one base URL.
//!
//! - Doors for the protocols clients speak, complete and streaming (SSE):
//!   `POST /v1/chat/completions` (OpenAI), `POST /v1/messages`
//!   (Anthropic), `POST /v1/responses` (OpenAI, stateless) and
//!   `POST /v1/embeddings` (OpenAI), each with
//!   `x-backstop-*` headers and a `backstop` object telling which model
//!   answered, at which fallback level, and why.
//! - `GET /v1/models`, `/healthz`, `/readyz`, `/metrics` (Prometheus) and
//!   `/v1/backstop/status`.
//! - `GET /dashboard`: a live page of circuits, fallbacks, budgets and the
//!   fleet store, drawn from the status document.
//! - `POST /v1/backstop/reload` (and SIGHUP): re-read the configuration
//!   file, validated like `backstop check`, and swap it in atomically,
//!   handing unchanged strategies their running state.
//! - `POST /v1/backstop/simulated/{model}`: break or restore a model of a
//!   `simulated` provider while the gateway runs (the quickstart's demo).
//! - Bearer-key auth, a body limit, a header read timeout, graceful
//!   shutdown, and cancellation of the upstream call when a caller leaves.

pub mod annotate;
pub mod api_error;
mod app;
pub mod auth;
pub mod dashboard;
pub mod doors;
pub mod introspect;
pub mod log_summary;
pub mod observe;
pub mod reload;
pub mod server;
#[cfg(feature = "simulated")]
mod simulated;
pub mod telemetry;

pub use app::{DEFAULT_BODY_LIMIT, Gateway, GatewayOptions, Observability, Serving};
