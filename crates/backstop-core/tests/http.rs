//! The Router over real HTTP: wiremock upstreams on loopback, a minimal
//! OpenAI-style provider, and assertions on what the caller got and on what
//! each upstream saw (how many attempts, how far apart).

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backstop_core::testing::simple_strategies;
use backstop_core::{
    Call, ChatChunk, ChatRequest, ChatResponse, ChunkStream, FailureKind, MidStreamPolicy,
    ModelSpec, Provider, ProviderError, RequestContext, RoutePolicy, Router, Scenario,
    StrategyContext, StreamItem, SystemClock, Timeouts,
};
use backstop_http::sse::SseDecoder;
use futures::StreamExt;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const ANSWER: &str = "Foxes are small omnivorous mammals.";

/// Just enough of an OpenAI-compatible client to drive the Router over
/// HTTP; the real providers live in plugins/.
struct TestHttpProvider {
    client: reqwest::Client,
    base_url: String,
}

impl TestHttpProvider {
    fn new(base_url: &str) -> Arc<Self> {
        Arc::new(Self {
            client: reqwest::Client::new(),
            base_url: base_url.to_owned(),
        })
    }

    async fn send(&self, call: Call<'_>, stream: bool) -> Result<reqwest::Response, ProviderError> {
        let mut body = serde_json::to_value(call.request).expect("request serializes");
        body["model"] = json!(call.model.upstream);
        body["max_tokens"] = json!(call.max_tokens);
        body["stream"] = json!(stream);
        let response = self
            .client
            .post(format!("{}/chat/completions", self.base_url))
            .json(&body)
            .send()
            .await
            .map_err(|e| ProviderError::new(FailureKind::Connect, e.to_string()))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get("retry-after-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        let body: Value = response.json().await.unwrap_or_default();
        let code = body["error"]["code"].as_str().unwrap_or_default();
        let kind = match (status, code) {
            (_, "context_length_exceeded") => FailureKind::ContextLength,
            (429, _) => FailureKind::RateLimited,
            (500..=599, _) => FailureKind::Server,
            _ => FailureKind::BadRequest,
        };
        let mut error = ProviderError::new(kind, body["error"]["message"].as_str().unwrap_or("?"))
            .with_status(status);
        error.retry_after = retry_after;
        Err(error)
    }
}

#[async_trait]
impl Provider for TestHttpProvider {
    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        let response = self.send(call, false).await?;
        response
            .json()
            .await
            .map_err(|e| ProviderError::new(FailureKind::InvalidResponse, e.to_string()))
    }

    async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let response = self.send(call, true).await?;
        let bytes = response.bytes_stream();
        let state = (bytes, SseDecoder::new(), Vec::new(), false, false);
        let stream = futures::stream::unfold(
            state,
            |(mut bytes, mut decoder, mut events, mut finished, done)| async move {
                if done {
                    return None;
                }
                loop {
                    if !events.is_empty() {
                        let event: backstop_http::sse::SseEvent = events.remove(0);
                        if event.data == "[DONE]" {
                            return None;
                        }
                        let Ok(chunk) = serde_json::from_str::<ChatChunk>(&event.data) else {
                            continue;
                        };
                        finished |= chunk.finish_reason().is_some();
                        return Some((Ok(chunk), (bytes, decoder, events, finished, false)));
                    }
                    match bytes.next().await {
                        Some(Ok(b)) => decoder.feed(&b, &mut events),
                        Some(Err(e)) => {
                            let e =
                                ProviderError::new(FailureKind::StreamInterrupted, e.to_string());
                            return Some((Err(e), (bytes, decoder, events, finished, true)));
                        }
                        None if finished => return None,
                        None => {
                            let e =
                                ProviderError::new(FailureKind::StreamInterrupted, "ended early");
                            return Some((Err(e), (bytes, decoder, events, finished, true)));
                        }
                    }
                }
            },
        );
        Ok(stream.boxed())
    }
}

/// Answers with a template and remembers when each request arrived.
#[derive(Clone)]
struct Timed {
    arrivals: Arc<Mutex<Vec<Instant>>>,
    responses: Arc<Mutex<Vec<ResponseTemplate>>>,
}

impl Timed {
    /// Answers with `responses` in order, repeating the last.
    fn new(responses: Vec<ResponseTemplate>) -> Self {
        Self {
            arrivals: Arc::default(),
            responses: Arc::new(Mutex::new(responses)),
        }
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }
}

impl Respond for Timed {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.arrivals.lock().unwrap().push(Instant::now());
        let mut responses = self.responses.lock().unwrap();
        if responses.len() > 1 {
            responses.remove(0)
        } else {
            responses[0].clone()
        }
    }
}

fn completion(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "upstream-name",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
    }))
}

fn error(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {"message": format!("upstream says {code}"), "type": "error", "code": code}
    }))
}

fn sse(chunks: &[&str], done: bool) -> ResponseTemplate {
    let mut body = Vec::new();
    for (i, text) in chunks.iter().enumerate() {
        let finish = if done && i + 1 == chunks.len() {
            json!("stop")
        } else {
            Value::Null
        };
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]});
        backstop_http::sse::write_data(&mut body, &chunk.to_string());
    }
    if done {
        backstop_http::sse::write_data(&mut body, "[DONE]");
    }
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_bytes(body)
}

async fn upstream(timed: &Timed) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(timed.clone())
        .mount(&server)
        .await;
    server
}

fn router(upstreams: &[(&str, &str, u32)], policy: RoutePolicy) -> Router {
    let specs: Vec<ModelSpec> = upstreams
        .iter()
        .map(|(id, _, window)| {
            let mut m = ModelSpec::new(*id, *id);
            m.upstream = format!("{id}-upstream");
            m.context_window = *window;
            m
        })
        .collect();
    let chain = specs.iter().map(|m| m.id.clone()).collect();
    let mut builder = Router::builder(StrategyContext::new(specs, SystemClock::shared()));
    for (id, url, _) in upstreams {
        builder = builder.provider(*id, TestHttpProvider::new(url));
    }
    builder
        .scenario(
            Scenario {
                name: "chat".into(),
                chain,
                policy,
            },
            simple_strategies(),
        )
        .build()
        .expect("router builds")
}

fn request() -> ChatRequest {
    let mut r = ChatRequest::user("chat", "What are foxes?");
    r.extra.insert("temperature".into(), json!(0.3));
    r
}

#[tokio::test]
async fn a_500_is_retried_once_after_a_backoff_then_the_backup_answers() {
    let primary = Timed::new(vec![error(500, "server_error")]);
    let backup = Timed::new(vec![completion(ANSWER)]);
    let (p, b) = (upstream(&primary).await, upstream(&backup).await);
    let router = router(
        &[("a", &p.uri(), 128_000), ("b", &b.uri(), 128_000)],
        RoutePolicy::default(),
    );

    let r = router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();

    assert_eq!(r.response.text(), ANSWER);
    assert_eq!(r.response.model, "b");
    assert_eq!(r.response.usage.as_ref().unwrap().total_tokens, 15);
    assert_eq!(r.outcome.fallback_level, 1);
    let seen = primary.arrivals();
    assert_eq!(seen.len(), 2, "exactly one same-model retry");
    let gap = seen[1] - seen[0];
    assert!(
        gap >= Duration::from_millis(25),
        "backoff before the retry: {gap:?}"
    );
    assert_eq!(backup.arrivals().len(), 1);
    // The upstream got the caller's fields and its own model name.
    let sent: Value = b.received_requests().await.unwrap()[0].body_json().unwrap();
    assert_eq!(sent["model"], "b-upstream");
    assert_eq!(sent["temperature"], 0.3);
}

#[tokio::test]
async fn a_429_with_a_short_retry_after_is_retried_after_exactly_that_wait() {
    let primary = Timed::new(vec![
        error(429, "rate_limit_exceeded").insert_header("retry-after-ms", "300"),
        completion(ANSWER),
    ]);
    let backup = Timed::new(vec![completion("backup")]);
    let (p, b) = (upstream(&primary).await, upstream(&backup).await);
    let router = router(
        &[("a", &p.uri(), 128_000), ("b", &b.uri(), 128_000)],
        RoutePolicy::default(),
    );

    let r = router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();

    assert_eq!(&*r.outcome.model_used, "a");
    let seen = primary.arrivals();
    assert_eq!(seen.len(), 2);
    assert!(seen[1] - seen[0] >= Duration::from_millis(300));
    assert!(backup.arrivals().is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_retried_once_then_the_backup_answers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let backup = Timed::new(vec![completion(ANSWER)]);
    let b = upstream(&backup).await;
    let router = router(
        &[("a", &refused, 128_000), ("b", &b.uri(), 128_000)],
        RoutePolicy::default(),
    );

    let r = router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();

    assert_eq!(&*r.outcome.model_used, "b");
    let trail: Vec<_> = r
        .outcome
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(trail, ["connect", "connect", "ok"]);
}

#[tokio::test]
async fn a_hung_upstream_times_out_once_and_is_not_retried() {
    let primary = Timed::new(vec![
        completion("too late").set_delay(Duration::from_secs(5)),
    ]);
    let backup = Timed::new(vec![completion(ANSWER)]);
    let (p, b) = (upstream(&primary).await, upstream(&backup).await);
    let policy = RoutePolicy {
        timeouts: Timeouts {
            attempt: Duration::from_millis(300),
            ..Timeouts::default()
        },
        ..RoutePolicy::default()
    };
    let router = router(
        &[("a", &p.uri(), 128_000), ("b", &b.uri(), 128_000)],
        policy,
    );

    let started = Instant::now();
    let r = router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();

    assert_eq!(&*r.outcome.model_used, "b");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(primary.arrivals().len(), 1);
    assert_eq!(r.outcome.attempts[0].outcome.as_str(), "timeout");
}

#[tokio::test]
async fn a_context_length_error_goes_to_the_larger_window_only() {
    let small = Timed::new(vec![error(400, "context_length_exceeded")]);
    let same = Timed::new(vec![completion("same")]);
    let large = Timed::new(vec![completion(ANSWER)]);
    let (s, m, l) = (
        upstream(&small).await,
        upstream(&same).await,
        upstream(&large).await,
    );
    let router = router(
        &[
            ("small", &s.uri(), 8_000),
            ("same", &m.uri(), 8_000),
            ("large", &l.uri(), 200_000),
        ],
        RoutePolicy::default(),
    );

    let r = router
        .complete(request(), RequestContext::default())
        .await
        .unwrap();

    assert_eq!(&*r.outcome.model_used, "large");
    assert_eq!(small.arrivals().len(), 1);
    assert!(same.arrivals().is_empty());
}

#[tokio::test]
async fn a_plain_400_is_returned_without_trying_the_backup() {
    let primary = Timed::new(vec![error(400, "invalid_value")]);
    let backup = Timed::new(vec![completion(ANSWER)]);
    let (p, b) = (upstream(&primary).await, upstream(&backup).await);
    let router = router(
        &[("a", &p.uri(), 128_000), ("b", &b.uri(), 128_000)],
        RoutePolicy::default(),
    );

    let err = router
        .complete(request(), RequestContext::default())
        .await
        .unwrap_err();

    assert!(
        err.to_string().contains("upstream says invalid_value"),
        "{err}"
    );
    assert_eq!(primary.arrivals().len(), 1);
    assert!(backup.arrivals().is_empty());
}

#[tokio::test]
async fn a_stream_cut_mid_answer_is_restarted_on_the_backup_without_repeating_words() {
    let primary = Timed::new(vec![sse(&["Foxes", " are", " small"], false)]);
    let backup = Timed::new(vec![sse(
        &["Foxes", " are", " small", " omnivorous", " mammals."],
        true,
    )]);
    let (p, b) = (upstream(&primary).await, upstream(&backup).await);
    let policy = RoutePolicy {
        mid_stream: MidStreamPolicy::Restart,
        ..RoutePolicy::default()
    };
    let router = router(
        &[("a", &p.uri(), 128_000), ("b", &b.uri(), 128_000)],
        policy,
    );

    let mut req = request();
    req.stream = Some(true);
    let mut stream = router.stream(req, RequestContext::default()).await.unwrap();
    assert_eq!(&*stream.meta().outcome.model_used, "a");
    let mut text = String::new();
    let mut last = None;
    while let Some(item) = stream.next().await {
        match item {
            StreamItem::Chunk(c) => text.push_str(c.content().unwrap_or_default()),
            other => last = Some(other),
        }
    }
    assert_eq!(text, ANSWER);
    let Some(StreamItem::Done(summary)) = last else {
        panic!("{last:?}");
    };
    assert_eq!(&*summary.model_used, "b");
    let trail: Vec<_> = summary
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(trail, ["stream_interrupted", "ok"]);
    assert_eq!(primary.arrivals().len(), 1);
    assert_eq!(backup.arrivals().len(), 1);
}
