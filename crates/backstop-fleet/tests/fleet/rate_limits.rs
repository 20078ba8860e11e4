//! Rate limits shared through the store: two replicas' `sliding_minute`
//! limiters count on one set of keys, on the store's clock, so a model's
//! quota and a caller's limit bind the fleet; settlements correct the
//! fleet's token count; a failed store leaves each replica to its own
//! count (`local`) or refuses (`closed`) within the timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_core::{
    FleetState, ModelSpec, OnStoreFailure, RateCall, RateCause, RateLimiter, RateQuota, RateScope,
    RateUse, StrategyContext, SystemClock,
};
use backstop_fleet::testing::RedisServer;
use backstop_fleet::{FleetHandle, RedisState};
use backstop_strategies::rate_limit::SlidingMinute;

use crate::{settings, wait_up};

/// One replica's limiter: model 0 with `quota`, callers with `per_caller`.
async fn limiter(
    url: String,
    quota: RateQuota,
    per_caller: Option<RateQuota>,
    on_failure: OnStoreFailure,
) -> (Arc<RedisState>, SlidingMinute, FleetHandle) {
    let state =
        RedisState::new(settings(url).with_on_store_failure(on_failure), vec![]).expect("state");
    let mut m = ModelSpec::new("primary", "p");
    m.quota = quota;
    let ctx = StrategyContext::new(vec![m], Arc::new(SystemClock::new()))
        .with_fleet(state.clone() as Arc<dyn FleetState>);
    let limiter = SlidingMinute::new(&ctx, per_caller).expect("limits");
    let tasks = state.start().await.expect("start");
    (state, limiter, tasks)
}

fn call(caller: &str, tokens: u64) -> RateCall<'_> {
    RateCall {
        model: 0,
        caller: Some(caller),
        first: true,
        tokens,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_quota_and_a_caller_limit_bind_the_whole_fleet() {
    let redis = RedisServer::start();
    let quota = RateQuota {
        rpm: Some(5),
        tpm: None,
    };
    let per_caller = Some(RateQuota {
        rpm: Some(3),
        tpm: None,
    });
    let local = OnStoreFailure::Local;
    let (a_state, a, _ta) = limiter(redis.url(), quota, per_caller, local).await;
    let (b_state, b, _tb) = limiter(redis.url(), quota, per_caller, local).await;
    wait_up(&a_state).await;
    wait_up(&b_state).await;
    assert!(a.is_shared() && b.is_shared());
    // Alternating replicas: each alone would admit 5 (3 per caller); the
    // fleet admits 5 in all, 3 from alice.
    let mut admitted = Vec::new();
    let mut refusals = Vec::new();
    for i in 0..10 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        let caller = if i < 6 { "alice" } else { "bob" };
        match limiter.acquire_shared(call(caller, 10)).await {
            Ok(hold) => admitted.push((caller, hold)),
            Err(over) => refusals.push(over),
        }
    }
    let alice = admitted.iter().filter(|(c, _)| *c == "alice").count();
    assert_eq!(alice, 3, "alice's fleet-wide limit");
    assert_eq!(admitted.len(), 5, "the model's fleet-wide quota");
    assert!(admitted.iter().all(|(_, h)| h.fleet_ticket.is_some()));
    let scopes: Vec<RateScope> = refusals.iter().map(|o| o.scope).collect();
    assert!(scopes.contains(&RateScope::Caller), "{refusals:?}");
    assert!(scopes.contains(&RateScope::Model), "{refusals:?}");
    for over in &refusals {
        assert_eq!(over.cause, RateCause::Rpm);
        assert!(
            over.retry_after > Duration::ZERO && over.retry_after <= Duration::from_secs(61),
            "{over:?}"
        );
    }
    // A call never sent gives its request back to the fleet.
    let (caller, hold) = admitted.pop().expect("one");
    a.settle(hold, Some(caller), RateUse::Released);
    let started = Instant::now();
    while b.acquire_shared(call("carol", 10)).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the release never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_corrected_fleet_wide_when_a_call_settles() {
    let redis = RedisServer::start();
    let quota = RateQuota {
        rpm: None,
        tpm: Some(1_000),
    };
    let local = OnStoreFailure::Local;
    let (a_state, a, _ta) = limiter(redis.url(), quota, None, local).await;
    let (_b_state, b, _tb) = limiter(redis.url(), quota, None, local).await;
    wait_up(&a_state).await;
    let hold = a
        .acquire_shared(call("alice", 800))
        .await
        .expect("800 of 1000");
    let over = b
        .acquire_shared(call("bob", 300))
        .await
        .expect_err("800 + 300 > 1000 across the fleet");
    assert_eq!((over.scope, over.cause), (RateScope::Model, RateCause::Tpm));
    // The call used 100 tokens, not its bound of 800.
    a.settle(hold, Some("alice"), RateUse::Sent { tokens: 100 });
    let started = Instant::now();
    while b.acquire_shared(call("bob", 300)).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the correction never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let too_big = b
        .acquire_shared(call("bob", 1_001))
        .await
        .expect_err("never fits");
    assert_eq!(too_big.retry_after, Duration::from_secs(61));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_leaves_rate_limits_to_each_replica_or_refuses_when_closed() {
    let redis = RedisServer::start();
    let quota = RateQuota {
        rpm: Some(2),
        tpm: None,
    };
    let (local_state, local, _tl) = limiter(redis.url(), quota, None, OnStoreFailure::Local).await;
    let (closed_state, closed, _tc) =
        limiter(redis.url(), quota, None, OnStoreFailure::Closed).await;
    wait_up(&local_state).await;
    wait_up(&closed_state).await;
    // Frozen: connections stay open, nothing answers.
    redis.pause();
    let started = Instant::now();
    let first = local
        .acquire_shared(call("alice", 1))
        .await
        .expect("local: this replica's own count decides");
    assert_eq!(first.fleet_ticket, None);
    local
        .acquire_shared(call("alice", 1))
        .await
        .expect("under this replica's quota");
    assert!(
        local.acquire_shared(call("alice", 1)).await.is_err(),
        "this replica's own count still binds"
    );
    let over = closed
        .acquire_shared(call("alice", 1))
        .await
        .expect_err("closed: nothing the fleet cannot count");
    assert_eq!(over.cause, RateCause::StoreUnavailable);
    assert_eq!(closed.snapshot()[0].requests, 0, "nothing kept locally");
    // Four decisions against a frozen store, each bounded by the 50 ms
    // timeout (the third never asked it).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    redis.resume();
}

/// What a shared rate-limit admission adds to a request on loopback:
/// printed (run with `--no-capture`), not asserted; docs/fleet.md quotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_admission_is_one_round_trip_and_is_measured() {
    let redis = RedisServer::start();
    let quota = RateQuota {
        rpm: Some(1_000_000),
        tpm: Some(1_000_000_000),
    };
    let per_caller = Some(RateQuota {
        rpm: Some(1_000_000),
        tpm: None,
    });
    let (state, l, _tasks) = limiter(redis.url(), quota, per_caller, OnStoreFailure::Closed).await;
    wait_up(&state).await;
    let mut took = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        let hold = l
            .acquire_shared(call("alice", 50))
            .await
            .expect("far under the limits, with the store up: held");
        took.push(started.elapsed());
        l.settle(hold, Some("alice"), RateUse::Sent { tokens: 20 });
    }
    took.sort();
    eprintln!(
        "shared rate-limit admission (model + caller) on loopback: p50 {:?}, p99 {:?}",
        took[took.len() / 2],
        took[took.len() * 99 / 100]
    );
}
