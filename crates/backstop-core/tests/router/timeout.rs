//! `Timeout` (no headers, no first token, a stalled stream): never retried on the same model.

use super::*;

#[tokio::test(start_paused = true)]
async fn timeout_is_never_retried_on_the_same_model() {
    let a = ScriptedProvider::always(Script::Hang);
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let policy = RoutePolicy {
        timeouts: Timeouts {
            attempt: ms(700),
            ..Timeouts::default()
        },
        ..RoutePolicy::default()
    };
    let s = setup(
        vec![(model("primary"), a.clone()), (model("backup"), b)],
        policy,
        simple_strategies(),
    );
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(a.calls(), 1);
    assert_eq!(started.elapsed(), ms(700));
    assert_eq!(kinds(&r.outcome.attempts)[0], ("primary".into(), "timeout"));
    assert_eq!(&*r.outcome.model_used, "backup");
}

#[tokio::test(start_paused = true)]
async fn no_first_token_in_time_is_a_timeout_and_falls_over() {
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Wait(Duration::from_secs(60)),
        Piece::Text("late".into()),
    ]));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let policy = RoutePolicy {
        timeouts: Timeouts {
            first_token: ms(800),
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
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), ms(800));
    assert_eq!(
        kinds(&stream.meta().outcome.attempts)[0],
        ("a".into(), "timeout")
    );
    assert_eq!(a.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_times_out_on_idle_and_continues_elsewhere() {
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Text("The".into()),
        Piece::Text(" quick".into()),
        Piece::Stall,
    ]));
    let b = continuing();
    let s = setup(
        vec![(model("a"), a), (model("b"), b)],
        mid_stream(MidStreamPolicy::Restart),
        simple_strategies(),
    );
    let started = Instant::now();
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (text, last) = drain(stream).await;
    assert_eq!(text, ANSWER);
    assert_eq!(started.elapsed(), ms(500), "the idle timeout");
    let StreamItem::Done(summary) = last else {
        panic!("{last:?}");
    };
    assert_eq!(kinds(&summary.attempts)[0], ("a".into(), "timeout"));
}
