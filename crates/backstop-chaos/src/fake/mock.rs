//! The wiremock backend, and wiremock building blocks for other crates'
//! tests.
//!
//! A wiremock fake answers through [`ScheduledResponder`], which runs the
//! same reply planning as the fault server (so error bodies, Retry-After,
//! context windows and prefill behave identically) and sends the result in
//! one piece: wiremock buffers whole bodies, so its streams are not paced
//! and it cannot cut, stall, reset, hang or refuse.
//!
//! For tests that want a plain wiremock `Mock` (the gateway's end-to-end
//! tests), [`error_template`], [`completion_template`] and
//! [`stream_template`] build OpenAI- or Anthropic-shaped responses.

use std::sync::Arc;

use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::reply::{self, ReplyPlan, Step};
use super::{FakeSpec, FakeState};
use crate::behaviour::{Api, Behaviour, ErrorKind};
use crate::timeline::Schedule;

/// Answers a wiremock request as the fake's schedule says.
pub struct ScheduledResponder {
    state: Arc<FakeState>,
}

impl Respond for ScheduledResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        plan_to_template(reply::serve(&self.state, request.url.path(), &request.body))
    }
}

fn plan_to_template(plan: ReplyPlan) -> ResponseTemplate {
    match plan {
        ReplyPlan::Error(error) => {
            let mut template =
                ResponseTemplate::new(error.status).set_body_raw(error.body, "application/json");
            for (name, value) in error.headers {
                template = template.insert_header(name, value.as_str());
            }
            template
        }
        ReplyPlan::Answer(answer) => {
            let mut body = Vec::new();
            let mut delay = answer.delay;
            for step in answer.steps {
                match step {
                    // The whole stream arrives when its last token would have.
                    Step::Wait(d) => delay += d,
                    Step::Send(bytes) => body.extend_from_slice(&bytes),
                    // Validation keeps these off wiremock; if one slips
                    // through a run-time switch, answer what was produced.
                    Step::Abort | Step::Stall => break,
                }
            }
            ResponseTemplate::new(200)
                .set_body_raw(body, answer.content_type)
                .set_delay(delay)
        }
        // Unreachable after validation; a 500 is the closest HTTP-level
        // stand-in if it ever happens.
        ReplyPlan::Reset | ReplyPlan::Hang => ResponseTemplate::new(500),
    }
}

/// Starts a wiremock server that answers every POST to an endpoint path
/// through the fake's schedule.
pub(crate) async fn start(state: Arc<FakeState>) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"(/chat/completions|/messages)/?$"))
        .respond_with(ScheduledResponder { state })
        .mount(&server)
        .await;
    server
}

/// A responder for `api` that follows `schedule` (a timeline or "fail N
/// times, then succeed"), for mounting on a caller's own `MockServer`.
/// Its answers are those of a fake provider with default settings.
pub fn scheduled_responder(api: Api, schedule: Schedule) -> ScheduledResponder {
    ScheduledResponder {
        state: Arc::new(FakeState::new(
            FakeSpec::new("mock", api)
                .schedule(schedule)
                .backend(super::Backend::Wiremock),
        )),
    }
}

fn template_for(api: Api, behaviour: Behaviour, stream: bool) -> ResponseTemplate {
    let state = FakeState::new(
        FakeSpec::new("mock", api).schedule(crate::timeline::Timeline::steady(behaviour)),
    );
    let path = match api {
        Api::OpenAi => "/v1/chat/completions",
        Api::Anthropic => "/v1/messages",
    };
    let body = serde_json::json!({
        "model": "mock",
        "max_tokens": 1024,
        "stream": stream,
        "stream_options": if stream && api == Api::OpenAi { serde_json::json!({"include_usage": true}) } else { serde_json::Value::Null },
        "messages": [{"role": "user", "content": "hello"}]
    });
    plan_to_template(reply::serve(&state, path, body.to_string().as_bytes()))
}

/// An error response in `api`'s real shape (status, JSON body,
/// Retry-After).
pub fn error_template(api: Api, kind: ErrorKind) -> ResponseTemplate {
    template_for(api, Behaviour::Error(kind), false)
}

/// A complete non-streaming answer of the known text, with usage.
pub fn completion_template(api: Api) -> ResponseTemplate {
    template_for(api, Behaviour::Healthy, false)
}

/// A whole SSE stream of the known text (with usage), in one body.
pub fn stream_template(api: Api) -> ResponseTemplate {
    template_for(api, Behaviour::Healthy, true)
}
