//! The end-to-end deadline bounds every attempt, retry and wait.

use super::*;

#[tokio::test(start_paused = true)]
async fn the_total_deadline_bounds_every_attempt_and_wait() {
    let a = ScriptedProvider::always(Script::Hang);
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let policy = RoutePolicy {
        timeouts: Timeouts {
            attempt: Duration::from_secs(10),
            total: Duration::from_secs(2),
            ..Timeouts::default()
        },
        ..RoutePolicy::default()
    };
    let s = setup(
        vec![(model("a"), a), (model("b"), b.clone())],
        policy,
        simple_strategies(),
    );
    let started = Instant::now();
    let err = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(
        kinds(err.attempts()),
        vec![("a".into(), "timeout"), ("b".into(), "deadline")]
    );
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn retries_never_wait_past_the_deadline() {
    let limited = backstop_core::ProviderError::new(FailureKind::RateLimited, "later")
        .with_retry_after(Duration::from_secs(2));
    let a = ScriptedProvider::always(Script::Fail(limited));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let policy = RoutePolicy {
        timeouts: Timeouts {
            total: Duration::from_secs(1),
            ..Timeouts::default()
        },
        ..RoutePolicy::default()
    };
    let s = setup(
        vec![(model("a"), a.clone()), (model("b"), b)],
        policy,
        simple_strategies(),
    );
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(a.calls(), 1);
    assert_eq!(&*r.outcome.model_used, "b");
}
