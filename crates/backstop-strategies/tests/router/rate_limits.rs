//! Rate limits in a real Router: a same-model retry is one more upstream
//! request, so it needs room in the model's quota too.

use std::sync::Arc;

use backstop_core::testing::{Script, ScriptedProvider};
use backstop_core::{
    AttemptOutcome, FailureKind, ManualClock, ModelSpec, RateLimiter, RateQuota, RoutePolicy,
    Router, Scenario, StrategyContext,
};
use backstop_strategies::rate_limit::SlidingMinute;

use crate::{ask, outcomes};

/// `primary` (at most `rpm` calls a minute, failing once with a 5xx) then
/// `backup`, one same-model retry allowed.
fn chain(rpm: u64) -> (Router, Arc<ScriptedProvider>, Arc<dyn RateLimiter>) {
    let clock = ManualClock::shared();
    let mut primary = ModelSpec::new("primary", "primary");
    primary.quota = RateQuota {
        rpm: Some(rpm),
        tpm: None,
    };
    let backup = ModelSpec::new("backup", "backup");
    let ctx = StrategyContext::new(vec![primary, backup], clock);
    let limiter: Arc<dyn RateLimiter> = Arc::new(SlidingMinute::new(&ctx, None).expect("a quota"));
    let first = ScriptedProvider::new(
        [Script::fail(FailureKind::Server)],
        Script::reply("from primary"),
    );
    let mut policy = RoutePolicy::default();
    policy.retries.same_model = 1;
    let router = Router::builder(ctx)
        .provider("primary", first.clone())
        .provider(
            "backup",
            ScriptedProvider::always(Script::reply("from backup")),
        )
        .rate_limiter(limiter.clone())
        .scenario(
            Scenario {
                name: "chat".into(),
                chain: vec!["primary".into(), "backup".into()],
                policy,
            },
            backstop_core::testing::simple_strategies(),
        )
        .build()
        .unwrap();
    (router, first, limiter)
}

#[tokio::test(start_paused = true)]
async fn a_retry_the_quota_has_no_room_for_falls_over_instead() {
    let (router, primary, limiter) = chain(1);
    let result = ask(&router, None).await.unwrap();
    assert_eq!(&*result.outcome.model_used, "backup");
    assert_eq!(
        outcomes(&result),
        [
            (
                "primary".to_owned(),
                AttemptOutcome::Failed(FailureKind::Server)
            ),
            ("backup".to_owned(), AttemptOutcome::Succeeded),
        ]
    );
    assert_eq!(primary.calls(), 1, "the quota of 1 was never passed");
    assert_eq!(limiter.snapshot()[0].requests, 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_with_room_in_the_quota_is_counted() {
    let (router, primary, limiter) = chain(2);
    let result = ask(&router, None).await.unwrap();
    assert_eq!(&*result.outcome.model_used, "primary");
    assert_eq!(primary.calls(), 2);
    assert_eq!(limiter.snapshot()[0].requests, 2, "both calls counted");
}
