//! Routing: the order tried, single-model routes, answers at level 0, and failover before the first chunk.

use super::*;

#[tokio::test(start_paused = true)]
async fn primary_answers_at_level_zero_without_annotation() {
    let a = ScriptedProvider::always(Script::reply(ANSWER));
    let b = ScriptedProvider::always(Script::reply("backup"));
    let s = chain2(a.clone(), b.clone());
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(r.response.text(), ANSWER);
    assert_eq!(&*r.outcome.model_used, "primary");
    assert_eq!(r.response.model, "primary");
    assert_eq!(r.outcome.fallback_level, 0);
    assert_eq!(r.outcome.warning, None);
    assert_eq!(kinds(&r.outcome.attempts), vec![("primary".into(), "ok")]);
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_selector_order_decides_the_primary_and_the_level() {
    #[derive(Debug)]
    struct Reverse;
    impl backstop_core::Selector for Reverse {
        fn name(&self) -> &str {
            "reverse"
        }
        fn order(
            &self,
            _: &backstop_core::RequestFacts<'_>,
            c: &mut [backstop_core::Candidate<'_>],
        ) {
            c.reverse();
        }
    }
    let a = ScriptedProvider::always(Script::reply("a"));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let strategies = Strategies {
        selector: Arc::new(Reverse),
        ..simple_strategies()
    };
    let s = setup(
        vec![(model("a"), a.clone()), (model("b"), b)],
        RoutePolicy::default(),
        strategies,
    );
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*r.outcome.model_used, "b");
    assert_eq!(
        r.outcome.fallback_level, 0,
        "the level is the index in the order tried"
    );
    assert_eq!(a.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_last_resort_is_tried_last_whatever_the_selector_says() {
    #[derive(Debug)]
    struct Reverse;
    impl backstop_core::Selector for Reverse {
        fn name(&self) -> &str {
            "reverse"
        }
        fn order(
            &self,
            _: &backstop_core::RequestFacts<'_>,
            c: &mut [backstop_core::Candidate<'_>],
        ) {
            c.reverse();
        }
    }
    let a = ScriptedProvider::always(Script::reply("a"));
    let b = ScriptedProvider::always(Script::fail(FailureKind::Auth));
    let rules = ScriptedProvider::always(Script::reply("busy, try later"));
    let mut template = model("rules");
    template.last_resort = true;
    let strategies = Strategies {
        selector: Arc::new(Reverse),
        ..simple_strategies()
    };
    let s = setup(
        vec![
            (model("a"), a.clone()),
            (model("b"), b.clone()),
            (template, rules.clone()),
        ],
        RoutePolicy::default(),
        strategies,
    );
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    // The selector put the template first; the Router tried b, then a.
    assert_eq!(&*r.outcome.model_used, "a");
    assert_eq!(r.outcome.fallback_level, 1);
    assert_eq!(rules.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_naming_a_model_uses_its_single_model_route() {
    let a = ScriptedProvider::always(Script::reply("a"));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    let r = s
        .router
        .complete(ChatRequest::user("backup", "hi"), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*r.outcome.model_used, "backup");
    assert_eq!(r.outcome.fallback_level, 0);
    assert_eq!(a.calls(), 0);
    let err = s
        .router
        .complete(ChatRequest::user("nope", "hi"), RequestContext::default())
        .await
        .unwrap_err();
    assert_eq!(err, RouteError::UnknownRoute("nope".into()));
}

#[tokio::test(start_paused = true)]
async fn a_stream_streams_the_whole_answer_and_ends_with_usage() {
    let a = ScriptedProvider::always(Script::reply(ANSWER));
    let b = ScriptedProvider::always(Script::reply("b"));
    let s = chain2(a, b);
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*stream.meta().outcome.model_used, "primary");
    let (text, last) = drain(stream).await;
    assert_eq!(text, ANSWER);
    let StreamItem::Done(summary) = last else {
        panic!("expected Done, got {last:?}");
    };
    assert_eq!(summary.fallback_level, 0);
    assert_eq!(summary.usage.unwrap().completion_tokens, 9);
}

#[tokio::test(start_paused = true)]
async fn failover_before_the_first_chunk_is_invisible() {
    let a = ScriptedProvider::always(Script::Pieces(vec![Piece::Fail(
        backstop_core::ProviderError::new(FailureKind::StreamInterrupted, "closed before data"),
    )]));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    let stream = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*stream.meta().outcome.model_used, "backup");
    assert_eq!(stream.meta().outcome.fallback_level, 1);
    assert_eq!(
        stream.meta().outcome.warning.as_deref(),
        Some("level 1 via backup")
    );
    let (text, last) = drain(stream).await;
    assert_eq!(text, ANSWER);
    assert!(matches!(last, StreamItem::Done(_)));
    assert_eq!(a.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_cannot_start_anywhere_returns_the_error_before_any_chunk() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Server));
    let b = ScriptedProvider::always(Script::fail(FailureKind::Auth));
    let s = chain2(a, b);
    let err = s
        .router
        .stream(stream_request(), RequestContext::default())
        .await
        .unwrap_err();
    let RouteError::AllFailed(all) = err else {
        panic!("{err:?}");
    };
    assert_eq!(all.first_cause.unwrap().kind, FailureKind::Server);
    assert_eq!(all.attempts.len(), 3);
}

#[test]
fn attempt_outcome_names_match_the_trail() {
    assert_eq!(AttemptOutcome::Cancelled.as_str(), "cancelled");
    assert_eq!(
        AttemptOutcome::Skipped(SkipReason::OverBudget).as_str(),
        "over_budget"
    );
    let _unused: Option<Arc<dyn HealthPolicy>> = None;
    let _unused: Option<Arc<dyn BudgetPolicy>> = None;
}

#[test]
fn building_a_router_prepares_each_provider_for_its_routes_connect_timeouts() {
    use std::sync::Mutex;

    #[derive(Default)]
    struct Preparing {
        prepared: Mutex<Vec<Duration>>,
    }
    #[async_trait::async_trait]
    impl Provider for Preparing {
        fn prepare(&self, connect_timeout: Duration) {
            self.prepared.lock().unwrap().push(connect_timeout);
        }
        async fn complete(
            &self,
            _: backstop_core::Call<'_>,
        ) -> Result<backstop_core::ChatResponse, backstop_core::ProviderError> {
            Err(backstop_core::ProviderError::new(
                FailureKind::Server,
                "unused",
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

    let provider = Arc::new(Preparing::default());
    let fast = RoutePolicy {
        timeouts: Timeouts {
            connect: ms(2000),
            ..Timeouts::default()
        },
        ..RoutePolicy::default()
    };
    let ctx = StrategyContext::new(vec![model("m")], SystemClock::shared());
    Router::builder(ctx)
        .provider("m", provider.clone())
        .scenario(
            Scenario {
                name: "fast".into(),
                chain: vec!["m".into()],
                policy: fast,
            },
            simple_strategies(),
        )
        .scenario(
            Scenario {
                name: "fast_too".into(),
                chain: vec!["m".into()],
                policy: fast,
            },
            simple_strategies(),
        )
        .single_model_routes(RoutePolicy::default(), simple_strategies())
        .build()
        .unwrap();
    let mut prepared = provider.prepared.lock().unwrap().clone();
    prepared.sort();
    assert_eq!(
        prepared,
        vec![ms(2000), Timeouts::default().connect],
        "once per distinct timeout"
    );
}
