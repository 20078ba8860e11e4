//! # backstop-provider-simulated
//!
//! `type = "simulated"`: a model that lives in the gateway's own process.
//! It answers after a configurable latency, streams word by word, and fails
//! a configurable share of its calls with a failure kind of your choice, so
//! a fallback chain can be served, broken and watched without an API key or
//! a network. `examples/quickstart.toml` is built on it.
//!
//! Choose it to try Backstop, to demo a fallback, or to stand in for a
//! model in a test of your own configuration. It is not a load generator's
//! mock (the chaos benchmark's fault servers speak real HTTP).
//!
//! Knobs (all optional):
//! - `reply` (string, default "Hello from {model}, a simulated model on
//!   this machine."): the answer; `{model}` is the answering model's id.
//! - `latency_ms` (integer, default 100): wait before the answer, or before
//!   the first chunk of a stream.
//! - `chunk_ms` (integer, default 20): wait between streamed words.
//! - `failure_rate` (number in 0..=1, default 0): the share of calls that
//!   fail, spread evenly (a rate of 0.25 fails every fourth call).
//! - `failure` (a failure kind, default `"server"`): how a call fails:
//!   `"server"` (HTTP 500), `"overloaded"` (529), `"rate_limited"` (429 with
//!   a Retry-After of 1 s), `"connect"` (refused), `"timeout"` (never
//!   answers: the route's timeouts end the call), or any other kind of the
//!   failure table.
//!
//! A running gateway can change `failure_rate`, `failure` and `latency_ms`
//! of one model at a time with `POST /v1/backstop/simulated/{model}` (see
//! [`Switchboard`]); the change lasts until the process ends or it is
//! changed again.

mod config;
mod provider;
mod switchboard;

pub use config::{SimulatedBuildError, SimulatedConfig};
pub use provider::SimulatedProvider;
pub use switchboard::{Override, Switchboard};
