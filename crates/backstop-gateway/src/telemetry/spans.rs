//! The spans: a request's SERVER span ([`RequestSpan`], the core
//! [`RequestTrace`] of the request) and one CLIENT span per upstream call
//! ([`ClientCall`]), named and attributed by the OpenTelemetry GenAI
//! semantic conventions; facts the conventions lack are under `backstop.`.
//!
//! Prompts and completions go on the CLIENT spans only with
//! `capture_content = true`.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use backstop_core::{
    AttemptOutcome, CallEnd, CallStart, CallTrace, ChatRequest, Operation, RequestFinished,
    RequestTrace, SkipReason,
};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, TraceFlags, Tracer as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::Span;

use super::Shared;
use super::metrics::CallMetrics;

/// The `http.route` of each door.
fn route(door: &str) -> &'static str {
    match door {
        "chat_completions" => "/v1/chat/completions",
        "messages" => "/v1/messages",
        "responses" => "/v1/responses",
        "embeddings" => "/v1/embeddings",
        _ => "/",
    }
}

/// The request's headers, as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// One request's SERVER span; the [`RequestTrace`] its Router run reports
/// to. The span ends when the last holder lets go: the door once the
/// answer is written, or the stream once it ended.
#[derive(Debug)]
pub struct RequestSpan {
    shared: Arc<Shared>,
    /// Holds the SERVER span, the parent of every CLIENT span.
    cx: Context,
}

impl RequestSpan {
    pub(crate) fn start(shared: Arc<Shared>, headers: &HeaderMap, door: &'static str) -> Arc<Self> {
        let parent =
            TraceContextPropagator::new().extract_with_context(&Context::new(), &Headers(headers));
        let route = route(door);
        let span = shared
            .tracer
            .span_builder(format!("POST {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", route),
                KeyValue::new("backstop.door", door),
            ])
            .start_with_context(&shared.tracer, &parent);
        Arc::new(Self {
            cx: parent.with_span(span),
            shared,
        })
    }

    /// The HTTP status the door answered with.
    pub fn answered(&self, status: StatusCode) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            span.set_status(Status::error(status.to_string()));
        }
    }

    /// Ends the span when the last holder lets go.
    fn end(&self) {
        self.cx.span().end();
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        self.end();
    }
}

impl RequestTrace for RequestSpan {
    fn call_started(&self, call: &CallStart<'_>) -> Box<dyn CallTrace> {
        Box::new(ClientCall::start(&self.shared, &self.cx, call))
    }

    fn skipped(&self, model: &str, fallback_level: usize, reason: SkipReason) {
        self.cx.span().add_event(
            "backstop.skip",
            vec![
                KeyValue::new("backstop.model", model.to_owned()),
                KeyValue::new("backstop.fallback_level", fallback_level as i64),
                KeyValue::new("backstop.skip_reason", reason.as_str()),
            ],
        );
        self.shared.instruments.skipped(model, reason);
    }

    fn finished(&self, finished: &RequestFinished<'_>) {
        let span = self.cx.span();
        let mut attributes = vec![
            KeyValue::new("backstop.scenario", finished.scenario.to_owned()),
            KeyValue::new(
                "backstop.upstream_attempts",
                i64::from(finished.upstream_attempts),
            ),
            KeyValue::new("backstop.stream", finished.stream),
        ];
        if let Some(model) = finished.model_used {
            attributes.push(KeyValue::new("backstop.model_used", model.to_owned()));
        }
        if let Some(level) = finished.fallback_level {
            attributes.push(KeyValue::new("backstop.fallback_level", level as i64));
        }
        if let Some(error) = finished.error {
            attributes.push(KeyValue::new("error.type", error));
            span.set_status(Status::error(error));
        }
        span.set_attributes(attributes);
        self.shared.instruments.finished(finished);
    }
}

/// One upstream call's CLIENT span, and the metrics of the call.
#[derive(Debug)]
pub(crate) struct ClientCall {
    span: Span,
    headers: Vec<(String, String)>,
    metrics: CallMetrics,
    shared: Arc<Shared>,
}

impl ClientCall {
    fn start(shared: &Arc<Shared>, parent: &Context, call: &CallStart<'_>) -> Self {
        let operation = call.operation.as_str();
        let model = call.model;
        let facts = shared.model(&model.id);
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new("gen_ai.provider.name", facts.provider.clone()),
            KeyValue::new("gen_ai.request.model", model.upstream.clone()),
            KeyValue::new("backstop.model", model.id.clone()),
            KeyValue::new("backstop.scenario", call.scenario.to_owned()),
            KeyValue::new("backstop.fallback_level", call.fallback_level as i64),
            KeyValue::new("backstop.retry", i64::from(call.retry)),
        ];
        if call.operation == Operation::Chat {
            attributes.push(KeyValue::new("gen_ai.request.stream", call.stream));
        }
        if let Some(address) = &facts.address {
            attributes.push(KeyValue::new("server.address", address.clone()));
        }
        if let Some(port) = facts.port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if shared.capture_content && call.operation == Operation::Chat {
            attributes.push(KeyValue::new(
                "gen_ai.input.messages",
                input_messages(call.request),
            ));
        }
        let span = shared
            .tracer
            .span_builder(format!("{operation} {}", model.upstream))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&shared.tracer, parent);
        let headers = traceparent(&span);
        Self {
            span,
            headers,
            metrics: CallMetrics {
                operation,
                provider: facts.provider,
                request_model: model.upstream.clone(),
                address: facts.address,
            },
            shared: shared.clone(),
        }
    }
}

/// The W3C `traceparent` (and `tracestate`) of a span, to send upstream.
fn traceparent(span: &Span) -> Vec<(String, String)> {
    let cx = span.span_context();
    if !cx.is_valid() {
        return Vec::new();
    }
    let flags = cx.trace_flags() & TraceFlags::SAMPLED;
    let mut headers = vec![(
        "traceparent".to_owned(),
        format!(
            "00-{}-{}-{:02x}",
            cx.trace_id(),
            cx.span_id(),
            flags.to_u8()
        ),
    )];
    let state = cx.trace_state().header();
    if !state.is_empty() {
        headers.push(("tracestate".to_owned(), state));
    }
    headers
}

impl CallTrace for ClientCall {
    fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    fn ended(mut self: Box<Self>, end: &CallEnd<'_>) {
        let span = &mut self.span;
        span.set_attribute(KeyValue::new(
            "backstop.attempt.outcome",
            end.outcome.as_str(),
        ));
        if let AttemptOutcome::Failed(kind) = end.outcome {
            span.set_attribute(KeyValue::new("error.type", kind.as_str()));
            span.set_status(Status::error(kind.as_str()));
        }
        if let Some(status) = end.status {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(first) = end.first_output {
            span.set_attribute(KeyValue::new(
                "gen_ai.response.time_to_first_chunk",
                first.as_secs_f64(),
            ));
        }
        if let Some(response) = &end.response {
            if !response.model.is_empty() {
                span.set_attribute(KeyValue::new(
                    "gen_ai.response.model",
                    response.model.to_owned(),
                ));
            }
            if !response.id.is_empty() {
                span.set_attribute(KeyValue::new("gen_ai.response.id", response.id.to_owned()));
            }
            if !response.finish_reasons.is_empty() {
                let reasons: Vec<StringValue> = response
                    .finish_reasons
                    .iter()
                    .map(|r| StringValue::from((*r).to_owned()))
                    .collect();
                span.set_attribute(KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    Value::Array(Array::String(reasons)),
                ));
            }
            if let Some(usage) = &response.usage {
                span.set_attribute(KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    i64::from(usage.prompt_tokens),
                ));
                span.set_attribute(KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    i64::from(usage.completion_tokens),
                ));
            }
            if self.shared.capture_content
                && let Some(output) = response.output
            {
                span.set_attribute(KeyValue::new(
                    "gen_ai.output.messages",
                    output_messages(output, response.finish_reasons.first().copied()),
                ));
            }
        }
        self.shared.instruments.call_ended(&self.metrics, end);
        self.span.end();
    }
}

/// `gen_ai.input.messages`: the conversation, as JSON (role and text
/// parts).
fn input_messages(request: &ChatRequest) -> String {
    let messages: Vec<serde_json::Value> = request
        .messages
        .iter()
        .map(|m| {
            serde_json::json!({
                "role": m.role,
                "parts": [{"type": "text", "content": m.text_content()}],
            })
        })
        .collect();
    serde_json::Value::Array(messages).to_string()
}

/// `gen_ai.output.messages`: the answer's text, as JSON.
fn output_messages(text: &str, finish_reason: Option<&str>) -> String {
    serde_json::json!([{
        "role": "assistant",
        "parts": [{"type": "text", "content": text}],
        "finish_reason": finish_reason.unwrap_or(""),
    }])
    .to_string()
}
