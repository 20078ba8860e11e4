//! Checks every answer the gateway gives and classifies the request.
//!
//! - **succeeded**: the complete expected text (the known text, or the
//!   template's for the template rung), with a finish reason on streams.
//! - **failed_clean**: an OpenAI-shaped error (`{"error": {"message"...}}`),
//!   as an HTTP status or as an in-band stream event.
//! - **lost**: no answer by the deadline, a transport error, an
//!   unparseable answer, or a truncated answer presented as a success.
//!
//! Which model answered and at what fallback level is read from the
//! `backstop` object (body, or the final stream chunk) first, then the
//! `x-backstop-*` headers, then the response's `model`: in a stream the
//! headers go out before a mid-stream failover can happen.

use std::time::Duration;

use backstop_http::sse::SseDecoder;
use serde::Serialize;
use serde_json::Value;

use crate::answer::{KNOWN_TEXT, same_words};

/// Why a request counts as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostReason {
    /// No complete answer by the request's deadline.
    Deadline,
    /// Connect, reset or body error.
    Transport,
    /// A success status with text short of (or different from) the
    /// expected answer.
    Truncated,
    /// A success status with a body or stream event that does not parse.
    Malformed,
    /// An error status without an OpenAI-shaped error body.
    UncleanError,
}

impl LostReason {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::Deadline => "deadline",
            LostReason::Transport => "transport",
            LostReason::Truncated => "truncated",
            LostReason::Malformed => "malformed",
            LostReason::UncleanError => "unclean_error",
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The complete expected answer.
    Succeeded,
    /// A clean OpenAI-shaped error, with its HTTP status (200 for an
    /// in-band stream error).
    FailedClean {
        /// The HTTP status.
        status: u16,
    },
    /// Lost.
    Lost(LostReason),
}

/// One entry of the attempt trail, as the gateway reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrailEntry {
    /// The model.
    pub model: String,
    /// `ok`, a failure kind, a skip reason, or `cancelled`.
    pub kind: String,
    /// The upstream status, if any.
    pub status: Option<u16>,
    /// How long the attempt took by the gateway's clock (zero for skips),
    /// when reported.
    pub ms: Option<f64>,
}

/// Trail kinds meaning the model was not called (backstop-core's
/// `SkipReason` names).
const SKIP_KINDS: [&str; 7] = [
    "circuit_open",
    "over_budget",
    "over_rate_limit",
    "context_window",
    "no_streaming",
    "no_tools",
    "deadline",
];

impl TrailEntry {
    /// Whether the model was actually called.
    pub fn called_upstream(&self) -> bool {
        !SKIP_KINDS.contains(&self.kind.as_str())
    }
}

/// What the harness learned about one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// Its number, from 0.
    pub index: u64,
    /// It asked for a stream.
    pub stream: bool,
    /// It carried the content-policy marker.
    pub flagged: bool,
    /// When it was meant to be sent, since the load's epoch.
    pub intended_at: Duration,
    /// From the intended send time to the end of the answer (or to the
    /// deadline, for a request lost to it).
    pub latency: Duration,
    /// From the intended send time to the first text, for streams.
    pub first_text: Option<Duration>,
    /// How it ended.
    pub outcome: Outcome,
    /// The model that answered, when the gateway said.
    pub model: Option<String>,
    /// The fallback level, when the gateway said.
    pub fallback_level: Option<u32>,
    /// `x-backstop-attempts`.
    pub attempts_header: Option<u32>,
    /// The attempt trail, when the gateway sent one.
    pub trail: Vec<TrailEntry>,
    /// The answer carried usage.
    pub usage_present: bool,
    /// A stream that ended (complete) without `[DONE]`.
    pub missing_done: bool,
}

impl RequestRecord {
    /// A record for a request that got nothing usable.
    pub(crate) fn lost(
        index: u64,
        stream: bool,
        flagged: bool,
        intended_at: Duration,
        latency: Duration,
        reason: LostReason,
    ) -> Self {
        Self {
            index,
            stream,
            flagged,
            intended_at,
            latency,
            first_text: None,
            outcome: Outcome::Lost(reason),
            model: None,
            fallback_level: None,
            attempts_header: None,
            trail: Vec::new(),
            usage_present: false,
            missing_done: false,
        }
    }

    /// Upstream calls the trail shows (skips not counted); `None` without
    /// a trail.
    pub fn upstream_calls(&self) -> Option<usize> {
        (!self.trail.is_empty()).then(|| self.trail.iter().filter(|e| e.called_upstream()).count())
    }

    /// The time the answering attempt took by the gateway's clock: the
    /// last `ok` entry of the trail.
    pub fn answering_attempt(&self) -> Option<Duration> {
        self.trail
            .iter()
            .rev()
            .find(|e| e.kind == "ok")
            .and_then(|e| e.ms)
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    }

    /// The latency spent outside the answering attempt: the caller's
    /// latency minus the time the model that answered took to answer
    /// (the whole latency without a trail). Routing, failed attempts,
    /// backoffs, skips, and the gateway's and client's own work are in
    /// it; the model's generation time, the same whichever model
    /// answers, is not.
    pub fn outside_answer(&self) -> Duration {
        self.latency
            .saturating_sub(self.answering_attempt().unwrap_or(Duration::ZERO))
    }

    /// Whether the primary (`primary` model id) was skipped because its
    /// circuit was open: the trail says so, or, without a trail, a
    /// fallback answered after a single upstream attempt.
    pub fn primary_skipped(&self, primary: &str) -> bool {
        if let Some(first) = self.trail.iter().find(|e| e.model == primary) {
            return !first.called_upstream();
        }
        self.trail.is_empty()
            && self.fallback_level.is_some_and(|l| l > 0)
            && self.attempts_header == Some(1)
    }
}

/// What each answering model is expected to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerCheck {
    texts: Vec<(String, String)>,
}

impl Default for AnswerCheck {
    /// Every model answers [`KNOWN_TEXT`].
    fn default() -> Self {
        Self { texts: Vec::new() }
    }
}

impl AnswerCheck {
    /// Model id -> expected text; any other model is expected to answer
    /// [`KNOWN_TEXT`].
    pub fn new(texts: Vec<(String, String)>) -> Self {
        Self { texts }
    }

    /// Whether `text` is the complete answer of `model` (any known answer
    /// when the model is unknown). Whitespace at a seam does not count.
    pub fn complete(&self, model: Option<&str>, text: &str) -> bool {
        let own = model.and_then(|m| self.texts.iter().find(|(id, _)| id == m));
        match own {
            Some((_, expected)) => same_words(text, expected),
            None => {
                same_words(text, KNOWN_TEXT)
                    || self
                        .texts
                        .iter()
                        .any(|(_, expected)| same_words(text, expected))
            }
        }
    }
}

/// The `x-backstop-*` headers of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BackstopHeaders {
    pub(crate) model: Option<String>,
    pub(crate) fallback_level: Option<u32>,
    pub(crate) attempts: Option<u32>,
}

impl BackstopHeaders {
    pub(crate) fn from_headers(headers: &reqwest::header::HeaderMap) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            model: get("x-backstop-model"),
            fallback_level: get("x-backstop-fallback-level").and_then(|v| v.parse().ok()),
            attempts: get("x-backstop-attempts").and_then(|v| v.parse().ok()),
        }
    }
}

/// What the `backstop` object says.
#[derive(Debug, Clone, Default, PartialEq)]
struct BackstopObject {
    model_used: Option<String>,
    fallback_level: Option<u32>,
    trail: Vec<TrailEntry>,
}

fn backstop_object(v: &Value) -> Option<BackstopObject> {
    let b = v.get("backstop")?.as_object()?;
    let trail = b
        .get("attempts")
        .or_else(|| b.get("trail"))
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    Some(TrailEntry {
                        model: e.get("model")?.as_str()?.to_owned(),
                        kind: e.get("kind")?.as_str()?.to_owned(),
                        status: e
                            .get("status")
                            .and_then(Value::as_u64)
                            .and_then(|s| u16::try_from(s).ok()),
                        ms: e.get("ms").and_then(Value::as_f64),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(BackstopObject {
        model_used: b
            .get("model_used")
            .and_then(Value::as_str)
            .map(str::to_owned),
        fallback_level: b
            .get("fallback_level")
            .and_then(Value::as_u64)
            .and_then(|l| u32::try_from(l).ok()),
        trail,
    })
}

fn is_clean_error(v: &Value) -> bool {
    v.get("error")
        .and_then(|e| e.get("message"))
        .is_some_and(Value::is_string)
}

fn usage_present(v: &Value) -> bool {
    v.get("usage")
        .and_then(|u| u.get("total_tokens"))
        .is_some_and(Value::is_u64)
}

fn message_text(v: &Value) -> Option<String> {
    let content = v.pointer("/choices/0/message/content")?;
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
        ),
        _ => None,
    }
}

/// The parts of a record a response decides.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) outcome: Outcome,
    pub(crate) model: Option<String>,
    pub(crate) fallback_level: Option<u32>,
    pub(crate) attempts_header: Option<u32>,
    pub(crate) trail: Vec<TrailEntry>,
    pub(crate) usage_present: bool,
    pub(crate) missing_done: bool,
    /// Time of the first text, since the intended send time.
    pub(crate) first_text: Option<Duration>,
}

impl Verdict {
    fn new(outcome: Outcome, headers: &BackstopHeaders) -> Self {
        Self {
            outcome,
            model: headers.model.clone(),
            fallback_level: headers.fallback_level,
            attempts_header: headers.attempts,
            trail: Vec::new(),
            usage_present: false,
            missing_done: false,
            first_text: None,
        }
    }

    fn absorb(&mut self, object: Option<BackstopObject>, body_model: Option<&str>) {
        if let Some(b) = object {
            if b.model_used.is_some() {
                self.model = b.model_used;
            }
            if b.fallback_level.is_some() {
                self.fallback_level = b.fallback_level;
            }
            if !b.trail.is_empty() {
                self.trail = b.trail;
            }
        }
        if self.model.is_none() {
            self.model = body_model.filter(|m| !m.is_empty()).map(str::to_owned);
        }
    }
}

/// Classifies an error status with its body.
pub(crate) fn classify_error(status: u16, headers: &BackstopHeaders, body: &[u8]) -> Verdict {
    let outcome = match serde_json::from_slice::<Value>(body) {
        Ok(v) if is_clean_error(&v) => Outcome::FailedClean { status },
        _ => Outcome::Lost(LostReason::UncleanError),
    };
    let mut verdict = Verdict::new(outcome, headers);
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        verdict.absorb(backstop_object(&v), None);
    }
    verdict
}

/// Classifies a complete non-streaming 2xx body.
pub(crate) fn classify_completion(
    check: &AnswerCheck,
    headers: &BackstopHeaders,
    body: &[u8],
) -> Verdict {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Verdict::new(Outcome::Lost(LostReason::Malformed), headers);
    };
    let mut verdict = Verdict::new(Outcome::Succeeded, headers);
    verdict.absorb(backstop_object(&v), v.get("model").and_then(Value::as_str));
    verdict.usage_present = usage_present(&v);
    verdict.outcome = match message_text(&v) {
        Some(text) if check.complete(verdict.model.as_deref(), &text) => Outcome::Succeeded,
        Some(_) => Outcome::Lost(LostReason::Truncated),
        None if is_clean_error(&v) => Outcome::FailedClean { status: 200 },
        None => Outcome::Lost(LostReason::Malformed),
    };
    verdict
}

/// Reads an OpenAI-shaped SSE stream, piece by piece.
pub(crate) struct StreamReader<'a> {
    check: &'a AnswerCheck,
    decoder: SseDecoder,
    events: Vec<backstop_http::sse::SseEvent>,
    text: String,
    finish_reason: Option<String>,
    done: bool,
    malformed: bool,
    in_band_error: bool,
    verdict: Verdict,
    body_model: Option<String>,
}

impl<'a> StreamReader<'a> {
    pub(crate) fn new(check: &'a AnswerCheck, headers: &BackstopHeaders) -> Self {
        Self {
            check,
            decoder: SseDecoder::new(),
            events: Vec::new(),
            text: String::new(),
            finish_reason: None,
            done: false,
            malformed: false,
            in_band_error: false,
            verdict: Verdict::new(Outcome::Succeeded, headers),
            body_model: None,
        }
    }

    /// Feeds bytes; `elapsed` is the time since reading began. Returns
    /// `true` once the stream has said its last word (`[DONE]` or an
    /// in-band error), so the caller can stop reading.
    pub(crate) fn feed(&mut self, bytes: &[u8], elapsed: Duration) -> bool {
        self.decoder.feed(bytes, &mut self.events);
        for event in std::mem::take(&mut self.events) {
            if event.data == "[DONE]" {
                self.done = true;
                return true;
            }
            let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
                self.malformed = true;
                continue;
            };
            if is_clean_error(&v) {
                self.in_band_error = true;
                self.verdict.absorb(backstop_object(&v), None);
                return true;
            }
            if let Some(choices) = v.get("choices").and_then(Value::as_array) {
                for choice in choices {
                    if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                        continue;
                    }
                    if let Some(t) = choice.pointer("/delta/content").and_then(Value::as_str)
                        && !t.is_empty()
                    {
                        if self.verdict.first_text.is_none() {
                            self.verdict.first_text = Some(elapsed);
                        }
                        self.text.push_str(t);
                    }
                    if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                        self.finish_reason = Some(r.to_owned());
                    }
                }
            }
            if usage_present(&v) {
                self.verdict.usage_present = true;
            }
            if let Some(m) = v.get("model").and_then(Value::as_str)
                && !m.is_empty()
            {
                self.body_model = Some(m.to_owned());
            }
            if let Some(b) = backstop_object(&v) {
                self.verdict.absorb(Some(b), None);
            }
        }
        false
    }

    /// The verdict once the stream ended: `transport_error` when the body
    /// ended with an error rather than cleanly.
    pub(crate) fn finish(mut self, transport_error: bool) -> Verdict {
        let body_model = self.body_model.take();
        self.verdict.absorb(None, body_model.as_deref());
        let complete = self.finish_reason.is_some()
            && self
                .check
                .complete(self.verdict.model.as_deref(), &self.text);
        self.verdict.outcome = if self.in_band_error {
            Outcome::FailedClean { status: 200 }
        } else if self.malformed {
            Outcome::Lost(LostReason::Malformed)
        } else if transport_error && !self.done {
            Outcome::Lost(LostReason::Transport)
        } else if complete {
            self.verdict.missing_done = !self.done;
            Outcome::Succeeded
        } else {
            Outcome::Lost(LostReason::Truncated)
        };
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::{TEMPLATE_TEXT, tokens};
    use serde_json::json;

    fn headers(model: &str, level: u32) -> BackstopHeaders {
        BackstopHeaders {
            model: Some(model.into()),
            fallback_level: Some(level),
            attempts: Some(1),
        }
    }

    fn chunk(text: Option<&str>, finish: Option<&str>) -> String {
        let mut out = Vec::new();
        let v = json!({"model": "secondary", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]});
        backstop_http::sse::write_data(&mut out, &v.to_string());
        String::from_utf8(out).unwrap()
    }

    fn full_stream(done: bool) -> String {
        let mut s = String::new();
        for t in tokens(KNOWN_TEXT) {
            s.push_str(&chunk(Some(t), None));
        }
        s.push_str(&chunk(None, Some("stop")));
        let last = json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                          "backstop": {"model_used": "secondary", "fallback_level": 1,
                                       "attempts": [{"model": "primary", "kind": "circuit_open", "status": null, "ms": 0.0},
                                                    {"model": "secondary", "kind": "ok", "status": 200, "ms": 20.0}]}});
        let mut out = Vec::new();
        backstop_http::sse::write_data(&mut out, &last.to_string());
        s.push_str(std::str::from_utf8(&out).unwrap());
        if done {
            s.push_str("data: [DONE]\n\n");
        }
        s
    }

    #[test]
    fn a_complete_stream_succeeds_and_reads_the_final_backstop_object() {
        let check = AnswerCheck::default();
        // The header says primary: it went out before the failover.
        let mut r = StreamReader::new(&check, &headers("primary", 0));
        let bytes = full_stream(true);
        for piece in bytes.as_bytes().chunks(7) {
            if r.feed(piece, Duration::from_millis(1)) {
                break;
            }
        }
        let v = r.finish(false);
        assert_eq!(v.outcome, Outcome::Succeeded);
        assert_eq!(v.model.as_deref(), Some("secondary"));
        assert_eq!(v.fallback_level, Some(1));
        assert!(v.usage_present);
        assert_eq!(v.trail.len(), 2);
        assert!(!v.trail[0].called_upstream());
        assert_eq!(v.trail[1].ms, Some(20.0));
        assert!(!v.missing_done);
    }

    #[test]
    fn a_stream_cut_short_is_lost_even_with_done() {
        let check = AnswerCheck::default();
        let mut s = String::new();
        for t in &tokens(KNOWN_TEXT)[..5] {
            s.push_str(&chunk(Some(t), None));
        }
        s.push_str(&chunk(None, Some("stop")));
        s.push_str("data: [DONE]\n\n");
        let mut r = StreamReader::new(&check, &headers("primary", 0));
        r.feed(s.as_bytes(), Duration::ZERO);
        assert_eq!(
            r.finish(false).outcome,
            Outcome::Lost(LostReason::Truncated)
        );

        let mut r = StreamReader::new(&check, &headers("primary", 0));
        r.feed(chunk(Some("Backstop"), None).as_bytes(), Duration::ZERO);
        assert_eq!(r.finish(true).outcome, Outcome::Lost(LostReason::Transport));
    }

    #[test]
    fn missing_done_is_noted_but_succeeds_when_complete() {
        let check = AnswerCheck::default();
        let mut r = StreamReader::new(&check, &headers("primary", 0));
        r.feed(full_stream(false).as_bytes(), Duration::ZERO);
        let v = r.finish(false);
        assert_eq!(v.outcome, Outcome::Succeeded);
        assert!(v.missing_done);
    }

    #[test]
    fn in_band_error_is_clean_and_garbage_is_lost() {
        let check = AnswerCheck::default();
        let mut r = StreamReader::new(&check, &headers("primary", 0));
        let mut bytes = chunk(Some("Backstop"), None);
        bytes.push_str(
            "data: {\"error\": {\"message\": \"cut\", \"type\": \"stream_interrupted\"}}\n\n",
        );
        assert!(r.feed(bytes.as_bytes(), Duration::ZERO));
        assert_eq!(
            r.finish(false).outcome,
            Outcome::FailedClean { status: 200 }
        );

        let mut r = StreamReader::new(&check, &headers("primary", 0));
        let mut bytes = full_stream(true);
        bytes.insert_str(0, "data: {\"choices\n\n");
        r.feed(bytes.as_bytes(), Duration::ZERO);
        assert_eq!(
            r.finish(false).outcome,
            Outcome::Lost(LostReason::Malformed)
        );
    }

    #[test]
    fn completions_and_errors_are_classified() {
        let check = AnswerCheck::new(vec![("rules".into(), TEMPLATE_TEXT.into())]);
        let ok = json!({"model": "rules", "choices": [{"message": {"role": "assistant", "content": TEMPLATE_TEXT}}]});
        let v = classify_completion(
            &check,
            &BackstopHeaders::default(),
            ok.to_string().as_bytes(),
        );
        assert_eq!(v.outcome, Outcome::Succeeded);
        assert_eq!(v.model.as_deref(), Some("rules"));
        assert!(!v.usage_present);

        let short = json!({"model": "primary", "choices": [{"message": {"content": "Backstop kept"}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
        let v = classify_completion(
            &check,
            &BackstopHeaders::default(),
            short.to_string().as_bytes(),
        );
        assert_eq!(v.outcome, Outcome::Lost(LostReason::Truncated));

        let clean = json!({"error": {"message": "refused", "type": "invalid_request_error", "code": "content_policy_violation"}});
        let v = classify_error(
            400,
            &BackstopHeaders::default(),
            clean.to_string().as_bytes(),
        );
        assert_eq!(v.outcome, Outcome::FailedClean { status: 400 });
        let v = classify_error(
            502,
            &BackstopHeaders::default(),
            b"<html>bad gateway</html>",
        );
        assert_eq!(v.outcome, Outcome::Lost(LostReason::UncleanError));
    }

    #[test]
    fn primary_skip_is_read_from_trail_or_headers() {
        let mut r = RequestRecord::lost(
            0,
            false,
            false,
            Duration::ZERO,
            Duration::ZERO,
            LostReason::Deadline,
        );
        r.outcome = Outcome::Succeeded;
        r.fallback_level = Some(1);
        r.attempts_header = Some(1);
        assert!(r.primary_skipped("primary"));
        r.trail = vec![
            TrailEntry {
                model: "primary".into(),
                kind: "connect".into(),
                status: None,
                ms: Some(0.2),
            },
            TrailEntry {
                model: "secondary".into(),
                kind: "ok".into(),
                status: Some(200),
                ms: Some(20.0),
            },
        ];
        assert!(!r.primary_skipped("primary"));
        assert_eq!(r.upstream_calls(), Some(2));
        r.latency = Duration::from_millis(21);
        assert_eq!(r.answering_attempt(), Some(Duration::from_millis(20)));
        assert_eq!(r.outside_answer(), Duration::from_millis(1));
        r.trail.clear();
        assert_eq!(r.outside_answer(), Duration::from_millis(21));
    }
}
