//! Complete calls over real HTTP against wiremock: the translated request
//! the Messages API sees, the answer translated back, every error mapping,
//! Retry-After, transport failures and the probe.

mod support;

use std::time::{Duration, SystemTime};

use backstop_core::{ChatRequest, ChatResponse, FailureKind, Provider, ProviderError};
use serde_json::{Value, json};
use support::raw_http::{RawServer, Reply};
use support::{KEY, call, error, message, model, provider};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn server_answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(template)
        .expect(1)
        .mount(&server)
        .await;
    server
}

async fn complete_against(template: ResponseTemplate) -> Result<ChatResponse, ProviderError> {
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

#[tokio::test]
async fn answers_with_the_translated_request_and_headers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(message("Hi! I'm Claude.")))
        .expect(1)
        .mount(&server)
        .await;
    let request: ChatRequest = serde_json::from_value(json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Who are you?"}
        ],
        "max_completion_tokens": 1000,
        "temperature": 0.5,
        "stop": ["\n\nHuman:"],
        "presence_penalty": 0.1
    }))
    .unwrap();
    let model = model();
    let response = provider(&server.uri())
        .complete(call(&model, &request))
        .await
        .unwrap();

    assert_eq!(response.text(), "Hi! I'm Claude.");
    assert_eq!(response.object, "chat.completion");
    assert_eq!(response.model, "claude-sonnet-4-5-20250929");
    assert_eq!(response.choices[0].finish_reason.as_deref(), Some("stop"));
    let usage = response.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (12, 6, 18)
    );

    let seen = server.received_requests().await.unwrap();
    assert_eq!(seen.len(), 1, "no hidden retries");
    assert!(seen[0].headers.get("authorization").is_none());
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "claude-sonnet-4-5-20250929",
            "max_tokens": 300,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Who are you?"}],
            "stop_sequences": ["\n\nHuman:"],
            "temperature": 0.5
        })
    );
}

#[tokio::test]
async fn a_trailing_assistant_message_is_continued_and_joined() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(message(" four, five.")))
        .mount(&server)
        .await;
    let request: ChatRequest = serde_json::from_value(json!({
        "model": "chat",
        "messages": [
            {"role": "user", "content": "Count to five."},
            {"role": "assistant", "content": "One, two, three, "}
        ]
    }))
    .unwrap();
    let model = model();
    let response = provider(&server.uri())
        .complete(call(&model, &request))
        .await
        .unwrap();
    assert_eq!(
        format!("One, two, three, {}", response.text()),
        "One, two, three, four, five."
    );
    let seen = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body["messages"][1],
        json!({"role": "assistant", "content": "One, two, three,"}),
        "no trailing whitespace in the final assistant turn"
    );
}

#[tokio::test]
async fn overloaded_is_overloaded() {
    let e = complete_against(
        ResponseTemplate::new(529)
            .insert_header("retry-after", "2")
            .set_body_json(error("overloaded_error", "Overloaded")),
    )
    .await
    .unwrap_err();
    assert_eq!((e.kind, e.status), (FailureKind::Overloaded, Some(529)));
    assert_eq!(e.code.as_deref(), Some("overloaded_error"));
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
}

fn rate_limited() -> ResponseTemplate {
    ResponseTemplate::new(429).set_body_json(error(
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per minute.",
    ))
}

#[tokio::test]
async fn rate_limit_carries_retry_after_in_seconds() {
    let e = complete_against(rate_limited().insert_header("retry-after", "17"))
        .await
        .unwrap_err();
    assert_eq!((e.kind, e.status), (FailureKind::RateLimited, Some(429)));
    assert_eq!(e.retry_after, Some(Duration::from_secs(17)));
}

#[tokio::test]
async fn rate_limit_carries_retry_after_as_an_http_date() {
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
    let e = complete_against(rate_limited().insert_header("retry-after", date.as_str()))
        .await
        .unwrap_err();
    let wait = e.retry_after.expect("a date is a wait");
    assert!(
        wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
}

#[tokio::test]
async fn rate_limit_prefers_retry_after_ms() {
    let e = complete_against(
        rate_limited()
            .insert_header("retry-after", "1")
            .insert_header("retry-after-ms", "400"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.retry_after, Some(Duration::from_millis(400)));
}

#[tokio::test]
async fn a_spend_limit_429_is_quota_exhausted() {
    let body = json!({"type": "error", "error": {"type": "rate_limit_error",
        "message": "You have reached your monthly spend limit.",
        "details": {"error_code": "enforced_spend_limit_reached"}}});
    let e = error_for(429, body).await;
    assert_eq!(e.kind, FailureKind::QuotaExhausted);
    let e = error_for(
        402,
        error(
            "billing_error",
            "There is an issue with your payment method.",
        ),
    )
    .await;
    assert_eq!(e.kind, FailureKind::QuotaExhausted);
}

#[tokio::test]
async fn a_prompt_too_long_is_context_length() {
    let e = error_for(
        400,
        error(
            "invalid_request_error",
            "prompt is too long: 215439 tokens > 200000 maximum",
        ),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::ContextLength, Some(400)));
    assert_eq!(
        e.message,
        "prompt is too long: 215439 tokens > 200000 maximum"
    );
}

#[tokio::test]
async fn authentication_and_permission_errors_are_auth_and_never_show_the_key() {
    let e = error_for(
        401,
        error("authentication_error", &format!("invalid x-api-key {KEY}")),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::Auth, Some(401)));
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains("TESTKEY0123456789"), "{shown}");
    }
    let e = error_for(
        403,
        error(
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::Auth, Some(403)));
}

#[tokio::test]
async fn other_client_errors_are_bad_request() {
    let e = error_for(
        400,
        error(
            "invalid_request_error",
            "messages.0.content: text content blocks must be non-empty",
        ),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::BadRequest, Some(400)));
}

#[tokio::test]
async fn a_404_for_a_missing_model_is_model_not_found() {
    let e = error_for(
        404,
        error("not_found_error", "model: claude-3-sonnet-20240229"),
    )
    .await;
    assert_eq!((e.kind, e.status), (FailureKind::ModelNotFound, Some(404)));
    assert_eq!(e.code.as_deref(), Some("not_found_error"));
    assert_eq!(e.message, "model: claude-3-sonnet-20240229");
}

#[tokio::test]
async fn api_errors_are_server() {
    for status in [500, 502, 504] {
        let e = error_for(status, error("api_error", "Internal server error")).await;
        assert_eq!((e.kind, e.status), (FailureKind::Server, Some(status)));
    }
}

#[tokio::test]
async fn unparseable_answers_are_invalid_responses() {
    let e = complete_against(
        ResponseTemplate::new(200).set_body_raw("{\"id\": \"msg_01", "application/json"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.kind, e.status),
        (FailureKind::InvalidResponse, Some(200))
    );
}

#[tokio::test]
async fn tool_use_answers_become_tool_calls() {
    let body = json!({
        "id": "msg_01Aq9w938a90dw8q", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "I'll check the weather."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
             "input": {"location": "San Francisco, CA", "unit": "celsius"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 384, "output_tokens": 71}
    });
    let r = complete_against(ResponseTemplate::new(200).set_body_json(body))
        .await
        .unwrap();
    assert_eq!(r.text(), "I'll check the weather.");
    assert_eq!(r.choices[0].finish_reason.as_deref(), Some("tool_calls"));
    let call = &r.choices[0].message.extra["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        args,
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
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
    assert_eq!((e.kind, e.status), (FailureKind::Connect, None), "{e}");
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
    let server = server_answering(ResponseTemplate::new(200).set_body_json(message("Hi"))).await;
    provider(&server.uri())
        .probe(&model(), Duration::from_secs(1))
        .await
        .unwrap();
    let seen = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["max_tokens"], backstop_core::PROBE_MAX_TOKENS);
    assert_eq!(body["model"], "claude-sonnet-4-5-20250929");
}

#[tokio::test]
async fn a_failing_probe_reports_the_kind() {
    let server = server_answering(
        ResponseTemplate::new(529).set_body_json(error("overloaded_error", "Overloaded")),
    )
    .await;
    let e = provider(&server.uri())
        .probe(&model(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Overloaded);
}
