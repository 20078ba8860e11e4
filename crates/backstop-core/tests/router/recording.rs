//! Recording: events, budget settlement and the first cause, whatever the outcome.

use super::*;

#[tokio::test(start_paused = true)]
async fn every_model_failing_keeps_the_first_cause_and_the_whole_trail() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Auth));
    let b = ScriptedProvider::always(Script::fail(FailureKind::Server));
    let c = ScriptedProvider::always(Script::reply(ANSWER));
    let strategies = Strategies {
        budget: Arc::new(Refuse(vec![2])),
        ..simple_strategies()
    };
    let s = setup(
        vec![(model("a"), a), (model("b"), b), (model("c"), c.clone())],
        RoutePolicy::default(),
        strategies,
    );
    let err = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap_err();
    let RouteError::AllFailed(all) = err else {
        panic!("expected AllFailed");
    };
    assert_eq!(all.first_cause.as_ref().unwrap().kind, FailureKind::Auth);
    assert_eq!(
        kinds(&all.attempts),
        vec![
            ("a".into(), "auth"),
            ("b".into(), "server"),
            ("b".into(), "server"),
            ("c".into(), "over_budget")
        ]
    );
    assert_eq!(c.calls(), 0);
    assert!(all.to_string().contains("first cause: auth"), "{all}");
}

#[tokio::test(start_paused = true)]
async fn a_fallback_emits_one_event_with_its_reason_and_every_request_finishes_once() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Timeout));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a, b);
    s.router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    let events = s.sink.events();
    let fallbacks: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Recorded::Fallback(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(fallbacks.len(), 1);
    assert_eq!(&*fallbacks[0].primary, "primary");
    assert_eq!(&*fallbacks[0].model_used, "backup");
    assert_eq!(fallbacks[0].reason, "timeout");
    assert_eq!(fallbacks[0].level, 1);
    let finished = events
        .iter()
        .filter(|e| matches!(e, Recorded::Finished { .. }))
        .count();
    assert_eq!(finished, 1);
    assert!(events.contains(&Recorded::Attempt("primary".into(), "timeout")));
}

#[tokio::test(start_paused = true)]
async fn budget_is_settled_with_usage_on_success_and_released_on_failure() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Auth));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let budget = Arc::new(Unlimited::default());
    let strategies = Strategies {
        budget: budget.clone(),
        ..simple_strategies()
    };
    let s = setup(
        vec![(model("a"), a), (model("b"), b)],
        RoutePolicy::default(),
        strategies,
    );
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    let settled = budget.settlements();
    assert_eq!(settled.len(), 2);
    assert_eq!(settled[0], (0, None));
    assert_eq!(settled[1].0, 1);
    assert_eq!(settled[1].1.as_ref(), r.response.usage.as_ref());
    assert_eq!(budget.open_reservations(), 0);
}

#[tokio::test(start_paused = true)]
async fn budgets_are_charged_an_estimate_when_usage_is_missing_or_the_caller_leaves() {
    // A complete answer without usage.
    struct NoUsage;
    #[async_trait::async_trait]
    impl Provider for NoUsage {
        async fn complete(
            &self,
            call: backstop_core::Call<'_>,
        ) -> Result<backstop_core::ChatResponse, backstop_core::ProviderError> {
            Ok(backstop_core::ChatResponse::assistant(
                "id",
                &call.model.upstream,
                0,
                "four words in here",
                None,
            ))
        }
        async fn stream(
            &self,
            _: backstop_core::Call<'_>,
        ) -> Result<backstop_core::ChunkStream, backstop_core::ProviderError> {
            Err(backstop_core::ProviderError::new(
                FailureKind::Server,
                "unused",
            ))
        }
    }
    let budget = Arc::new(Unlimited::default());
    let strategies = Strategies {
        budget: budget.clone(),
        ..simple_strategies()
    };
    let s = setup(
        vec![(model("a"), Arc::new(NoUsage))],
        RoutePolicy::default(),
        strategies,
    );
    s.router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    let settled = budget.settlements();
    let usage = settled[0].1.as_ref().expect("charged an estimate");
    assert_eq!(usage.completion_tokens, 5, "18 ASCII bytes at four a token");

    // A stream the caller drops after part of the answer.
    let a = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Text("The quick brown".into()),
        Piece::Stall,
    ]));
    let budget = Arc::new(Unlimited::default());
    let strategies = Strategies {
        budget: budget.clone(),
        ..simple_strategies()
    };
    let s = setup(vec![(model("a"), a)], RoutePolicy::default(), strategies);
    let mut stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    stream.next().await.unwrap();
    drop(stream);
    let settled = budget.settlements();
    let usage = settled[0].1.as_ref().expect("charged what was streamed");
    assert_eq!(usage.completion_tokens, 4);
    assert_eq!(budget.open_reservations(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_probe_dropped_in_flight_releases_its_budget() {
    let budget = Arc::new(Unlimited::default());
    let strategies = Strategies {
        budget: budget.clone(),
        ..simple_strategies()
    };
    let s = setup(
        vec![(model("a"), ScriptedProvider::always(Script::Hang))],
        RoutePolicy::default(),
        strategies,
    );
    let probing = s.router.probe(0, Duration::from_secs(10));
    assert!(tokio::time::timeout(ms(50), probing).await.is_err());
    assert_eq!(budget.open_reservations(), 0);
    assert_eq!(budget.settlements(), vec![(0, None)]);
}
