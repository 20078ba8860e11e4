//! Monitoring: event sinks that watch the Router.
//!
//! - [`alert`]: fires when fallbacks pile up (once per window) and when a
//!   model is disabled; tracing and an optional webhook; the exact fallback
//!   rate and the last fallbacks for a status page.
//! - [`metrics`]: counters and histograms rendered for Prometheus, plus the
//!   Router's circuit and budget state.

pub mod alert;
pub mod metrics;

pub use alert::{AlertConfig, AlertDelivery, AlertSink, AlertStatus};
pub use metrics::{Metrics, MetricsConfig, Totals, render_router_state};
