//! Test doubles for the Router and for other crates' tests (feature
//! `test-util`): a provider that follows a script, the simplest strategy of
//! each seam, and an event sink that remembers what it saw.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::budget::{BudgetPolicy, BudgetSnapshot, OverBudget, Reservation};
use crate::chat::{ChatChunk, ChatRequest, ChatResponse, Usage};
use crate::error::{FailureKind, ProviderError};
use crate::events::{Event, EventSink};
use crate::facts::RequestFacts;
use crate::health::{
    Admission, CallOutcome, CircuitState, HealthPolicy, HealthSnapshot, HealthTransition, Permit,
};
use crate::model::{ModelIndex, ModelSpec};
use crate::provider::{Call, ChunkStream, Provider};
use crate::result::{Annotation, ResultHandler, RouteSummary};
use crate::router::Strategies;
use crate::selector::{Candidate, Selector};

/// One step of a streamed answer.
#[derive(Debug, Clone)]
pub enum Piece {
    /// A chunk of text.
    Text(String),
    /// Wait before the next piece.
    Wait(Duration),
    /// A chunk with finish reason `stop`, then a usage chunk.
    Finish,
    /// Fail the stream with this error.
    Fail(ProviderError),
    /// Stop sending and keep the stream open forever.
    Stall,
    /// Send this chunk as it is (upstream quirks: extra fields, several
    /// choices, a role-only opening).
    Chunk(ChatChunk),
}

/// What a scripted provider does on one call.
#[derive(Debug, Clone)]
pub enum Script {
    /// Answer this text (streams send it a word at a time, then finish).
    Reply(String),
    /// Fail with this error (before any chunk, for streams).
    Fail(ProviderError),
    /// Never answer.
    Hang,
    /// Wait, then do the inner step.
    After(Duration, Box<Script>),
    /// Stream these pieces (for complete calls: the text, or the failure).
    Pieces(Vec<Piece>),
}

impl Script {
    /// A reply.
    pub fn reply(text: &str) -> Self {
        Script::Reply(text.to_owned())
    }

    /// A failure of this kind (with status when it has a natural one).
    pub fn fail(kind: FailureKind) -> Self {
        let status = match kind {
            FailureKind::RateLimited | FailureKind::QuotaExhausted => Some(429),
            FailureKind::Overloaded => Some(529),
            FailureKind::Server => Some(500),
            FailureKind::Auth => Some(401),
            FailureKind::ContextLength | FailureKind::ContentPolicy | FailureKind::BadRequest => {
                Some(400)
            }
            _ => None,
        };
        let mut e = ProviderError::new(kind, format!("scripted {kind}"));
        e.status = status;
        Script::Fail(e)
    }

    /// Streams `text` word by word, then cuts the stream with an error
    /// after `words` words.
    pub fn cut_after(text: &str, words: usize) -> Self {
        let mut pieces: Vec<Piece> = split_words(text)
            .into_iter()
            .take(words)
            .map(Piece::Text)
            .collect();
        pieces.push(Piece::Fail(ProviderError::new(
            FailureKind::StreamInterrupted,
            "scripted cut",
        )));
        Script::Pieces(pieces)
    }
}

/// Splits text into words that keep their leading space, so they
/// concatenate back to the text.
pub fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c == ' ' && !current.is_empty() && !current.ends_with(' ') {
            words.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// A provider that follows a script, one step per call; when the script
/// runs out it repeats `then`. It records every request it received.
#[derive(Debug)]
pub struct ScriptedProvider {
    steps: Mutex<VecDeque<Script>>,
    then: Script,
    calls: AtomicUsize,
    seen: Mutex<Vec<ChatRequest>>,
    headers: Mutex<Vec<Vec<(String, String)>>>,
}

impl ScriptedProvider {
    /// A provider that does `steps` in order, then `then` forever.
    pub fn new(steps: impl IntoIterator<Item = Script>, then: Script) -> Arc<Self> {
        Arc::new(Self {
            steps: Mutex::new(steps.into_iter().collect()),
            then,
            calls: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
        })
    }

    /// A provider that always does `step`.
    pub fn always(step: Script) -> Arc<Self> {
        Self::new([], step)
    }

    /// Calls received.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Requests received, in order.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The extra headers ([`Call::headers`]) of each call, in order.
    pub fn headers(&self) -> Vec<Vec<(String, String)>> {
        self.headers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn next_step(&self, call: &Call<'_>) -> Script {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.headers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call.headers.to_vec());
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call.request.clone());
        self.steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .unwrap_or_else(|| self.then.clone())
    }
}

fn usage_for(call: &Call<'_>, text: &str) -> Usage {
    Usage::new(
        call.request.estimated_prompt_tokens(),
        split_words(text).len() as u32,
    )
}

#[async_trait]
impl Provider for ScriptedProvider {
    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        let mut step = self.next_step(&call);
        loop {
            match step {
                Script::Reply(text) => {
                    let usage = usage_for(&call, &text);
                    return Ok(ChatResponse::assistant(
                        "cmpl-scripted",
                        &call.model.upstream,
                        0,
                        text,
                        Some(usage),
                    ));
                }
                Script::Fail(e) => return Err(e),
                Script::Hang => std::future::pending::<()>().await,
                Script::After(wait, inner) => {
                    tokio::time::sleep(wait).await;
                    step = *inner;
                }
                Script::Pieces(pieces) => {
                    let mut text = String::new();
                    for piece in pieces {
                        match piece {
                            Piece::Text(t) => text.push_str(&t),
                            Piece::Chunk(c) => text.push_str(c.content().unwrap_or_default()),
                            Piece::Wait(d) => tokio::time::sleep(d).await,
                            Piece::Finish => {}
                            Piece::Fail(e) => return Err(e),
                            Piece::Stall => std::future::pending::<()>().await,
                        }
                    }
                    step = Script::Reply(text);
                }
            }
        }
    }

    async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let mut step = self.next_step(&call);
        let pieces = loop {
            match step {
                Script::Reply(text) => {
                    let mut pieces: Vec<Piece> =
                        split_words(&text).into_iter().map(Piece::Text).collect();
                    pieces.push(Piece::Finish);
                    break pieces;
                }
                Script::Fail(e) => return Err(e),
                Script::Hang => std::future::pending::<()>().await,
                Script::After(wait, inner) => {
                    tokio::time::sleep(wait).await;
                    step = *inner;
                }
                Script::Pieces(pieces) => break pieces,
            }
        };
        let model = call.model.upstream.clone();
        let prompt = call.request.estimated_prompt_tokens();
        let mut events = VecDeque::new();
        let mut words = 0;
        for piece in pieces {
            let emit = match piece {
                Piece::Text(t) => {
                    words += 1;
                    Emit::Chunk(ChatChunk::text("chunk-scripted", &model, 0, t))
                }
                Piece::Wait(d) => Emit::Wait(d),
                Piece::Chunk(c) => Emit::Chunk(c),
                Piece::Finish => {
                    events.push_back(Emit::Chunk(ChatChunk::finish(
                        "chunk-scripted",
                        &model,
                        0,
                        "stop",
                    )));
                    Emit::Chunk(ChatChunk::usage_only(
                        "chunk-scripted",
                        &model,
                        0,
                        Usage::new(prompt, words),
                    ))
                }
                Piece::Fail(e) => Emit::Fail(e),
                Piece::Stall => Emit::Stall,
            };
            events.push_back(emit);
        }
        let stream = futures::stream::unfold(events, |mut events| async move {
            loop {
                match events.pop_front()? {
                    Emit::Chunk(chunk) => return Some((Ok(chunk), events)),
                    Emit::Wait(d) => tokio::time::sleep(d).await,
                    Emit::Fail(e) => {
                        events.clear();
                        return Some((Err(e), events));
                    }
                    Emit::Stall => std::future::pending::<()>().await,
                }
            }
        });
        Ok(stream.boxed())
    }
}

enum Emit {
    Chunk(ChatChunk),
    Wait(Duration),
    Fail(ProviderError),
    Stall,
}

/// Keeps the configured chain order.
#[derive(Debug, Default)]
pub struct InOrder;

impl Selector for InOrder {
    fn name(&self) -> &str {
        "in_order"
    }

    fn order(&self, _: &RequestFacts<'_>, _: &mut [Candidate<'_>]) {}
}

/// Admits every call; remembers what it was told.
#[derive(Debug, Default)]
pub struct AlwaysAdmit {
    outcomes: Mutex<Vec<(ModelIndex, CallOutcome)>>,
}

impl AlwaysAdmit {
    /// Outcomes recorded so far.
    pub fn outcomes(&self) -> Vec<(ModelIndex, CallOutcome)> {
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl HealthPolicy for AlwaysAdmit {
    fn name(&self) -> &str {
        "always_admit"
    }

    fn admit(&self, _: ModelIndex) -> Admission {
        Admission::Admit(Permit::default())
    }

    fn record(
        &self,
        model: ModelIndex,
        _: Permit,
        outcome: CallOutcome,
    ) -> Option<HealthTransition> {
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((model, outcome));
        None
    }

    fn record_probe(
        &self,
        _: ModelIndex,
        _: Result<Duration, crate::health::ProbeFailure>,
    ) -> Option<HealthTransition> {
        None
    }

    fn probe_targets(&self, _: Duration, _: &mut Vec<ModelIndex>) {}

    fn snapshot(&self, _: ModelIndex) -> HealthSnapshot {
        HealthSnapshot {
            state: CircuitState::Closed,
            retry_after_ms: None,
            window_calls: 0,
            failure_ratio: 0.0,
            in_state_ms: None,
        }
    }
}

/// Admits only the models not listed as down.
#[derive(Debug, Default)]
pub struct DownList(pub Vec<ModelIndex>);

impl HealthPolicy for DownList {
    fn name(&self) -> &str {
        "down_list"
    }

    fn admit(&self, model: ModelIndex) -> Admission {
        if self.0.contains(&model) {
            Admission::Reject {
                retry_after: Duration::from_secs(1),
            }
        } else {
            Admission::Admit(Permit::default())
        }
    }

    fn record(&self, _: ModelIndex, _: Permit, _: CallOutcome) -> Option<HealthTransition> {
        None
    }

    fn record_probe(
        &self,
        _: ModelIndex,
        _: Result<Duration, crate::health::ProbeFailure>,
    ) -> Option<HealthTransition> {
        None
    }

    fn probe_targets(&self, _: Duration, _: &mut Vec<ModelIndex>) {}

    fn snapshot(&self, model: ModelIndex) -> HealthSnapshot {
        HealthSnapshot {
            state: if self.0.contains(&model) {
                CircuitState::Open
            } else {
                CircuitState::Closed
            },
            retry_after_ms: None,
            window_calls: 0,
            failure_ratio: 0.0,
            in_state_ms: None,
        }
    }
}

/// No budget: reserves everything; counts open reservations.
#[derive(Debug, Default)]
pub struct Unlimited {
    open: AtomicUsize,
    settled: Mutex<Vec<(ModelIndex, Option<Usage>)>>,
}

impl Unlimited {
    /// Reservations not settled yet.
    pub fn open_reservations(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Settlements so far, with the usage they carried.
    pub fn settlements(&self) -> Vec<(ModelIndex, Option<Usage>)> {
        self.settled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl BudgetPolicy for Unlimited {
    fn name(&self) -> &str {
        "unlimited"
    }

    fn reserve(
        &self,
        index: ModelIndex,
        _: &ModelSpec,
        _: &RequestFacts<'_>,
    ) -> Result<Reservation, OverBudget> {
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(Reservation {
            model: index,
            amount: 0.0,
            ticket: 0,
        })
    }

    fn settle(
        &self,
        reservation: Reservation,
        _: &ModelSpec,
        _: &RequestFacts<'_>,
        usage: Option<&Usage>,
    ) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.settled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((reservation.model, usage.cloned()));
    }

    fn snapshot(&self) -> BudgetSnapshot {
        BudgetSnapshot {
            policy: "unlimited".into(),
            spent: 0.0,
            reserved: 0.0,
            limit: None,
        }
    }
}

/// Refuses the listed models.
#[derive(Debug, Default)]
pub struct Refuse(pub Vec<ModelIndex>);

impl BudgetPolicy for Refuse {
    fn name(&self) -> &str {
        "refuse"
    }

    fn reserve(
        &self,
        index: ModelIndex,
        _: &ModelSpec,
        _: &RequestFacts<'_>,
    ) -> Result<Reservation, OverBudget> {
        if self.0.contains(&index) {
            Err(OverBudget {
                needed: 1.0,
                remaining: 0.0,
            })
        } else {
            Ok(Reservation {
                model: index,
                amount: 0.0,
                ticket: 0,
            })
        }
    }

    fn settle(&self, _: Reservation, _: &ModelSpec, _: &RequestFacts<'_>, _: Option<&Usage>) {}

    fn snapshot(&self) -> BudgetSnapshot {
        BudgetSnapshot {
            policy: "refuse".into(),
            spent: 0.0,
            reserved: 0.0,
            limit: None,
        }
    }
}

/// Annotates with `warning: level N` from level 1 on.
#[derive(Debug, Default)]
pub struct LevelNote;

impl ResultHandler for LevelNote {
    fn name(&self) -> &str {
        "level_note"
    }

    fn annotate(&self, summary: &RouteSummary<'_>) -> Annotation {
        Annotation {
            warning: (summary.fallback_level > 0).then(|| {
                format!(
                    "level {} via {}",
                    summary.fallback_level, summary.model_used
                )
                .into()
            }),
            limitation: None,
        }
    }
}

/// The simplest strategies: chain order, always admit, no budget,
/// `LevelNote` annotations.
pub fn simple_strategies() -> Strategies {
    Strategies {
        selector: Arc::new(InOrder),
        health: Arc::new(AlwaysAdmit::default()),
        budget: Arc::new(Unlimited::default()),
        result: Arc::new(LevelNote),
    }
}

/// An owned copy of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// A request ended: scenario, model used, level, error.
    Finished {
        /// Scenario.
        scenario: String,
        /// Model that answered.
        model_used: Option<String>,
        /// Its level.
        level: Option<usize>,
        /// Error name.
        error: Option<&'static str>,
        /// Upstream calls.
        upstream_attempts: u32,
    },
    /// A fallback.
    Fallback(crate::events::FallbackEvent),
    /// An upstream call: model and outcome name.
    Attempt(String, &'static str),
    /// A circuit change: model, from, to.
    Health(String, CircuitState, CircuitState),
}

/// Remembers every event.
#[derive(Debug, Default)]
pub struct RecordingSink {
    events: Mutex<Vec<Recorded>>,
}

impl RecordingSink {
    /// Events so far.
    pub fn events(&self) -> Vec<Recorded> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl EventSink for RecordingSink {
    fn record(&self, event: &Event<'_>) {
        let owned = match event {
            Event::RequestFinished(f) => Recorded::Finished {
                scenario: f.scenario.to_owned(),
                model_used: f.model_used.map(str::to_owned),
                level: f.fallback_level,
                error: f.error,
                upstream_attempts: f.upstream_attempts,
            },
            Event::Fallback(f) => Recorded::Fallback((*f).clone()),
            Event::Attempt { model, outcome, .. } => {
                Recorded::Attempt((*model).to_owned(), outcome.as_str())
            }
            Event::Health { model, transition } => {
                Recorded::Health((*model).to_owned(), transition.from, transition.to)
            }
        };
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(owned);
    }
}

/// One traced call, as a [`RecordingTrace`] saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct TracedCall {
    /// The model called.
    pub model: String,
    /// Its fallback level.
    pub level: usize,
    /// Its same-model retry number.
    pub retry: u32,
    /// How it ended (`None` while it runs): the outcome's name.
    pub outcome: Option<&'static str>,
    /// A stream's time to first output.
    pub first_output: Option<Duration>,
    /// The answer's upstream model, id and finish reasons.
    pub response: Option<(String, String, Vec<String>)>,
    /// The answer's usage.
    pub usage: Option<Usage>,
}

/// How a traced request ended: model used, level, error.
pub type TracedEnd = (Option<String>, Option<usize>, Option<&'static str>);

/// A [`RequestTrace`](crate::RequestTrace) that remembers every call, skip
/// and end; each call carries the header `x-call: N` (its number).
#[derive(Debug, Default)]
pub struct RecordingTrace {
    calls: Arc<Mutex<Vec<TracedCall>>>,
    skips: Mutex<Vec<(String, usize, &'static str)>>,
    finished: Mutex<Vec<TracedEnd>>,
}

impl RecordingTrace {
    /// Calls so far.
    pub fn calls(&self) -> Vec<TracedCall> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    /// Skips so far: model, level, reason.
    pub fn skips(&self) -> Vec<(String, usize, &'static str)> {
        self.skips
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    /// Ends so far: model used, level, error.
    pub fn finished(&self) -> Vec<TracedEnd> {
        self.finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[derive(Debug)]
struct RecordingCall {
    calls: Arc<Mutex<Vec<TracedCall>>>,
    number: usize,
    headers: Vec<(String, String)>,
}

impl crate::trace::RequestTrace for RecordingTrace {
    fn call_started(&self, call: &crate::trace::CallStart<'_>) -> Box<dyn crate::trace::CallTrace> {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.push(TracedCall {
            model: call.model.id.clone(),
            level: call.fallback_level,
            retry: call.retry,
            outcome: None,
            first_output: None,
            response: None,
            usage: None,
        });
        let number = calls.len() - 1;
        Box::new(RecordingCall {
            calls: self.calls.clone(),
            number,
            headers: vec![("x-call".to_owned(), number.to_string())],
        })
    }

    fn skipped(&self, model: &str, fallback_level: usize, reason: crate::error::SkipReason) {
        self.skips
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((model.to_owned(), fallback_level, reason.as_str()));
    }

    fn finished(&self, finished: &crate::events::RequestFinished<'_>) {
        self.finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((
                finished.model_used.map(str::to_owned),
                finished.fallback_level,
                finished.error,
            ));
    }
}

impl crate::trace::CallTrace for RecordingCall {
    fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    fn ended(self: Box<Self>, end: &crate::trace::CallEnd<'_>) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(call) = calls.get_mut(self.number) {
            call.outcome = Some(end.outcome.as_str());
            call.first_output = end.first_output;
            call.response = end.response.as_ref().map(|r| {
                (
                    r.model.to_owned(),
                    r.id.to_owned(),
                    r.finish_reasons.iter().map(|f| (*f).to_owned()).collect(),
                )
            });
            call.usage = end.response.as_ref().and_then(|r| r.usage.clone());
        }
    }
}
