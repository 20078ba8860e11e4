//! `Connect` (refused, reset before headers): retried once at once, then fall over.

use super::*;

#[tokio::test(start_paused = true)]
async fn connect_failure_is_retried_at_once_then_falls_over() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Connect));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(a.calls(), 2);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no wait before a connect retry"
    );
    assert_eq!(r.outcome.fallback_level, 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_succeeds_keeps_the_primary() {
    let a = ScriptedProvider::new(
        [Script::fail(FailureKind::Overloaded)],
        Script::reply(ANSWER),
    );
    let b = ScriptedProvider::always(Script::reply("backup"));
    let s = chain2(a.clone(), b.clone());
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*r.outcome.model_used, "primary");
    assert_eq!(r.outcome.fallback_level, 0);
    assert_eq!(a.calls(), 2);
    assert_eq!(b.calls(), 0);
}
