//! From a request and a behaviour to the exact bytes and pauses of the
//! reply, independent of the server that sends them.
//!
//! A reply is a [`ReplyPlan`]: an error with a status and body, a reset, a
//! hang, or an answer made of [`Step`]s (wait, send bytes, cut, stall). The
//! fault server plays the steps in real time; wiremock sends them in one
//! piece.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop_core::{ChatRequest, PROBE_MAX_TOKENS};
use bytes::Bytes;
use serde_json::Value;

use super::{FakeState, anthropic, openai};
use crate::answer::{FLAGGED_MARKER, KNOWN_TEXT, continuation, prefill_of, tokens};
use crate::behaviour::{Api, Behaviour, ErrorKind, Prefill};

/// Path suffixes the fakes answer: OpenAI's and Anthropic's endpoints,
/// under any prefix (`/v1/chat/completions`, `/chat/completions`...).
pub const ENDPOINT_PATHS: [&str; 2] = ["/chat/completions", "/messages"];

/// An error status and JSON body.
pub(crate) struct ErrorBody {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

/// An HTTP error reply.
pub(crate) struct ErrorReply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Vec<u8>,
}

/// One step of an answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Pause.
    Wait(Duration),
    /// Send these bytes (flushed on their own).
    Send(Bytes),
    /// Close the connection now, without finishing the body.
    Abort,
    /// Send nothing more, keep the connection open until `hold_max`, then
    /// close it.
    Stall,
}

/// A 200 answer.
pub(crate) struct Answer {
    /// The `content-type`.
    pub(crate) content_type: &'static str,
    /// Pause before the status line and headers.
    pub(crate) delay: Duration,
    /// Set for non-streaming answers so a cut body is detectable.
    pub(crate) content_length: Option<usize>,
    /// The body, step by step.
    pub(crate) steps: Vec<Step>,
}

/// What to do with one request.
pub(crate) enum ReplyPlan {
    /// An HTTP error.
    Error(ErrorReply),
    /// An answer (maybe faulty in its body).
    Answer(Answer),
    /// Reset the connection before any header.
    Reset,
    /// Never answer (until `hold_max`, then reset).
    Hang,
}

/// The content of an answer, before it is put on the wire.
pub(crate) struct AnswerParts {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) created: u64,
    pub(crate) tokens: Vec<String>,
    /// Cut short by the request's `max_tokens`.
    pub(crate) truncated: bool,
    pub(crate) prompt_tokens: u32,
    /// OpenAI streams only: the caller asked for a usage chunk.
    pub(crate) include_usage: bool,
}

impl AnswerParts {
    pub(crate) fn text(&self) -> String {
        self.tokens.concat()
    }

    pub(crate) fn completion_tokens(&self) -> u32 {
        u32::try_from(self.tokens.len()).unwrap_or(u32::MAX)
    }
}

/// A stream's events, ready to be paced.
pub(crate) struct StreamParts {
    /// Sent with the first token (role chunk / message_start...).
    pub(crate) head: Vec<u8>,
    /// One event per token.
    pub(crate) tokens: Vec<Vec<u8>>,
    /// Finish reason and usage.
    pub(crate) tail: Vec<u8>,
    /// `[DONE]` / `message_stop`.
    pub(crate) terminator: Vec<u8>,
    /// An event whose data is not valid JSON.
    pub(crate) garbage: Vec<u8>,
}

/// A parsed request.
pub(crate) struct Incoming {
    pub(crate) api: Api,
    pub(crate) request: ChatRequest,
}

impl Incoming {
    fn probe(&self) -> bool {
        self.request
            .requested_max_tokens()
            .is_some_and(|m| m <= PROBE_MAX_TOKENS)
    }

    fn prompt_tokens(&self) -> u32 {
        let system = match self.request.extra.get("system") {
            Some(Value::String(s)) => s.len(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(str::len)
                .sum(),
            _ => 0,
        };
        let system = u32::try_from(system.div_ceil(4)).unwrap_or(u32::MAX);
        self.request
            .estimated_prompt_tokens()
            .saturating_add(system)
    }

    fn flagged(&self) -> bool {
        self.request
            .messages
            .iter()
            .any(|m| m.text_content().contains(FLAGGED_MARKER))
    }
}

/// The API an endpoint path belongs to.
pub(crate) fn api_of_path(path: &str) -> Option<Api> {
    let path = path.trim_end_matches('/');
    if path.ends_with(ENDPOINT_PATHS[0]) {
        Some(Api::OpenAi)
    } else if path.ends_with(ENDPOINT_PATHS[1]) {
        Some(Api::Anthropic)
    } else {
        None
    }
}

/// Whether request-level rules (context window, content policy) decide
/// the reply under this behaviour: a server that is up validates a request
/// before generating; one that errors, resets or hangs never gets there.
pub(crate) fn rules_apply(behaviour: Behaviour) -> bool {
    !matches!(
        behaviour,
        Behaviour::Error(_)
            | Behaviour::ResetBeforeHeaders
            | Behaviour::NeverAnswer
            | Behaviour::Refused
    )
}

fn error_reply(api: Api, kind: ErrorKind, prompt_tokens: u32, window: u32) -> ErrorReply {
    let ErrorBody { status, body } = match api {
        Api::OpenAi => openai::error(kind, prompt_tokens, window),
        Api::Anthropic => anthropic::error(kind, prompt_tokens, window),
    };
    let mut headers = Vec::new();
    if let ErrorKind::RateLimited {
        retry_after: Some(after),
    } = kind
    {
        headers.push(("retry-after", after.as_secs_f64().ceil().to_string()));
        if api == Api::OpenAi {
            headers.push(("retry-after-ms", after.as_millis().to_string()));
        }
    }
    if api == Api::Anthropic {
        headers.push(("request-id", "req_chaos".to_owned()));
    }
    ErrorReply {
        status,
        headers,
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

fn request_rule(state: &FakeState, incoming: &Incoming) -> Option<ErrorKind> {
    if state.spec.flags_content && incoming.flagged() {
        Some(ErrorKind::ContentPolicy)
    } else if incoming.prompt_tokens() > state.spec.context_window {
        Some(ErrorKind::ContextLength)
    } else {
        None
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Decides the reply to a request on `path` with `body`, and logs it.
pub(crate) fn serve(state: &FakeState, path: &str, body: &[u8]) -> ReplyPlan {
    let window = state.spec.context_window;
    let parsed = match api_of_path(path) {
        None => Err((
            state.spec.api,
            404,
            "not_found",
            format!("no endpoint at {path}; the fake serves .../chat/completions and .../messages"),
        )),
        Some(api) => serde_json::from_slice::<ChatRequest>(body)
            .map(|request| Incoming { api, request })
            .map_err(|e| (api, 400, "bad_request", format!("unparseable request: {e}"))),
    };
    let incoming = match parsed {
        Ok(incoming) => incoming,
        Err((api, status, label, message)) => {
            let behaviour = state.admit(false, false, false, Some(label));
            return match behaviour {
                Behaviour::Refused | Behaviour::ResetBeforeHeaders => ReplyPlan::Reset,
                Behaviour::NeverAnswer => ReplyPlan::Hang,
                _ => {
                    let mut reply = error_reply(api, ErrorKind::BadRequest, 0, window);
                    reply.status = status;
                    if let Ok(mut v) = serde_json::from_slice::<Value>(&reply.body) {
                        if let Some(m) = v.pointer_mut("/error/message") {
                            *m = Value::String(message);
                        }
                        reply.body = serde_json::to_vec(&v).unwrap_or_default();
                    }
                    ReplyPlan::Error(reply)
                }
            };
        }
    };

    let rule = request_rule(state, &incoming);
    let prefill = prefill_of(&incoming.request);
    let behaviour = state.admit(
        incoming.probe(),
        incoming.request.is_stream(),
        prefill.is_some(),
        rule.map(ErrorKind::name),
    );
    let prompt_tokens = incoming.prompt_tokens();
    match behaviour {
        Behaviour::Refused | Behaviour::ResetBeforeHeaders => ReplyPlan::Reset,
        Behaviour::NeverAnswer => ReplyPlan::Hang,
        Behaviour::Error(kind) => {
            ReplyPlan::Error(error_reply(incoming.api, kind, prompt_tokens, window))
        }
        answering => match rule {
            Some(kind) => ReplyPlan::Error(error_reply(incoming.api, kind, prompt_tokens, window)),
            None => ReplyPlan::Answer(answer(state, &incoming, prefill.as_deref(), answering)),
        },
    }
}

fn answer(
    state: &FakeState,
    incoming: &Incoming,
    prefill: Option<&str>,
    behaviour: Behaviour,
) -> Answer {
    let spec = &state.spec;
    let text = match (prefill, spec.prefill) {
        (Some(p), Prefill::Continue) => continuation(p).unwrap_or(KNOWN_TEXT),
        _ => KNOWN_TEXT,
    };
    let mut all: Vec<String> = tokens(text).into_iter().map(str::to_owned).collect();
    let limit = incoming
        .request
        .requested_max_tokens()
        .map_or(usize::MAX, |m| m as usize);
    let truncated = all.len() > limit;
    all.truncate(limit);
    let id = match incoming.api {
        Api::OpenAi => format!("chatcmpl-chaos-{}", state.next_id()),
        Api::Anthropic => format!("msg_chaos_{}", state.next_id()),
    };
    let model = if incoming.request.model.is_empty() {
        spec.model.clone()
    } else {
        incoming.request.model.clone()
    };
    let parts = AnswerParts {
        id,
        model,
        created: unix_now(),
        tokens: all,
        truncated,
        prompt_tokens: incoming.prompt_tokens(),
        include_usage: incoming.request.wants_stream_usage(),
    };

    let pre_delay = match behaviour {
        Behaviour::Delay(d) => d,
        _ => Duration::ZERO,
    };
    let first_token = match behaviour {
        Behaviour::SlowFirstToken(d) => d,
        _ => spec.pacing.first_token,
    };

    if incoming.request.is_stream() {
        let wire = match incoming.api {
            Api::OpenAi => openai::stream(&parts),
            Api::Anthropic => anthropic::stream(&parts),
        };
        Answer {
            content_type: "text/event-stream",
            delay: pre_delay,
            content_length: None,
            steps: stream_steps(wire, behaviour, first_token, spec.pacing.token_interval),
        }
    } else {
        let body = match incoming.api {
            Api::OpenAi => openai::completion(&parts),
            Api::Anthropic => anthropic::message(&parts),
        };
        let generation = first_token
            + spec.pacing.token_interval
                * u32::try_from(parts.tokens.len().saturating_sub(1)).unwrap_or(u32::MAX);
        let half = Bytes::copy_from_slice(&body[..body.len() / 2]);
        let (content_length, steps) = match behaviour {
            Behaviour::StreamCut { .. } => (body.len(), vec![Step::Send(half), Step::Abort]),
            Behaviour::StreamStall { .. } => (body.len(), vec![Step::Send(half), Step::Stall]),
            Behaviour::MalformedChunk { .. } => (half.len(), vec![Step::Send(half)]),
            _ => (body.len(), vec![Step::Send(Bytes::from(body))]),
        };
        Answer {
            content_type: "application/json",
            delay: pre_delay + generation,
            content_length: Some(content_length),
            steps,
        }
    }
}

fn stream_steps(
    wire: StreamParts,
    behaviour: Behaviour,
    first_token: Duration,
    interval: Duration,
) -> Vec<Step> {
    let fault_at = match behaviour {
        Behaviour::StreamCut { after_tokens }
        | Behaviour::StreamStall { after_tokens }
        | Behaviour::MalformedChunk { after_tokens } => Some(after_tokens),
        _ => None,
    };
    let mut steps = vec![Step::Wait(first_token), Step::Send(Bytes::from(wire.head))];
    let count = wire.tokens.len();
    for (i, token) in wire.tokens.into_iter().enumerate() {
        if fault_at == Some(i) {
            match behaviour {
                Behaviour::StreamCut { .. } => {
                    steps.push(Step::Abort);
                    return steps;
                }
                Behaviour::StreamStall { .. } => {
                    steps.push(Step::Stall);
                    return steps;
                }
                _ => steps.push(Step::Send(Bytes::from(wire.garbage.clone()))),
            }
        }
        if i > 0 {
            steps.push(Step::Wait(interval));
        }
        steps.push(Step::Send(Bytes::from(token)));
    }
    // A fault scripted after the last token cuts or stalls before the
    // finish reason, so the answer still looks unfinished.
    if fault_at.is_some_and(|n| n >= count) {
        match behaviour {
            Behaviour::StreamCut { .. } => {
                steps.push(Step::Abort);
                return steps;
            }
            Behaviour::StreamStall { .. } => {
                steps.push(Step::Stall);
                return steps;
            }
            _ => steps.push(Step::Send(Bytes::from(wire.garbage))),
        }
    }
    steps.push(Step::Send(Bytes::from(wire.tail)));
    if behaviour != Behaviour::NoDone {
        steps.push(Step::Send(Bytes::from(wire.terminator)));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeSpec;

    fn wire() -> StreamParts {
        StreamParts {
            head: b"H".to_vec(),
            tokens: vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
            tail: b"T".to_vec(),
            terminator: b"D".to_vec(),
            garbage: b"G".to_vec(),
        }
    }

    fn sent(steps: &[Step]) -> String {
        steps
            .iter()
            .map(|s| match s {
                Step::Send(b) => String::from_utf8_lossy(b).into_owned(),
                Step::Abort => "|cut".into(),
                Step::Stall => "|stall".into(),
                Step::Wait(_) => String::new(),
            })
            .collect()
    }

    #[test]
    fn stream_faults_land_after_the_scripted_token() {
        let ms = Duration::from_millis(1);
        assert_eq!(
            sent(&stream_steps(wire(), Behaviour::Healthy, ms, ms)),
            "HabcTD"
        );
        assert_eq!(
            sent(&stream_steps(wire(), Behaviour::NoDone, ms, ms)),
            "HabcT"
        );
        let cut = Behaviour::StreamCut { after_tokens: 2 };
        assert_eq!(sent(&stream_steps(wire(), cut, ms, ms)), "Hab|cut");
        let stall = Behaviour::StreamStall { after_tokens: 0 };
        assert_eq!(sent(&stream_steps(wire(), stall, ms, ms)), "H|stall");
        let bad = Behaviour::MalformedChunk { after_tokens: 1 };
        assert_eq!(sent(&stream_steps(wire(), bad, ms, ms)), "HaGbcTD");
        let late = Behaviour::StreamCut { after_tokens: 9 };
        assert_eq!(sent(&stream_steps(wire(), late, ms, ms)), "Habc|cut");
    }

    #[test]
    fn paths_pick_the_api() {
        assert_eq!(api_of_path("/v1/chat/completions"), Some(Api::OpenAi));
        assert_eq!(api_of_path("/chat/completions/"), Some(Api::OpenAi));
        assert_eq!(api_of_path("/v1/messages"), Some(Api::Anthropic));
        assert_eq!(api_of_path("/v1/models"), None);
    }

    #[test]
    fn request_rules_yield_to_errors_but_not_to_faulty_answers() {
        let state = FakeState::new(FakeSpec::new("p", Api::OpenAi).context_window(100, None));
        let long = serde_json::json!({
            "model": "p", "messages": [{"role": "user", "content": "x".repeat(2000)}]
        });
        let plan = serve(&state, "/v1/chat/completions", long.to_string().as_bytes());
        let ReplyPlan::Error(e) = plan else {
            panic!("expected a context-length error")
        };
        assert_eq!(e.status, 400);
        assert_eq!(state.log()[0].behaviour, "context_length");
        assert!(rules_apply(Behaviour::StreamCut { after_tokens: 1 }));
        assert!(!rules_apply(Behaviour::Error(ErrorKind::Server)));
    }

    #[test]
    fn prefill_is_continued_only_by_a_prefill_model() {
        let body = serde_json::json!({
            "model": "p", "max_tokens": 100,
            "messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": &KNOWN_TEXT[..20]}]
        })
        .to_string();
        for (mode, expected) in [
            (Prefill::Continue, &KNOWN_TEXT[20..]),
            (Prefill::Ignore, KNOWN_TEXT),
        ] {
            let state = FakeState::new(FakeSpec::new("p", Api::Anthropic).prefill(mode));
            let ReplyPlan::Answer(a) = serve(&state, "/v1/messages", body.as_bytes()) else {
                panic!("expected an answer")
            };
            let Some(Step::Send(b)) = a.steps.last() else {
                panic!("expected a body")
            };
            let v: Value = serde_json::from_slice(b).unwrap();
            assert_eq!(v["content"][0]["text"], expected);
            assert!(state.log()[0].prefill);
        }
    }

    #[test]
    fn max_tokens_truncates_with_a_length_finish() {
        let state = FakeState::new(FakeSpec::new("p", Api::OpenAi));
        let body = serde_json::json!({
            "model": "p", "max_tokens": 4, "messages": [{"role": "user", "content": "ping"}]
        })
        .to_string();
        let ReplyPlan::Answer(a) = serve(&state, "/v1/chat/completions", body.as_bytes()) else {
            panic!("expected an answer")
        };
        let Some(Step::Send(b)) = a.steps.last() else {
            panic!("expected a body")
        };
        let v: Value = serde_json::from_slice(b).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 4);
        assert!(state.log()[0].probe, "max_tokens 4 is a probe");
    }
}
