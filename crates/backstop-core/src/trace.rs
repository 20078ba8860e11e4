//! The per-request trace seam: whoever serves a request may follow its
//! upstream calls one by one — a distributed tracer (the gateway's
//! OpenTelemetry export), an audit log — by putting a [`RequestTrace`] in
//! the request's [`RequestContext`](crate::RequestContext).
//!
//! The Router's [`Recorder`](crate::router) tells it, in one place, when
//! each upstream call starts and how it ended (a stream's call ends when the
//! stream does), which models were skipped and why, and how the request
//! ended. A call may carry headers upstream ([`CallTrace::headers`]: a W3C
//! `traceparent`, say): the Router hands them to the provider in
//! [`Call::headers`](crate::Call::headers), and HTTP providers send them.
//!
//! Nothing here knows a tracing format. A request without a trace costs one
//! `Option` check per call.

use std::fmt;
use std::time::Duration;

use crate::chat::{ChatRequest, ChatResponse, Usage};
use crate::embeddings::EmbeddingsResponse;
use crate::error::{AttemptOutcome, SkipReason};
use crate::events::RequestFinished;
use crate::model::ModelSpec;

/// What kind of upstream operation a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A chat completion, complete or streamed.
    Chat,
    /// An embeddings request.
    Embeddings,
}

impl Operation {
    /// `chat` or `embeddings`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// An upstream call about to start.
#[derive(Debug, Clone, Copy)]
pub struct CallStart<'a> {
    /// The scenario (or single-model route).
    pub scenario: &'a str,
    /// The model called.
    pub model: &'a ModelSpec,
    /// What the call does.
    pub operation: Operation,
    /// The model's index in the order tried (0 = primary).
    pub fallback_level: usize,
    /// Same-model retries before this call (0 = its first call).
    pub retry: u32,
    /// Whether the call streams.
    pub stream: bool,
    /// The chat request sent (for an embeddings call, a stand-in without
    /// content).
    pub request: &'a ChatRequest,
}

/// What a successful call answered.
#[derive(Debug, Clone, Default)]
pub struct ResponseFacts<'a> {
    /// The model the upstream says answered.
    pub model: &'a str,
    /// The upstream's id of the answer.
    pub id: &'a str,
    /// Each choice's finish reason, in choice order.
    pub finish_reasons: Vec<&'a str>,
    /// Token counts, when the upstream reported them.
    pub usage: Option<Usage>,
    /// The text of the answer (choice 0; for a stream, what reached the
    /// caller).
    pub output: Option<&'a str>,
}

impl<'a> ResponseFacts<'a> {
    /// The facts of a complete chat answer.
    pub fn of_chat(response: &'a ChatResponse) -> Self {
        Self {
            model: &response.model,
            id: &response.id,
            finish_reasons: response
                .choices
                .iter()
                .filter_map(|c| c.finish_reason.as_deref())
                .collect(),
            usage: response.usage.clone(),
            output: response
                .choices
                .first()
                .and_then(|c| match &c.message.content {
                    Some(crate::chat::Content::Text(text)) => Some(text.as_str()),
                    _ => None,
                }),
        }
    }

    /// The facts of an embeddings answer.
    pub fn of_embeddings(response: &'a EmbeddingsResponse) -> Self {
        Self {
            model: &response.model,
            usage: response.usage.map(|u| Usage::new(u.prompt_tokens, 0)),
            ..Self::default()
        }
    }
}

/// How an upstream call ended.
#[derive(Debug, Clone)]
pub struct CallEnd<'a> {
    /// `Succeeded`, `Failed(kind)` or `Cancelled` (never a skip).
    pub outcome: AttemptOutcome,
    /// From the start of the call to its end (a stream's last chunk).
    pub duration: Duration,
    /// For a stream that produced output: the time to its first chunk.
    pub first_output: Option<Duration>,
    /// The upstream's HTTP status of a failure, when there was one.
    pub status: Option<u16>,
    /// What the call answered, for a success.
    pub response: Option<ResponseFacts<'a>>,
}

/// Follows one request (see the module docs). Called on the request path:
/// cheap, never blocking.
pub trait RequestTrace: Send + Sync + fmt::Debug {
    /// An upstream call starts; the handle is told how it ended.
    fn call_started(&self, call: &CallStart<'_>) -> Box<dyn CallTrace>;

    /// A model of the chain was not called, for `reason`.
    fn skipped(&self, model: &str, fallback_level: usize, reason: SkipReason) {
        let _ = (model, fallback_level, reason);
    }

    /// The request ended (the same facts as
    /// [`Event::RequestFinished`](crate::Event::RequestFinished)).
    fn finished(&self, finished: &RequestFinished<'_>) {
        let _ = finished;
    }
}

/// One traced upstream call. Told how it ended exactly once; a handle
/// dropped without [`CallTrace::ended`] belongs to a call that could not
/// report (a panic).
pub trait CallTrace: Send + Sync + fmt::Debug {
    /// Headers to send upstream with this call (name, value).
    fn headers(&self) -> &[(String, String)];

    /// The call ended.
    fn ended(self: Box<Self>, end: &CallEnd<'_>);
}

fn _request_trace_is_object_safe(_: &dyn RequestTrace, _: &dyn CallTrace) {}
