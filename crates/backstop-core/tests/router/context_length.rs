//! `ContextLength`: only models with a larger context window are tried.

use super::*;

#[tokio::test(start_paused = true)]
async fn context_length_error_routes_only_to_larger_windows() {
    let small = ScriptedProvider::always(Script::fail(FailureKind::ContextLength));
    let same = ScriptedProvider::always(Script::reply("same size"));
    let large = ScriptedProvider::always(Script::reply(ANSWER));
    let s = setup(
        vec![
            (windowed("small", 8_000), small.clone()),
            (windowed("same", 8_000), same.clone()),
            (windowed("large", 32_000), large.clone()),
        ],
        RoutePolicy::default(),
        simple_strategies(),
    );
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*r.outcome.model_used, "large");
    assert_eq!(r.outcome.fallback_level, 2);
    assert_eq!(same.calls(), 0);
    assert_eq!(
        kinds(&r.outcome.attempts),
        vec![
            ("small".into(), "context_length"),
            ("same".into(), "context_window"),
            ("large".into(), "ok")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn context_length_error_with_no_larger_window_is_returned_to_the_caller() {
    let small = ScriptedProvider::always(Script::fail(FailureKind::ContextLength));
    let same = ScriptedProvider::always(Script::reply("same size"));
    let s = setup(
        vec![
            (windowed("small", 8_000), small),
            (windowed("same", 8_000), same.clone()),
        ],
        RoutePolicy::default(),
        simple_strategies(),
    );
    let err = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RouteError::Rejected { ref error, .. } if error.kind == FailureKind::ContextLength),
        "{err:?}"
    );
    assert_eq!(same.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_prompt_larger_than_a_window_skips_that_model() {
    let tiny = ScriptedProvider::always(Script::reply("tiny"));
    let big = ScriptedProvider::always(Script::reply(ANSWER));
    let s = setup(
        vec![(windowed("tiny", 10), tiny.clone()), (model("big"), big)],
        RoutePolicy::default(),
        simple_strategies(),
    );
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(tiny.calls(), 0);
    assert_eq!(
        kinds(&r.outcome.attempts)[0],
        ("tiny".into(), "context_window")
    );
    assert_eq!(
        r.outcome.fallback_level, 1,
        "a skipped primary still makes this a fallback"
    );
}

#[tokio::test(start_paused = true)]
async fn a_model_whose_window_cannot_hold_prompt_and_output_bound_is_skipped() {
    let small = ScriptedProvider::always(Script::reply("small"));
    let big = ScriptedProvider::always(Script::reply(ANSWER));
    // A 5,000-token window and the default 4,096-token output bound.
    let s = setup(
        vec![
            (windowed("small", 5_000), small.clone()),
            (model("big"), big),
        ],
        RoutePolicy::default(),
        simple_strategies(),
    );
    let long = ChatRequest::user("chat", "word ".repeat(1_000));
    let r = s
        .router
        .complete(long, RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*r.outcome.model_used, "big");
    assert_eq!(small.calls(), 0);
    // With a small output bound it fits.
    let mut short = ChatRequest::user("chat", "word ".repeat(1_000));
    short.max_tokens = Some(500);
    let r = s
        .router
        .complete(short, RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*r.outcome.model_used, "small");
}
