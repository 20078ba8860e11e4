//! # backstop-strategies
//!
//! The built-in strategies of Backstop, each behind one of the core traits
//! and each in one file named after its config `type`:
//!
//! | seam | trait | strategies |
//! |---|---|---|
//! | selection | [`Selector`](backstop_core::Selector) | [`priority`](selector::priority), [`latency_aware`](selector::latency_aware), [`cost_aware`](selector::cost_aware), [`weighted`](selector::weighted) |
//! | health | [`HealthPolicy`](backstop_core::HealthPolicy) | [`circuit_breaker`](health::circuit_breaker), plus the [`active_probe`](health::active_probe) background task |
//! | budget | [`BudgetPolicy`](backstop_core::BudgetPolicy) | [`unlimited`](budget::unlimited), [`per_request`](budget::per_request), [`rolling`](budget::rolling) |
//! | rate limits | [`RateLimiter`](backstop_core::RateLimiter) | [`sliding_minute`](rate_limit::sliding_minute) |
//! | result handling | [`ResultHandler`](backstop_core::ResultHandler) | [`annotate`](result::annotate) |
//! | monitoring | [`EventSink`](backstop_core::EventSink) | [`alert`](monitor::alert), [`metrics`](monitor::metrics) |
//!
//! Each strategy has a `Config` struct (serde, unknown keys denied, every
//! default documented), a constructor taking it and the Router's
//! [`StrategyContext`](backstop_core::StrategyContext) that checks every
//! value, and a `from_value` that reads it from a config table. The
//! [`catalog`] lists them by name for the config crate. Per-model state
//! lives in arrays indexed by [`ModelIndex`](backstop_core::ModelIndex);
//! the hot paths take no lock that many threads would contend on.

pub mod budget;
pub mod catalog;
pub mod error;
pub mod health;
pub mod monitor;
pub mod rate_limit;
pub mod result;
pub mod selector;
mod sliding_window;

pub use error::StrategyError;
