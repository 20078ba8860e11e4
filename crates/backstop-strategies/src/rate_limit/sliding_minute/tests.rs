use std::sync::Mutex as StdMutex;
use std::sync::Weak;

use backstop_core::{
    BudgetWindow, CircuitListener, ManualClock, ModelSpec, SharedAccount, SharedCircuit,
    StoreFailure,
};

use super::*;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Model 0 limited to `rpm` / `tpm`, model 1 unlimited.
fn limiter(quota: RateQuota, per_caller: Option<RateQuota>) -> (SlidingMinute, Arc<ManualClock>) {
    limiter_in(quota, per_caller, Arc::new(backstop_core::LocalState))
}

fn limiter_in(
    quota: RateQuota,
    per_caller: Option<RateQuota>,
    fleet: Arc<dyn FleetState>,
) -> (SlidingMinute, Arc<ManualClock>) {
    let clock = ManualClock::shared();
    let mut limited = ModelSpec::new("limited", "p");
    limited.quota = quota;
    let free = ModelSpec::new("free", "p");
    let ctx = StrategyContext::new(vec![limited, free], clock.clone()).with_fleet(fleet);
    (
        SlidingMinute::new(&ctx, per_caller).expect("something to limit"),
        clock,
    )
}

fn call(model: usize, caller: Option<&str>, first: bool, tokens: u64) -> RateCall<'_> {
    RateCall {
        model,
        caller,
        first,
        tokens,
    }
}

fn rpm(n: u64) -> RateQuota {
    RateQuota {
        rpm: Some(n),
        tpm: None,
    }
}

fn tpm(n: u64) -> RateQuota {
    RateQuota {
        rpm: None,
        tpm: Some(n),
    }
}

#[test]
fn nothing_to_limit_builds_no_limiter() {
    let clock = ManualClock::shared();
    let ctx = StrategyContext::new(vec![ModelSpec::new("m", "p")], clock);
    assert!(SlidingMinute::new(&ctx, None).is_none());
    assert!(SlidingMinute::new(&ctx, Some(RateQuota::default())).is_none());
    assert!(SlidingMinute::new(&ctx, Some(rpm(1))).is_some());
}

#[test]
fn a_model_at_its_rpm_is_refused_until_its_oldest_second_leaves_the_minute() {
    let (l, clock) = limiter(rpm(3), None);
    // The clock starts on a second boundary; three calls 400 ms apart.
    for _ in 0..3 {
        l.acquire(&call(0, None, true, 10)).expect("under quota");
        clock.advance(ms(400));
    }
    // Now 1200 ms in; the first call's second (0..1000) counts until the
    // minute starts after it: at 61 000 ms.
    let over = l.acquire(&call(0, None, true, 10)).expect_err("at quota");
    assert_eq!(over.scope, RateScope::Model);
    assert_eq!(over.cause, RateCause::Rpm);
    assert_eq!(over.limit, 3);
    assert_eq!(over.retry_after, ms(61_000 - 1_200));
    // The unlimited model is not affected.
    l.acquire(&call(1, None, true, 10)).expect("no quota");
    clock.advance(over.retry_after - ms(1));
    assert!(l.acquire(&call(0, None, true, 10)).is_err(), "1 ms early");
    clock.advance(ms(1));
    // All three calls were in the first second, which has left: three fit
    // again, and no more.
    for _ in 0..3 {
        l.acquire(&call(0, None, true, 10))
            .expect("first slot left");
    }
    assert!(l.acquire(&call(0, None, true, 10)).is_err());
}

#[test]
fn no_sixty_seconds_ever_see_more_than_the_quota() {
    let (l, clock) = limiter(rpm(20), None);
    let mut admitted: Vec<u64> = Vec::new();
    // Five minutes of uneven traffic: bursts of 9 calls every 1.7 s, a
    // quiet spell, then a call every 50 ms from the middle of a second
    // (what a rule that dropped the minute's oldest, partial second would
    // let through twice).
    let mut t = 0u64;
    while t < 300_000 {
        let calls = if t < 90_000 {
            if t.is_multiple_of(1_700) { 9 } else { 0 }
        } else if t < 150_530 {
            0
        } else {
            u64::from((t - 150_530).is_multiple_of(50))
        };
        for _ in 0..calls {
            if l.acquire(&call(0, None, true, 1)).is_ok() {
                admitted.push(t);
            }
        }
        clock.advance(ms(10));
        t += 10;
    }
    assert!(admitted.len() > 60, "{} admitted", admitted.len());
    for (i, &start) in admitted.iter().enumerate() {
        let in_minute = admitted[i..]
            .iter()
            .take_while(|&&at| at < start + 60_000)
            .count();
        assert!(
            in_minute <= 20,
            "{in_minute} calls in the minute from {start} ms"
        );
    }
}

#[test]
fn tokens_are_held_at_the_estimate_and_corrected_at_settle() {
    let (l, clock) = limiter(tpm(1_500), None);
    let first = l.acquire(&call(0, None, true, 1_000)).expect("fits");
    let over = l
        .acquire(&call(0, None, true, 1_000))
        .expect_err("2000 > 1500");
    assert_eq!(over.cause, RateCause::Tpm);
    assert_eq!(over.retry_after, ms(61_000));
    // The call used far less than its bound.
    l.settle(first, None, RateUse::Sent { tokens: 200 });
    l.acquire(&call(0, None, true, 1_000))
        .expect("200 + 1000 fit");
    assert_eq!(l.snapshot()[0].tokens, 1_200);
    clock.advance(ms(61_000));
    assert_eq!(l.snapshot()[0].tokens, 0, "the minute moved on");
}

#[test]
fn a_call_larger_than_the_tpm_never_fits() {
    let (l, _) = limiter(tpm(100), None);
    let over = l.acquire(&call(0, None, true, 101)).expect_err("too big");
    assert_eq!(over.retry_after, NEVER);
}

#[test]
fn a_call_never_sent_gives_its_request_and_tokens_back() {
    let (l, _) = limiter(
        RateQuota {
            rpm: Some(1),
            tpm: Some(100),
        },
        None,
    );
    let hold = l.acquire(&call(0, None, true, 60)).expect("fits");
    assert!(l.acquire(&call(0, None, true, 10)).is_err());
    l.settle(hold, None, RateUse::Released);
    let snap = &l.snapshot()[0];
    assert_eq!((snap.requests, snap.tokens), (0, 0));
    l.acquire(&call(0, None, true, 60)).expect("given back");
}

#[test]
fn a_settle_after_the_minute_moved_on_changes_nothing() {
    let (l, clock) = limiter(tpm(1_000), None);
    let hold = l.acquire(&call(0, None, true, 500)).expect("fits");
    clock.advance(ms(70_000));
    l.acquire(&call(0, None, true, 900)).expect("fits");
    l.settle(hold, None, RateUse::Sent { tokens: 5_000 });
    assert_eq!(l.snapshot()[0].tokens, 900);
}

#[test]
fn a_caller_is_checked_once_per_request_and_charged_every_call_s_tokens() {
    let (l, _) = limiter(
        RateQuota::default(),
        Some(RateQuota {
            rpm: Some(2),
            tpm: Some(1_000),
        }),
    );
    let a = Some("team-a");
    let first = l.acquire(&call(1, a, true, 300)).expect("first request");
    assert!(first.caller && first.caller_request);
    // A fallback of the same request: tokens only, not checked.
    let fallback = l.acquire(&call(0, a, false, 300)).expect("fallback");
    assert!(fallback.caller && !fallback.caller_request);
    let snap = l.caller_snapshot(a).expect("counted");
    assert_eq!((snap.requests, snap.tokens), (1, 600));
    l.acquire(&call(1, a, true, 300))
        .expect("second request, 900 tokens");
    let over = l.acquire(&call(1, a, true, 10)).expect_err("third request");
    assert_eq!(over.scope, RateScope::Caller);
    assert_eq!(over.cause, RateCause::Rpm);
    assert!(
        l.acquire(&call(0, a, false, 5_000)).is_ok(),
        "later calls are never refused"
    );
    // Another caller, and requests without one, have limits of their own.
    l.acquire(&call(1, Some("team-b"), true, 10))
        .expect("own limit");
    l.acquire(&call(1, None, true, 10)).expect("anonymous");
    let names: Vec<String> = l.snapshot().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["anonymous", "team-a", "team-b"]);
    assert_eq!(l.caller_snapshot(a).expect("a").refused, 1);
}

#[test]
fn a_model_and_its_caller_are_counted_all_or_none() {
    let (l, _) = limiter(rpm(1), Some(rpm(5)));
    let a = Some("team-a");
    l.acquire(&call(0, a, true, 1)).expect("fits both");
    assert!(l.acquire(&call(0, a, true, 1)).is_err(), "model at quota");
    // The refusal by the model took nothing from the caller.
    assert_eq!(l.caller_snapshot(a).expect("a").requests, 1);
    // A caller refusal takes nothing from the model.
    let (l, _) = limiter(rpm(5), Some(rpm(1)));
    l.acquire(&call(1, a, true, 1)).expect("fits");
    assert_eq!(
        l.acquire(&call(0, a, true, 1)).expect_err("caller").scope,
        RateScope::Caller
    );
    assert_eq!(l.snapshot()[0].requests, 0);
}

#[test]
fn the_snapshot_lists_each_limit_with_its_use_and_refusals() {
    let (l, _) = limiter(rpm(1), None);
    l.acquire(&call(0, None, true, 7)).expect("fits");
    let _ = l.acquire(&call(0, None, true, 7));
    let snap = l.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(
        snap[0],
        RateLimitSnapshot {
            scope: RateScope::Model,
            name: "limited".into(),
            rpm: Some(1),
            tpm: None,
            requests: 1,
            tokens: 7,
            refused: 1,
            shared: false,
        }
    );
}

/// A fleet whose store answers as told and records what it was asked.
#[derive(Debug)]
struct FakeStore {
    answer: StdMutex<Result<RateVerdict, StoreFailure>>,
    on_failure: OnStoreFailure,
    asked: StdMutex<Vec<(Vec<SharedRate<'static>>, u64)>>,
    settled: StdMutex<Vec<(u64, String, i64, i64)>>,
}

impl FakeStore {
    fn new(answer: Result<RateVerdict, StoreFailure>, on_failure: OnStoreFailure) -> Arc<Self> {
        Arc::new(Self {
            answer: StdMutex::new(answer),
            on_failure,
            asked: StdMutex::new(Vec::new()),
            settled: StdMutex::new(Vec::new()),
        })
    }
}

impl FleetState for FakeStore {
    fn backend(&self) -> &str {
        "fake"
    }
    fn publish_circuit(&self, _: &str, _: SharedCircuit) {}
    fn subscribe_circuits(&self, _: Weak<dyn CircuitListener>) {}
    fn probe_lease(&self, _: &str, _: Duration) -> futures_lite::BoxFuture<'_, bool> {
        Box::pin(std::future::ready(true))
    }
    fn store_up(&self) -> bool {
        true
    }
    fn reserve_budget<'a>(
        &'a self,
        _: BudgetWindow<'a>,
        _: &'a [SharedAccount<'a>],
        _: u64,
    ) -> futures_lite::BoxFuture<'a, Result<Option<usize>, StoreFailure>> {
        Box::pin(std::future::ready(Ok(None)))
    }
    fn on_store_failure(&self) -> OnStoreFailure {
        self.on_failure
    }
    fn shares_rate_limits(&self) -> bool {
        true
    }
    fn acquire_rate<'a>(
        &'a self,
        limits: &'a [SharedRate<'a>],
        tokens: u64,
        _bucket_ms: u64,
    ) -> futures_lite::BoxFuture<'a, Result<RateVerdict, StoreFailure>> {
        let leaked: Vec<SharedRate<'static>> = limits
            .iter()
            .map(|l| SharedRate {
                name: Box::leak(l.name.to_owned().into_boxed_str()),
                ..*l
            })
            .collect();
        self.asked.lock().unwrap().push((leaked, tokens));
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(std::future::ready(answer))
    }
    fn settle_rate(&self, ticket: u64, corrections: &[RateCorrection<'_>]) {
        let mut settled = self.settled.lock().unwrap();
        for c in corrections {
            settled.push((ticket, c.name.to_owned(), c.requests, c.tokens));
        }
    }
}

/// The boxed future type of the fleet seam, without naming the crate.
mod futures_lite {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

#[tokio::test]
async fn a_shared_call_asks_the_store_once_with_both_limits_and_settles_there() {
    let store = FakeStore::new(Ok(RateVerdict::Held { ticket: 42 }), OnStoreFailure::Local);
    let (l, _) = limiter_in(rpm(10), Some(tpm(5_000)), store.clone());
    assert!(l.is_shared());
    let hold = l
        .acquire_shared(call(0, Some("a"), true, 100))
        .await
        .expect("held");
    assert_eq!(hold.fleet_ticket, Some(42));
    {
        let asked = store.asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        let (limits, tokens) = &asked[0];
        assert_eq!(*tokens, 100);
        assert_eq!(
            limits.as_slice(),
            [
                SharedRate {
                    name: "model:limited",
                    rpm: 10,
                    tpm: 0,
                    check: true
                },
                SharedRate {
                    name: "caller:a",
                    rpm: 0,
                    tpm: 5_000,
                    check: true
                },
            ]
        );
    }
    l.settle(hold, Some("a"), RateUse::Sent { tokens: 30 });
    assert_eq!(
        store.settled.lock().unwrap().as_slice(),
        [
            (42, "model:limited".to_owned(), 0, -70),
            (42, "caller:a".to_owned(), 0, -70)
        ]
    );
}

#[tokio::test]
async fn a_store_refusal_gives_the_local_count_back_and_names_the_limit() {
    let store = FakeStore::new(
        Ok(RateVerdict::Refused {
            index: 1,
            tokens: false,
            retry_after: ms(2_500),
        }),
        OnStoreFailure::Local,
    );
    let (l, _) = limiter_in(rpm(10), Some(rpm(3)), store);
    let over = l
        .acquire_shared(call(0, Some("a"), true, 100))
        .await
        .expect_err("the fleet is over the caller's limit");
    assert_eq!(
        (over.scope, over.cause, over.limit, over.retry_after),
        (RateScope::Caller, RateCause::Rpm, 3, ms(2_500))
    );
    let snap = l.snapshot();
    assert_eq!((snap[0].requests, snap[0].tokens), (0, 0));
    assert_eq!(snap[1].refused, 1);
}

#[tokio::test]
async fn a_failed_store_counts_locally_or_refuses_as_configured() {
    let failed = || Err(StoreFailure("no answer within 20 ms".into()));
    let store = FakeStore::new(failed(), OnStoreFailure::Local);
    let (l, _) = limiter_in(rpm(1), None, store);
    let hold = l
        .acquire_shared(call(0, None, true, 1))
        .await
        .expect("local");
    assert_eq!(hold.fleet_ticket, None);
    assert!(
        l.acquire_shared(call(0, None, true, 1)).await.is_err(),
        "the local count still binds"
    );

    let store = FakeStore::new(failed(), OnStoreFailure::Closed);
    let (l, _) = limiter_in(rpm(1), None, store);
    let over = l
        .acquire_shared(call(0, None, true, 1))
        .await
        .expect_err("closed");
    assert_eq!(over.cause, RateCause::StoreUnavailable);
    assert_eq!(l.snapshot()[0].requests, 0, "nothing kept locally");
}
