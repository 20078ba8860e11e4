//! # backstop-core
//!
//! The domain types, the strategy traits and the Router of Backstop, a
//! framework and gateway that keeps LLM-backed products answering when
//! their models fail.
//!
//! A request names a *scenario*: a fallback chain of models. The
//! [`Router`] orders the chain with a [`Selector`], skips models whose
//! circuit is open ([`HealthPolicy`]) or that the request cannot afford
//! ([`BudgetPolicy`]) or that cannot serve it, calls the rest in turn
//! through their [`Provider`] under the scenario's timeouts, decides after
//! every failure by its [`FailureKind`] whether to retry, fall over or stop,
//! records every outcome, and lets a [`ResultHandler`] annotate a degraded
//! answer. [`EventSink`]s see every request, attempt and fallback.
//!
//! This crate does no HTTP and reads no config files; providers,
//! strategies, configuration and the gateway live in other crates.

pub mod budget;
pub mod chat;
pub mod clock;
pub mod embeddings;
pub mod error;
pub mod events;
pub mod facts;
pub mod fleet;
pub mod health;
pub mod latency;
pub mod model;
pub mod provider;
pub mod rate_limit;
pub mod result;
pub mod router;
pub mod scenario;
pub mod selector;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod trace;

pub use budget::{BudgetPolicy, BudgetSnapshot, OverBudget, Reservation};
pub use chat::{
    ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta, Extra, Message,
    RawJson, Role, StreamOptions, ToolCall, ToolCallDelta, Usage,
};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use embeddings::{
    Embedding, EmbeddingInput, EmbeddingsRequest, EmbeddingsResponse, EmbeddingsUsage,
};
pub use error::{
    AllModelsFailed, Attempt, AttemptOutcome, FailureKind, HealthEffect, ProviderError, RouteError,
    SkipReason,
};
pub use events::{Event, EventSink, FallbackEvent, RequestFinished};
pub use facts::RequestFacts;
pub use fleet::{
    BudgetWindow, CircuitListener, Claim, CountsListener, FleetState, LocalState, OnStoreFailure,
    RateCorrection, RateVerdict, SharedAccount, SharedCircuit, SharedCounts, SharedRate,
    StoreFailure,
};
pub use health::{
    Admission, CallOutcome, CircuitState, HealthPolicy, HealthSnapshot, HealthTransition, Permit,
    ProbeFailure,
};
pub use latency::{LatencyKind, LatencyStats};
pub use model::{Capabilities, ModelIndex, ModelSpec};
pub use provider::{Call, ChunkStream, EmbedCall, PROBE_MAX_TOKENS, Provider};
pub use rate_limit::{
    OverRateLimit, RATE_WINDOW, RateCall, RateCause, RateHold, RateLimitSnapshot, RateLimiter,
    RateQuota, RateScope, RateUse,
};
pub use result::{Annotation, FallbackResult, Outcome, ResultHandler, RouteSummary};
pub use router::{
    BuildError, EmbeddingsResult, FallbackStream, ProbeError, RequestContext, Route, Router,
    RouterBuilder, Strategies, StrategyContext, StreamItem, StreamMeta,
};
pub use scenario::{
    ContentPolicyAction, MidStreamPolicy, RetryPolicy, RoutePolicy, Scenario, Timeouts,
};
pub use selector::{Candidate, Selector};
pub use trace::{CallEnd, CallStart, CallTrace, Operation, RequestTrace, ResponseFacts};
