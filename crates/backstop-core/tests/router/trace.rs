//! The per-request trace: every upstream call starts and ends once, with
//! its level and outcome, its headers reach the provider, skips and the
//! end are told; a stream's call ends when the stream does.

use super::*;
use backstop_core::testing::RecordingTrace;

fn traced(trace: &Arc<RecordingTrace>) -> RequestContext {
    RequestContext {
        trace: Some(trace.clone()),
        ..RequestContext::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failover_traces_two_calls_and_each_carries_its_own_headers() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Auth));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b.clone());
    let trace = Arc::new(RecordingTrace::default());
    s.router.complete(request(), traced(&trace)).await.unwrap();

    let calls = trace.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        (calls[0].model.as_str(), calls[0].level, calls[0].outcome),
        ("primary", 0, Some("auth"))
    );
    assert_eq!(
        (calls[1].model.as_str(), calls[1].level, calls[1].outcome),
        ("backup", 1, Some("ok"))
    );
    let (model, id, finish) = calls[1].response.clone().expect("response facts");
    assert_eq!((model.as_str(), id.as_str()), ("backup", "cmpl-scripted"));
    assert_eq!(finish, vec!["stop".to_owned()]);
    assert!(calls[1].usage.is_some());
    assert_eq!(a.headers(), vec![vec![("x-call".into(), "0".into())]]);
    assert_eq!(b.headers(), vec![vec![("x-call".into(), "1".into())]]);
    assert_eq!(
        trace.finished(),
        vec![(Some("backup".to_owned()), Some(1), None)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_untraced_request_sends_no_extra_headers() {
    let a = ScriptedProvider::always(Script::reply(ANSWER));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    s.router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(a.headers(), vec![Vec::new()]);
}

#[tokio::test(start_paused = true)]
async fn a_same_model_retry_is_a_call_of_its_own_and_skips_are_told() {
    let a = ScriptedProvider::new([Script::fail(FailureKind::Server)], Script::reply(ANSWER));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let strategies = Strategies {
        health: Arc::new(DownList(vec![0])),
        ..simple_strategies()
    };
    let s = setup(
        vec![(model("down"), b), (model("flaky"), a)],
        RoutePolicy::default(),
        strategies,
    );
    let trace = Arc::new(RecordingTrace::default());
    s.router.complete(request(), traced(&trace)).await.unwrap();
    assert_eq!(trace.skips(), vec![("down".to_owned(), 0, "circuit_open")]);
    let calls: Vec<_> = trace
        .calls()
        .into_iter()
        .map(|c| (c.model, c.level, c.retry, c.outcome))
        .collect();
    assert_eq!(
        calls,
        vec![
            ("flaky".to_owned(), 1, 0, Some("server")),
            ("flaky".to_owned(), 1, 1, Some("ok")),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_streamed_call_ends_when_the_stream_ends_with_its_first_output_time() {
    let a = ScriptedProvider::always(Script::reply(ANSWER));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a, b);
    let trace = Arc::new(RecordingTrace::default());
    let stream = s
        .router
        .stream(stream_request(), traced(&trace))
        .await
        .unwrap();
    let running = trace.calls();
    assert_eq!(running.len(), 1);
    assert_eq!(
        running[0].outcome, None,
        "the call runs while the stream does"
    );
    let (text, last) = drain(stream).await;
    assert_eq!(text, ANSWER);
    assert!(matches!(last, StreamItem::Done(_)));
    let calls = trace.calls();
    assert_eq!(calls[0].outcome, Some("ok"));
    assert!(calls[0].first_output.is_some());
    let (_, _, finish) = calls[0].response.clone().expect("response facts");
    assert_eq!(finish, vec!["stop".to_owned()]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_mid_answer_ends_its_call_as_failed_and_the_next_one_traced() {
    let a = ScriptedProvider::always(Script::cut_after(ANSWER, 3));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = setup(
        vec![(model("a"), a), (model("b"), b)],
        mid_stream(MidStreamPolicy::Restart),
        simple_strategies(),
    );
    let trace = Arc::new(RecordingTrace::default());
    let stream = s
        .router
        .stream(stream_request(), traced(&trace))
        .await
        .unwrap();
    let (text, _) = drain(stream).await;
    assert_eq!(text, ANSWER);
    let calls: Vec<_> = trace
        .calls()
        .into_iter()
        .map(|c| (c.model, c.outcome, c.first_output.is_some()))
        .collect();
    assert_eq!(
        calls,
        vec![
            ("a".to_owned(), Some("stream_interrupted"), true),
            ("b".to_owned(), Some("ok"), true),
        ]
    );
}
