//! The Router's decisions, driven by scripted providers under paused time:
//! every failure kind, retries and their spacing, deadlines, skips,
//! hedging, and the mid-stream policies.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backstop_core::testing::{
    AlwaysAdmit, DownList, InOrder, LevelNote, Piece, Recorded, RecordingSink, Refuse, Script,
    ScriptedProvider, Unlimited, simple_strategies,
};
use backstop_core::{
    AttemptOutcome, BudgetPolicy, Capabilities, ChatRequest, ContentPolicyAction, FailureKind,
    HealthPolicy, MidStreamPolicy, ModelSpec, Provider, RequestContext, Role, RouteError,
    RoutePolicy, Router, Scenario, SkipReason, Strategies, StrategyContext, StreamItem,
    SystemClock, Timeouts,
};
use futures::StreamExt;
use tokio::time::Instant;

const ANSWER: &str = "The quick brown fox jumps over the lazy dog.";

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

struct Setup {
    router: Router,
    sink: Arc<RecordingSink>,
}

/// A Router whose scenario `chat` chains the given models in order, each
/// served by its own provider.
fn setup(
    models: Vec<(ModelSpec, Arc<dyn Provider>)>,
    policy: RoutePolicy,
    strategies: Strategies,
) -> Setup {
    let specs: Vec<ModelSpec> = models.iter().map(|(m, _)| m.clone()).collect();
    let chain = specs.iter().map(|m| m.id.clone()).collect();
    let ctx = StrategyContext::new(specs, SystemClock::shared());
    let sink = Arc::new(RecordingSink::default());
    let mut builder = Router::builder(ctx).event_sink(sink.clone());
    for (spec, provider) in models {
        builder = builder.provider(spec.provider.clone(), provider);
    }
    let router = builder
        .scenario(
            Scenario {
                name: "chat".into(),
                chain,
                policy,
            },
            strategies.clone(),
        )
        .single_model_routes(policy, strategies)
        .build()
        .expect("router builds");
    Setup { router, sink }
}

fn model(id: &str) -> ModelSpec {
    ModelSpec::new(id, id)
}

fn chain2(a: Arc<ScriptedProvider>, b: Arc<ScriptedProvider>) -> Setup {
    setup(
        vec![(model("primary"), a), (model("backup"), b)],
        RoutePolicy::default(),
        simple_strategies(),
    )
}

fn request() -> ChatRequest {
    ChatRequest::user("chat", "Tell me about foxes.")
}

fn stream_request() -> ChatRequest {
    let mut r = request();
    r.stream = Some(true);
    r
}

fn kinds(attempts: &[backstop_core::Attempt]) -> Vec<(String, &'static str)> {
    attempts
        .iter()
        .map(|a| (a.model.to_string(), a.outcome.as_str()))
        .collect()
}

/// Collects a stream: the text, and the last item.
async fn drain(mut stream: backstop_core::FallbackStream) -> (String, StreamItem) {
    let mut text = String::new();
    let mut last = None;
    while let Some(item) = stream.next().await {
        match item {
            StreamItem::Chunk(chunk) => {
                if let Some(t) = chunk.content() {
                    text.push_str(t);
                }
            }
            other => last = Some(other),
        }
    }
    (text, last.expect("a stream ends with Done or Failed"))
}

// ---------------------------------------------------------------- complete

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
async fn server_error_is_retried_once_with_backoff_then_falls_over() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Server));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b.clone());
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(a.calls(), 2, "one retry of the same model");
    assert_eq!(&*r.outcome.model_used, "backup");
    assert_eq!(r.outcome.fallback_level, 1);
    assert_eq!(r.response.model, "backup");
    // Default backoff: 50 ms step with equal jitter -> between 25 and 50 ms.
    assert!(took >= ms(25) && took <= ms(50), "{took:?}");
    assert_eq!(
        kinds(&r.outcome.attempts),
        vec![
            ("primary".into(), "server"),
            ("primary".into(), "server"),
            ("backup".into(), "ok")
        ]
    );
    assert_eq!(r.outcome.attempts[0].status, Some(500));
    assert_eq!(r.outcome.warning.as_deref(), Some("level 1 via backup"));
    assert_eq!(r.outcome.upstream_attempts, 3);
}

#[tokio::test(start_paused = true)]
async fn connect_failure_is_retried_at_once_then_falls_over() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Connect));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(a.calls(), 2);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no wait before a connect retry"
    );
    assert_eq!(r.outcome.fallback_level, 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_succeeds_keeps_the_primary() {
    let a = ScriptedProvider::new(
        [Script::fail(FailureKind::Overloaded)],
        Script::reply(ANSWER),
    );
    let b = ScriptedProvider::always(Script::reply("backup"));
    let s = chain2(a.clone(), b.clone());
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*r.outcome.model_used, "primary");
    assert_eq!(r.outcome.fallback_level, 0);
    assert_eq!(a.calls(), 2);
    assert_eq!(b.calls(), 0);
}

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
async fn retry_after_under_the_cap_is_waited_for() {
    let limited = backstop_core::ProviderError::new(FailureKind::RateLimited, "slow down")
        .with_status(429)
        .with_retry_after(ms(1200));
    let a = ScriptedProvider::new([Script::Fail(limited)], Script::reply(ANSWER));
    let b = ScriptedProvider::always(Script::reply("backup"));
    let s = chain2(a.clone(), b.clone());
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), ms(1200));
    assert_eq!(a.calls(), 2);
    assert_eq!(&*r.outcome.model_used, "primary");
}

#[tokio::test(start_paused = true)]
async fn retry_after_over_the_cap_falls_over_instead_of_waiting() {
    let limited = backstop_core::ProviderError::new(FailureKind::RateLimited, "slow down")
        .with_status(429)
        .with_retry_after(Duration::from_secs(30));
    let a = ScriptedProvider::always(Script::Fail(limited));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(a.calls(), 1);
    assert_eq!(&*r.outcome.model_used, "backup");
}

#[tokio::test(start_paused = true)]
async fn rate_limit_without_retry_after_falls_over_at_once() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::RateLimited));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(a.calls(), 1);
    assert_eq!(&*r.outcome.model_used, "backup");
}

#[tokio::test(start_paused = true)]
async fn auth_quota_and_invalid_responses_fall_over_without_retry() {
    for kind in [
        FailureKind::Auth,
        FailureKind::QuotaExhausted,
        FailureKind::InvalidResponse,
    ] {
        let a = ScriptedProvider::always(Script::fail(kind));
        let b = ScriptedProvider::always(Script::reply(ANSWER));
        let s = chain2(a.clone(), b);
        let r = s
            .router
            .complete(request(), RequestContext::default())
            .await
            .unwrap();
        assert_eq!(a.calls(), 1, "{kind}");
        assert_eq!(&*r.outcome.model_used, "backup", "{kind}");
        assert_eq!(kinds(&r.outcome.attempts)[0].1, kind.as_str());
    }
}

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

fn windowed(id: &str, window: u32) -> ModelSpec {
    let mut m = model(id);
    m.context_window = window;
    m
}

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

#[tokio::test(start_paused = true)]
async fn the_total_deadline_bounds_every_attempt_and_wait() {
    let a = ScriptedProvider::always(Script::Hang);
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let policy = RoutePolicy {
        timeouts: Timeouts {
            attempt: Duration::from_secs(10),
            total: Duration::from_secs(2),
            ..Timeouts::default()
        },
        ..RoutePolicy::default()
    };
    let s = setup(
        vec![(model("a"), a), (model("b"), b.clone())],
        policy,
        simple_strategies(),
    );
    let started = Instant::now();
    let err = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(
        kinds(err.attempts()),
        vec![("a".into(), "timeout"), ("b".into(), "deadline")]
    );
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn retries_never_wait_past_the_deadline() {
    let limited = backstop_core::ProviderError::new(FailureKind::RateLimited, "later")
        .with_retry_after(Duration::from_secs(2));
    let a = ScriptedProvider::always(Script::Fail(limited));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let policy = RoutePolicy {
        timeouts: Timeouts {
            total: Duration::from_secs(1),
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
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(a.calls(), 1);
    assert_eq!(&*r.outcome.model_used, "b");
}

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

// ------------------------------------------------------------------ events

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

// ---------------------------------------------------------------- streams

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

fn mid_stream(policy: MidStreamPolicy) -> RoutePolicy {
    RoutePolicy {
        mid_stream: policy,
        timeouts: Timeouts {
            idle: ms(500),
            ..Timeouts::default()
        },
        ..RoutePolicy::default()
    }
}

fn prefill_model(id: &str) -> ModelSpec {
    let mut m = model(id);
    m.capabilities.assistant_prefill = true;
    m
}

/// A provider that continues ANSWER from wherever a prefill stops.
fn continuing() -> Arc<ScriptedProvider> {
    ScriptedProvider::always(Script::reply(ANSWER))
}

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

#[tokio::test(start_paused = true)]
async fn a_model_already_failing_is_not_retried_it_falls_over_at_once() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Server));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let s = chain2(a.clone(), b);
    // The first 500 looks like a blip: one retry after a backoff.
    let started = Instant::now();
    s.router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert!(started.elapsed() >= ms(25));
    assert_eq!(a.calls(), 2);
    // Now the model has failed repeatedly: an outage, not a blip.
    let started = Instant::now();
    let r = s
        .router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no backoff for a model that is down"
    );
    assert_eq!(a.calls(), 3, "no retry either");
    assert_eq!(
        kinds(&r.outcome.attempts),
        vec![("primary".into(), "server"), ("backup".into(), "ok")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_model_with_rare_errors_keeps_its_retry() {
    // fail, answer, fail, answer: each failure follows a success.
    let a = ScriptedProvider::new(
        [
            Script::fail(FailureKind::Server),
            Script::reply(ANSWER),
            Script::fail(FailureKind::Server),
            Script::reply(ANSWER),
        ],
        Script::reply(ANSWER),
    );
    let b = ScriptedProvider::always(Script::reply("backup"));
    let s = chain2(a.clone(), b.clone());
    for _ in 0..2 {
        let r = s
            .router
            .complete(request(), RequestContext::default())
            .await
            .unwrap();
        assert_eq!(&*r.outcome.model_used, "primary");
    }
    assert_eq!(a.calls(), 4);
    assert_eq!(b.calls(), 0);
}

/// Admits everything and never calls a failure an outage in progress,
/// overriding the Router's "previous call failed" memory.
#[derive(Debug, Default)]
struct NeverAnOutage(AlwaysAdmit);

impl HealthPolicy for NeverAnOutage {
    fn name(&self) -> &str {
        "never_an_outage"
    }

    fn admit(&self, model: usize) -> backstop_core::Admission {
        self.0.admit(model)
    }

    fn record(
        &self,
        model: usize,
        permit: backstop_core::Permit,
        outcome: backstop_core::CallOutcome,
    ) -> Option<backstop_core::HealthTransition> {
        self.0.record(model, permit, outcome)
    }

    fn record_probe(
        &self,
        model: usize,
        result: Result<Duration, backstop_core::ProbeFailure>,
    ) -> Option<backstop_core::HealthTransition> {
        self.0.record_probe(model, result)
    }

    fn probe_targets(&self, idle: Duration, out: &mut Vec<usize>) {
        self.0.probe_targets(idle, out);
    }

    fn snapshot(&self, model: usize) -> backstop_core::HealthSnapshot {
        self.0.snapshot(model)
    }

    fn outage_in_progress(&self, _: usize, _: bool) -> bool {
        false
    }
}

#[tokio::test(start_paused = true)]
async fn a_health_policy_may_overrule_the_previous_failure_and_keep_the_retry() {
    let a = ScriptedProvider::always(Script::fail(FailureKind::Server));
    let b = ScriptedProvider::always(Script::reply(ANSWER));
    let strategies = Strategies {
        health: Arc::new(NeverAnOutage::default()),
        ..simple_strategies()
    };
    let s = setup(
        vec![(model("primary"), a.clone()), (model("backup"), b)],
        RoutePolicy::default(),
        strategies,
    );
    for round in 1..=2 {
        s.router
            .complete(request(), RequestContext::default())
            .await
            .unwrap();
        assert_eq!(a.calls(), 2 * round, "a retry in round {round}");
    }
}

/// OpenAI's opening chunk: a role, empty content and `"refusal": null`.
fn openai_opening_chunk() -> backstop_core::ChatChunk {
    serde_json::from_value(serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                     "logprobs": null, "finish_reason": null}]
    }))
    .unwrap()
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

fn choice_chunk(index: u32, text: &str, finish: Option<&str>) -> backstop_core::ChatChunk {
    serde_json::from_value(serde_json::json!({
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}]
    }))
    .unwrap()
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
