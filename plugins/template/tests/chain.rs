//! The three providers in one chain through the real Router, over real
//! HTTP: openai (primary) -> anthropic -> template, complete and streaming.
//! Checks what the caller gets (text, `model`, `usage`, annotations,
//! fallback level) and what each upstream saw.

#[path = "../../openai/tests/support/raw_http.rs"]
mod raw_http;

use std::sync::Arc;

use backstop_core::testing::{Recorded, RecordingSink, simple_strategies};
use backstop_core::{
    AttemptOutcome, ChatRequest, FailureKind, FallbackResult, Outcome, RequestContext, RoutePolicy,
    Router, Scenario, StrategyContext, StreamItem, SystemClock, Usage,
};
use backstop_core::{ChatChunk, ModelSpec};
use backstop_provider_anthropic::{AnthropicConfig, AnthropicProvider};
use backstop_provider_openai::{OpenAiConfig, OpenAiProvider};
use backstop_provider_template::{TemplateConfig, TemplateProvider};
use futures::StreamExt;
use raw_http::{End, RawServer, Reply};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SCENARIO: &str = "support_chat";

/// Upstream fakes for one test.
struct Upstreams {
    openai: String,
    anthropic: MockServer,
}

/// openai `gpt` -> anthropic `claude` -> template `rules`.
fn router(upstreams: &Upstreams, sink: Arc<RecordingSink>) -> Router {
    let mut gpt = ModelSpec::new("gpt", "openai");
    gpt.upstream = "gpt-4o-2024-08-06".into();
    let mut claude = ModelSpec::new("claude", "anthropic");
    claude.upstream = "claude-sonnet-4-5-20250929".into();
    claude.capabilities.assistant_prefill = true;
    let mut rules = ModelSpec::new("rules", "rules");
    rules.input_cost_per_1k = 0.0;
    rules.output_cost_per_1k = 0.0;

    let openai = OpenAiProvider::new_with_env(
        OpenAiConfig {
            api_key_env: Some("OPENAI_KEY".into()),
            ..OpenAiConfig::with_base_url(format!("{}/v1", upstreams.openai))
        },
        |_| Some("sk-openai-test".into()),
    )
    .expect("openai provider");
    let anthropic = AnthropicProvider::new_with_env(
        AnthropicConfig::with_base_url(upstreams.anthropic.uri()),
        |_| Some("sk-ant-test".into()),
    )
    .expect("anthropic provider");
    let template = TemplateProvider::new(TemplateConfig::with_text(
        "The {scenario} assistant is busy; {model} answered.",
    ))
    .expect("template provider");

    let ctx = StrategyContext::new(vec![gpt, claude, rules], SystemClock::shared());
    Router::builder(ctx)
        .provider("openai", Arc::new(openai))
        .provider("anthropic", Arc::new(anthropic))
        .provider("rules", Arc::new(template))
        .scenario(
            Scenario {
                name: SCENARIO.into(),
                chain: vec!["gpt".into(), "claude".into(), "rules".into()],
                policy: RoutePolicy::default(),
            },
            simple_strategies(),
        )
        .event_sink(sink)
        .build()
        .expect("router")
}

async fn openai_failing(status: u16, body: Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(&server)
        .await;
    server
}

fn openai_500() -> Value {
    json!({"error": {"message": "The server had an error while processing your request. Sorry about that!",
                     "type": "server_error", "param": null, "code": null}})
}

async fn anthropic_answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

fn anthropic_message(text: &str) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 21, "output_tokens": 7}
    })
}

fn anthropic_events(pieces: &[&str]) -> String {
    let mut events = vec![
        json!({"type": "message_start", "message": {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message",
            "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929",
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 21, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
    ];
    events.extend(pieces.iter().map(|p| {
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})
    }));
    events.push(json!({"type": "content_block_stop", "index": 0}));
    events.push(
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"output_tokens": 7}}),
    );
    events.push(json!({"type": "message_stop"}));
    events
        .iter()
        .map(|e| {
            format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().expect("typed event")
            )
        })
        .collect()
}

fn anthropic_overloaded() -> ResponseTemplate {
    ResponseTemplate::new(529).set_body_json(json!({"type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"}}))
}

fn request(stream: bool) -> ChatRequest {
    let mut r = ChatRequest::user(SCENARIO, "Where is my parcel?");
    r.stream = stream.then_some(true);
    r
}

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

fn outcomes(attempts: &[backstop_core::Attempt]) -> Vec<(String, AttemptOutcome)> {
    attempts
        .iter()
        .map(|a| (a.model.to_string(), a.outcome))
        .collect()
}

/// Reads a fallback stream: the text, the model of each chunk, and how it
/// ended.
async fn read(stream: backstop_core::FallbackStream) -> (String, Vec<ChatChunk>, Outcome) {
    let items: Vec<StreamItem> = stream.collect().await;
    let mut chunks = Vec::new();
    let mut summary = None;
    for item in items {
        match item {
            StreamItem::Chunk(c) => chunks.push(c),
            StreamItem::Done(s) => summary = Some(s),
            StreamItem::Failed(e) => panic!("the stream failed: {e}"),
        }
    }
    let text = chunks.iter().filter_map(ChatChunk::content).collect();
    (text, chunks, summary.expect("a Done item ends the stream"))
}

fn fallbacks(sink: &RecordingSink) -> Vec<(String, String, &'static str, usize)> {
    sink.events()
        .into_iter()
        .filter_map(|e| match e {
            Recorded::Fallback(f) => Some((
                f.primary.to_string(),
                f.model_used.to_string(),
                f.reason,
                f.level,
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_failing_primary_falls_over_to_anthropic() {
    let openai = openai_failing(500, openai_500()).await;
    let upstreams = Upstreams {
        openai: openai.uri(),
        anthropic: anthropic_answering(
            ResponseTemplate::new(200).set_body_json(anthropic_message("Your parcel is in Lyon.")),
        )
        .await,
    };
    let sink = Arc::new(RecordingSink::default());
    let router = router(&upstreams, sink.clone());

    let result: FallbackResult = router
        .complete(request(false), RequestContext::default())
        .await
        .unwrap();

    assert_eq!(result.response.text(), "Your parcel is in Lyon.");
    assert_eq!(result.response.model, "claude");
    assert_eq!(
        result.response.usage,
        Some(Usage::new(21, 7)),
        "the answering attempt's usage only"
    );
    assert_eq!(&*result.outcome.model_used, "claude");
    assert_eq!(result.outcome.fallback_level, 1);
    assert_eq!(
        result.outcome.warning.as_deref(),
        Some("level 1 via claude")
    );
    assert_eq!(
        outcomes(&result.outcome.attempts),
        [
            ("gpt".into(), AttemptOutcome::Failed(FailureKind::Server)),
            ("gpt".into(), AttemptOutcome::Failed(FailureKind::Server)),
            ("claude".into(), AttemptOutcome::Succeeded),
        ]
    );
    assert_eq!(result.outcome.attempts[0].status, Some(500));
    assert_eq!(calls(&openai).await, 2, "one same-model retry for a 500");
    assert_eq!(calls(&upstreams.anthropic).await, 1);
    assert_eq!(
        fallbacks(&sink),
        [("gpt".into(), "claude".into(), "server", 1)]
    );
}

#[tokio::test]
async fn a_failing_primary_falls_over_to_anthropic_when_streaming() {
    let openai = openai_failing(500, openai_500()).await;
    let upstreams = Upstreams {
        openai: openai.uri(),
        anthropic: anthropic_answering(ResponseTemplate::new(200).set_body_raw(
            anthropic_events(&["Your parcel", " is in Lyon."]),
            "text/event-stream",
        ))
        .await,
    };
    let sink = Arc::new(RecordingSink::default());
    let router = router(&upstreams, sink.clone());

    let stream = router
        .stream(request(true), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*stream.meta().outcome.model_used, "claude");
    assert_eq!(stream.meta().outcome.fallback_level, 1);
    assert_eq!(
        stream.meta().outcome.warning.as_deref(),
        Some("level 1 via claude")
    );
    let (text, chunks, summary) = read(stream).await;

    assert_eq!(text, "Your parcel is in Lyon.");
    assert!(
        chunks.iter().all(|c| c.model == "claude"),
        "every chunk names the answering model"
    );
    assert_eq!(
        chunks.last().and_then(ChatChunk::finish_reason),
        Some("stop")
    );
    assert_eq!(&*summary.model_used, "claude");
    assert_eq!(summary.fallback_level, 1);
    assert_eq!(summary.usage, Some(Usage::new(21, 7)));
    assert_eq!(summary.warning.as_deref(), Some("level 1 via claude"));
    assert_eq!(calls(&openai).await, 2);
    let seen = upstreams.anthropic.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(
        fallbacks(&sink),
        [("gpt".into(), "claude".into(), "server", 1)]
    );
}

#[tokio::test]
async fn when_both_models_fail_the_template_answers() {
    let openai = openai_failing(500, openai_500()).await;
    let upstreams = Upstreams {
        openai: openai.uri(),
        anthropic: anthropic_answering(anthropic_overloaded()).await,
    };
    let sink = Arc::new(RecordingSink::default());
    let router = router(&upstreams, sink.clone());

    let result = router
        .complete(request(false), RequestContext::default())
        .await
        .unwrap();

    assert_eq!(
        result.response.text(),
        "The support_chat assistant is busy; rules answered."
    );
    assert_eq!(result.response.model, "rules");
    assert_eq!(result.response.usage, Some(Usage::new(0, 0)));
    assert_eq!(result.outcome.fallback_level, 2);
    assert_eq!(result.outcome.warning.as_deref(), Some("level 2 via rules"));
    let kinds: Vec<_> = outcomes(&result.outcome.attempts)
        .into_iter()
        .map(|(m, o)| format!("{m} {}", o.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            "gpt server",
            "gpt server",
            "claude overloaded",
            "claude overloaded",
            "rules ok"
        ]
    );
    assert_eq!(calls(&upstreams.anthropic).await, 2);
    assert_eq!(
        fallbacks(&sink),
        [("gpt".into(), "rules".into(), "server", 2)]
    );
}

#[tokio::test]
async fn when_both_models_fail_the_template_streams() {
    let openai = openai_failing(
        401,
        json!({"error": {"message": "Incorrect API key provided: sk-open***test.",
        "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
    )
    .await;
    let upstreams = Upstreams {
        openai: openai.uri(),
        anthropic: anthropic_answering(anthropic_overloaded()).await,
    };
    let sink = Arc::new(RecordingSink::default());
    let router = router(&upstreams, sink.clone());

    let stream = router
        .stream(request(true), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(&*stream.meta().outcome.model_used, "rules");
    let attempts = outcomes(&stream.meta().outcome.attempts);
    assert_eq!(
        attempts[0],
        ("gpt".into(), AttemptOutcome::Failed(FailureKind::Auth))
    );
    let (text, chunks, summary) = read(stream).await;

    assert_eq!(text, "The support_chat assistant is busy; rules answered.");
    assert!(chunks.len() >= 3, "a few chunks and a finish");
    assert!(chunks.iter().all(|c| c.model == "rules"));
    assert_eq!(summary.fallback_level, 2);
    assert_eq!(summary.usage, Some(Usage::new(0, 0)));
    assert_eq!(summary.warning.as_deref(), Some("level 2 via rules"));
    assert_eq!(calls(&openai).await, 1, "an auth failure is not retried");
    assert_eq!(
        fallbacks(&sink),
        [("gpt".into(), "rules".into(), "auth", 2)]
    );
}

#[tokio::test]
async fn a_stream_cut_mid_answer_is_continued_by_anthropic_from_the_prefill() {
    let chunk = |delta: Value| {
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]})
    };
    let openai = RawServer::start(Reply::Events {
        pieces: vec![
            format!(
                "data: {}\n\n",
                chunk(json!({"role": "assistant", "content": ""}))
            ),
            format!("data: {}\n\n", chunk(json!({"content": "Your parcel"}))),
            format!("data: {}\n\n", chunk(json!({"content": " is in "}))),
        ],
        end: End::Cut,
    })
    .await;
    let upstreams = Upstreams {
        openai: openai.url(),
        anthropic: anthropic_answering(
            ResponseTemplate::new(200)
                .set_body_raw(anthropic_events(&[" Lyon", "."]), "text/event-stream"),
        )
        .await,
    };
    let sink = Arc::new(RecordingSink::default());
    let router = router(&upstreams, sink.clone());

    let stream = router
        .stream(request(true), RequestContext::default())
        .await
        .unwrap();
    assert_eq!(
        &*stream.meta().outcome.model_used,
        "gpt",
        "the primary started the answer"
    );
    let (text, _, summary) = read(stream).await;

    assert_eq!(
        text, "Your parcel is in Lyon.",
        "the continuation joins without a doubled space"
    );
    assert_eq!(&*summary.model_used, "claude");
    assert_eq!(summary.usage, Some(Usage::new(21, 7)));
    assert_eq!(
        outcomes(&summary.attempts),
        [
            (
                "gpt".into(),
                AttemptOutcome::Failed(FailureKind::StreamInterrupted)
            ),
            ("claude".into(), AttemptOutcome::Succeeded),
        ]
    );
    let seen = upstreams.anthropic.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "Where is my parcel?"},
            {"role": "assistant", "content": "Your parcel is in"}
        ]),
        "the partial answer is sent as a trimmed prefill"
    );
}

#[tokio::test]
async fn a_request_anthropic_cannot_express_falls_over_to_the_template() {
    let openai = openai_failing(500, openai_500()).await;
    let upstreams = Upstreams {
        openai: openai.uri(),
        anthropic: anthropic_answering(
            ResponseTemplate::new(200).set_body_json(anthropic_message("never sent")),
        )
        .await,
    };
    let sink = Arc::new(RecordingSink::default());
    let router = router(&upstreams, sink.clone());
    let mut request = request(false);
    request.extra.insert("n".into(), json!(2));

    let result = router
        .complete(request, RequestContext::default())
        .await
        .expect("the template serves what anthropic cannot express");

    assert_eq!(
        result.response.text(),
        "The support_chat assistant is busy; rules answered."
    );
    assert_eq!(result.outcome.fallback_level, 2);
    assert_eq!(
        outcomes(&result.outcome.attempts),
        [
            ("gpt".into(), AttemptOutcome::Failed(FailureKind::Server)),
            ("gpt".into(), AttemptOutcome::Failed(FailureKind::Server)),
            (
                "claude".into(),
                AttemptOutcome::Failed(FailureKind::Unsupported)
            ),
            ("rules".into(), AttemptOutcome::Succeeded),
        ]
    );
    assert_eq!(
        calls(&upstreams.anthropic).await,
        0,
        "the refusal is local: nothing reaches Anthropic"
    );
    let seen = openai.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["n"], 2, "openai was asked for what the caller wanted");
}

#[tokio::test]
async fn a_retired_primary_falls_over_instead_of_failing_the_request() {
    let openai = openai_failing(
        404,
        json!({"error": {"message": "The model `gpt-4o-2024-08-06` does not exist or you do not have access to it.",
                         "type": "invalid_request_error", "param": null, "code": "model_not_found"}}),
    )
    .await;
    let upstreams = Upstreams {
        openai: openai.uri(),
        anthropic: anthropic_answering(
            ResponseTemplate::new(200).set_body_json(anthropic_message("Your parcel is in Lyon.")),
        )
        .await,
    };
    let sink = Arc::new(RecordingSink::default());
    let router = router(&upstreams, sink.clone());

    let result = router
        .complete(request(false), RequestContext::default())
        .await
        .expect("claude answers for the retired primary");

    assert_eq!(result.response.text(), "Your parcel is in Lyon.");
    assert_eq!(result.outcome.fallback_level, 1);
    assert_eq!(
        outcomes(&result.outcome.attempts),
        [
            (
                "gpt".into(),
                AttemptOutcome::Failed(FailureKind::ModelNotFound)
            ),
            ("claude".into(), AttemptOutcome::Succeeded),
        ]
    );
    assert_eq!(result.outcome.attempts[0].status, Some(404));
    assert_eq!(calls(&openai).await, 1, "a missing model is not retried");
    assert_eq!(
        fallbacks(&sink),
        [("gpt".into(), "claude".into(), "model_not_found", 1)]
    );
}
