//! `StreamInterrupted` and the mid-stream policies: error, continue, restart; a cut answer is never a success.

use super::*;

#[tokio::test(start_paused = true)]
async fn error_policy_ends_a_cut_stream_with_a_clean_error_never_a_success() {
    let a = ScriptedProvider::always(Script::cut_after(ANSWER, 3));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = setup(
        vec![(model("a"), a), (model("b"), b.clone())],
        mid_stream(MidStreamPolicy::Error),
        simple_strategies(),
    );
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (text, last) = drain(stream).await;
    assert_eq!(text, "The quick brown");
    let StreamItem::Failed(RouteError::StreamAborted { cause, attempts }) = last else {
        panic!("expected StreamAborted, got {last:?}");
    };
    assert_eq!(cause.kind, FailureKind::StreamInterrupted);
    assert_eq!(kinds(&attempts), vec![("a".into(), "stream_interrupted")]);
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn continue_policy_sends_the_partial_answer_as_prefill_and_streams_the_rest() {
    let a = ScriptedProvider::always(Script::cut_after(ANSWER, 3));
    // The prefill-capable backup answers the continuation only.
    let rest = &ANSWER["The quick brown".len()..];
    let b = ScriptedProvider::always(Script::reply(rest));
    let s = setup(
        vec![(model("a"), a), (prefill_model("b"), b.clone())],
        mid_stream(MidStreamPolicy::Continue),
        simple_strategies(),
    );
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (text, last) = drain(stream).await;
    assert_eq!(text, ANSWER);
    let StreamItem::Done(summary) = last else {
        panic!("expected Done, got {last:?}");
    };
    assert_eq!(&*summary.model_used, "b");
    assert_eq!(summary.fallback_level, 1);
    assert_eq!(
        kinds(&summary.attempts),
        vec![("a".into(), "stream_interrupted"), ("b".into(), "ok")]
    );
    let sent = &b.requests()[0];
    let last_message = sent.messages.last().unwrap();
    assert_eq!(last_message.role, Role::Assistant);
    assert_eq!(last_message.text_content(), "The quick brown");
}

#[tokio::test(start_paused = true)]
async fn a_second_cut_sends_the_whole_answer_so_far_to_the_third_model() {
    // a is cut after three words, b continues for two more and is cut,
    // c (the last model) gets everything a and b streamed as its prefill.
    let a = ScriptedProvider::always(Script::cut_after(ANSWER, 3));
    let b = ScriptedProvider::always(Script::cut_after(&ANSWER["The quick brown".len()..], 2));
    let sent = "The quick brown fox jumps";
    let c = ScriptedProvider::always(Script::reply(&ANSWER[sent.len()..]));
    let s = setup(
        vec![
            (model("a"), a),
            (prefill_model("b"), b.clone()),
            (prefill_model("c"), c.clone()),
        ],
        mid_stream(MidStreamPolicy::Continue),
        simple_strategies(),
    );
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (text, last) = drain(stream).await;
    assert_eq!(text, ANSWER);
    let StreamItem::Done(summary) = last else {
        panic!("expected Done, got {last:?}");
    };
    assert_eq!(&*summary.model_used, "c");
    assert_eq!(
        b.requests()[0].messages.last().unwrap().text_content(),
        "The quick brown"
    );
    assert_eq!(
        c.requests()[0].messages.last().unwrap().text_content(),
        sent
    );
}

#[tokio::test(start_paused = true)]
async fn continue_to_a_model_without_prefill_restarts_and_skips_what_was_sent() {
    let a = ScriptedProvider::always(Script::cut_after(ANSWER, 3));
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
    assert_eq!(text, ANSWER, "no word repeated, none missing");
    assert!(matches!(last, StreamItem::Done(_)), "{last:?}");
    assert!(
        !b.requests()[0].ends_with_assistant(),
        "a prefill is never sent to a model that cannot take one"
    );
}

#[tokio::test(start_paused = true)]
async fn restart_with_a_different_answer_ends_with_a_clean_error() {
    let a = ScriptedProvider::always(Script::cut_after(ANSWER, 3));
    let b = ScriptedProvider::always(Script::reply("A completely different answer."));
    let s = setup(
        vec![(model("a"), a), (model("b"), b)],
        mid_stream(MidStreamPolicy::Restart),
        simple_strategies(),
    );
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (text, last) = drain(stream).await;
    assert_eq!(text, "The quick brown");
    let StreamItem::Failed(RouteError::StreamAborted { cause, .. }) = last else {
        panic!("expected StreamAborted, got {last:?}");
    };
    assert_eq!(cause.kind, FailureKind::StreamInterrupted);
    assert!(
        cause.message.contains("scripted cut"),
        "the first cause is kept: {cause}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_answer_shorter_than_what_was_sent_is_an_error() {
    let a = ScriptedProvider::always(Script::cut_after(ANSWER, 5));
    let b = ScriptedProvider::always(Script::reply("The quick"));
    let s = setup(
        vec![(model("a"), a), (model("b"), b)],
        mid_stream(MidStreamPolicy::Restart),
        simple_strategies(),
    );
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (_, last) = drain(stream).await;
    assert!(
        matches!(last, StreamItem::Failed(RouteError::StreamAborted { .. })),
        "{last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_without_a_finish_reason_is_not_trusted() {
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Text("The".into()),
        Piece::Text(" quick".into()),
    ]));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = setup(
        vec![(model("a"), a), (model("b"), b)],
        mid_stream(MidStreamPolicy::Error),
        simple_strategies(),
    );
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (_, last) = drain(stream).await;
    let StreamItem::Failed(RouteError::StreamAborted { cause, .. }) = last else {
        panic!("{last:?}");
    };
    assert_eq!(cause.kind, FailureKind::StreamInterrupted);
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_tail_is_lost_after_its_finish_reason_is_complete() {
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Text("Done".into()),
        Piece::Finish,
        Piece::Fail(backstop_core::ProviderError::new(
            FailureKind::StreamInterrupted,
            "connection reset",
        )),
    ]));
    let b = ScriptedProvider::always(Script::reply("b"));
    let s = chain2(a, b.clone());
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (text, last) = drain(stream).await;
    assert_eq!(text, "Done");
    assert!(matches!(last, StreamItem::Done(_)), "{last:?}");
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_stream_cancels_the_call_and_releases_its_budget() {
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Text("The".into()),
        Piece::Stall,
    ]));
    let health = Arc::new(AlwaysAdmit::default());
    let budget = Arc::new(Unlimited::default());
    let strategies = Strategies {
        selector: Arc::new(InOrder),
        health: health.clone(),
        budget: budget.clone(),
        result: Arc::new(LevelNote),
    };
    let s = setup(vec![(model("a"), a)], RoutePolicy::default(), strategies);
    let mut stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let first = stream.next().await.unwrap();
    assert!(matches!(first, StreamItem::Chunk(_)));
    assert_eq!(budget.open_reservations(), 1);
    drop(stream);
    assert_eq!(budget.open_reservations(), 0);
    assert_eq!(
        health.outcomes(),
        vec![(0, backstop_core::CallOutcome::Cancelled)]
    );
    assert!(s.sink.events().iter().any(|e| matches!(
        e,
        Recorded::Finished {
            error: Some("cancelled"),
            ..
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn openais_null_refusal_is_not_output_and_a_cut_stream_still_recovers() {
    assert!(!openai_opening_chunk().carries_output());
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Chunk(openai_opening_chunk()),
        Piece::Text("The".into()),
        Piece::Text(" quick".into()),
        Piece::Fail(backstop_core::ProviderError::new(
            FailureKind::StreamInterrupted,
            "cut",
        )),
    ]));
    let b = continuing();
    let s = setup(
        vec![(model("a"), a), (model("b"), b)],
        mid_stream(MidStreamPolicy::Continue),
        simple_strategies(),
    );
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (text, last) = drain(stream).await;
    assert_eq!(text, ANSWER);
    assert!(matches!(last, StreamItem::Done(_)), "{last:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_complete_only_when_every_started_choice_finished() {
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Chunk(choice_chunk(0, "one", None)),
        Piece::Chunk(choice_chunk(1, "two", None)),
        Piece::Chunk(choice_chunk(0, "", Some("stop"))),
        Piece::Fail(backstop_core::ProviderError::new(
            FailureKind::StreamInterrupted,
            "cut",
        )),
    ]));
    let s = setup(
        vec![(model("a"), a)],
        mid_stream(MidStreamPolicy::Error),
        simple_strategies(),
    );
    let mut req = stream_request();
    req.extra.insert("n".into(), serde_json::json!(2));
    let stream = s
        .router
        .stream(req, RequestContext::default())
        .await
        .unwrap();
    let (_, last) = drain(stream).await;
    assert!(
        matches!(last, StreamItem::Failed(RouteError::StreamAborted { .. })),
        "choice 1 never finished: {last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_that_repeats_exactly_what_was_sent_then_finishes_is_complete() {
    // The primary sent the whole text but no finish reason.
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Text("Hello".into()),
        Piece::Text(" world".into()),
    ]));
    let b = ScriptedProvider::always(Script::reply("Hello world"));
    let s = setup(
        vec![(model("a"), a), (model("b"), b)],
        mid_stream(MidStreamPolicy::Restart),
        simple_strategies(),
    );
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    let (text, last) = drain(stream).await;
    assert_eq!(text, "Hello world");
    assert!(matches!(last, StreamItem::Done(_)), "{last:?}");
}
