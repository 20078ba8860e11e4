//! The breaker through every state, on a manual clock.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use backstop_core::{ManualClock, ModelSpec};

use super::*;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn ctx(models: usize) -> (StrategyContext, Arc<ManualClock>) {
    let clock = ManualClock::shared();
    let specs = (0..models)
        .map(|i| ModelSpec::new(format!("m{i}"), "p"))
        .collect();
    (StrategyContext::new(specs, clock.clone()), clock)
}

fn breaker(config: CircuitBreakerConfig) -> (CircuitBreaker, Arc<ManualClock>) {
    let (ctx, clock) = ctx(2);
    (CircuitBreaker::new(config, &ctx).unwrap(), clock)
}

fn failed(kind: FailureKind) -> ProbeFailure {
    ProbeFailure {
        kind,
        retry_after: None,
    }
}

fn ok() -> CallOutcome {
    CallOutcome::Success { latency: ms(10) }
}

fn fail(kind: FailureKind) -> CallOutcome {
    CallOutcome::Failure {
        kind,
        retry_after: None,
        latency: ms(10),
    }
}

fn limited(retry_after: Option<Duration>) -> CallOutcome {
    CallOutcome::Failure {
        kind: FailureKind::RateLimited,
        retry_after,
        latency: ms(10),
    }
}

fn permit(b: &CircuitBreaker, model: ModelIndex) -> Permit {
    match b.admit(model) {
        Admission::Admit(p) => p,
        Admission::Reject { retry_after } => panic!("rejected, retry after {retry_after:?}"),
    }
}

fn call(b: &CircuitBreaker, outcome: CallOutcome) -> Option<HealthTransition> {
    let p = permit(b, 0);
    b.record(0, p, outcome)
}

fn rejected(b: &CircuitBreaker, model: ModelIndex) -> Duration {
    match b.admit(model) {
        Admission::Reject { retry_after } => retry_after,
        Admission::Admit(p) => panic!("admitted with {p:?}"),
    }
}

fn state(b: &CircuitBreaker) -> CircuitState {
    b.snapshot(0).state
}

fn t(from: CircuitState, to: CircuitState, cause: Option<FailureKind>) -> Option<HealthTransition> {
    Some(HealthTransition { from, to, cause })
}

/// Opens model 0 with five server errors (default knobs).
fn open(b: &CircuitBreaker) {
    for _ in 0..4 {
        assert_eq!(call(b, fail(FailureKind::Server)), None);
    }
    assert_eq!(
        call(b, fail(FailureKind::Server)),
        t(
            CircuitState::Closed,
            CircuitState::Open,
            Some(FailureKind::Server)
        )
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = CircuitBreakerConfig::default();
    assert_eq!(c.failure_ratio, 0.5);
    assert_eq!(c.min_calls, 5);
    assert_eq!(c.window_ms, 30_000);
    assert_eq!(c.break_ms, 5_000);
    let parsed: CircuitBreakerConfig = crate::error::parse(&serde_json::json!({
        "failure_ratio": 0.5, "min_calls": 5, "window_ms": 30000, "break_ms": 5000
    }))
    .unwrap();
    assert_eq!(parsed, c);
}

#[test]
fn stays_closed_below_min_calls() {
    let (b, _) = breaker(CircuitBreakerConfig::default());
    for _ in 0..4 {
        assert_eq!(call(&b, fail(FailureKind::Timeout)), None);
    }
    assert_eq!(state(&b), CircuitState::Closed);
    assert_eq!(b.snapshot(0).window_calls, 4);
    assert_eq!(b.snapshot(0).failure_ratio, 1.0);
    // The fifth call reaches min_calls.
    assert_eq!(
        call(&b, fail(FailureKind::Timeout)),
        t(
            CircuitState::Closed,
            CircuitState::Open,
            Some(FailureKind::Timeout)
        )
    );
}

#[test]
fn opens_after_failure_ratio_with_min_throughput() {
    let (b, _) = breaker(CircuitBreakerConfig::default());
    for _ in 0..4 {
        call(&b, ok());
    }
    // 3 of 7 fail: below 0.5.
    for _ in 0..3 {
        assert_eq!(call(&b, fail(FailureKind::Connect)), None);
    }
    assert_eq!(state(&b), CircuitState::Closed);
    // 4 of 8: at the ratio.
    assert_eq!(
        call(&b, fail(FailureKind::Connect)),
        t(
            CircuitState::Closed,
            CircuitState::Open,
            Some(FailureKind::Connect)
        )
    );
    // The other model is untouched.
    assert_eq!(b.snapshot(1).state, CircuitState::Closed);
    assert!(matches!(b.admit(1), Admission::Admit(_)));
}

#[test]
fn failures_age_out_of_the_window() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    for _ in 0..4 {
        call(&b, fail(FailureKind::Server));
    }
    clock.advance(ms(30_000));
    assert_eq!(call(&b, fail(FailureKind::Server)), None);
    assert_eq!(state(&b), CircuitState::Closed);
    assert_eq!(b.snapshot(0).window_calls, 1);
}

#[test]
fn open_rejects_with_retry_after_until_the_break_ends() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    open(&b);
    assert_eq!(rejected(&b, 0), ms(5_000));
    assert_eq!(b.snapshot(0).retry_after_ms, Some(5_000));
    clock.advance(ms(4_000));
    assert_eq!(rejected(&b, 0), ms(1_000));
    clock.advance(ms(1_000));
    let p = permit(&b, 0);
    assert!(
        trial_of(p).is_some(),
        "the first call after the break is a trial"
    );
    assert_eq!(state(&b), CircuitState::HalfOpen);
}

#[test]
fn half_open_success_closes_with_a_fresh_window() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    open(&b);
    clock.advance(ms(5_000));
    let p = permit(&b, 0);
    // Only one trial at a time by default.
    assert_eq!(rejected(&b, 0), Duration::ZERO);
    assert_eq!(
        b.record(0, p, ok()),
        t(CircuitState::HalfOpen, CircuitState::Closed, None)
    );
    // The failures that opened it are forgotten.
    assert_eq!(b.snapshot(0).window_calls, 0);
    assert_eq!(call(&b, fail(FailureKind::Server)), None);
    assert_eq!(state(&b), CircuitState::Closed);
}

#[test]
fn half_open_failure_reopens_with_a_growing_capped_break() {
    let (b, clock) = breaker(CircuitBreakerConfig {
        max_break_ms: 30_000,
        ..CircuitBreakerConfig::default()
    });
    open(&b);
    let mut expected_break = 5_000;
    for grown in [10_000, 20_000, 30_000, 30_000] {
        clock.advance(ms(expected_break));
        let p = permit(&b, 0);
        assert_eq!(
            b.record(0, p, fail(FailureKind::Server)),
            t(
                CircuitState::HalfOpen,
                CircuitState::Open,
                Some(FailureKind::Server)
            )
        );
        assert_eq!(rejected(&b, 0), ms(grown));
        expected_break = grown;
    }
    // Closing resets the break: the next opening lasts break_ms again.
    clock.advance(ms(expected_break));
    let p = permit(&b, 0);
    assert!(b.record(0, p, ok()).is_some());
    open(&b);
    assert_eq!(rejected(&b, 0), ms(5_000));
}

#[test]
fn half_open_admits_a_bounded_number_of_trials_and_all_must_succeed() {
    let (b, clock) = breaker(CircuitBreakerConfig {
        half_open_calls: 2,
        ..CircuitBreakerConfig::default()
    });
    open(&b);
    clock.advance(ms(5_000));
    let first = permit(&b, 0);
    let second = permit(&b, 0);
    rejected(&b, 0);
    // A cancelled trial gives its permit back.
    assert_eq!(b.record(0, second, CallOutcome::Cancelled), None);
    let third = permit(&b, 0);
    rejected(&b, 0);
    assert_eq!(b.record(0, first, ok()), None);
    assert_eq!(state(&b), CircuitState::HalfOpen);
    assert_eq!(
        b.record(0, third, ok()),
        t(CircuitState::HalfOpen, CircuitState::Closed, None)
    );
}

#[test]
fn a_request_fault_during_a_trial_releases_the_permit() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    open(&b);
    clock.advance(ms(5_000));
    let p = permit(&b, 0);
    assert_eq!(b.record(0, p, fail(FailureKind::ContextLength)), None);
    assert_eq!(state(&b), CircuitState::HalfOpen);
    let p = permit(&b, 0);
    assert!(b.record(0, p, ok()).is_some());
}

#[test]
fn ordinary_permits_never_decide_a_half_open_circuit() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    // A call admitted while closed, still in flight when the circuit opens.
    let late = permit(&b, 0);
    open(&b);
    clock.advance(ms(5_000));
    let trial = permit(&b, 0);
    assert_eq!(b.record(0, late, fail(FailureKind::Server)), None);
    assert_eq!(b.record(0, late, ok()), None);
    assert_eq!(state(&b), CircuitState::HalfOpen);
    assert!(b.record(0, trial, ok()).is_some());
}

#[test]
fn a_trial_permit_of_an_earlier_period_is_ignored() {
    let (b, clock) = breaker(CircuitBreakerConfig {
        half_open_calls: 2,
        ..CircuitBreakerConfig::default()
    });
    open(&b);
    clock.advance(ms(5_000));
    let old = permit(&b, 0);
    let failing = permit(&b, 0);
    assert!(b.record(0, failing, fail(FailureKind::Server)).is_some());
    clock.advance(ms(10_000));
    let fresh = permit(&b, 0);
    // The old trial's outcome belongs to a period that is over.
    assert_eq!(b.record(0, old, ok()), None);
    assert_eq!(b.record(0, old, CallOutcome::Cancelled), None);
    assert_eq!(state(&b), CircuitState::HalfOpen);
    let other = permit(&b, 0);
    rejected(&b, 0);
    assert_eq!(b.record(0, fresh, ok()), None);
    assert!(b.record(0, other, ok()).is_some());
}

#[test]
fn slow_calls_open_the_circuit() {
    let (b, _) = breaker(CircuitBreakerConfig {
        slow_call_ms: Some(1_000),
        slow_call_ratio: 0.5,
        min_calls: 4,
        ..CircuitBreakerConfig::default()
    });
    let slow = CallOutcome::Success { latency: ms(1_500) };
    call(&b, ok());
    call(&b, ok());
    assert_eq!(call(&b, slow), None);
    assert_eq!(
        call(&b, slow),
        t(CircuitState::Closed, CircuitState::Open, None)
    );
}

#[test]
fn slow_calls_are_ignored_unless_configured() {
    let (b, _) = breaker(CircuitBreakerConfig::default());
    for _ in 0..20 {
        assert_eq!(
            call(
                &b,
                CallOutcome::Success {
                    latency: ms(600_000)
                }
            ),
            None
        );
    }
    assert_eq!(state(&b), CircuitState::Closed);
}

#[test]
fn request_faults_count_for_nothing() {
    let (b, _) = breaker(CircuitBreakerConfig::default());
    for kind in [
        FailureKind::BadRequest,
        FailureKind::ContextLength,
        FailureKind::ContentPolicy,
    ] {
        for _ in 0..10 {
            assert_eq!(call(&b, fail(kind)), None);
        }
    }
    assert_eq!(state(&b), CircuitState::Closed);
    assert_eq!(b.snapshot(0).window_calls, 0);
}

#[test]
fn every_health_failure_kind_counts() {
    for kind in FailureKind::ALL {
        if kind.health_effect() != HealthEffect::Failure {
            continue;
        }
        let (b, _) = breaker(CircuitBreakerConfig::default());
        for _ in 0..5 {
            call(&b, fail(kind));
        }
        assert_eq!(state(&b), CircuitState::Open, "{kind}");
    }
}

#[test]
fn rate_limit_with_retry_after_cools_for_exactly_that_long() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    assert_eq!(
        call(&b, limited(Some(ms(7_000)))),
        t(
            CircuitState::Closed,
            CircuitState::CoolingDown,
            Some(FailureKind::RateLimited)
        )
    );
    assert_eq!(rejected(&b, 0), ms(7_000));
    // The upstream said when; probing earlier would only spend its quota.
    let mut targets = Vec::new();
    b.probe_targets(ms(60_000), &mut targets);
    assert!(targets.is_empty());
    clock.advance(ms(6_999));
    assert_eq!(rejected(&b, 0), ms(1));
    clock.advance(ms(1));
    let p = permit(&b, 0);
    assert_eq!(trial_of(p), None);
    assert_eq!(state(&b), CircuitState::Closed);
    // A 429 is not a failure: the window is untouched.
    assert_eq!(b.snapshot(0).window_calls, 0);
}

#[test]
fn a_429_storm_without_retry_after_backs_off_exponentially() {
    let (b, clock) = breaker(CircuitBreakerConfig {
        cooldown_ms: 1_000,
        max_cooldown_ms: 5_000,
        ..CircuitBreakerConfig::default()
    });
    for expected in [1_000, 2_000, 4_000, 5_000, 5_000] {
        assert!(call(&b, limited(None)).is_some());
        assert_eq!(rejected(&b, 0), ms(expected));
        clock.advance(ms(expected));
    }
    // A success ends the storm: the next cooldown is short again.
    call(&b, ok());
    call(&b, limited(None));
    assert_eq!(rejected(&b, 0), ms(1_000));
}

#[test]
fn a_429_in_flight_during_a_cooldown_extends_it_without_doubling() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    let a = permit(&b, 0);
    let c = permit(&b, 0);
    assert!(b.record(0, a, limited(None)).is_some());
    clock.advance(ms(500));
    assert_eq!(b.record(0, c, limited(None)), None);
    assert_eq!(rejected(&b, 0), ms(1_000));
    // Without Retry-After the prober may check it.
    let mut targets = Vec::new();
    b.probe_targets(ms(60_000), &mut targets);
    assert_eq!(targets, vec![0]);
}

#[test]
fn a_429_on_a_trial_cools_down_then_trials_again() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    open(&b);
    clock.advance(ms(5_000));
    let p = permit(&b, 0);
    assert_eq!(
        b.record(0, p, limited(Some(ms(2_000)))),
        t(
            CircuitState::HalfOpen,
            CircuitState::CoolingDown,
            Some(FailureKind::RateLimited)
        )
    );
    clock.advance(ms(1_999));
    assert_eq!(rejected(&b, 0), ms(1));
    // A 429 is not proof of recovery: after the cooldown the circuit is
    // half-open again, one trial at a time.
    clock.advance(ms(1));
    let trial = permit(&b, 0);
    assert!(trial_of(trial).is_some(), "the first call is a trial");
    assert_eq!(state(&b), CircuitState::HalfOpen);
    assert_eq!(rejected(&b, 0), Duration::ZERO);
    // A failed trial re-opens it with the grown break, as any trial would.
    assert_eq!(
        b.record(0, trial, fail(FailureKind::Server)),
        t(
            CircuitState::HalfOpen,
            CircuitState::Open,
            Some(FailureKind::Server)
        )
    );
    assert_eq!(rejected(&b, 0), ms(10_000));
    // A trial that succeeds closes it.
    clock.advance(ms(10_000));
    let trial = permit(&b, 0);
    assert_eq!(
        b.record(0, trial, ok()),
        t(CircuitState::HalfOpen, CircuitState::Closed, None)
    );
}

#[test]
fn a_429_on_a_trial_in_flight_during_the_cooldown_keeps_it_ending_half_open() {
    let (b, clock) = breaker(CircuitBreakerConfig {
        half_open_calls: 2,
        ..CircuitBreakerConfig::default()
    });
    open(&b);
    clock.advance(ms(5_000));
    let first = permit(&b, 0);
    let second = permit(&b, 0);
    assert!(b.record(0, first, limited(None)).is_some());
    // The other trial's 429 extends the cooldown; it still ends half-open.
    clock.advance(ms(500));
    assert_eq!(b.record(0, second, limited(Some(ms(3_000)))), None);
    clock.advance(ms(3_000));
    assert!(trial_of(permit(&b, 0)).is_some());
    assert_eq!(state(&b), CircuitState::HalfOpen);
}

#[test]
fn a_429_without_retry_after_on_a_trial_ends_half_open_too() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    open(&b);
    clock.advance(ms(5_000));
    let p = permit(&b, 0);
    assert!(b.record(0, p, limited(None)).is_some());
    assert_eq!(rejected(&b, 0), ms(1_000));
    clock.advance(ms(1_000));
    assert!(trial_of(permit(&b, 0)).is_some());
    // Even a Retry-After of 0 leaves a trial, not a closed circuit.
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    open(&b);
    clock.advance(ms(5_000));
    let p = permit(&b, 0);
    assert!(b.record(0, p, limited(Some(Duration::ZERO))).is_some());
    clock.advance(ms(1));
    let p = permit(&b, 0);
    assert!(trial_of(p).is_some());
    assert!(
        b.record(0, p, ok()).is_some(),
        "the new period's trial decides"
    );
}

#[test]
fn a_probe_429_on_an_open_circuit_ends_half_open() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    open(&b);
    let limited_probe = ProbeFailure {
        kind: FailureKind::RateLimited,
        retry_after: Some(ms(1_000)),
    };
    assert_eq!(
        b.record_probe(0, Err(limited_probe)),
        t(
            CircuitState::Open,
            CircuitState::CoolingDown,
            Some(FailureKind::RateLimited)
        )
    );
    clock.advance(ms(1_000));
    assert!(trial_of(permit(&b, 0)).is_some());
    assert_eq!(state(&b), CircuitState::HalfOpen);
}

#[test]
fn auth_failure_disables_until_a_probe_succeeds() {
    for kind in [FailureKind::Auth, FailureKind::QuotaExhausted] {
        let (b, clock) = breaker(CircuitBreakerConfig::default());
        assert_eq!(
            call(&b, fail(kind)),
            t(CircuitState::Closed, CircuitState::Disabled, Some(kind))
        );
        clock.advance(ms(3_600_000));
        assert_eq!(rejected(&b, 0), Duration::ZERO);
        assert_eq!(b.snapshot(0).retry_after_ms, None);
        let mut targets = Vec::new();
        b.probe_targets(ms(60_000), &mut targets);
        assert_eq!(targets, vec![0, 1], "disabled and idle models want probes");
        // Failed probes leave it disabled; the same cause reports nothing new.
        assert_eq!(b.record_probe(0, Err(failed(FailureKind::Connect))), None);
        assert_eq!(b.record_probe(0, Err(failed(kind))), None);
        assert_eq!(state(&b), CircuitState::Disabled);
        assert_eq!(
            b.record_probe(0, Ok(ms(30))),
            t(CircuitState::Disabled, CircuitState::Closed, None)
        );
        assert!(matches!(b.admit(0), Admission::Admit(_)));
    }
}

#[test]
fn a_successful_probe_closes_an_open_circuit_before_the_break_ends() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    open(&b);
    clock.advance(ms(1_000));
    assert_eq!(
        b.record_probe(0, Ok(ms(20))),
        t(CircuitState::Open, CircuitState::Closed, None)
    );
    assert_eq!(trial_of(permit(&b, 0)), None);
    assert_eq!(b.record_probe(0, Ok(ms(20))), None, "already closed");
}

#[test]
fn a_failed_probe_opens_an_idle_circuit_and_extends_an_open_one() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    clock.advance(ms(60_000));
    let mut targets = Vec::new();
    b.probe_targets(ms(60_000), &mut targets);
    assert_eq!(targets, vec![0, 1], "both models idle");
    assert_eq!(
        b.record_probe(0, Err(failed(FailureKind::Connect))),
        t(
            CircuitState::Closed,
            CircuitState::Open,
            Some(FailureKind::Connect)
        )
    );
    assert_eq!(rejected(&b, 0), ms(5_000));
    clock.advance(ms(4_000));
    // Still down: the break starts over, grown.
    assert_eq!(b.record_probe(0, Err(failed(FailureKind::Timeout))), None);
    assert_eq!(rejected(&b, 0), ms(10_000));
    // A probe that only hit a request fault says nothing.
    assert_eq!(
        b.record_probe(0, Err(failed(FailureKind::BadRequest))),
        None
    );
    assert_eq!(rejected(&b, 0), ms(10_000));
    // A probe answered with a 429: the model is up but limited.
    assert!(
        b.record_probe(0, Err(failed(FailureKind::RateLimited)))
            .is_some()
    );
    assert_eq!(state(&b), CircuitState::CoolingDown);
}

#[test]
fn a_failed_probe_does_not_open_a_model_that_got_traffic_since_it_was_listed() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    clock.advance(ms(60_000));
    let mut targets = Vec::new();
    b.probe_targets(ms(60_000), &mut targets);
    assert_eq!(targets, vec![0, 1], "both models idle, both probed");
    // While the probes are out, model 0 gets real traffic that succeeds;
    // model 1 stays idle.
    clock.advance(ms(1_000));
    assert_eq!(call(&b, ok()), None);
    clock.advance(ms(9_000));
    // Both probes time out. The busy model's own calls say it is up.
    assert_eq!(b.record_probe(0, Err(failed(FailureKind::Timeout))), None);
    assert_eq!(state(&b), CircuitState::Closed);
    assert!(matches!(b.admit(0), Admission::Admit(_)));
    // The idle one is found dead before traffic finds it.
    assert_eq!(
        b.record_probe(1, Err(failed(FailureKind::Timeout))),
        t(
            CircuitState::Closed,
            CircuitState::Open,
            Some(FailureKind::Timeout)
        )
    );
}

#[test]
fn a_failed_probe_of_a_model_never_listed_as_idle_does_not_open_it() {
    // A policy that shares the model but found it busy (so did not list
    // it) still hears the probe's result; it must not open on it.
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    for _ in 0..10 {
        clock.advance(ms(10_000));
        call(&b, ok());
    }
    let mut targets = Vec::new();
    b.probe_targets(ms(60_000), &mut targets);
    assert_eq!(targets, vec![1]);
    assert_eq!(b.record_probe(0, Err(failed(FailureKind::Server))), None);
    assert_eq!(state(&b), CircuitState::Closed);
}

#[test]
fn probe_targets_skip_healthy_busy_models() {
    let (ctx, clock) = ctx(4);
    let b = CircuitBreaker::new(CircuitBreakerConfig::default(), &ctx).unwrap();
    let idle = ms(60_000);
    let mut targets = Vec::new();
    b.probe_targets(idle, &mut targets);
    assert!(targets.is_empty(), "nothing is idle yet");
    // Model 0 is busy, model 1 goes open, model 2 is disabled, model 3 idles.
    for _ in 0..5 {
        let p = permit(&b, 1);
        b.record(1, p, fail(FailureKind::Server));
    }
    let p = permit(&b, 2);
    b.record(2, p, fail(FailureKind::Auth));
    for _ in 0..12 {
        clock.advance(ms(10_000));
        let p = permit(&b, 0);
        b.record(0, p, ok());
    }
    b.probe_targets(idle, &mut targets);
    assert_eq!(targets, vec![1, 2, 3]);
    // A probe counts as activity: the idle model is not probed again
    // until it has idled for idle_ms once more.
    b.record_probe(3, Ok(ms(5)));
    targets.clear();
    b.probe_targets(idle, &mut targets);
    assert_eq!(targets, vec![1, 2]);
    // Half-open circuits want probes too.
    clock.advance(ms(60_000));
    let _trial = permit(&b, 1);
    targets.clear();
    b.probe_targets(idle, &mut targets);
    assert!(targets.contains(&1));
}

#[test]
fn snapshot_reports_the_window() {
    let (b, _) = breaker(CircuitBreakerConfig::default());
    call(&b, ok());
    call(&b, ok());
    call(&b, ok());
    call(&b, fail(FailureKind::Server));
    let s = b.snapshot(0);
    assert_eq!(s.state, CircuitState::Closed);
    assert_eq!(s.window_calls, 4);
    assert_eq!(s.failure_ratio, 0.25);
    assert_eq!(s.retry_after_ms, None);
}

#[test]
fn unknown_models_are_admitted_and_ignored() {
    let (b, _) = breaker(CircuitBreakerConfig::default());
    assert_eq!(b.admit(9), Admission::Admit(Permit::default()));
    assert_eq!(
        b.record(9, Permit::default(), fail(FailureKind::Auth)),
        None
    );
    assert_eq!(b.record_probe(9, Ok(ms(1))), None);
    assert_eq!(b.snapshot(9).state, CircuitState::Closed);
}

#[test]
fn admission_from_many_threads_counts_every_call() {
    let (b, _) = breaker(CircuitBreakerConfig::default());
    let b = Arc::new(b);
    std::thread::scope(|s| {
        for _ in 0..4 {
            let b = b.clone();
            s.spawn(move || {
                for _ in 0..5_000 {
                    let p = permit(&b, 0);
                    assert_eq!(b.record(0, p, ok()), None);
                }
            });
        }
    });
    assert_eq!(b.snapshot(0).window_calls, 20_000);
    assert_eq!(state(&b), CircuitState::Closed);
}

#[test]
fn concurrent_failures_report_exactly_one_opening() {
    let (b, _) = breaker(CircuitBreakerConfig::default());
    let b = Arc::new(b);
    let openings = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            let b = b.clone();
            let openings = &openings;
            s.spawn(move || {
                for _ in 0..1_000 {
                    if let Admission::Admit(p) = b.admit(0)
                        && b.record(0, p, fail(FailureKind::Server)).is_some()
                    {
                        openings.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(openings.load(Ordering::SeqCst), 1);
    assert_eq!(state(&b), CircuitState::Open);
}

#[test]
fn concurrent_half_open_admission_grants_exactly_the_trial_permits() {
    let (b, clock) = breaker(CircuitBreakerConfig {
        half_open_calls: 3,
        ..CircuitBreakerConfig::default()
    });
    open(&b);
    clock.advance(ms(5_000));
    let b = Arc::new(b);
    let granted = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            let b = b.clone();
            let granted = &granted;
            s.spawn(move || {
                for _ in 0..1_000 {
                    if let Admission::Admit(p) = b.admit(0) {
                        assert!(trial_of(p).is_some());
                        granted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(granted.load(Ordering::SeqCst), 3);
}

#[test]
fn bad_values_name_their_key() {
    let (ctx, _) = ctx(1);
    let cases = [
        (serde_json::json!({"failure_ratio": 1.5}), "failure_ratio"),
        (
            serde_json::json!({"slow_call_ratio": -0.1}),
            "slow_call_ratio",
        ),
        (serde_json::json!({"min_calls": 0}), "min_calls"),
        (serde_json::json!({"window_ms": 0}), "window_ms"),
        (
            serde_json::json!({"window_ms": 5, "buckets": 10}),
            "buckets",
        ),
        (serde_json::json!({"break_ms": 0}), "break_ms"),
        (
            serde_json::json!({"break_multiplier": 0.5}),
            "break_multiplier",
        ),
        (
            serde_json::json!({"break_ms": 9000, "max_break_ms": 8000}),
            "max_break_ms",
        ),
        (
            serde_json::json!({"half_open_calls": 64}),
            "half_open_calls",
        ),
        (serde_json::json!({"slow_call_ms": 0}), "slow_call_ms"),
        (serde_json::json!({"cooldown_ms": 0}), "cooldown_ms"),
        (
            serde_json::json!({"max_cooldown_ms": 10}),
            "max_cooldown_ms",
        ),
    ];
    for (value, field) in cases {
        let err = CircuitBreaker::from_value(&value, &ctx).unwrap_err();
        assert_eq!(err.field(), Some(field), "{value}: {err}");
    }
    let err = CircuitBreaker::from_value(&serde_json::json!({"failur_ratio": 0.5}), &ctx)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("unknown field `failur_ratio`, expected one of"),
        "{err}"
    );
}

#[test]
fn a_ratio_of_zero_is_refused_naming_its_key() {
    // failures / calls >= 0 holds for every window: the circuit would open
    // after min_calls calls that all succeeded.
    let (ctx, _) = ctx(1);
    for field in ["failure_ratio", "slow_call_ratio"] {
        for bad in [0.0, -0.0, -0.5] {
            let err =
                CircuitBreaker::from_value(&serde_json::json!({ field: bad }), &ctx).unwrap_err();
            assert_eq!(err.field(), Some(field), "{field} = {bad}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("`{field}` must be greater than 0 (got ")),
                "{err}"
            );
        }
        let err =
            CircuitBreaker::from_value(&serde_json::json!({ field: 1.01 }), &ctx).unwrap_err();
        assert_eq!(err.field(), Some(field));
        // The bounds themselves: just above 0, and 1.
        for good in [1e-9, 1.0] {
            assert!(
                CircuitBreaker::from_value(&serde_json::json!({ field: good }), &ctx).is_ok(),
                "{field} = {good}"
            );
        }
    }
}

/// A fleet that remembers what was published and who subscribed.
#[derive(Debug, Default)]
struct RecordingFleet {
    published: std::sync::Mutex<Vec<(String, SharedCircuit)>>,
    subscribed: AtomicUsize,
}

impl FleetState for RecordingFleet {
    fn backend(&self) -> &str {
        "recording"
    }

    fn publish_circuit(&self, model: &str, circuit: SharedCircuit) {
        self.published
            .lock()
            .unwrap()
            .push((model.to_owned(), circuit));
    }

    fn subscribe_circuits(&self, _listener: Weak<dyn CircuitListener>) {
        self.subscribed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn probe_lease(
        &self,
        _model: &str,
        _ttl: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(std::future::ready(true))
    }

    fn store_up(&self) -> bool {
        true
    }
}

fn fleet_breaker(
    config: CircuitBreakerConfig,
) -> (Arc<CircuitBreaker>, Arc<ManualClock>, Arc<RecordingFleet>) {
    let (ctx, clock) = ctx(2);
    let fleet = Arc::new(RecordingFleet::default());
    let ctx = ctx.with_fleet(fleet.clone());
    let b = CircuitBreaker::new(config, &ctx).unwrap().into_shared();
    (b, clock, fleet)
}

fn published(fleet: &RecordingFleet) -> Vec<(String, SharedCircuit)> {
    std::mem::take(&mut *fleet.published.lock().unwrap())
}

#[test]
fn own_transitions_are_published_with_their_remaining_time() {
    let (b, clock, fleet) = fleet_breaker(CircuitBreakerConfig {
        min_calls: 2,
        ..CircuitBreakerConfig::default()
    });
    assert_eq!(
        fleet.subscribed.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    call(&b, fail(FailureKind::Server));
    assert!(
        published(&fleet).is_empty(),
        "no transition, nothing published"
    );
    call(&b, fail(FailureKind::Server));
    assert_eq!(
        published(&fleet),
        vec![("m0".to_owned(), SharedCircuit::open(ms(5_000)))]
    );
    // The break ends: half-open is this replica's own and is not shared;
    // the trial's success closes, and that is.
    clock.advance(ms(5_000));
    call(&b, ok());
    assert_eq!(
        published(&fleet),
        vec![("m0".to_owned(), SharedCircuit::closed())]
    );
    // A 429 cools down; a longer one while cooling is published too.
    call(&b, limited(Some(ms(1_000))));
    let Admission::Admit(p) = b.admit(1) else {
        panic!("m1 admitted")
    };
    b.record(1, p, limited(Some(ms(700))));
    assert_eq!(
        published(&fleet),
        vec![
            (
                "m0".to_owned(),
                SharedCircuit::cooling_down(ms(1_000), true, false)
            ),
            (
                "m1".to_owned(),
                SharedCircuit::cooling_down(ms(700), true, false)
            ),
        ]
    );
    // An auth failure disables.
    clock.advance(ms(1_000));
    call(&b, fail(FailureKind::Auth));
    assert_eq!(
        published(&fleet),
        vec![("m0".to_owned(), SharedCircuit::disabled())]
    );
}

#[test]
fn adopted_breaks_and_cooldowns_only_lengthen() {
    let (b, clock, fleet) = fleet_breaker(CircuitBreakerConfig::default());
    // An adopted break lasts break_ms (5000) longer here: the opener's
    // trials decide first.
    b.adopt("m0", SharedCircuit::open(ms(8_000)));
    assert_eq!(state(&b), CircuitState::Open);
    assert_eq!(rejected(&b, 0), ms(13_000));
    b.adopt("m0", SharedCircuit::open(ms(3_000)));
    assert_eq!(rejected(&b, 0), ms(13_000), "a shorter break is ignored");
    b.adopt("m0", SharedCircuit::cooling_down(ms(20_000), true, false));
    assert_eq!(state(&b), CircuitState::Open, "a break outranks a cooldown");
    // Adoption publishes nothing back.
    assert!(published(&fleet).is_empty());
    // Without a verdict from the fleet, the adopted break ends like an own
    // one: half-open, then a trial.
    clock.advance(ms(12_999));
    assert_eq!(rejected(&b, 0), ms(1));
    clock.advance(ms(1));
    let p = permit(&b, 0);
    assert_eq!(state(&b), CircuitState::HalfOpen);
    b.record(0, p, CallOutcome::Cancelled);

    b.adopt("m1", SharedCircuit::cooling_down(ms(2_000), true, false));
    assert_eq!(rejected(&b, 1), ms(2_000));
    b.adopt("m1", SharedCircuit::cooling_down(ms(1_000), false, false));
    assert_eq!(rejected(&b, 1), ms(2_000), "a shorter cooldown is ignored");
    b.adopt("m1", SharedCircuit::cooling_down(ms(6_000), false, false));
    assert_eq!(rejected(&b, 1), ms(6_000), "a longer one extends");
    // Unknown models are ignored.
    b.adopt("nope", SharedCircuit::disabled());
}

#[test]
fn an_adopted_disable_holds_until_a_close() {
    let (b, _clock, _fleet) = fleet_breaker(CircuitBreakerConfig::default());
    b.adopt("m0", SharedCircuit::disabled());
    assert_eq!(state(&b), CircuitState::Disabled);
    b.adopt("m0", SharedCircuit::open(ms(60_000)));
    b.adopt("m0", SharedCircuit::cooling_down(ms(60_000), true, false));
    assert_eq!(state(&b), CircuitState::Disabled);
    b.adopt("m0", SharedCircuit::closed());
    assert_eq!(state(&b), CircuitState::Closed);
    assert!(matches!(b.admit(0), Admission::Admit(_)));
}

#[test]
fn an_adopted_close_ends_an_own_open_circuit_with_a_fresh_window() {
    let (b, _clock, _fleet) = fleet_breaker(CircuitBreakerConfig {
        min_calls: 2,
        ..CircuitBreakerConfig::default()
    });
    call(&b, fail(FailureKind::Server));
    call(&b, fail(FailureKind::Server));
    assert_eq!(state(&b), CircuitState::Open);
    b.adopt("m0", SharedCircuit::closed());
    assert_eq!(state(&b), CircuitState::Closed);
    assert_eq!(b.snapshot(0).window_calls, 0);
    // One failure after the close does not re-open: the window is fresh.
    call(&b, fail(FailureKind::Server));
    assert_eq!(state(&b), CircuitState::Closed);
}

#[test]
fn a_replica_that_adopted_a_break_leaves_the_trials_to_the_opener() {
    let config = CircuitBreakerConfig {
        min_calls: 2,
        ..CircuitBreakerConfig::default()
    };
    let (opener, opener_clock, _) = fleet_breaker(config.clone());
    let (other, other_clock, fleet) = fleet_breaker(config);
    call(&opener, fail(FailureKind::Server));
    call(&opener, fail(FailureKind::Server));
    other.adopt("m0", SharedCircuit::open(ms(5_000)));
    // The break ends: the opener admits its one trial, the other does not.
    opener_clock.advance(ms(5_000));
    other_clock.advance(ms(5_000));
    let trial = permit(&opener, 0);
    assert!(matches!(opener.admit(0), Admission::Reject { .. }));
    assert_eq!(rejected(&other, 0), ms(5_000));
    // The trial succeeds: the opener closes and the fleet hears it.
    let closed = opener.record(0, trial, ok());
    assert_eq!(closed.map(|t| t.to), Some(CircuitState::Closed));
    other.adopt("m0", SharedCircuit::closed());
    assert!(matches!(other.admit(0), Admission::Admit(_)));
    assert!(published(&fleet).is_empty(), "adopting publishes nothing");
}

/// How long model 0 has been in its state.
fn in_state(b: &CircuitBreaker) -> Option<u64> {
    b.snapshot(0).in_state_ms
}

#[test]
fn the_snapshot_says_how_long_the_circuit_has_been_in_its_state() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    clock.advance(ms(700));
    // Closed since the breaker was made.
    assert_eq!(in_state(&b), Some(700));
    // Calls that change nothing leave the time alone.
    call(&b, fail(FailureKind::Server));
    clock.advance(ms(300));
    assert_eq!(in_state(&b), Some(1_000));
    for _ in 0..4 {
        call(&b, fail(FailureKind::Server));
    }
    assert_eq!(state(&b), CircuitState::Open);
    assert_eq!(in_state(&b), Some(0));
    clock.advance(ms(1_200));
    assert_eq!(in_state(&b), Some(1_200));
    // The break (5 s) ended 2 s before the next call came: half-open since
    // the break's end, not since that call.
    clock.advance(ms(3_800 + 2_000));
    let trial = permit(&b, 0);
    assert_eq!(state(&b), CircuitState::HalfOpen);
    assert_eq!(in_state(&b), Some(2_000));
    clock.advance(ms(50));
    b.record(0, trial, ok());
    assert_eq!(state(&b), CircuitState::Closed);
    assert_eq!(in_state(&b), Some(0));
}

#[test]
fn cooldowns_disables_and_adopted_breaks_restart_the_time_in_state() {
    let (b, clock) = breaker(CircuitBreakerConfig::default());
    clock.advance(ms(100));
    call(&b, limited(Some(ms(2_000))));
    assert_eq!(state(&b), CircuitState::CoolingDown);
    clock.advance(ms(500));
    // Another 429 in flight extends the cooldown but does not restart it.
    b.record(0, Permit::default(), limited(Some(ms(3_000))));
    assert_eq!(in_state(&b), Some(500));
    clock.advance(ms(10_000));
    call(&b, ok());
    clock.advance(ms(100));
    call(&b, fail(FailureKind::Auth));
    assert_eq!(state(&b), CircuitState::Disabled);
    clock.advance(ms(40));
    assert_eq!(in_state(&b), Some(40));
    b.record_probe(0, Ok(ms(5)));
    assert_eq!(in_state(&b), Some(0));
    clock.advance(ms(60));
    b.adopt("m0", SharedCircuit::open(ms(5_000)));
    assert_eq!(state(&b), CircuitState::Open);
    clock.advance(ms(25));
    assert_eq!(in_state(&b), Some(25));
}
