//! `ContentPolicy`: the provider's reason goes back, unless configured to fall over.

use super::*;

#[tokio::test(start_paused = true)]
async fn content_policy_returns_the_reason_unless_configured_to_fall_over() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::ContentPolicy));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b.clone());
    let err = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RouteError::Rejected { ref error, .. } if error.kind == FailureKind::ContentPolicy)
    );
    assert_eq!(b.calls(), 0);

    let policy = RoutePolicy {
        on_content_policy: ContentPolicyAction::FallOver,
        ..RoutePolicy::default()
    };
    let s = setup(
        vec![(model("primary"), a), (model("backup"), b.clone())],
        policy,
        simple_strategies(),
    );
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*r.outcome.model_used, "backup");
}

#[tokio::test(start_paused = true)]
async fn a_content_policy_cut_mid_stream_ends_the_answer_with_its_reason() {
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Text("The".into()),
        Piece::Fail(
            backstop_core::ProviderError::new(FailureKind::ContentPolicy, "flagged")
                .with_status(400),
        ),
    ]));
    let b = continuing();
    let s = setup(
        vec![(model("a"), a), (model("b"), b.clone())],
        mid_stream(MidStreamPolicy::Continue),
        simple_strategies(),
    );
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (text, last) = drain(stream).await;
    assert_eq!(text, "The");
    let StreamItem::Failed(RouteError::StreamAborted { cause, .. }) = last else {
        panic!("{last:?}");
    };
    assert_eq!(cause.kind, FailureKind::ContentPolicy);
    assert_eq!(
        b.calls(),
        0,
        "no other model is asked to finish a refused answer"
    );
}
