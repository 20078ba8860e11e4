//! Replicas sharing one real `redis-server` (started per test on a free
//! loopback port, stopped by its guard even when the test fails): circuit
//! transitions reach the other replicas, a late replica reconciles, cooldowns
//! only lengthen, one prober holds a model's lease, and a store that is
//! down, frozen or restarted never blocks a replica and is found again.
//!
//! The alert rule's window is summed across replicas and a fleet sends one
//! alert (`alerts.rs`); rate limits bind the fleet (`rate_limits.rs`).
//!
//! Waits are bounded polls (a few seconds at most), never fixed sleeps that
//! a slow machine could outrun.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_core::{
    Admission, CallOutcome, CircuitListener, CircuitState, FailureKind, FleetState, HealthPolicy,
    ModelSpec, SharedCircuit, StrategyContext, SystemClock,
};
use backstop_fleet::testing::RedisServer;
use backstop_fleet::{FleetError, FleetHandle, RedisSettings, RedisState};
use backstop_strategies::health::CircuitBreaker;
use backstop_strategies::health::CircuitBreakerConfig;

mod alerts;
mod rate_limits;

const MODELS: [&str; 2] = ["primary", "backup"];

/// One gateway replica: its fleet state and a circuit breaker on it.
struct Replica {
    state: Arc<RedisState>,
    breaker: Arc<CircuitBreaker>,
    _tasks: FleetHandle,
}

fn settings(url: String) -> RedisSettings {
    RedisSettings::new(url, "BACKSTOP_REDIS_URL", "test", Duration::from_millis(50))
        .expect("valid settings")
}

async fn replica(url: String) -> Replica {
    let state = RedisState::new(
        settings(url),
        MODELS.iter().map(|m| (*m).to_owned()).collect(),
    )
    .expect("state");
    let models = MODELS.iter().map(|m| ModelSpec::new(*m, "p")).collect();
    let ctx = StrategyContext::new(models, Arc::new(SystemClock::new()))
        .with_fleet(state.clone() as Arc<dyn FleetState>);
    let config = CircuitBreakerConfig {
        min_calls: 2,
        break_ms: 60_000,
        max_break_ms: 120_000,
        ..CircuitBreakerConfig::default()
    };
    let breaker = CircuitBreaker::new(config, &ctx)
        .expect("breaker")
        .into_shared();
    let tasks = state.start().await.expect("start");
    Replica {
        state,
        breaker,
        _tasks: tasks,
    }
}

/// Polls `check` every 5 ms for at most `limit`; how long it took.
async fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    check().then(|| started.elapsed())
}

async fn wait_up(state: &RedisState) {
    assert!(
        within(Duration::from_secs(5), || state.store_up())
            .await
            .is_some(),
        "the store never came up"
    );
}

fn fail(breaker: &CircuitBreaker, model: usize) -> Option<backstop_core::HealthTransition> {
    let Admission::Admit(permit) = breaker.admit(model) else {
        panic!("model {model} not admitted");
    };
    breaker.record(
        model,
        permit,
        CallOutcome::Failure {
            kind: FailureKind::Server,
            retry_after: None,
            latency: Duration::from_millis(1),
        },
    )
}

/// A direct connection to the test's store, to look at its keys.
async fn store(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

fn rejects(breaker: &CircuitBreaker, model: usize) -> bool {
    matches!(breaker.admit(model), Admission::Reject { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_reaches_every_other_replica() {
    let redis = RedisServer::start();
    let a = replica(redis.url()).await;
    let b = replica(redis.url()).await;
    let c = replica(redis.url()).await;
    for r in [&a, &b, &c] {
        wait_up(&r.state).await;
    }
    assert!(fail(&a.breaker, 0).is_none());
    let opened = fail(&a.breaker, 0).expect("opens on the second failure");
    assert_eq!(opened.to, CircuitState::Open);
    for r in [&b, &c] {
        let took = within(Duration::from_secs(5), || rejects(&r.breaker, 0))
            .await
            .expect("the other replica adopts the open circuit");
        eprintln!("adopted in {took:?}");
        let snap = r.breaker.snapshot(0);
        assert_eq!(snap.state, CircuitState::Open);
        // The opener's 60 s break, plus break_ms (60 s) in which the
        // opener's trials decide for the fleet.
        let left = snap.retry_after_ms.expect("an open circuit says when");
        assert!((110_000..=120_000).contains(&left), "break left {left} ms");
        // The other model is untouched.
        assert!(!rejects(&r.breaker, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_starts_later_reads_the_open_circuits() {
    let redis = RedisServer::start();
    let a = replica(redis.url()).await;
    wait_up(&a.state).await;
    fail(&a.breaker, 0);
    fail(&a.breaker, 0);
    // Let the writer store it before the new replica reads.
    let mut conn = store(&redis).await;
    let started = Instant::now();
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg("test:{primary}:circuit")
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        if exists {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let late = replica(redis.url()).await;
    within(Duration::from_secs(5), || rejects(&late.breaker, 0))
        .await
        .expect("the late replica reconciles the open circuit");
    assert_eq!(late.breaker.snapshot(0).state, CircuitState::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_reaches_the_fleet_and_a_disable_too() {
    let redis = RedisServer::start();
    let a = replica(redis.url()).await;
    let b = replica(redis.url()).await;
    wait_up(&a.state).await;
    wait_up(&b.state).await;
    fail(&a.breaker, 0);
    fail(&a.breaker, 0);
    within(Duration::from_secs(5), || rejects(&b.breaker, 0))
        .await
        .expect("open adopted");
    // A's probe finds the model back: A closes, and so does B.
    let closed = a.breaker.record_probe(0, Ok(Duration::from_millis(3)));
    assert_eq!(closed.map(|t| t.to), Some(CircuitState::Closed));
    within(Duration::from_secs(5), || !rejects(&b.breaker, 0))
        .await
        .expect("close adopted");
    assert_eq!(b.breaker.snapshot(0).state, CircuitState::Closed);
    // An auth failure on B disables the model on A.
    let Admission::Admit(permit) = b.breaker.admit(1) else {
        panic!("backup admitted")
    };
    b.breaker.record(
        1,
        permit,
        CallOutcome::Failure {
            kind: FailureKind::Auth,
            retry_after: None,
            latency: Duration::from_millis(1),
        },
    );
    within(Duration::from_secs(5), || {
        a.breaker.snapshot(1).state == CircuitState::Disabled
    })
    .await
    .expect("disable adopted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooldown_is_extended_by_a_longer_one_never_shortened() {
    let redis = RedisServer::start();
    let a = replica(redis.url()).await;
    let b = replica(redis.url()).await;
    wait_up(&a.state).await;
    wait_up(&b.state).await;
    a.state.publish_circuit(
        "primary",
        SharedCircuit::cooling_down(Duration::from_secs(30), true, false),
    );
    within(Duration::from_secs(5), || {
        b.breaker.snapshot(0).state == CircuitState::CoolingDown
    })
    .await
    .expect("cooldown adopted");
    // A shorter cooldown changes nothing: the store keeps the key's longer
    // TTL and announces nothing, and adopting it never shortens B's.
    a.state.publish_circuit(
        "primary",
        SharedCircuit::cooling_down(Duration::from_secs(2), true, false),
    );
    // The writer is first in, first out: once B has heard of the backup's
    // cooldown, A's shorter one for the primary has been through the store.
    a.state.publish_circuit(
        "backup",
        SharedCircuit::cooling_down(Duration::from_secs(30), true, false),
    );
    within(Duration::from_secs(5), || {
        b.breaker.snapshot(1).state == CircuitState::CoolingDown
    })
    .await
    .expect("the marker cooldown reached B");
    let pttl: i64 = redis::cmd("PTTL")
        .arg("test:{primary}:circuit")
        .query_async(&mut store(&redis).await)
        .await
        .expect("PTTL");
    assert!(
        pttl > 20_000,
        "the store shortened the cooldown to {pttl} ms"
    );
    b.breaker.adopt(
        "primary",
        SharedCircuit::cooling_down(Duration::from_secs(2), true, false),
    );
    let left = b.breaker.snapshot(0).retry_after_ms.unwrap();
    assert!(left > 20_000, "B's cooldown was shortened to {left} ms");
    // A longer one from B extends the store's and A's.
    b.state.publish_circuit(
        "primary",
        SharedCircuit::cooling_down(Duration::from_secs(90), true, false),
    );
    within(Duration::from_secs(5), || {
        a.breaker
            .snapshot(0)
            .retry_after_ms
            .is_some_and(|ms| ms > 60_000)
    })
    .await
    .expect("the longer cooldown reached A");
    let pttl: i64 = redis::cmd("PTTL")
        .arg("test:{primary}:circuit")
        .query_async(&mut store(&redis).await)
        .await
        .expect("PTTL");
    assert!(
        pttl > 60_000,
        "the key kept the longest cooldown ({pttl} ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_holds_a_models_probe_lease() {
    let redis = RedisServer::start();
    let a = replica(redis.url()).await;
    let b = replica(redis.url()).await;
    wait_up(&a.state).await;
    wait_up(&b.state).await;
    let ttl = Duration::from_millis(400);
    assert!(a.state.probe_lease("primary", ttl).await, "A takes it");
    assert!(
        !b.state.probe_lease("primary", ttl).await,
        "B must not probe"
    );
    assert!(a.state.probe_lease("primary", ttl).await, "A renews it");
    assert!(
        b.state.probe_lease("backup", ttl).await,
        "leases are per model"
    );
    // A stops renewing (a replica that died): B takes over after the TTL.
    let took = {
        let started = Instant::now();
        loop {
            if b.state.probe_lease("primary", ttl).await {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "B never took over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(
        took >= Duration::from_millis(200),
        "B waited for A's lease to lapse ({took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_dies_blocks_nobody_and_is_found_again_after_a_restart() {
    let mut redis = RedisServer::start();
    let a = replica(redis.url()).await;
    let b = replica(redis.url()).await;
    wait_up(&a.state).await;
    wait_up(&b.state).await;
    redis.stop();
    within(Duration::from_secs(5), || !a.state.store_up())
        .await
        .expect("A notices the store is gone");
    // Publishing and admitting never wait on the dead store.
    let started = Instant::now();
    fail(&a.breaker, 0);
    fail(&a.breaker, 0);
    assert!(rejects(&a.breaker, 0), "A runs on its own state");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "took {:?}",
        started.elapsed()
    );
    // The lease answers within the timeout: probe, since nobody can say no.
    let started = Instant::now();
    assert!(a.state.probe_lease("primary", Duration::from_secs(1)).await);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!rejects(&b.breaker, 0), "B never heard of it");
    // The store comes back empty: both reconnect and resubscribe, and a
    // transition flows again.
    redis.restart();
    wait_up(&a.state).await;
    wait_up(&b.state).await;
    fail(&a.breaker, 1);
    fail(&a.breaker, 1);
    within(Duration::from_secs(5), || rejects(&b.breaker, 1))
        .await
        .expect("B adopts after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_is_a_failure_within_the_timeout_and_recovers() {
    let redis = RedisServer::start();
    let a = replica(redis.url()).await;
    let b = replica(redis.url()).await;
    wait_up(&a.state).await;
    wait_up(&b.state).await;
    redis.pause();
    let started = Instant::now();
    assert!(
        a.state.probe_lease("primary", Duration::from_secs(1)).await,
        "an unanswered lease probes anyway"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "lease took {took:?}");
    within(Duration::from_secs(5), || !a.state.store_up())
        .await
        .expect("the store is marked down");
    redis.resume();
    wait_up(&a.state).await;
    fail(&a.breaker, 0);
    fail(&a.breaker, 0);
    within(Duration::from_secs(5), || rejects(&b.breaker, 0))
        .await
        .expect("transitions flow again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_at_start_name_the_variable_not_the_password() {
    let redis = RedisServer::start_with(&["--requirepass", "right-password"]);
    let url = format!("redis://:wrong-password@127.0.0.1:{}/0", redis.port());
    let state = RedisState::new(settings(url.clone()), vec![]).expect("state");
    let err = state.start().await.expect_err("auth fails");
    assert!(matches!(err, FleetError::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("$BACKSTOP_REDIS_URL"), "{text}");
    assert!(!text.contains("wrong-password"), "{text}");
    let ping = backstop_fleet::ping(&settings(url))
        .await
        .expect_err("ping fails too");
    assert!(!ping.to_string().contains("wrong-password"));
    let good = format!("redis://:right-password@127.0.0.1:{}/0", redis.port());
    backstop_fleet::ping(&settings(good))
        .await
        .expect("ping answers");
}

// ---------------------------------------------------------------- budgets

/// One replica's rolling budget on the store at `url`; each call is
/// estimated at 0.001 USD (100 output tokens at 0.01 per 1k).
async fn budget(
    url: String,
    config: serde_json::Value,
    on_failure: backstop_core::OnStoreFailure,
) -> (
    Arc<RedisState>,
    backstop_strategies::budget::Rolling,
    FleetHandle,
    StrategyContext,
) {
    let state =
        RedisState::new(settings(url).with_on_store_failure(on_failure), vec![]).expect("state");
    let mut m = ModelSpec::new("primary", "p");
    m.input_cost_per_1k = 0.0;
    m.output_cost_per_1k = 0.01;
    m.max_tokens = 100;
    let ctx = StrategyContext::new(vec![m], Arc::new(SystemClock::new()))
        .with_fleet(state.clone() as Arc<dyn FleetState>);
    let rolling = backstop_strategies::budget::Rolling::from_value(&config, &ctx).expect("rolling");
    let tasks = state.start().await.expect("start");
    (state, rolling, tasks, ctx)
}

fn facts(caller: &str) -> backstop_core::RequestFacts<'_> {
    backstop_core::RequestFacts {
        scenario: "chat",
        caller: Some(caller),
        prompt_tokens: 500,
        max_tokens: None,
        stream: false,
        tools: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_cap_binds_the_whole_fleet() {
    use backstop_core::BudgetPolicy;
    let redis = RedisServer::start();
    let config = serde_json::json!({"max_cost": 0.005, "max_cost_per_caller": 0.003});
    let local = backstop_core::OnStoreFailure::Local;
    let (a_state, a, _ta, a_ctx) = budget(redis.url(), config.clone(), local).await;
    let (_b_state, b, _tb, b_ctx) = budget(redis.url(), config, local).await;
    wait_up(&a_state).await;
    assert!(a.is_shared() && b.is_shared());
    // Alternating replicas, two callers: each replica alone would take 5
    // (and 3 per caller); the fleet takes 5 in all, 3 at most from alice.
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..10 {
        let (policy, ctx) = if i % 2 == 0 {
            (&a, &a_ctx)
        } else {
            (&b, &b_ctx)
        };
        let caller = if i < 6 { "alice" } else { "bob" };
        let f = facts(caller);
        match policy.reserve_shared(0, &ctx.models[0], &f).await {
            Ok(r) => held.push((i, caller, r)),
            Err(_) => refused += 1,
        }
    }
    let alice = held.iter().filter(|(_, c, _)| *c == "alice").count();
    assert_eq!(alice, 3, "alice's fleet-wide cap");
    assert_eq!(held.len(), 5, "the fleet's total cap; refused {refused}");
    // Releasing one (a failed call) gives its room back to the fleet, on
    // the other replica too.
    let (i, caller, r) = held.pop().expect("one held");
    let (policy, ctx) = if i % 2 == 0 {
        (&a, &a_ctx)
    } else {
        (&b, &b_ctx)
    };
    policy.settle(r, &ctx.models[0], &facts(caller), None);
    let started = Instant::now();
    loop {
        if let Ok(r) = b.reserve_shared(0, &b_ctx.models[0], &facts("carol")).await {
            b.settle(r, &b_ctx.models[0], &facts("carol"), None);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the release never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_leaves_budgets_to_each_replica_or_refuses_when_closed() {
    use backstop_core::BudgetPolicy;
    let mut redis = RedisServer::start();
    let config = serde_json::json!({"max_cost": 0.002});
    let (local_state, local, _tl, local_ctx) = budget(
        redis.url(),
        config.clone(),
        backstop_core::OnStoreFailure::Local,
    )
    .await;
    let (_closed_state, closed, _tc, closed_ctx) =
        budget(redis.url(), config, backstop_core::OnStoreFailure::Closed).await;
    wait_up(&local_state).await;
    redis.stop();
    let f = facts("alice");
    let started = Instant::now();
    local
        .reserve_shared(0, &local_ctx.models[0], &f)
        .await
        .expect("local: this replica's own cap decides");
    local
        .reserve_shared(0, &local_ctx.models[0], &f)
        .await
        .expect("still under this replica's cap");
    assert!(
        local
            .reserve_shared(0, &local_ctx.models[0], &f)
            .await
            .is_err(),
        "this replica's own cap still holds"
    );
    assert!(
        closed
            .reserve_shared(0, &closed_ctx.models[0], &f)
            .await
            .is_err(),
        "closed: nothing the fleet cannot count"
    );
    assert_eq!(
        closed.snapshot().reserved,
        0.0,
        "the refusal released its local hold"
    );
    // Four decisions against a dead store, each bounded by the timeout.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// What a shared reservation adds to a request on loopback: printed (run
/// with `--no-capture`), not asserted; docs/fleet.md quotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_reservation_is_one_round_trip_and_is_measured() {
    use backstop_core::BudgetPolicy;
    let redis = RedisServer::start();
    let config = serde_json::json!({"max_cost": 1000.0});
    let (state, policy, _tasks, ctx) =
        budget(redis.url(), config, backstop_core::OnStoreFailure::Closed).await;
    wait_up(&state).await;
    let f = facts("alice");
    let mut took = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        let r = policy
            .reserve_shared(0, &ctx.models[0], &f)
            .await
            .expect("under the cap, with the store up: held");
        took.push(started.elapsed());
        policy.settle(r, &ctx.models[0], &f, None);
    }
    took.sort();
    eprintln!(
        "shared reservation on loopback: p50 {:?}, p99 {:?}",
        took[took.len() / 2],
        took[took.len() * 99 / 100]
    );
    // Nothing is left held once every reservation settled (the settles are
    // queued: wait for the store to catch up).
    let started = Instant::now();
    loop {
        let mut conn = store(&redis).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("test:{b:*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let mut total = 0i64;
        for key in keys {
            let v: i64 = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("GET");
            total += v;
        }
        if total == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still held: {total}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `min_calls` counts the fleet's calls: one failure on each of two
/// replicas (neither at `min_calls` = 2 alone) opens the circuit, and the
/// third replica, which never called the model, adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_split_over_replicas_open_the_circuit_for_the_fleet() {
    let redis = RedisServer::start();
    let a = replica(redis.url()).await;
    let b = replica(redis.url()).await;
    let c = replica(redis.url()).await;
    for r in [&a, &b, &c] {
        wait_up(&r.state).await;
    }
    assert!(fail(&a.breaker, 0).is_none(), "one failure opens nothing");
    // A's failure is written at once (not at the next 100 ms refresh).
    let mut conn = store(&redis).await;
    let started = Instant::now();
    loop {
        let fields: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
            .arg("test:{c:circuit:primary}:counts")
            .query_async(&mut conn)
            .await
            .expect("HGETALL");
        if fields.iter().any(|(k, v)| k.ends_with(":1") && *v == 1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "A's failure never reached the store: {fields:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!rejects(&a.breaker, 0) && !rejects(&c.breaker, 0));
    let _ = fail(&b.breaker, 0);
    for (name, r) in [("A", &a), ("B", &b), ("C", &c)] {
        assert!(
            within(Duration::from_secs(5), || rejects(&r.breaker, 0))
                .await
                .is_some(),
            "{name} skips the model the fleet failed twice"
        );
    }
    assert!(!rejects(&c.breaker, 1), "the other model is untouched");
}
