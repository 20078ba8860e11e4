//! A panicking plugin fails its own call as `invalid_response`, its model's
//! circuit records the failure, and the Router keeps serving other models.

use backstop_core::{
    AttemptOutcome, CallOutcome, FailureKind, ModelSpec, ProviderError, RequestContext, StreamItem,
};
use backstop_plugin::host::PluginError;
use futures::StreamExt;
use serde_json::json;

use super::{call, drain, echo, libraries, provider, request, router, stream_request};

fn panics(at: &str) -> std::sync::Arc<dyn backstop_core::Provider> {
    provider(&libraries().panics, "panics", json!({ "in": at }))
}

fn assert_panicked(error: &ProviderError, where_: &str) {
    assert_eq!(error.kind, FailureKind::InvalidResponse, "{error}");
    assert!(
        error
            .message
            .contains("plugin `fixture-panics` (panics) panicked")
            && error.message.contains(where_),
        "{}",
        error.message
    );
}

#[test]
fn a_panic_in_new_is_a_clear_error() {
    let error = super::load(&libraries().panics)
        .provider_factory("panics")
        .unwrap()
        .create(&json!({"in": "new"}))
        .err()
        .unwrap();
    assert!(
        matches!(error, PluginError::NewPanicked { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "plugin `fixture-panics` panicked while creating provider `panics`: fixture panics in new"
    );
}

#[tokio::test]
async fn panics_in_complete_fail_the_call_as_invalid_response() {
    let model = ModelSpec::new("m", "p");
    let request = request("x");
    for (at, message) in [
        ("complete", "fixture panics in complete"),
        (
            "complete_after_wait",
            "fixture panics in complete after waiting",
        ),
    ] {
        let error = panics(at)
            .complete(call(&model, &request))
            .await
            .unwrap_err();
        assert_panicked(&error, message);
    }
}

#[tokio::test]
async fn panics_opening_a_stream_fail_the_call_as_invalid_response() {
    let model = ModelSpec::new("m", "p");
    let request = request("x");
    for (at, message) in [
        ("stream", "fixture panics in stream"),
        (
            "stream_after_wait",
            "fixture panics in stream after waiting",
        ),
    ] {
        let Err(error) = panics(at).stream(call(&model, &request)).await else {
            panic!("a stream that panics at `{at}` should not start");
        };
        assert_panicked(&error, message);
    }
}

#[tokio::test]
async fn a_panic_mid_stream_ends_the_stream_with_invalid_response() {
    let model = ModelSpec::new("m", "p");
    let request = request("x");
    for (at, message) in [
        ("chunk", "fixture panics in a chunk"),
        (
            "chunk_after_wait",
            "fixture panics in a chunk after waiting",
        ),
    ] {
        let items: Vec<_> = panics(at)
            .stream(call(&model, &request))
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(items.len(), 2, "one chunk, then the error, then the end");
        assert_eq!(items[0].as_ref().unwrap().content(), Some("fine "));
        assert_panicked(items[1].as_ref().unwrap_err(), message);
    }
}

#[tokio::test]
async fn the_router_falls_over_from_a_panicking_plugin_and_keeps_serving() {
    let (router, health) = router(
        vec![
            ("fragile", panics("complete")),
            ("steady", echo("still here")),
        ],
        None,
    );
    for _ in 0..3 {
        let result = router
            .complete(request("hi"), RequestContext::default())
            .await
            .unwrap();
        assert_eq!(result.response.text(), "still here");
        assert_eq!(
            (&*result.outcome.model_used, result.outcome.fallback_level),
            ("steady", 1)
        );
        let first = &result.outcome.attempts[0];
        assert_eq!(&*first.model, "fragile");
        assert_eq!(
            first.outcome,
            AttemptOutcome::Failed(FailureKind::InvalidResponse)
        );
        assert!(
            first
                .message
                .as_deref()
                .unwrap()
                .contains("panicked in complete")
        );
    }
    let fragile_failures = health
        .outcomes()
        .iter()
        .filter(|(model, outcome)| {
            *model == 0
                && matches!(
                    outcome,
                    CallOutcome::Failure {
                        kind: FailureKind::InvalidResponse,
                        ..
                    }
                )
        })
        .count();
    assert_eq!(
        fragile_failures,
        3,
        "the circuit saw every panic: {:?}",
        health.outcomes()
    );
}

#[tokio::test]
async fn the_router_falls_over_from_a_plugin_that_panics_opening_a_stream() {
    let (router, _) = router(
        vec![
            ("fragile", panics("stream_after_wait")),
            ("steady", echo("still streaming")),
        ],
        None,
    );
    let stream = router
        .stream(stream_request("hi"), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(
        (
            &*stream.meta().outcome.model_used,
            stream.meta().outcome.fallback_level
        ),
        ("steady", 1)
    );
    let (text, last) = drain(stream).await;
    assert_eq!(text, "still streaming");
    assert!(matches!(last, StreamItem::Done(_)), "{last:?}");
}
