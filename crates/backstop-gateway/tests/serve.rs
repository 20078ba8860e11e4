//! The gateway end to end: the real server on an ephemeral loopback port,
//! in front of scripted providers, called with reqwest.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backstop_core::testing::{Piece, Script, ScriptedProvider, Unlimited, simple_strategies};
use backstop_core::{
    FailureKind, MidStreamPolicy, ModelSpec, Provider, RoutePolicy, Router, Scenario, Strategies,
    StrategyContext, SystemClock,
};
use backstop_gateway::auth::ApiKeys;
use backstop_gateway::server::{ServeOptions, serve};
use backstop_gateway::{Gateway, GatewayOptions};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const ANSWER: &str = "Foxes are small omnivorous mammals.";

struct Running {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.done).await;
    }
}

async fn start(router: Router, options: GatewayOptions) -> Running {
    start_serving(router, options, ServeOptions::default()).await
}

async fn start_serving(
    router: Router,
    options: GatewayOptions,
    serve_options: ServeOptions,
) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let gateway = Gateway::new(router, options);
    let app = gateway.http();
    let (stop, stopped) = oneshot::channel::<()>();
    let serve_options = ServeOptions {
        header_read_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(2),
        ..serve_options
    };
    let done = tokio::spawn(serve(listener, app, serve_options, async {
        let _ = stopped.await;
    }));
    Running {
        base,
        stop: Some(stop),
        done,
    }
}

fn router_with(
    models: Vec<(&str, Arc<dyn Provider>)>,
    policy: RoutePolicy,
    strategies: Strategies,
) -> Router {
    let specs: Vec<ModelSpec> = models
        .iter()
        .map(|(id, _)| ModelSpec::new(*id, *id))
        .collect();
    let chain = specs.iter().map(|m| m.id.clone()).collect();
    let mut b = Router::builder(StrategyContext::new(specs, SystemClock::shared()));
    for (id, p) in models {
        b = b.provider(id, p);
    }
    b.scenario(
        Scenario {
            name: "chat".into(),
            chain,
            policy,
        },
        strategies.clone(),
    )
    .single_model_routes(policy, strategies)
    .build()
    .unwrap()
}

fn two(a: Arc<ScriptedProvider>, b: Arc<ScriptedProvider>) -> Router {
    router_with(
        vec![("primary", a), ("backup", b)],
        RoutePolicy::default(),
        simple_strategies(),
    )
}

fn body(stream: bool) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "What are foxes?"}], "stream": stream,
           "stream_options": {"include_usage": true}})
}

async fn post(base: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Reads an SSE body into its `data:` payloads.
async fn events(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn a_healthy_answer_carries_the_model_and_the_backstop_object() {
    let gw = start(
        two(
            ScriptedProvider::always(Script::reply(ANSWER)),
            ScriptedProvider::always(Script::reply("b")),
        ),
        GatewayOptions::default(),
    )
    .await;
    let r = post(&gw.base, &body(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backstop-model"], "primary");
    assert_eq!(r.headers()["x-backstop-fallback-level"], "0");
    assert_eq!(r.headers()["x-backstop-attempts"], "1");
    assert!(r.headers().contains_key("x-request-id"));
    assert!(!r.headers().contains_key("x-backstop-warning"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "primary");
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(v["backstop"]["model_used"], "primary");
    assert_eq!(v["backstop"]["fallback_level"], 0);
    assert_eq!(v["backstop"]["attempts"][0]["kind"], "ok");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_failover_is_annotated_in_headers_and_body() {
    let primary = ScriptedProvider::always(Script::fail(FailureKind::Auth));
    let gw = start(
        two(primary, ScriptedProvider::always(Script::reply(ANSWER))),
        GatewayOptions::default(),
    )
    .await;
    let r = post(&gw.base, &body(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backstop-model"], "backup");
    assert_eq!(r.headers()["x-backstop-fallback-level"], "1");
    assert_eq!(r.headers()["x-backstop-attempts"], "2");
    let warning = r.headers()["x-backstop-warning"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(warning, "level 1 via backup");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "backup");
    assert_eq!(v["backstop"]["warning"], "level 1 via backup");
    assert_eq!(v["backstop"]["attempts"][0]["kind"], "auth");
    assert_eq!(v["backstop"]["attempts"][0]["status"], 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stream_ends_with_the_backstop_object_usage_and_done() {
    let gw = start(
        two(
            ScriptedProvider::always(Script::fail(FailureKind::Server)),
            ScriptedProvider::always(Script::reply(ANSWER)),
        ),
        GatewayOptions::default(),
    )
    .await;
    let r = post(&gw.base, &body(true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-backstop-model"], "backup");
    let events = events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(streamed_text(&events), ANSWER);
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["backstop"]["model_used"], "backup");
    assert_eq!(last["backstop"]["fallback_level"], 1);
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["model"], "backup");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn usage_is_left_out_of_a_stream_unless_asked_for() {
    let gw = start(
        two(
            ScriptedProvider::always(Script::reply(ANSWER)),
            ScriptedProvider::always(Script::reply("b")),
        ),
        GatewayOptions::default(),
    )
    .await;
    let mut b = body(true);
    b.as_object_mut().unwrap().remove("stream_options");
    let events = events(post(&gw.base, &b).await).await;
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "{events:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stream_cut_under_the_error_policy_ends_with_an_in_band_error_and_no_done() {
    let policy = RoutePolicy {
        mid_stream: MidStreamPolicy::Error,
        ..RoutePolicy::default()
    };
    let router = router_with(
        vec![
            (
                "primary",
                ScriptedProvider::always(Script::cut_after(ANSWER, 2)),
            ),
            ("backup", ScriptedProvider::always(Script::reply(ANSWER))),
        ],
        policy,
        simple_strategies(),
    );
    let gw = start(router, GatewayOptions::default()).await;
    let events = events(post(&gw.base, &body(true)).await).await;
    assert_ne!(events.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_aborted");
    assert_eq!(
        last["backstop"]["attempts"][0]["kind"],
        "stream_interrupted"
    );
    assert_eq!(streamed_text(&events), "Foxes are");
    gw.shutdown().await;
}

#[tokio::test]
async fn every_model_failing_is_a_503_with_the_trail() {
    let gw = start(
        two(
            ScriptedProvider::always(Script::fail(FailureKind::Server)),
            ScriptedProvider::always(Script::fail(FailureKind::Timeout)),
        ),
        GatewayOptions::default(),
    )
    .await;
    for stream in [false, true] {
        let r = post(&gw.base, &body(stream)).await;
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "all_models_failed");
        assert_eq!(v["error"]["type"], "server_error");
        let kinds: Vec<&str> = v["backstop"]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap())
            .collect();
        // The first request retries the failing model once; by the second
        // it has failed twice in a row, so it is not retried again.
        let expected: &[&str] = if stream {
            &["server", "timeout"]
        } else {
            &["server", "server", "timeout"]
        };
        assert_eq!(kinds, expected);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("first cause: server")
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_rejected_request_returns_the_upstreams_4xx_and_reason() {
    let gw = start(
        two(
            ScriptedProvider::always(Script::fail(FailureKind::ContentPolicy)),
            ScriptedProvider::always(Script::reply(ANSWER)),
        ),
        GatewayOptions::default(),
    )
    .await;
    let r = post(&gw.base, &body(false)).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "content_policy_violation");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scripted content_policy")
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn keys_are_required_when_configured() {
    let options = GatewayOptions {
        keys: ApiKeys::from_list("sk-test-1,sk-test-2"),
        ..GatewayOptions::default()
    };
    let gw = start(
        two(
            ScriptedProvider::always(Script::reply(ANSWER)),
            ScriptedProvider::always(Script::reply("b")),
        ),
        options,
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gw.base);
    let r = client.post(&url).json(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let text = r.text().await.unwrap();
    assert!(!text.contains("sk-wrong") && !text.contains("sk-test"));
    let r = client
        .post(&url)
        .bearer_auth("sk-test-2")
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/v1/models", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(format!("{}/healthz", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "health checks need no key");
    gw.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_garbage_gets_400() {
    let options = GatewayOptions {
        body_limit: 1024,
        ..GatewayOptions::default()
    };
    let gw = start(
        two(
            ScriptedProvider::always(Script::reply(ANSWER)),
            ScriptedProvider::always(Script::reply("b")),
        ),
        options,
    )
    .await;
    let big = json!({"model": "chat", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let r = post(&gw.base, &big).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");

    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.base))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let r = post(&gw.base, &json!({"model": "chat", "messages": []})).await;
    assert_eq!(r.status(), 400);
    let r = post(
        &gw.base,
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chat, primary, backup")
    );
    gw.shutdown().await;
}

/// Reads from `stream` until the end of the response headers (or EOF).
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408() {
    use tokio::io::AsyncWriteExt;
    let options = GatewayOptions {
        body_read_timeout: Duration::from_millis(200),
        ..GatewayOptions::default()
    };
    let gw = start(
        two(
            ScriptedProvider::always(Script::reply(ANSWER)),
            ScriptedProvider::always(Script::reply("b")),
        ),
        options,
    )
    .await;
    let address = gw.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // Headers promise 100 bytes; only 10 come.
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\": ",
        )
        .await
        .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream))
        .await
        .expect("the gateway answers a stalled body instead of waiting forever");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_closes() {
    use tokio::io::AsyncWriteExt;
    let gw = start_serving(
        two(
            ScriptedProvider::always(Script::reply(ANSWER)),
            ScriptedProvider::always(Script::reply("b")),
        ),
        GatewayOptions::default(),
        ServeOptions {
            max_connections: 1,
            ..ServeOptions::default()
        },
    )
    .await;
    let address = gw.base.trim_start_matches("http://").to_owned();
    // The first connection takes the only slot and keeps it (keep-alive).
    let mut first = tokio::net::TcpStream::connect(&address).await.unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut first).await.starts_with("HTTP/1.1 200"));

    // The second one connects (the kernel's backlog) but is not served.
    let mut second = tokio::net::TcpStream::connect(&address).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(300), read_head(&mut second)).await;
    assert!(waiting.is_err(), "served past the limit: {waiting:?}");

    // Closing the first frees the slot and the second is answered.
    drop(first);
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut second))
        .await
        .expect("the waiting connection is served once a slot frees");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_caller_leaving_mid_stream_cancels_the_upstream_call() {
    let stalled = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Text("Foxes".into()),
        Piece::Wait(Duration::from_millis(20)),
        Piece::Text(" are".into()),
        Piece::Stall,
    ]));
    let budget = Arc::new(Unlimited::default());
    let strategies = Strategies {
        budget: budget.clone(),
        ..simple_strategies()
    };
    let router = router_with(
        vec![("primary", stalled)],
        RoutePolicy::default(),
        strategies,
    );
    let gw = start(router, GatewayOptions::default()).await;
    let r = post(&gw.base, &body(true)).await;
    let mut bytes = r.bytes_stream();
    let first = bytes.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("Foxes"));
    assert_eq!(
        budget.open_reservations(),
        1,
        "the upstream call is in flight"
    );
    drop(bytes);
    // The server notices the closed connection and drops the stream, which
    // cancels the call and releases its budget.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while budget.open_reservations() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream call was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn introspection_endpoints_answer() {
    let gw = start(
        two(
            ScriptedProvider::always(Script::reply(ANSWER)),
            ScriptedProvider::always(Script::reply("b")),
        ),
        GatewayOptions::default(),
    )
    .await;
    post(&gw.base, &body(false)).await;
    let client = reqwest::Client::new();
    let models: Value = client
        .get(format!("{}/v1/models", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat", "primary", "backup"]);
    assert_eq!(
        models["data"][0]["backstop"]["chain"],
        json!(["primary", "backup"])
    );
    assert_eq!(
        models["data"][0]["backstop"]["doors"],
        json!(["chat_completions", "messages", "responses"])
    );
    let r = client
        .get(format!("{}/readyz", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = client
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // One breaker instance serves `chat` and the single-model routes: its
    // circuits are exported once, under the default scope.
    assert_eq!(
        metrics
            .matches(
                "backstop_circuit_state{scope=\"default\",model=\"primary\",state=\"closed\"} 1"
            )
            .count(),
        1,
        "{metrics}"
    );
    assert!(
        metrics.contains("backstop_latency_estimate_seconds{model=\"primary\",kind=\"total\"}"),
        "{metrics}"
    );
    let status: Value = client
        .get(format!("{}/v1/backstop/status", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["models"][0]["id"], "primary");
    assert_eq!(
        status["models"][0]["health"]["always_admit"]["state"],
        "closed"
    );
    assert!(
        status["models"][0]["latency_ms"]["total"]
            .as_f64()
            .is_some()
    );
    assert_eq!(
        status["scenarios"][0]["chain"],
        json!(["primary", "backup"])
    );
    assert_eq!(
        status["scenarios"][0]["doors"],
        json!(["chat_completions", "messages", "responses"])
    );
    let r = client
        .get(format!("{}/nope", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_stream_finish() {
    let slow = ScriptedProvider::always(Script::Pieces(vec![
        Piece::Text("Foxes".into()),
        Piece::Wait(Duration::from_millis(300)),
        Piece::Text(" are".into()),
        Piece::Finish,
    ]));
    let router = router_with(
        vec![("primary", slow)],
        RoutePolicy::default(),
        simple_strategies(),
    );
    let gw = start(router, GatewayOptions::default()).await;
    let base = gw.base.clone();
    let r = post(&base, &body(true)).await;
    let reading = tokio::spawn(events(r));
    tokio::time::sleep(Duration::from_millis(50)).await;
    gw.shutdown().await;
    let events = reading.await.unwrap();
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(streamed_text(&events), "Foxes are");
    // New connections are refused once shut down.
    assert!(
        reqwest::Client::new()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );
}
