//! Provider plugins: round trips through the Router, errors that keep their
//! meaning across the boundary, a host runtime left free during slow calls,
//! and cancellation reaching the plugin.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backstop_core::{
    ChatChunk, FailureKind, ModelSpec, Provider, RequestContext, StreamItem, StreamOptions,
};
use backstop_plugin::host::PluginError;
use futures::StreamExt;
use serde_json::json;

use super::{call, drain, echo, libraries, provider, request, router, stream_request};

#[tokio::test]
async fn a_complete_call_round_trips_through_the_router() {
    let (router, _) = router(vec![("local", echo("Hello from a plugin."))], None);
    let result = router
        .complete(request("hi"), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(result.response.text(), "Hello from a plugin.");
    assert_eq!(&*result.outcome.model_used, "local");
    assert_eq!(result.outcome.fallback_level, 0);
    assert_eq!(result.response.model, "local");
    let usage = result.response.usage.unwrap();
    assert_eq!(usage.completion_tokens, 4);
    assert!(usage.prompt_tokens > 0);
}

#[tokio::test]
async fn a_streaming_call_round_trips_through_the_router() {
    let (router, _) = router(vec![("local", echo("one two three four five"))], None);
    let mut request = stream_request("hi");
    request.stream_options = Some(StreamOptions {
        include_usage: true,
        extra: Default::default(),
    });
    let stream = router
        .stream(request, RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*stream.meta().outcome.model_used, "local");
    let (text, last) = drain(stream).await;
    assert_eq!(text, "one two three four five");
    match last {
        StreamItem::Done(summary) => {
            assert_eq!(&*summary.model_used, "local");
            assert_eq!(summary.usage.unwrap().completion_tokens, 5);
        }
        other => panic!("expected Done, got {other:?}"),
    }
}

#[tokio::test]
async fn a_direct_stream_keeps_every_chunk_and_its_order() {
    let provider = echo("a b c d e f g h i j k l m n o p q r s t");
    let model = ModelSpec::new("m", "p");
    let request = request("x");
    let chunks: Vec<ChatChunk> = provider
        .stream(call(&model, &request))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    let text: String = chunks.iter().filter_map(ChatChunk::content).collect();
    assert_eq!(text, "a b c d e f g h i j k l m n o p q r s t");
    assert_eq!(chunks.last().unwrap().finish_reason(), Some("stop"));
}

#[tokio::test]
async fn provider_errors_keep_kind_status_code_retry_after_and_message() {
    let provider = provider(
        &libraries().errors,
        "errors",
        json!({
            "kind": "rate_limited",
            "status": 429,
            "code": "rate_limit_exceeded",
            "retry_after_ms": 1500,
            "message": "slow down",
        }),
    );
    let model = ModelSpec::new("m", "p");
    let request = request("x");
    let error = provider.complete(call(&model, &request)).await.unwrap_err();
    assert_eq!(error.kind, FailureKind::RateLimited);
    assert_eq!(error.status, Some(429));
    assert_eq!(error.code.as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(error.retry_after, Some(Duration::from_millis(1500)));
    assert_eq!(error.message, "slow down");

    let Err(error) = provider.stream(call(&model, &request)).await else {
        panic!("the stream should not start");
    };
    assert_eq!(error.kind, FailureKind::RateLimited);
}

#[tokio::test]
async fn a_stream_error_arrives_after_the_chunks_before_it() {
    let provider = provider(
        &libraries().errors,
        "errors",
        json!({"kind": "stream_interrupted", "message": "cut", "after_chunks": 2}),
    );
    let model = ModelSpec::new("m", "p");
    let request = request("x");
    let items: Vec<_> = provider
        .stream(call(&model, &request))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].as_ref().unwrap().content(), Some("partial "));
    assert_eq!(items[1].as_ref().unwrap().content(), Some("partial "));
    let error = items[2].as_ref().unwrap_err();
    assert_eq!(
        (error.kind, error.message.as_str()),
        (FailureKind::StreamInterrupted, "cut")
    );
}

#[test]
fn a_config_the_plugin_refuses_is_a_clear_error() {
    let factory = super::load(&libraries().errors)
        .provider_factory("errors")
        .unwrap();
    let error = factory
        .create(&json!({"refuse": "api_key is missing"}))
        .err()
        .unwrap();
    assert!(matches!(error, PluginError::New { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "plugin `fixture-errors` could not create provider `errors`: api_key is missing"
    );
    let error = factory.create(&json!({})).err().unwrap();
    assert!(
        error.to_string().contains("missing field `kind`"),
        "{error}"
    );

    let echo = super::load(&libraries().example)
        .provider_factory("echo")
        .unwrap();
    let error = echo.create(&json!({"latency": 5})).err().unwrap();
    assert!(
        error.to_string().contains("unknown field `latency`"),
        "{error}"
    );
}

/// The `slow` fixture's counters for one provider instance.
async fn stats(provider: &dyn Provider) -> String {
    let model = ModelSpec::new("m", "p");
    let request = request("stats");
    provider
        .complete(call(&model, &request))
        .await
        .unwrap()
        .text()
}

/// Waits until the fixture's counters read `expected`.
async fn wait_for_stats(provider: &dyn Provider, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = stats(provider).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counters stayed at `{now}`, expected `{expected}`"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// `#[tokio::test]` runs on a current-thread runtime: one thread for the
// test and every task it spawns.
#[tokio::test]
async fn a_slow_call_leaves_a_current_thread_host_free() {
    let provider = provider(&libraries().slow, "slow", json!({"delay_ms": 300}));
    let ticks = Arc::new(AtomicU32::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let model = ModelSpec::new("m", "p");
    let request = request("x");
    let started = Instant::now();
    let response = provider.complete(call(&model, &request)).await.unwrap();
    let elapsed = started.elapsed();
    ticker.abort();
    let ticks = ticks.load(Ordering::SeqCst);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(
        ticks >= 10,
        "the host runtime ticked only {ticks} times during a {elapsed:?} plugin call"
    );
    assert!(
        response
            .text()
            .starts_with("slept 300 ms on backstop-plugin"),
        "the plugin's wait should end on its own runtime: {}",
        response.text()
    );
    assert_eq!(stats(&*provider).await, "started=1 finished=1 cancelled=0");
}

#[tokio::test]
async fn dropping_a_call_cancels_the_plugin_task() {
    let provider = provider(&libraries().slow, "slow", json!({"delay_ms": 60_000}));
    let model = ModelSpec::new("m", "p");
    let request = request("x");
    let outcome = tokio::time::timeout(
        Duration::from_millis(100),
        provider.complete(call(&model, &request)),
    )
    .await;
    assert!(outcome.is_err(), "the call should still be sleeping");
    wait_for_stats(&*provider, "started=1 finished=0 cancelled=1").await;
}

#[tokio::test]
async fn dropping_a_stream_cancels_the_plugin_pump() {
    let provider = provider(
        &libraries().slow,
        "slow",
        json!({"delay_ms": 5, "chunk_delay_ms": 60_000, "chunks": 3}),
    );
    let model = ModelSpec::new("m", "p");
    let request = request("x");
    let mut stream = provider.stream(call(&model, &request)).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        first
            .content()
            .unwrap()
            .starts_with("chunk 0 on backstop-plugin")
    );
    let second = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
    assert!(second.is_err(), "the second chunk is a minute away");
    drop(stream);
    wait_for_stats(&*provider, "started=1 finished=0 cancelled=1").await;
}

#[tokio::test]
async fn a_probe_goes_through_the_plugin() {
    let provider = echo("pong");
    provider
        .probe(&ModelSpec::new("m", "p"), Duration::from_secs(1))
        .await
        .unwrap();
    let failing = super::provider(
        &libraries().errors,
        "errors",
        json!({"kind": "auth", "status": 401}),
    );
    let error = failing
        .probe(&ModelSpec::new("m", "p"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!((error.kind, error.status), (FailureKind::Auth, Some(401)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_and_streams_on_a_multi_thread_host_all_answer() {
    let provider = provider(
        &libraries().example,
        "echo",
        json!({"latency_ms": 5, "chunk_delay_ms": 1}),
    );
    let models: Vec<ModelSpec> = (0..4)
        .map(|i| ModelSpec::new(format!("m{i}"), "p"))
        .collect();
    let models = Arc::new(models);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200_usize {
        let (provider, models) = (provider.clone(), models.clone());
        calls.spawn(async move {
            let model = &models[i % models.len()];
            let text = format!("call {i} to {}", model.id);
            let request = request(&text);
            if i % 2 == 0 {
                let response = provider.complete(call(model, &request)).await.unwrap();
                assert_eq!(response.text(), text);
                assert_eq!(response.model, model.upstream);
            } else {
                let stream = provider.stream(call(model, &request)).await.unwrap();
                let chunks: Vec<ChatChunk> = stream.map(Result::unwrap).collect().await;
                let streamed: String = chunks.iter().filter_map(ChatChunk::content).collect();
                assert_eq!(streamed, text);
                assert!(chunks.iter().all(|c| c.model == model.upstream));
            }
        });
    }
    let mut answered = 0;
    while let Some(done) = calls.join_next().await {
        done.unwrap();
        answered += 1;
    }
    assert_eq!(answered, 200);
}
