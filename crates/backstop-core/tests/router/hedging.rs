//! Hedging (`hedge_after`): the next model starts beside a silent one; the loser is cancelled and recorded.

use super::*;

#[tokio::test(start_paused = true)]
async fn hedging_starts_the_next_model_and_cancels_the_loser() {
    let slow = ScriptedProvider::always(Script::After(
        Duration::from_secs(5),
        Box::new(Script::reply("slow")),
    ));
    let fast = ScriptedProvider::always(Script::After(ms(50), Box::new(Script::reply(ANSWER))));
    let health = Arc::new(AlwaysAdmit::default());
    let budget = Arc::new(Unlimited::default());
    let strategies = Strategies {
        selector: Arc::new(InOrder),
        health: health.clone(),
        budget: budget.clone(),
        result: Arc::new(LevelNote),
    };
    let policy = RoutePolicy {
        hedge_after: Some(ms(200)),
        ..RoutePolicy::default()
    };
    let s = setup(
        vec![(model("slow"), slow.clone()), (model("fast"), fast.clone())],
        policy,
        strategies,
    );
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(
        started.elapsed(),
        ms(250),
        "hedge at 200 ms, answer 50 ms later"
    );
    assert_eq!(&*r.outcome.model_used, "fast");
    assert_eq!(r.outcome.fallback_level, 1);
    assert_eq!(
        kinds(&r.outcome.attempts),
        vec![("slow".into(), "cancelled"), ("fast".into(), "ok")]
    );
    assert_eq!(r.outcome.attempts[0].duration, ms(250));
    // The loser stayed silent past hedge_after: health hears a timeout, so
    // a hung primary's circuit can open even while hedging hides it.
    let timed_out = backstop_core::CallOutcome::Failure {
        kind: FailureKind::Timeout,
        retry_after: None,
        latency: ms(250),
    };
    assert_eq!(
        health.outcomes(),
        vec![
            (1, backstop_core::CallOutcome::Success { latency: ms(50) }),
            (0, timed_out)
        ]
    );
    assert_eq!(
        budget.open_reservations(),
        0,
        "the loser's budget is released"
    );
}

#[tokio::test(start_paused = true)]
async fn hedging_does_not_fire_when_the_primary_is_fast() {
    let a = ScriptedProvider::always(Script::After(ms(100), Box::new(Script::reply(ANSWER))));
    let b = ScriptedProvider::always(Script::reply("b"));
    let policy = RoutePolicy {
        hedge_after: Some(ms(200)),
        ..RoutePolicy::default()
    };
    let s = setup(
        vec![(model("a"), a), (model("b"), b.clone())],
        policy,
        simple_strategies(),
    );
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*r.outcome.model_used, "a");
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hedged_primary_failure_falls_over_to_the_runner_up() {
    // The primary fails after the hedge started; the hedge answers.
    let a = ScriptedProvider::always(Script::After(
        ms(300),
        Box::new(Script::fail(FailureKind::Auth)),
    ));
    let b = ScriptedProvider::always(Script::After(ms(400), Box::new(Script::reply(ANSWER))));
    let c = ScriptedProvider::always(Script::reply("c"));
    let policy = RoutePolicy {
        hedge_after: Some(ms(100)),
        ..RoutePolicy::default()
    };
    let s = setup(
        vec![(model("a"), a), (model("b"), b), (model("c"), c.clone())],
        policy,
        simple_strategies(),
    );
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    // a starts at 0; b is hedged at 100 ms; a fails at 300 ms, which re-arms
    // the hedge timer for b, still silent, so c starts at 400 ms and answers
    // at once; b (due at 500 ms) is cancelled.
    assert_eq!(started.elapsed(), ms(400));
    assert_eq!(&*r.outcome.model_used, "c");
    assert_eq!(r.outcome.fallback_level, 2);
    assert_eq!(
        kinds(&r.outcome.attempts),
        vec![
            ("a".into(), "auth"),
            ("b".into(), "cancelled"),
            ("c".into(), "ok")
        ]
    );
    assert_eq!(c.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn hedged_streams_race_to_the_first_token() {
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Wait(Duration::from_secs(3)),
        Piece::Text("late".into()),
        Piece::Finish,
    ]));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let policy = RoutePolicy {
        hedge_after: Some(ms(300)),
        ..RoutePolicy::default()
    };
    let s = setup(
        vec![(model("a"), a), (model("b"), b)],
        policy,
        simple_strategies(),
    );
    let started = Instant::now();
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), ms(300));
    assert_eq!(&*stream.meta().outcome.model_used, "b");
    let (text, _) = drain(stream).await;
    assert_eq!(text, ANSWER);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_just_started_is_cancelled_not_timed_out() {
    // The primary answers at 210 ms; the hedge started at 200 ms loses.
    let a = ScriptedProvider::always(Script::After(ms(210), Box::new(Script::reply(ANSWER))));
    let b = ScriptedProvider::always(Script::After(ms(500), Box::new(Script::reply("b"))));
    let health = Arc::new(AlwaysAdmit::default());
    let strategies = Strategies {
        health: health.clone(),
        ..simple_strategies()
    };
    let policy = RoutePolicy {
        hedge_after: Some(ms(200)),
        ..RoutePolicy::default()
    };
    let s = setup(vec![(model("a"), a), (model("b"), b)], policy, strategies);
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*r.outcome.model_used, "a");
    assert_eq!(
        health.outcomes(),
        vec![
            (0, backstop_core::CallOutcome::Success { latency: ms(210) }),
            (1, backstop_core::CallOutcome::Cancelled)
        ]
    );
    let fallback = s
        .sink
        .events()
        .into_iter()
        .any(|e| matches!(e, Recorded::Fallback(_)));
    assert!(!fallback, "the primary answered");
}

#[tokio::test(start_paused = true)]
async fn a_fallback_won_by_a_hedge_gives_the_reason_hedged() {
    let a = ScriptedProvider::always(Script::After(
        Duration::from_secs(5),
        Box::new(Script::reply("a")),
    ));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let policy = RoutePolicy {
        hedge_after: Some(ms(100)),
        ..RoutePolicy::default()
    };
    let s = setup(
        vec![(model("a"), a), (model("b"), b)],
        policy,
        simple_strategies(),
    );
    s.router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    let reasons: Vec<&str> = s
        .sink
        .events()
        .iter()
        .filter_map(|e| match e {
            Recorded::Fallback(f) => Some(f.reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, ["hedged"]);
}
