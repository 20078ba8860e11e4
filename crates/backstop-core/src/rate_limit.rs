//! The rate-limit seam: requests and tokens per minute, for a model's
//! provider quota (`[models.<id>] rpm`, `tpm`) and for each caller
//! (`[limits] per_caller`).
//!
//! Rate limits sit beside budgets at admission: after a model's circuit
//! admits it and its budget is held, the Router asks the route's
//! [`RateLimiter`] for one request and the call's estimated tokens (its
//! prompt plus its output bound) on the model and, on the request's first
//! admission, on the caller. A model over its quota is skipped
//! (`over_rate_limit` in the trail) so the chain moves on before the
//! upstream has to answer 429; a caller over its own limit ends the request
//! with [`RouteError::RateLimited`](crate::RouteError::RateLimited). The
//! estimate is corrected to the usage reported when the call is settled
//! (with its budget, through the same hold), or released when the call
//! was never sent.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::facts::RequestFacts;
use crate::model::ModelIndex;

/// The length of a rate-limit window: limits are per minute.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Requests and tokens per minute; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RateQuota {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt plus completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

impl RateQuota {
    /// Whether neither limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }
}

/// Whose limit it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateScope {
    /// A model's provider quota.
    Model,
    /// A caller's own limit.
    Caller,
}

impl RateScope {
    /// `model` or `caller`.
    pub fn as_str(self) -> &'static str {
        match self {
            RateScope::Model => "model",
            RateScope::Caller => "caller",
        }
    }
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateCause {
    /// Requests per minute.
    Rpm,
    /// Tokens per minute.
    Tpm,
    /// The fleet's store failed and `[state] on_store_failure = "closed"`.
    StoreUnavailable,
}

impl RateCause {
    /// `rpm`, `tpm` or `store_unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            RateCause::Rpm => "rpm",
            RateCause::Tpm => "tpm",
            RateCause::StoreUnavailable => "store_unavailable",
        }
    }
}

/// What one admission asks of the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCall<'a> {
    /// The model to be called.
    pub model: ModelIndex,
    /// The caller (`None`: requests without a caller share one account).
    pub caller: Option<&'a str>,
    /// The request's first admission: the caller's limits are checked and
    /// one request is counted on them. Later admissions of the same
    /// request (fallbacks, hedges) only add their tokens to the caller.
    pub first: bool,
    /// The call's estimated tokens: its prompt plus its output bound.
    pub tokens: u64,
}

impl<'a> RateCall<'a> {
    /// The call a request described by `facts` makes on a model with the
    /// output bound `max_output`.
    pub fn of(model: ModelIndex, facts: &RequestFacts<'a>, max_output: u32, first: bool) -> Self {
        Self {
            model,
            caller: facts.caller,
            first,
            tokens: u64::from(facts.prompt_tokens) + u64::from(max_output),
        }
    }
}

/// One request and its tokens held on the limits, until settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHold {
    /// The model it was taken on.
    pub model: ModelIndex,
    /// The tokens held (the estimate).
    pub tokens: u64,
    /// Whether the caller's limits were charged too.
    pub caller: bool,
    /// Whether one request was counted on the caller (its first admission).
    pub caller_request: bool,
    /// Opaque data for the limiter (the window slot it counted in).
    pub ticket: u64,
    /// The slot in the fleet's store, when the fleet counted it too.
    pub fleet_ticket: Option<u64>,
}

/// A limit that refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} {}", scope.as_str(), self.describe())]
pub struct OverRateLimit {
    /// The model's quota or the caller's limit.
    pub scope: RateScope,
    /// Which limit.
    pub cause: RateCause,
    /// The limit per minute (0 for a store failure).
    pub limit: u64,
    /// How long until the call would fit.
    pub retry_after: Duration,
}

impl OverRateLimit {
    fn describe(&self) -> String {
        match self.cause {
            RateCause::StoreUnavailable => format!(
                "rate limit refused: the fleet's state store failed and on_store_failure = \"closed\"; retry after {} ms",
                self.retry_after.as_millis()
            ),
            cause => format!(
                "is over its limit of {} {}; retry after {} ms",
                self.limit,
                cause.as_str(),
                self.retry_after.as_millis()
            ),
        }
    }
}

/// How a settled call used its hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUse {
    /// The call was never sent: the request and tokens are given back.
    Released,
    /// The call was sent and used this many tokens (0 when unknown, as
    /// for a failed call).
    Sent {
        /// Prompt plus completion tokens reported.
        tokens: u64,
    },
}

/// One limit's use in the current minute, for status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitSnapshot {
    /// A model's quota or a caller's limit.
    pub scope: RateScope,
    /// The model's id, or the caller's label (`anonymous` for requests
    /// without one).
    pub name: String,
    /// Requests per minute allowed, if limited.
    pub rpm: Option<u64>,
    /// Tokens per minute allowed, if limited.
    pub tpm: Option<u64>,
    /// Requests counted in the last minute (by this replica).
    pub requests: u64,
    /// Tokens counted in the last minute (by this replica), estimates of
    /// calls in flight included.
    pub tokens: u64,
    /// Calls this limit refused since start (by this replica).
    pub refused: u64,
    /// Whether a fleet's store enforces it across replicas.
    pub shared: bool,
}

/// Decides whether a call fits the rate limits. `acquire` is on the hot
/// path: synchronous, `&self`, no I/O.
pub trait RateLimiter: Send + Sync + fmt::Debug {
    /// Takes one request and `call.tokens` on the model's quota and, as
    /// `call` says, the caller's limits — all or none — or refuses, naming
    /// the limit and when the call would fit.
    fn acquire(&self, call: &RateCall<'_>) -> Result<RateHold, OverRateLimit>;

    /// Corrects the hold's tokens to what the call used, or releases it.
    /// Every hold is settled once. Never waits.
    fn settle(&self, hold: RateHold, caller: Option<&str>, used: RateUse);

    /// Each limit with its use in the current minute.
    fn snapshot(&self) -> Vec<RateLimitSnapshot>;

    /// Whether calls go through a store shared by a fleet: then the Router
    /// calls [`RateLimiter::acquire_shared`] instead of `acquire`.
    fn is_shared(&self) -> bool {
        false
    }

    /// `acquire` for limits a fleet shares: at most one store round trip,
    /// bounded by the store's timeout. By default, `acquire`.
    fn acquire_shared<'a>(
        &'a self,
        call: RateCall<'a>,
    ) -> BoxFuture<'a, Result<RateHold, OverRateLimit>> {
        Box::pin(std::future::ready(self.acquire(&call)))
    }
}

fn _rate_limiter_is_object_safe(_: &dyn RateLimiter) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_scope_the_limit_and_the_wait() {
        let over = OverRateLimit {
            scope: RateScope::Caller,
            cause: RateCause::Rpm,
            limit: 60,
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(
            over.to_string(),
            "caller is over its limit of 60 rpm; retry after 1500 ms"
        );
    }

    #[test]
    fn a_call_counts_its_prompt_and_output_bound() {
        let facts = RequestFacts {
            scenario: "chat",
            caller: Some("team-a"),
            prompt_tokens: 120,
            max_tokens: Some(30),
            stream: false,
            tools: false,
        };
        let call = RateCall::of(3, &facts, 30, true);
        assert_eq!(call.tokens, 150);
        assert_eq!(call.caller, Some("team-a"));
    }
}
