//! Complete (non-streaming) calls over real HTTP against wiremock: the
//! request the upstream sees, the answer, every error mapping, Retry-After,
//! transport failures and the probe.

mod support;

use std::time::{Duration, SystemTime};

use backstop_core::{ChatRequest, FailureKind, Provider, ProviderError};
use backstop_provider_openai::{MaxTokensField, OpenAiConfig, OpenAiProvider};
use serde_json::{Value, json};
use support::raw_http::{RawServer, Reply};
use support::{KEY, call, completion, model, provider};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn server_answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(template)
        .expect(1)
        .mount(&server)
        .await;
    server
}

async fn complete_against(
    template: ResponseTemplate,
) -> Result<backstop_core::ChatResponse, ProviderError> {
    let server = server_answering(template).await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    provider(&server.uri())
        .complete(call(&model, &request))
        .await
}

async fn error_for(status: u16, body: Value) -> ProviderError {
    complete_against(ResponseTemplate::new(status).set_body_json(body))
        .await
        .expect_err("an error status fails the call")
}

fn openai_error(message: &str, kind: &str, code: Value) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

#[tokio::test]
async fn answers_and_sends_the_request_the_caller_meant() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .and(header("x-client-request-id", "req-42"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(completion("Hello! How can I help?")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let request: ChatRequest = serde_json::from_value(json!({
        "model": "realtime_chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi", "name": "ann"}
        ],
        "max_tokens": 500,
        "temperature": 0.3,
        "seed": 7,
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    }))
    .unwrap();
    let model = model();
    let response = provider(&server.uri())
        .complete(call(&model, &request))
        .await
        .unwrap();

    assert_eq!(response.text(), "Hello! How can I help?");
    assert_eq!(response.choices[0].finish_reason.as_deref(), Some("stop"));
    let usage = response.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (19, 10, 29)
    );
    assert_eq!(response.extra["system_fingerprint"], "fp_44709d6fcb");

    let seen = server.received_requests().await.unwrap();
    assert_eq!(seen.len(), 1, "no hidden retries");
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "gpt-4o-mini-2024-07-18",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi", "name": "ann"}
            ],
            "max_tokens": 64,
            "temperature": 0.3,
            "seed": 7,
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        })
    );
}

#[tokio::test]
async fn the_bound_follows_max_completion_tokens_or_the_configured_field() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok")))
        .mount(&server)
        .await;
    let model = model();
    let mut request = ChatRequest::user("chat", "hi");
    request.max_completion_tokens = Some(10_000);
    provider(&server.uri())
        .complete(call(&model, &request))
        .await
        .unwrap();

    let config = OpenAiConfig {
        max_tokens_field: Some(MaxTokensField::MaxCompletionTokens),
        ..OpenAiConfig::with_base_url(format!("{}/v1", server.uri()))
    };
    let configured = OpenAiProvider::new_with_env(config, |_| None).unwrap();
    configured
        .complete(call(&model, &ChatRequest::user("chat", "hi")))
        .await
        .unwrap();

    let seen = server.received_requests().await.unwrap();
    for request in &seen {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["max_completion_tokens"], 64, "{body}");
        assert!(body.get("max_tokens").is_none(), "{body}");
    }
    assert!(
        seen[1].headers.get("authorization").is_none(),
        "a keyless local server gets no Authorization header"
    );
}

#[tokio::test]
async fn context_length_exceeded_is_context_length() {
    let e = error_for(
        400,
        openai_error(
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            json!("context_length_exceeded"),
        ),
    )
    .await;
    assert_eq!(e.kind, FailureKind::ContextLength);
    assert_eq!(e.status, Some(400));
    assert_eq!(e.code.as_deref(), Some("context_length_exceeded"));
    assert!(
        e.message.starts_with("This model's maximum context length"),
        "{e}"
    );
}

#[tokio::test]
async fn content_policy_and_content_filter_are_content_policy() {
    let e = error_for(
        400,
        openai_error(
            "Your request was rejected as a result of our safety system.",
            "invalid_request_error",
            json!("content_policy_violation"),
        ),
    )
    .await;
    assert_eq!(e.kind, FailureKind::ContentPolicy);
    let azure = json!({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": null, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation"}
    }});
    assert_eq!(error_for(400, azure).await.kind, FailureKind::ContentPolicy);
}

#[tokio::test]
async fn insufficient_quota_and_402_are_quota_exhausted() {
    let e = error_for(
        429,
        openai_error(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            json!("insufficient_quota"),
        ),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::QuotaExhausted, Some(429)));
    let e = error_for(402, json!({"error": {"message": "Insufficient Balance", "type": "unknown_error", "param": null, "code": "invalid_request_error"}})).await;
    assert_eq!((e.kind, e.status), (FailureKind::QuotaExhausted, Some(402)));
}

fn rate_limited() -> ResponseTemplate {
    ResponseTemplate::new(429).set_body_json(openai_error(
        "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1.",
        "requests",
        json!("rate_limit_exceeded"),
    ))
}

#[tokio::test]
async fn rate_limit_carries_retry_after_in_seconds() {
    let e = complete_against(rate_limited().insert_header("retry-after", "20"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(20)));
}

#[tokio::test]
async fn rate_limit_carries_retry_after_as_an_http_date() {
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    let e = complete_against(rate_limited().insert_header("retry-after", date.as_str()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::RateLimited);
    let wait = e.retry_after.expect("a date is a wait");
    assert!(
        wait > Duration::from_secs(115) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
}

#[tokio::test]
async fn rate_limit_prefers_retry_after_ms() {
    let e = complete_against(
        rate_limited()
            .insert_header("retry-after", "1")
            .insert_header("retry-after-ms", "250"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.retry_after, Some(Duration::from_millis(250)));
}

#[tokio::test]
async fn rate_limit_without_retry_after_has_none() {
    let e = complete_against(rate_limited()).await.unwrap_err();
    assert_eq!((e.kind, e.retry_after), (FailureKind::RateLimited, None));
}

#[tokio::test]
async fn unauthorized_and_forbidden_are_auth_and_never_show_the_key() {
    let echo = format!(
        "Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."
    );
    let e = error_for(
        401,
        openai_error(&echo, "invalid_request_error", json!("invalid_api_key")),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::Auth, Some(401)));
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains("TESTKEY0123456789"), "{shown}");
    }
    let e = error_for(
        403,
        openai_error(
            "Project does not have access to model",
            "invalid_request_error",
            json!("model_not_found"),
        ),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::Auth, Some(403)));
}

#[tokio::test]
async fn server_errors_are_server_or_overloaded() {
    let server_error = openai_error(
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        Value::Null,
    );
    for status in [500, 502, 504, 408] {
        let e = error_for(status, server_error.clone()).await;
        assert_eq!((e.kind, e.status), (FailureKind::Server, Some(status)));
    }
    let e = error_for(
        503,
        openai_error("Service Unavailable.", "server_error", Value::Null),
    )
    .await;
    assert_eq!(e.kind, FailureKind::Server);
    let e = error_for(
        503,
        openai_error(
            "The engine is currently overloaded, please try again later.",
            "server_error",
            Value::Null,
        ),
    )
    .await;
    assert_eq!(e.kind, FailureKind::Overloaded);
    let e = complete_against(
        ResponseTemplate::new(529)
            .insert_header("retry-after", "3")
            .set_body_string("overloaded"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.kind, e.retry_after),
        (FailureKind::Overloaded, Some(Duration::from_secs(3)))
    );
}

#[tokio::test]
async fn a_404_for_a_missing_model_is_model_not_found() {
    let e = error_for(
        404,
        openai_error(
            "The model `gpt-9` does not exist or you do not have access to it.",
            "invalid_request_error",
            json!("model_not_found"),
        ),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::ModelNotFound, Some(404)));
    assert_eq!(e.code.as_deref(), Some("model_not_found"));
    // Ollama
    let e = error_for(
        404,
        json!({"error": "model \"llama3.3:70b\" not found, try pulling it first"}),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::ModelNotFound, Some(404)));
    // vLLM
    let e = error_for(
        404,
        json!({"object": "error", "message": "The model `llama-3-8b` does not exist.",
               "type": "NotFoundError", "param": null, "code": 404}),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::ModelNotFound, Some(404)));
    // A bare 404 (a wrong deployment path behind a proxy)
    let e = complete_against(ResponseTemplate::new(404))
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.status), (FailureKind::ModelNotFound, Some(404)));
}

#[tokio::test]
async fn other_client_errors_are_bad_request() {
    let e = error_for(
        400,
        openai_error(
            "Invalid value for 'temperature'.",
            "invalid_request_error",
            json!("invalid_value"),
        ),
    )
    .await;
    assert_eq!(e.kind, FailureKind::BadRequest);
}

#[tokio::test]
async fn unparseable_or_empty_answers_are_invalid_responses() {
    let e = complete_against(
        ResponseTemplate::new(200)
            .set_body_raw("{\"id\": \"chatcmpl-1\", \"choi", "application/json"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.kind, e.status),
        (FailureKind::InvalidResponse, Some(200))
    );
    let mut empty = completion("x");
    empty["choices"] = json!([]);
    let e = complete_against(ResponseTemplate::new(200).set_body_json(empty))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::InvalidResponse);
    assert_eq!(e.message, "the response has no choices");
}

#[tokio::test]
async fn a_refused_connection_is_connect() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let e = provider(&format!("http://127.0.0.1:{port}"))
        .complete(call(&model, &request))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Connect, "{e}");
    assert_eq!(e.status, None);
    assert!(
        !e.message.contains("127.0.0.1"),
        "no URL in the message: {e}"
    );
}

#[tokio::test]
async fn a_connection_reset_before_headers_is_connect() {
    let server = RawServer::start(Reply::Hangup).await;
    let model = model();
    let request = ChatRequest::user("chat", "hi");
    let e = provider(&server.url())
        .complete(call(&model, &request))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Connect, "{e}");
}

#[tokio::test]
async fn the_probe_is_a_tiny_request() {
    let server =
        server_answering(ResponseTemplate::new(200).set_body_json(completion("pong"))).await;
    let p = provider(&server.uri());
    p.probe(&model(), Duration::from_secs(1)).await.unwrap();
    let seen = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(body["max_tokens"], backstop_core::PROBE_MAX_TOKENS);
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_failing_probe_reports_the_kind() {
    let server = server_answering(ResponseTemplate::new(401).set_body_json(openai_error(
        "Incorrect API key provided: sk-proj-****cdef.",
        "invalid_request_error",
        json!("invalid_api_key"),
    )))
    .await;
    let e = provider(&server.uri())
        .probe(&model(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Auth);
    assert!(!e.message.contains("cdef"), "{e}");
}
