//! Skips: open circuits and missing capabilities go to the trail with their reason.

use super::*;

#[tokio::test(start_paused = true)]
async fn open_circuits_and_missing_capabilities_are_skipped_and_recorded() {
    let a = ScriptedProvider::always(Script::reply("a"));
    let b = ScriptedProvider::always(Script::reply("b"));
    let c = ScriptedProvider::always(Script::reply(ANSWER));
    let mut no_stream = model("b");
    no_stream.capabilities = Capabilities {
        streaming: false,
        ..Capabilities::default()
    };
    let strategies = Strategies {
        health: Arc::new(DownList(vec![0])),
        ..simple_strategies()
    };
    let s = setup(
        vec![
            (model("a"), a.clone()),
            (no_stream, b.clone()),
            (model("c"), c),
        ],
        RoutePolicy::default(),
        strategies,
    );
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*stream.meta().outcome.model_used, "c");
    assert_eq!(stream.meta().outcome.fallback_level, 2);
    assert_eq!(
        kinds(&stream.meta().outcome.attempts),
        vec![
            ("a".into(), "circuit_open"),
            ("b".into(), "no_streaming"),
            ("c".into(), "ok")
        ]
    );
    let (text, _) = drain(stream).await;
    assert_eq!(text, ANSWER);
    assert_eq!(a.calls() + b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn tools_requests_skip_models_without_tools() {
    let a = ScriptedProvider::always(Script::reply("a"));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let mut no_tools = model("a");
    no_tools.capabilities.tools = false;
    let s = setup(
        vec![(no_tools, a.clone()), (model("b"), b)],
        RoutePolicy::default(),
        simple_strategies(),
    );
    let mut req = request();
    req.extra.insert(
        "tools".into(),
        serde_json::json!([{"type": "function", "function": {"name": "f"}}]),
    );
    let r = s
        .router
        .complete(req, RequestContext::default())
        .await
        .unwrap();
    assert_eq!(a.calls(), 0);
    assert_eq!(
        kinds(&r.outcome.attempts)[0].1,
        SkipReason::NoTools.as_str()
    );
}
