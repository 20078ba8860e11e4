//! `Overloaded` / `Server` (5xx): one retry with backoff, none for a model already failing.

use super::*;

#[tokio::test(start_paused = true)]
async fn server_error_is_retried_once_with_backoff_then_falls_over() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Server));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b.clone());
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(a.calls(), 2, "one retry of the same model");
    assert_eq!(&*r.outcome.model_used, "backup");
    assert_eq!(r.outcome.fallback_level, 1);
    assert_eq!(r.response.model, "backup");
    // Default backoff: 50 ms step with equal jitter -> between 25 and 50 ms.
    assert!(took >= ms(25) && took <= ms(50), "{took:?}");
    assert_eq!(
        kinds(&r.outcome.attempts),
        vec![
            ("primary".into(), "server"),
            ("primary".into(), "server"),
            ("backup".into(), "ok")
        ]
    );
    assert_eq!(r.outcome.attempts[0].status, Some(500));
    assert_eq!(r.outcome.warning.as_deref(), Some("level 1 via backup"));
    assert_eq!(r.outcome.upstream_attempts, 3);
}

#[tokio::test(start_paused = true)]
async fn a_model_already_failing_is_not_retried_it_falls_over_at_once() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Server));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    // The first 500 looks like a blip: one retry after a backoff.
    let started = Instant::now();
    s.router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert!(started.elapsed() >= ms(25));
    assert_eq!(a.calls(), 2);
    // Now the model has failed repeatedly: an outage, not a blip.
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no backoff for a model that is down"
    );
    assert_eq!(a.calls(), 3, "no retry either");
    assert_eq!(
        kinds(&r.outcome.attempts),
        vec![("primary".into(), "server"), ("backup".into(), "ok")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_model_with_rare_errors_keeps_its_retry() {
    // fail, answer, fail, answer: each failure follows a success.
    let a = ScriptedProvider::new(
        [
            Script::fail(FailureKind::Server),
            Script::reply(ANSWER),
            Script::fail(FailureKind::Server),
            Script::reply(ANSWER),
        ],
        Script::reply(ANSWER),
    );
    let b = ScriptedProvider::always(Script::reply("backup"));
    let s = chain2(a.clone(), b.clone());
    for _ in 0..2 {
        let r = s
            .router
            .complete(request(), RequestContext::default())
            .await
            .unwrap();
        assert_eq!(&*r.outcome.model_used, "primary");
    }
    assert_eq!(a.calls(), 4);
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_health_policy_may_overrule_the_previous_failure_and_keep_the_retry() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Server));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let strategies = Strategies {
        health: Arc::new(NeverAnOutage::default()),
        ..simple_strategies()
    };
    let s = setup(
        vec![(model("primary"), a.clone()), (model("backup"), b)],
        RoutePolicy::default(),
        strategies,
    );
    for round in 1..=2 {
        s.router
            .complete(request(), RequestContext::default())
            .await
            .unwrap();
        assert_eq!(a.calls(), 2 * round, "a retry in round {round}");
    }
}
