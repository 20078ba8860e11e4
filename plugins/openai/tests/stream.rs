//! Streaming calls: the SSE reader against wiremock (whole bodies) and the
//! raw loopback server (bodies that are cut or stall mid-stream).

mod support;

use std::time::Duration;

use backstop_core::{ChatRequest, FailureKind, Provider};
use futures::StreamExt;
use serde_json::{Value, json};
use support::chunks::{drain, text};
use support::logs::Logs;
use support::raw_http::{End, RawServer, Reply};
use support::{call, chunk, hello_events, model, provider, sse, sse_done, usage_chunk};
use tracing::Level;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn sse_server(body: String) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"))
        .expect(1)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn streams_the_answer_and_its_usage() {
    let server = sse_server(sse_done(&hello_events())).await;
    let model = model();
    let mut request = ChatRequest::user("chat", "hi");
    request.stream = Some(true);
    let stream = provider(&server.uri())
        .stream(call(&model, &request))
        .await
        .unwrap();
    let (chunks, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(chunks.len(), 5);
    assert_eq!(text(&chunks), "Hello world");
    assert_eq!(chunks[3].finish_reason(), Some("stop"));
    let usage = chunks[4].usage.as_ref().expect("usage chunk");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 2));

    let seen = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(seen[0].headers["accept"], "text/event-stream");
}

#[tokio::test]
async fn an_unparseable_chunk_is_skipped_and_counted() {
    let events = hello_events();
    let body = format!(
        "{}data: {{\"id\": \"chatcmpl-123\", \"choices\": [{{\"delta\n\n{}: keep-alive\n\n{}",
        sse(&events[..2]),
        sse(&events[2..3]),
        sse_done(&events[3..])
    );
    let server = sse_server(body).await;
    let p = provider(&server.uri());
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, error) = drain(p.stream(call(&model, &request)).await.unwrap()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&chunks), "Hello world");
    assert_eq!(p.malformed_chunks(), 1);
}

#[tokio::test]
async fn an_unparseable_chunk_is_logged_at_warn_with_counts_and_no_secrets() {
    // A chunk whose `created` is text: serde's message would quote all of
    // it, the key included.
    let bad = format!(
        r#"{{"id": "chatcmpl-123", "created": "Bearer {} {}", "choices": []}}"#,
        support::KEY,
        "y".repeat(300)
    );
    let events = hello_events();
    let body = format!(
        "{}data: {bad}\n\n{}data: {{\"id\": \"cut\n\n{}",
        sse(&events[..2]),
        sse(&events[2..3]),
        sse_done(&events[3..])
    );
    let server = sse_server(body).await;
    let p = provider(&server.uri());
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (logs, _guard) = Logs::capture();
    let (chunks, error) = drain(p.stream(call(&model, &request)).await.unwrap()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&chunks), "Hello world");

    let warned = logs.at(Level::WARN);
    assert_eq!(warned.len(), 2, "{warned:?}");
    for (n, logged) in warned.iter().enumerate() {
        let line = logged.line();
        assert_eq!(
            logged.field("message"),
            Some("skipped an unparseable stream chunk"),
            "{line}"
        );
        assert_eq!(logged.field("provider"), Some("openai"), "{line}");
        assert_eq!(logged.field("model"), Some("fast"), "{line}");
        let count = (n + 1).to_string();
        assert_eq!(logged.field("skipped"), Some(count.as_str()), "{line}");
        assert_eq!(logged.field("total"), Some(count.as_str()), "{line}");
        assert!(!line.contains("TESTKEY"), "{line}");
        assert!(!line.contains(&"y".repeat(101)), "{line}");
        assert!(
            logged.field("line").unwrap().chars().count() <= 101,
            "{line}"
        );
    }
    assert!(
        warned[0]
            .field("line")
            .unwrap()
            .starts_with(r#"{"id": "chatcmpl-123", "created": "Bearer <redacted> yyy"#),
        "{warned:?}"
    );
    assert_eq!(warned[1].field("line"), Some(r#"{"id": "cut"#));
    assert_eq!(p.malformed_chunks(), 2);
}

#[tokio::test]
async fn a_stream_without_done_but_with_a_finish_reason_is_complete() {
    let server = sse_server(sse(&hello_events())).await;
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
    assert_eq!(text(&chunks), "Hello world");
}

#[tokio::test]
async fn a_stream_without_done_and_without_a_finish_reason_is_interrupted() {
    let server = sse_server(sse(&hello_events()[..3])).await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text(&chunks), "Hello world");
    let error = error.expect("an unfinished stream fails");
    assert_eq!(error.kind, FailureKind::StreamInterrupted);
}

#[tokio::test]
async fn a_stream_cut_by_the_transport_is_interrupted() {
    let events = hello_events();
    let server = RawServer::start(Reply::Events {
        pieces: vec![
            sse(&events[..2]),
            "data: {\"id\": \"chatcmpl-123\", \"cho".to_owned(),
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
    assert!(error.message.starts_with("the stream was cut"), "{error}");
}

#[tokio::test]
async fn a_cut_after_the_finish_reason_loses_only_the_tail() {
    let events = hello_events();
    let server = RawServer::start(Reply::Events {
        pieces: vec![sse(&events[..4])],
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
    assert!(error.is_none(), "{error:?}");
    assert_eq!(chunks.last().and_then(|c| c.finish_reason()), Some("stop"));
}

#[tokio::test]
async fn a_stalled_stream_neither_ends_nor_fails_on_its_own() {
    let events = hello_events();
    let server = RawServer::start(Reply::Events {
        pieces: vec![sse(&events[..2])],
        end: End::Stall,
    })
    .await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let mut stream = provider(&server.url())
        .stream(call(&model, &request))
        .await
        .unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    assert_eq!(
        stream.next().await.unwrap().unwrap().content(),
        Some("Hello")
    );
    // The Router's idle timeout handles a stall; the reader must just wait.
    let next = tokio::time::timeout(Duration::from_millis(150), stream.next()).await;
    assert!(next.is_err(), "a stall yields nothing: {next:?}");
    assert_eq!(server.bodies().len(), 1);
}

#[tokio::test]
async fn an_error_inside_the_stream_fails_it_with_its_kind() {
    let events = hello_events();
    let error = json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}});
    let server = sse_server(format!("{}{}", sse(&events[..2]), sse(&[error]))).await;
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
    let error = error.expect("in-stream error");
    assert_eq!(error.kind, FailureKind::Server);
    assert_eq!(error.code.as_deref(), Some("server_error"));

    let limited = json!({"error": {"message": "Rate limit reached", "type": "tokens", "code": "rate_limit_exceeded"}});
    let server = sse_server(sse(&[limited])).await;
    let (_, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error.unwrap().kind, FailureKind::RateLimited);

    let named = "event: error\ndata: {\"message\": \"model overloaded, try later\", \"type\": \"server_error\"}\n\n";
    let server = sse_server(named.to_owned()).await;
    let (_, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error.unwrap().kind, FailureKind::Overloaded);
}

#[tokio::test]
async fn a_vllm_error_object_inside_the_stream_fails_it_with_its_kind() {
    // vLLM reports a failure mid-stream as a bare error object, with no
    // `error` wrapper and a numeric code.
    let events = hello_events();
    let error = json!({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.", "type": "BadRequestError", "param": null, "code": 400});
    let server = sse_server(format!("{}{}", sse(&events[..2]), sse_done(&[error]))).await;
    let p = provider(&server.uri());
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, error) = drain(p.stream(call(&model, &request)).await.unwrap()).await;
    assert_eq!(text(&chunks), "Hello");
    let error = error.expect("in-stream vLLM error");
    assert_eq!(error.kind, FailureKind::ContextLength, "{error}");
    assert_eq!(error.code.as_deref(), Some("400"));
    assert_eq!(p.malformed_chunks(), 0, "an error is not a malformed chunk");

    let crashed = json!({"object": "error", "message": "EngineCore encountered an issue.", "type": "InternalServerError", "param": null, "code": 500});
    let server = sse_server(sse_done(&[crashed])).await;
    let (chunks, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert!(chunks.is_empty(), "{chunks:?}");
    assert_eq!(error.expect("in-stream error").kind, FailureKind::Server);

    // An error object whose other fields do not fit a chunk is still an
    // error, not a malformed chunk.
    let odd = json!({"object": "error", "message": "Rate limit exceeded", "type": "RateLimitError", "code": 429, "choices": null});
    let server = sse_server(sse(&[odd])).await;
    let p = provider(&server.uri());
    let (_, error) = drain(p.stream(call(&model, &request)).await.unwrap()).await;
    assert_eq!(
        error.expect("in-stream error").kind,
        FailureKind::RateLimited
    );
    assert_eq!(p.malformed_chunks(), 0);
}

#[tokio::test]
async fn a_model_not_found_error_inside_the_stream_is_model_not_found() {
    let missing = json!({"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.", "type": "invalid_request_error", "param": null, "code": "model_not_found"}});
    let server = sse_server(sse(&[missing])).await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (_, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    let error = error.expect("in-stream error");
    assert_eq!(error.kind, FailureKind::ModelNotFound, "{error}");
    assert_eq!(error.code.as_deref(), Some("model_not_found"));
}

#[tokio::test]
async fn an_error_status_fails_before_the_stream_starts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "2")
                .set_body_json(json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})),
        )
        .mount(&server)
        .await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let Err(e) = provider(&server.uri()).stream(call(&model, &request)).await else {
        panic!("an error status is not a stream");
    };
    assert_eq!(e.kind, FailureKind::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_json_answer_to_a_stream_request_is_invalid() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(support::completion("whole")))
        .mount(&server)
        .await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let Err(e) = provider(&server.uri()).stream(call(&model, &request)).await else {
        panic!("JSON is not a stream");
    };
    assert_eq!(e.kind, FailureKind::InvalidResponse);
}

#[tokio::test]
async fn tool_call_deltas_pass_through() {
    let events = vec![
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":1}"}}]}),
            None,
        ),
        chunk(json!({}), Some("tool_calls")),
        usage_chunk(),
    ];
    let server = sse_server(sse_done(&events)).await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let (chunks, error) = drain(
        provider(&server.uri())
            .stream(call(&model, &request))
            .await
            .unwrap(),
    )
    .await;
    assert!(error.is_none());
    assert_eq!(
        chunks[1].choices[0].delta.extra["tool_calls"][0]["function"]["arguments"],
        "{\"q\":1}"
    );
    assert_eq!(chunks[2].finish_reason(), Some("tool_calls"));
}
