//! OpenTelemetry export through the real gateway over HTTP: an OTLP
//! receiver inside the test (an HTTP server on 127.0.0.1 decoding the
//! exporter's protobuf with `opentelemetry-proto`), wiremock upstreams, and
//! `backstop serve` exporting to it.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use support::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// What the receiver got.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    metrics: Vec<String>,
}

/// An OTLP/HTTP receiver on 127.0.0.1; stops when dropped.
struct Receiver {
    url: String,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let traces = received.clone();
        let metrics = received.clone();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(move |body: Bytes| async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP traces");
                    let mut got = traces.lock().unwrap_or_else(PoisonError::into_inner);
                    for resource in request.resource_spans {
                        for scope in resource.scope_spans {
                            got.spans.extend(scope.spans);
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }),
            )
            .route(
                "/v1/metrics",
                post(move |body: Bytes| async move {
                    let request = ExportMetricsServiceRequest::decode(body).expect("OTLP metrics");
                    let mut got = metrics.lock().unwrap_or_else(PoisonError::into_inner);
                    for resource in request.resource_metrics {
                        for scope in resource.scope_metrics {
                            got.metrics
                                .extend(scope.metrics.into_iter().map(|m| m.name));
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            received,
            task,
        }
    }

    async fn wait_for(&self, what: &str, ready: impl Fn(&Received) -> bool) {
        wait_for(&self.received, what, ready).await;
    }

    fn spans(&self) -> Vec<Span> {
        spans(&self.received)
    }
}

/// Waits (at most 20 s) until `ready` holds of what was received.
async fn wait_for(received: &Mutex<Received>, what: &str, ready: impl Fn(&Received) -> bool) {
    for _ in 0..200 {
        if ready(&received.lock().unwrap_or_else(PoisonError::into_inner)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the receiver never got {what}");
}

fn spans(received: &Mutex<Received>) -> Vec<Span> {
    received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .spans
        .clone()
}

/// An OTLP/gRPC receiver on 127.0.0.1 (tonic's server with the
/// collector's generated services); stops when dropped.
struct GrpcReceiver {
    url: String,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct GrpcTraces(Arc<Mutex<Received>>);
struct GrpcMetrics(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                got.spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcMetrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                got.metrics
                    .extend(scope.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl GrpcReceiver {
    async fn start() -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcTraces(received.clone())))
            .add_service(MetricsServiceServer::new(GrpcMetrics(received.clone())));
        let task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        Self {
            url,
            received,
            task,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Any::StringValue(s)) => s.clone(),
        other => panic!("{}: `{key}` is {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Any::IntValue(n)) => *n,
        other => panic!("{}: `{key}` is {other:?}", span.name),
    }
}

fn telemetry_config(primary: &str, backup: &str, receiver: &Receiver, extra: &str) -> String {
    let mut toml = config(
        &[
            ("primary", openai_provider(primary)),
            ("backup", openai_provider(backup)),
        ],
        &[model("primary"), model("backup")],
        "",
        "",
    );
    toml.push_str(&format!(
        "\n[telemetry]\notlp_endpoint = \"{}\"\nexport_interval_ms = 200\n{extra}\n",
        receiver.url
    ));
    toml
}

/// Batches spans every 100 ms instead of 5 s, so the test need not wait.
const FAST_BATCHES: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "100")];

#[tokio::test]
async fn a_request_that_fell_over_once_exports_two_client_spans_under_the_callers_trace() {
    let receiver = Receiver::start().await;
    let primary = openai_upstream(vec![openai_error(
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided",
    )])
    .await;
    let backup = openai_upstream(vec![completion(ANSWER)]).await;
    let toml = telemetry_config(&primary.uri(), &backup.uri(), &receiver, "");
    let gw = Backstop::start(&toml, &FAST_BATCHES);

    let response = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-backstop-fallback-level"], "1");

    receiver
        .wait_for("a SERVER span and two CLIENT spans", |r| {
            r.spans
                .iter()
                .filter(|s| s.kind == SpanKind::Client as i32)
                .count()
                >= 2
                && r.spans.iter().any(|s| s.kind == SpanKind::Server as i32)
        })
        .await;
    let spans = receiver.spans();
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(servers.len(), 1, "{spans:#?}");
    let server = servers[0];
    assert_eq!(hex(&server.trace_id), TRACE_ID);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(server.name, "POST /v1/chat/completions");
    assert_eq!(text(server, "backstop.scenario"), "chat");
    assert_eq!(text(server, "backstop.model_used"), "backup");
    assert_eq!(int(server, "backstop.fallback_level"), 1);
    assert_eq!(int(server, "http.response.status_code"), 200);

    let mut clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    clients.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(clients.len(), 2, "{clients:#?}");
    for client in &clients {
        assert_eq!(hex(&client.trace_id), TRACE_ID);
        assert_eq!(client.parent_span_id, server.span_id);
        assert_eq!(text(client, "gen_ai.operation.name"), "chat");
        assert_eq!(text(client, "gen_ai.provider.name"), "openai");
        assert_eq!(text(client, "server.address"), "127.0.0.1");
        assert!(
            attr(client, "gen_ai.input.messages").is_none()
                && attr(client, "gen_ai.output.messages").is_none(),
            "content is off by default: {client:#?}"
        );
    }
    let (failed, answered) = (clients[0], clients[1]);
    assert_eq!(failed.name, "chat primary-upstream");
    assert_eq!(text(failed, "gen_ai.request.model"), "primary-upstream");
    assert_eq!(text(failed, "error.type"), "auth");
    assert_eq!(text(failed, "backstop.attempt.outcome"), "auth");
    assert_eq!(int(failed, "backstop.fallback_level"), 0);
    assert_eq!(int(failed, "http.response.status_code"), 401);

    assert_eq!(answered.name, "chat backup-upstream");
    assert_eq!(text(answered, "gen_ai.request.model"), "backup-upstream");
    assert_eq!(
        text(answered, "gen_ai.response.model"),
        "gpt-4o-mini-2024-07-18"
    );
    assert_eq!(text(answered, "gen_ai.response.id"), "chatcmpl-abc");
    assert_eq!(text(answered, "backstop.attempt.outcome"), "ok");
    assert_eq!(int(answered, "backstop.fallback_level"), 1);
    assert_eq!(int(answered, "gen_ai.usage.input_tokens"), 12);
    assert_eq!(int(answered, "gen_ai.usage.output_tokens"), 7);
    assert!(attr(answered, "error.type").is_none());
    match attr(answered, "gen_ai.response.finish_reasons") {
        Some(Any::ArrayValue(a)) => assert_eq!(
            a.values
                .iter()
                .filter_map(|v| v.value.clone())
                .collect::<Vec<_>>(),
            vec![Any::StringValue("stop".into())]
        ),
        other => panic!("finish reasons: {other:?}"),
    }

    // Each upstream got the traceparent of its own CLIENT span.
    for (upstream, client) in [(&primary, failed), (&backup, answered)] {
        let requests = upstream.received_requests().await.unwrap();
        assert_eq!(requests.len(), 1);
        let sent = requests[0]
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(
            sent,
            Some(format!("00-{TRACE_ID}-{}-01", hex(&client.span_id)))
        );
    }

    // Metrics arrive too.
    receiver
        .wait_for("the GenAI and fallback metrics", |r| {
            [
                "gen_ai.client.operation.duration",
                "gen_ai.client.token.usage",
                "backstop.fallbacks",
                "backstop.requests",
                "backstop.circuit.state",
            ]
            .iter()
            .all(|name| r.metrics.iter().any(|m| m == name))
        })
        .await;
}

#[tokio::test]
async fn content_goes_on_the_spans_only_when_enabled_and_streams_end_their_span_at_the_end() {
    let receiver = Receiver::start().await;
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    let toml = telemetry_config(
        &primary.uri(),
        &backup.uri(),
        &receiver,
        "capture_content = true",
    );
    let gw = Backstop::start(&toml, &FAST_BATCHES);
    let response = support::post(&gw, &body(true)).await;
    assert_eq!(response.status(), 200);
    let text_streamed = streamed_text(&events(response).await);
    assert_eq!(text_streamed, ANSWER);

    receiver
        .wait_for("a CLIENT span", |r| {
            r.spans.iter().any(|s| s.kind == SpanKind::Client as i32)
        })
        .await;
    let spans = receiver.spans();
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .unwrap();
    assert!(text(client, "gen_ai.input.messages").contains("What are foxes?"));
    assert!(text(client, "gen_ai.output.messages").contains(ANSWER));
    assert!(matches!(
        attr(client, "gen_ai.response.time_to_first_chunk"),
        Some(Any::DoubleValue(_))
    ));
    // No traceparent from the caller: the SERVER span is a root.
    receiver
        .wait_for("the SERVER span", |r| {
            r.spans.iter().any(|s| s.kind == SpanKind::Server as i32)
        })
        .await;
    let spans = receiver.spans();
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert!(server.parent_span_id.is_empty());
    assert_eq!(client.parent_span_id, server.span_id);
    assert!(server.end_time_unix_nano >= client.end_time_unix_nano);
}

#[tokio::test]
async fn grpc_export_carries_the_same_spans_and_metrics() {
    let receiver = GrpcReceiver::start().await;
    let primary = openai_upstream(vec![openai_error(
        503,
        "server_error",
        "overloaded",
        "The server is overloaded",
    )])
    .await;
    let backup = healthy_upstream().await;
    let mut toml = config(
        &[
            ("primary", openai_provider(&primary.uri())),
            ("backup", openai_provider(&backup.uri())),
        ],
        &[model("primary"), model("backup")],
        "retries = { same_model = 0 }",
        "",
    );
    toml.push_str(&format!(
        "\n[telemetry]\notlp_endpoint = \"{}\"\nprotocol = \"grpc\"\nexport_interval_ms = 200\n",
        receiver.url
    ));
    let gw = Backstop::start(&toml, &FAST_BATCHES);
    let response = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    wait_for(&receiver.received, "the spans over gRPC", |r| {
        r.spans
            .iter()
            .filter(|s| s.kind == SpanKind::Client as i32)
            .count()
            >= 2
            && r.spans.iter().any(|s| s.kind == SpanKind::Server as i32)
    })
    .await;
    let spans = spans(&receiver.received);
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    let mut clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    clients.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(clients.len(), 2, "{clients:#?}");
    assert!(clients.iter().all(|c| c.parent_span_id == server.span_id));
    assert_eq!(text(clients[0], "error.type"), "overloaded");
    assert_eq!(int(clients[0], "http.response.status_code"), 503);
    assert_eq!(text(clients[1], "backstop.attempt.outcome"), "ok");
    wait_for(&receiver.received, "the metrics over gRPC", |r| {
        r.metrics
            .iter()
            .any(|m| m == "gen_ai.client.operation.duration")
    })
    .await;
}
