//! `Auth`, `QuotaExhausted`, `InvalidResponse`: fall over without retry.

use super::*;

#[tokio::test(start_paused = true)]
async fn auth_quota_and_invalid_responses_fall_over_without_retry() {
    for kind in [
        FailureKind::Auth,
        FailureKind::QuotaExhausted,
        FailureKind::InvalidResponse,
    ] {
        let a = ScriptedProvider::always(Script::fail(kind));
        let b = ScriptedProvider::always(Script::reply(ANSWER));
        let s = chain2(a.clone(), b);
        let r = s
            .router
            .complete(request(), RequestContext::default())
            .await
            .unwrap();
        assert_eq!(a.calls(), 1, "{kind}");
        assert_eq!(&*r.outcome.model_used, "backup", "{kind}");
        assert_eq!(kinds(&r.outcome.attempts)[0].1, kind.as_str());
    }
}
