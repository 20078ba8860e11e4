//! Streaming calls: Messages API events translated to chunks, against
//! wiremock (whole bodies) and the raw loopback server (cut and stalled
//! bodies).

mod support;

use std::time::Duration;

use backstop_core::{ChatRequest, FailureKind, Provider, Role};
use futures::StreamExt;
use serde_json::{Value, json};
use support::chunks::{drain, text};
use support::logs::Logs;
use support::raw_http::{End, RawServer, Reply};
use support::{answer_events, call, error, event, events, message_stop, model, provider};
use tracing::Level;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn sse_server(body: String) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(body, "text/event-stream; charset=utf-8"),
        )
        .expect(1)
        .mount(&server)
        .await;
    server
}

fn complete_stream(pieces: &[&str]) -> String {
    let mut all = answer_events(pieces);
    all.push(message_stop());
    events(&all)
}

#[tokio::test]
async fn streams_the_answer_as_openai_chunks_with_usage() {
    let server = sse_server(complete_stream(&["Hello", "!"])).await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&chunks), "Hello!");
    assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
    assert!(chunks.iter().all(|c| c.object == "chat.completion.chunk"));
    assert!(
        chunks
            .iter()
            .all(|c| c.id == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY")
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish.finish_reason(), Some("stop"));
    let usage = chunks
        .last()
        .and_then(|c| c.usage.as_ref())
        .expect("final usage chunk");
    assert!(chunks.last().unwrap().choices.is_empty());
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (25, 15, 40)
    );

    let seen = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 300);
}

#[tokio::test]
async fn a_max_tokens_stop_is_length() {
    let mut all = answer_events(&["Hel"]);
    all.pop();
    all.push(support::message_delta("max_tokens", 1));
    all.push(message_stop());
    let server = sse_server(events(&all)).await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, _) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert!(chunks.iter().any(|c| c.finish_reason() == Some("length")));
}

#[tokio::test]
async fn an_unparseable_event_is_skipped_and_counted() {
    let all = answer_events(&["Hello", "!"]);
    let body = format!(
        "{}event: content_block_delta\ndata: {{\"type\": \"content_block_delta\", \"ind\n\n{}{}",
        events(&all[..4]),
        events(&all[4..]),
        event(&message_stop())
    );
    let server = sse_server(body).await;
    let p = provider(&server.uri());
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, error) = drain(p.stream(call(&model, &request)).await.unwrap()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&chunks), "Hello!");
    assert_eq!(p.malformed_chunks(), 1);
}

#[tokio::test]
async fn an_unparseable_event_is_logged_at_warn_with_counts_and_no_secrets() {
    let all = answer_events(&["Hello", "!"]);
    let bad = format!(
        "event: content_block_delta\ndata: {{\"type\": \"content_block_delta\", \"note\": \"{} {}\"\n\n",
        support::KEY,
        "y".repeat(300)
    );
    let body = format!(
        "{}{bad}{}{}",
        events(&all[..4]),
        events(&all[4..]),
        event(&message_stop())
    );
    let server = sse_server(body).await;
    let p = provider(&server.uri());
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (logs, _guard) = Logs::capture();
    let (chunks, error) = drain(p.stream(call(&model, &request)).await.unwrap()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&chunks), "Hello!");

    let warned = logs.at(Level::WARN);
    assert_eq!(warned.len(), 1, "{warned:?}");
    let logged = &warned[0];
    let line = logged.line();
    assert_eq!(
        logged.field("message"),
        Some("skipped an unparseable stream event"),
        "{line}"
    );
    assert_eq!(logged.field("provider"), Some("anthropic"), "{line}");
    assert_eq!(logged.field("model"), Some("claude"), "{line}");
    assert_eq!(logged.field("skipped"), Some("1"), "{line}");
    assert_eq!(logged.field("total"), Some("1"), "{line}");
    assert!(!line.contains("TESTKEY"), "{line}");
    assert!(!line.contains(&"y".repeat(101)), "{line}");
    let shown = logged.field("line").unwrap();
    assert!(shown.chars().count() <= 101, "{line}");
    assert!(
        shown.starts_with(r#"{"type": "content_block_delta", "note": "<redacted> yyy"#),
        "{line}"
    );
    assert_eq!(p.malformed_chunks(), 1);
}

#[tokio::test]
async fn a_stream_without_message_stop_but_with_a_stop_reason_is_complete() {
    let server = sse_server(events(&answer_events(&["Hello", "!"]))).await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&chunks), "Hello!");
}

#[tokio::test]
async fn a_stream_without_a_stop_reason_is_interrupted() {
    let all = answer_events(&["Hello", "!"]);
    let server = sse_server(events(&all[..all.len() - 1])).await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text(&chunks), "Hello!");
    assert_eq!(
        error.expect("unfinished").kind,
        FailureKind::StreamInterrupted
    );
}

#[tokio::test]
async fn a_stream_cut_by_the_transport_is_interrupted() {
    let all = answer_events(&["Hello", " there"]);
    let server = RawServer::start(Reply::Events {
        pieces: vec![
            events(&all[..4]),
            "event: content_block_delta\ndata: {\"type\": \"content_bl".to_owned(),
        ],
        end: End::Cut,
    })
    .await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, error) = drain(
        provider(&server.url())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text(&chunks), "Hello");
    let error = error.expect("a cut stream fails");
    assert_eq!(error.kind, FailureKind::StreamInterrupted, "{error}");
}

#[tokio::test]
async fn a_stalled_stream_neither_ends_nor_fails_on_its_own() {
    let all = answer_events(&["Hello"]);
    let server = RawServer::start(Reply::Events {
        pieces: vec![events(&all[..4])],
        end: End::Stall,
    })
    .await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let mut stream = provider(&server.url())
        .stream(call(&model, &request))
        .await
        .unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap().choices[0].delta.role,
        Some(Role::Assistant)
    );
    assert_eq!(
        stream.next().await.unwrap().unwrap().content(),
        Some("Hello")
    );
    let next = tokio::time::timeout(Duration::from_millis(150), stream.next()).await;
    assert!(next.is_err(), "a stall yields nothing: {next:?}");
}

#[tokio::test]
async fn an_error_event_fails_the_stream_with_its_kind() {
    let all = answer_events(&["Hello"]);
    let body = format!(
        "{}{}",
        events(&all[..4]),
        event(
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        )
    );
    let server = sse_server(body).await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text(&chunks), "Hello");
    let error = error.expect("error event");
    assert_eq!(error.kind, FailureKind::Overloaded);
    assert_eq!(error.code.as_deref(), Some("overloaded_error"));

    let server = sse_server(event(&error_event("rate_limit_error", "slow down"))).await;
    let (_, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error.unwrap().kind, FailureKind::RateLimited);
}

#[tokio::test]
async fn a_not_found_error_event_is_model_not_found() {
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    for kind in ["not_found_error", "model_not_found"] {
        let server = sse_server(event(&error_event(kind, "model: claude-9"))).await;
        let (_, error) = drain(
            provider(&server.uri())
                .stream(call(&model, &request))
                .await
                .unwrap(),
        )
        .await;
        let error = error.expect("error event");
        assert_eq!(error.kind, FailureKind::ModelNotFound, "{kind}: {error}");
        assert_eq!(error.code.as_deref(), Some(kind));
    }
}

fn error_event(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[tokio::test]
async fn an_error_status_fails_before_the_stream_starts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "5")
                .set_body_json(error(
                    "rate_limit_error",
                    "Number of requests has exceeded your rate limit",
                )),
        )
        .mount(&server)
        .await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let Err(e) = provider(&server.uri()).stream(call(&model, &request)).await else {
        panic!("an error status is not a stream");
    };
    assert_eq!(
        (e.kind, e.retry_after),
        (FailureKind::RateLimited, Some(Duration::from_secs(5)))
    );
}

#[tokio::test]
async fn a_prefill_continuation_streams_only_the_new_text() {
    let server = sse_server(complete_stream(&[" four", ", five."])).await;
    let request: ChatRequest = serde_json::from_value(json!({
        "model": "chat",
        "messages": [
            {"role": "user", "content": "Count to five."},
            {"role": "assistant", "content": "One, two, three, "}
        ]
    }))
    .unwrap();
    let model = model();
    let (chunks, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert!(error.is_none());
    assert_eq!(
        format!("One, two, three, {}", text(&chunks)),
        "One, two, three, four, five."
    );
    let seen = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["messages"][1]["content"], "One, two, three,");
}
