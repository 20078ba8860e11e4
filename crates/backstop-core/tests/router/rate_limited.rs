//! `RateLimited` (429): a Retry-After under the cap is waited for once; otherwise fall over.

use super::*;

#[tokio::test(start_paused = true)]
async fn retry_after_under_the_cap_is_waited_for() {
    let limited = backstop_core::ProviderError::new(FailureKind::RateLimited, "slow down")
        .with_status(429)
        .with_retry_after(ms(1200));
    let a = ScriptedProvider::new([Script::Fail(limited)], Script::reply(ANSWER));
    let b = ScriptedProvider::always(Script::reply("backup"));
    let s = chain2(a.clone(), b.clone());
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), ms(1200));
    assert_eq!(a.calls(), 2);
    assert_eq!(&*r.outcome.model_used, "primary");
}

#[tokio::test(start_paused = true)]
async fn retry_after_over_the_cap_falls_over_instead_of_waiting() {
    let limited = backstop_core::ProviderError::new(FailureKind::RateLimited, "slow down")
        .with_status(429)
        .with_retry_after(Duration::from_secs(30));
    let a = ScriptedProvider::always(Script::Fail(limited));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(a.calls(), 1);
    assert_eq!(&*r.outcome.model_used, "backup");
}

#[tokio::test(start_paused = true)]
async fn rate_limit_without_retry_after_falls_over_at_once() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::RateLimited));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(a.calls(), 1);
    assert_eq!(&*r.outcome.model_used, "backup");
}
