//! Health policies: which models may be called now.
//!
//! - [`circuit_breaker`]: passive health from the outcomes of real calls.
//! - [`active_probe`]: the background prober that checks open, disabled and
//!   idle models with tiny requests and reports to the health policies.

pub mod active_probe;
pub mod circuit_breaker;

pub use active_probe::{ActiveProbe, ActiveProbeConfig, ProberHandle};
pub use circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
