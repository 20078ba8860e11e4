//! `BadRequest` (other 4xx): the upstream error goes back; nothing else is tried.

use super::*;

#[tokio::test(start_paused = true)]
async fn bad_request_returns_the_upstream_error_and_tries_nothing_else() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::BadRequest));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b.clone());
    let err = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap_err();
    match err {
        RouteError::Rejected {
            model,
            error,
            attempts,
        } => {
            assert_eq!(&*model, "primary");
            assert_eq!(error.kind, FailureKind::BadRequest);
            assert_eq!(error.status, Some(400));
            assert_eq!(attempts.len(), 1);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(a.calls(), 1);
    assert_eq!(b.calls(), 0);
}
