//! Step 4 of the map, classifying: the failure table of ARCHITECTURE.md as
//! one function. Given a classified failure: retry the same model, fall
//! over, fall over to a larger context window only, or stop and return the
//! upstream's error.

use std::time::Duration;

use crate::error::{FailureKind, ProviderError};
use crate::scenario::{ContentPolicyAction, RetryPolicy, RoutePolicy};

/// What the Router does after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Call the same model again after waiting this long.
    Retry(Duration),
    /// Try the next model of the chain.
    FallOver,
    /// Try only models with a larger context window than this one.
    FallOverLarger,
    /// Return the upstream's error to the caller.
    Stop,
}

/// Decides what follows a failed call, after `retries_done` same-model
/// retries. `jitter` is uniform in `[0, 1)`. `model_failing` is the
/// health policy's answer to `HealthPolicy::outage_in_progress` (by
/// default: the model's previous call, on any route, failed too): then the
/// failure is an outage in progress, not a blip, and a connect or server
/// failure falls over at once instead of waiting to retry a model that is
/// down (a Retry-After the upstream sent is still honoured).
pub(crate) fn decide(
    error: &ProviderError,
    retries_done: u32,
    policy: &RoutePolicy,
    jitter: f64,
    model_failing: bool,
) -> Next {
    let retries = &policy.retries;
    let may_retry = retries_done < retries.same_model;
    let may_retry_blip = may_retry && !model_failing;
    match error.kind {
        // A refused or reset connection is cheap to retry and often
        // transient; waiting would only add latency before falling over.
        FailureKind::Connect if may_retry_blip => Next::Retry(Duration::ZERO),
        FailureKind::RateLimited => match error.retry_after {
            Some(wait) if may_retry && wait <= retries.retry_after_cap => Next::Retry(wait),
            _ => Next::FallOver,
        },
        FailureKind::Overloaded | FailureKind::Server if may_retry => match error.retry_after {
            Some(wait) if wait <= retries.retry_after_cap => Next::Retry(wait),
            None if !model_failing => Next::Retry(backoff(retries, retries_done, jitter)),
            _ => Next::FallOver,
        },
        FailureKind::ContextLength => Next::FallOverLarger,
        FailureKind::ContentPolicy => match policy.on_content_policy {
            ContentPolicyAction::Return => Next::Stop,
            ContentPolicyAction::FallOver => Next::FallOver,
        },
        FailureKind::BadRequest => Next::Stop,
        // Timeouts are never retried on the same route (a silent upstream
        // would eat the deadline twice); the rest fall over.
        FailureKind::Connect
        | FailureKind::Overloaded
        | FailureKind::Server
        | FailureKind::Timeout
        | FailureKind::QuotaExhausted
        | FailureKind::Auth
        | FailureKind::InvalidResponse
        | FailureKind::StreamInterrupted
        | FailureKind::ModelNotFound
        | FailureKind::Unsupported => Next::FallOver,
    }
}

/// Exponential backoff with "equal jitter": half the step is fixed, half is
/// random, so retries spread out but never collapse to zero.
pub(crate) fn backoff(retries: &RetryPolicy, retries_done: u32, jitter: f64) -> Duration {
    let step = retries
        .backoff_base
        .saturating_mul(1u32.checked_shl(retries_done).unwrap_or(u32::MAX))
        .min(retries.backoff_max);
    step / 2 + step.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: FailureKind) -> ProviderError {
        ProviderError::new(kind, "x")
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn every_kind_follows_the_table_on_the_first_failure() {
        let p = RoutePolicy::default();
        let expected = [
            (FailureKind::Connect, Next::Retry(Duration::ZERO)),
            (FailureKind::Timeout, Next::FallOver),
            (FailureKind::RateLimited, Next::FallOver),
            (FailureKind::QuotaExhausted, Next::FallOver),
            (FailureKind::Overloaded, Next::Retry(ms(25))),
            (FailureKind::Server, Next::Retry(ms(25))),
            (FailureKind::Auth, Next::FallOver),
            (FailureKind::ContextLength, Next::FallOverLarger),
            (FailureKind::ContentPolicy, Next::Stop),
            (FailureKind::BadRequest, Next::Stop),
            (FailureKind::InvalidResponse, Next::FallOver),
            (FailureKind::StreamInterrupted, Next::FallOver),
            (FailureKind::ModelNotFound, Next::FallOver),
            (FailureKind::Unsupported, Next::FallOver),
        ];
        assert_eq!(expected.len(), FailureKind::ALL.len());
        for (kind, next) in expected {
            assert_eq!(decide(&err(kind), 0, &p, 0.0, false), next, "{kind}");
        }
    }

    #[test]
    fn retries_are_bounded_per_model() {
        let p = RoutePolicy::default();
        for kind in [
            FailureKind::Connect,
            FailureKind::Server,
            FailureKind::Overloaded,
        ] {
            assert_eq!(
                decide(&err(kind), 1, &p, 0.0, false),
                Next::FallOver,
                "{kind}"
            );
        }
        let mut p = p;
        p.retries.same_model = 0;
        assert_eq!(
            decide(&err(FailureKind::Connect), 0, &p, 0.0, false),
            Next::FallOver
        );
    }

    #[test]
    fn retry_after_under_cap_is_waited_once() {
        let p = RoutePolicy::default();
        let e = err(FailureKind::RateLimited).with_retry_after(ms(1200));
        assert_eq!(decide(&e, 0, &p, 0.5, false), Next::Retry(ms(1200)));
        assert_eq!(decide(&e, 1, &p, 0.5, false), Next::FallOver);
    }

    #[test]
    fn retry_after_over_cap_falls_over_instead_of_waiting() {
        let p = RoutePolicy::default();
        let e = err(FailureKind::RateLimited).with_retry_after(ms(3001));
        assert_eq!(decide(&e, 0, &p, 0.5, false), Next::FallOver);
        let e = err(FailureKind::Overloaded).with_retry_after(ms(60_000));
        assert_eq!(decide(&e, 0, &p, 0.5, false), Next::FallOver);
    }

    #[test]
    fn content_policy_falls_over_when_configured() {
        let p = RoutePolicy {
            on_content_policy: ContentPolicyAction::FallOver,
            ..RoutePolicy::default()
        };
        assert_eq!(
            decide(&err(FailureKind::ContentPolicy), 0, &p, 0.0, false),
            Next::FallOver
        );
    }
    #[test]
    fn a_model_already_failing_gets_no_retry_but_a_retry_after_is_still_honoured() {
        let p = RoutePolicy::default();
        for kind in [
            FailureKind::Connect,
            FailureKind::Server,
            FailureKind::Overloaded,
        ] {
            assert_eq!(
                decide(&err(kind), 0, &p, 0.0, true),
                Next::FallOver,
                "{kind}"
            );
        }
        let asked = err(FailureKind::Overloaded).with_retry_after(ms(500));
        assert_eq!(decide(&asked, 0, &p, 0.0, true), Next::Retry(ms(500)));
        let limited = err(FailureKind::RateLimited).with_retry_after(ms(500));
        assert_eq!(decide(&limited, 0, &p, 0.0, true), Next::Retry(ms(500)));
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_and_is_capped() {
        let r = RetryPolicy::default();
        assert_eq!(backoff(&r, 0, 0.0), ms(25));
        assert_eq!(backoff(&r, 0, 1.0), ms(50));
        assert_eq!(backoff(&r, 2, 0.0), ms(100));
        assert_eq!(backoff(&r, 10, 1.0), ms(2000));
        assert_eq!(backoff(&r, 40, 0.0), ms(1000));
    }
}
