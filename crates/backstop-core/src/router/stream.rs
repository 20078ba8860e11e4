//! Streaming requests.
//!
//! Until some model produced its first output chunk, failover is invisible:
//! [`start`] tries the chain and returns only when a stream is under way.
//! After that the scenario's mid-stream policy decides what a failure
//! means: `error` ends the stream with a clean in-band error; `continue`
//! sends the partial answer as an assistant prefill to the next model that
//! can take one and streams only the continuation; `restart` (and
//! `continue` to a model without prefill support) asks the next model for
//! the whole answer and streams what the caller does not have yet, provided
//! the new answer begins with it word for word. A stream that stalls past
//! the idle timeout, ends without a finish reason, or fails in transport is
//! classified as a failure, never passed off as a complete answer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use smallvec::SmallVec;
use tokio::time::Instant;

use super::attempt::{CallDeadlines, Mode, Requests};
use super::decide::{Next, decide};
use super::guard::{BudgetHold, CallGuard};
use super::run::{RunShared, RunState, Winner, error_name};
use super::{RequestContext, Route, RouterInner};
use crate::chat::{ChatChunk, ChatRequest, Content, Message, Role, TokenTally, Usage};
use crate::error::{Attempt, FailureKind, ProviderError, RouteError};
use crate::latency::LatencyKind;
use crate::model::ModelIndex;
use crate::provider::{Call, ChunkStream, Provider};
use crate::result::Outcome;
use crate::scenario::MidStreamPolicy;
use crate::trace::ResponseFacts;

/// What is known when a stream starts: enough for response headers.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    /// How the stream is served so far (no usage yet).
    pub outcome: Outcome,
    /// The id every chunk carries.
    pub id: String,
    /// The creation time every chunk carries (Unix seconds).
    pub created: u64,
}

/// One item of a [`FallbackStream`].
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A chunk for the caller (usage is kept for the summary).
    Chunk(ChatChunk),
    /// The answer is complete, served as the outcome says (with the
    /// finishing attempt's usage). Always the last item of a good stream.
    Done(Outcome),
    /// The answer could not be completed; always the last item.
    Failed(RouteError),
}

/// A streamed answer. Dropping it cancels the upstream call.
pub struct FallbackStream {
    meta: StreamMeta,
    items: Pin<Box<dyn Stream<Item = StreamItem> + Send>>,
}

impl FallbackStream {
    /// What was known when the stream started.
    pub fn meta(&self) -> &StreamMeta {
        &self.meta
    }
}

impl std::fmt::Debug for FallbackStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackStream")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl Stream for FallbackStream {
    type Item = StreamItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamItem>> {
        self.items.as_mut().poll_next(cx)
    }
}

/// A stream that produced its first output.
pub(crate) struct Opened {
    /// Chunks up to and including the first one with output.
    head: SmallVec<[ChatChunk; 2]>,
    rest: ChunkStream,
}

/// A stream under way, with its health call and budget hold still open.
pub(crate) struct StreamStart {
    head: SmallVec<[ChatChunk; 2]>,
    rest: ChunkStream,
    call: CallGuard,
    hold: BudgetHold,
    first_token: Duration,
    deadlines: CallDeadlines,
}

/// Streaming requests: a call succeeds at its first output chunk.
pub(crate) struct StreamMode;

impl Mode for StreamMode {
    type Opened = Opened;
    type Won = StreamStart;

    async fn open(
        shared: &RunShared,
        provider: &dyn Provider,
        call: Call<'_>,
        deadlines: CallDeadlines,
    ) -> Result<Opened, ProviderError> {
        let (deadline, phase, limit) = deadlines.phase(
            deadlines.start,
            "first token",
            shared.route.policy.timeouts.first_token,
        );
        let opening = async {
            let mut rest = provider.stream(call).await?;
            let mut head = SmallVec::new();
            loop {
                match rest.next().await {
                    Some(Ok(chunk)) => {
                        let output = chunk.carries_output();
                        head.push(chunk);
                        if output {
                            return Ok(Opened { head, rest });
                        }
                    }
                    Some(Err(error)) => return Err(error),
                    None => {
                        return Err(ProviderError::new(
                            FailureKind::StreamInterrupted,
                            "the stream ended before any output",
                        ));
                    }
                }
            }
        };
        tokio::time::timeout_at(deadline, opening)
            .await
            .unwrap_or_else(|_| Err(ProviderError::timeout(phase, limit)))
    }

    fn accept(
        shared: &RunShared,
        index: ModelIndex,
        opened: Opened,
        mut call: CallGuard,
        hold: BudgetHold,
        deadlines: CallDeadlines,
        first_token: Duration,
    ) -> StreamStart {
        shared
            .recorder()
            .answered(index, LatencyKind::FirstToken, first_token);
        call.first_output = Some(first_token);
        StreamStart {
            head: opened.head,
            rest: opened.rest,
            call,
            hold,
            first_token,
            deadlines,
        }
    }
}

/// Starts a streamed answer.
pub(crate) async fn start(
    inner: Arc<RouterInner>,
    route: Arc<Route>,
    request: ChatRequest,
    cx: RequestContext,
) -> Result<FallbackStream, RouteError> {
    let shared = RunShared::new(inner, route, request, cx, true);
    let mut state = RunState::new(&shared);
    let winner = match state
        .first_success::<StreamMode>(&shared, &Requests::ORIGINAL)
        .await
    {
        Ok(winner) => winner,
        Err(error) => {
            shared
                .recorder()
                .finished(&state, None, Some(error_name(&error)), state.now);
            return Err(error);
        }
    };
    let annotation = shared.annotate(&state, winner.index, winner.level);
    let (id, created) = winner
        .won
        .head
        .first()
        .map(|c| (c.id.clone(), c.created))
        .unwrap_or_default();
    let meta = StreamMeta {
        outcome: Outcome {
            model_used: shared.model_id(winner.index).clone(),
            fallback_level: winner.level,
            attempts: state.trail.clone(),
            upstream_attempts: state.upstream_calls,
            warning: annotation.warning,
            limitation: annotation.limitation,
            usage: None,
        },
        id: id.clone(),
        created,
    };
    let mut machine = Machine {
        shared,
        state,
        current: None,
        pending: VecDeque::new(),
        id,
        created,
        delivered: Delivered::default(),
        delivered_other: false,
        verify: None,
        usage: None,
        started_choices: 0,
        finished_choices: 0,
        cut_cause: None,
        upstream: None,
        done: false,
    };
    machine.take_over(winner);
    let items = futures::stream::unfold(machine, |mut machine| async move {
        let item = machine.next_item().await?;
        Some((item, machine))
    });
    Ok(FallbackStream {
        meta,
        items: Box::pin(items),
    })
}

/// The model currently streaming.
struct Current {
    index: ModelIndex,
    level: usize,
    trail_entry: usize,
    rest: ChunkStream,
    call: CallGuard,
    hold: BudgetHold,
    first_token: Duration,
    deadlines: CallDeadlines,
    /// It was sent the prefill and streams only the continuation.
    continues: bool,
}

/// The part of an answer a restarted model must repeat before it adds
/// anything.
struct Verify {
    expected: String,
    matched: usize,
}

/// Text of choice 0 the caller has received. Its token estimate is always
/// counted (budgets are charged with it when the upstream reports no
/// usage); the text itself is kept only while something may need it: a
/// mid-stream failover to a model not tried yet (`continue` sends it as the
/// prefill, `restart` checks the new answer against it) or a traced
/// request (the call's output is recorded). Otherwise an open stream would
/// hold its whole answer for nothing until it ends.
struct Delivered {
    /// `None` once nothing can need it.
    text: Option<String>,
    tally: TokenTally,
}

impl Default for Delivered {
    fn default() -> Self {
        Self {
            text: Some(String::new()),
            tally: TokenTally::default(),
        }
    }
}

impl Delivered {
    fn push(&mut self, piece: &str) {
        self.tally.add(piece);
        if let Some(text) = &mut self.text {
            text.push_str(piece);
        }
    }

    fn is_empty(&self) -> bool {
        self.tally.is_empty()
    }

    /// The text, when it is kept.
    fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Stops keeping the text (for good: nothing that could need it comes
    /// back once gone).
    fn forget_text(&mut self) {
        self.text = None;
    }
}

struct Machine {
    shared: Arc<RunShared>,
    state: RunState,
    current: Option<Current>,
    pending: VecDeque<ChatChunk>,
    id: String,
    created: u64,
    delivered: Delivered,
    /// Something other than text (a tool call, another choice) reached the
    /// caller; such an answer cannot be continued by another model.
    delivered_other: bool,
    verify: Option<Verify>,
    usage: Option<Usage>,
    /// Choices the current stream started, and those it finished (bit i
    /// for choice i; indexes past 63 share the last bit).
    started_choices: u64,
    finished_choices: u64,
    /// The failure that cut the answer after it started.
    cut_cause: Option<ProviderError>,
    /// What the current upstream said of its answer, gathered only when
    /// its call is traced.
    upstream: Option<UpstreamFacts>,
    done: bool,
}

/// What an upstream's chunks say of its answer (before the Router rewrites
/// their id and model).
#[derive(Default)]
struct UpstreamFacts {
    model: String,
    id: String,
    finish_reasons: Vec<String>,
}

/// Why a restarted answer could not be used.
fn diverged(model: &str) -> ProviderError {
    ProviderError::new(
        FailureKind::StreamInterrupted,
        format!("`{model}` restarted the answer differently from what was already streamed"),
    )
}

impl Machine {
    /// Whether every choice the current stream started has finished.
    fn finished(&self) -> bool {
        self.started_choices != 0 && self.started_choices & !self.finished_choices == 0
    }

    /// An estimate of what the current call cost so far, for budgets when
    /// the upstream reported no usage (or was cut off before it could).
    fn streamed_usage(&self) -> Usage {
        Usage::new(self.shared.prompt_tokens, self.delivered.tally.tokens())
    }

    /// Whether the delivered text may still be needed: a traced request
    /// records it; a mid-stream failover sends or checks it, and can
    /// happen only when the policy allows one and a model is left to try.
    fn text_needed(&self) -> bool {
        let shared = &self.shared;
        shared.cx.trace.is_some()
            || (shared.route.policy.mid_stream != MidStreamPolicy::Error
                && !many_choices(&shared.request)
                && self.state.cursor < self.state.order.len())
    }

    fn take_over(&mut self, winner: Winner<StreamStart>) {
        let start = winner.won;
        self.pending.extend(start.head);
        self.started_choices = 0;
        self.finished_choices = 0;
        self.usage = None;
        self.upstream = start.call.traced().then(UpstreamFacts::default);
        self.current = Some(Current {
            index: winner.index,
            level: winner.level,
            trail_entry: winner.trail_entry,
            rest: start.rest,
            call: start.call,
            hold: start.hold,
            first_token: start.first_token,
            deadlines: start.deadlines,
            continues: winner.continues,
        });
        if !self.text_needed() {
            self.delivered.forget_text();
        }
    }

    async fn next_item(&mut self) -> Option<StreamItem> {
        loop {
            if self.done {
                return None;
            }
            if let Some(chunk) = self.pending.pop_front() {
                match self.process(chunk) {
                    Ok(Some(chunk)) => return Some(StreamItem::Chunk(chunk)),
                    Ok(None) => continue,
                    Err(error) => match Box::pin(self.fail(error)).await {
                        Some(item) => return Some(item),
                        None => continue,
                    },
                }
            }
            let idle = self.shared.route.policy.timeouts.idle;
            let current = self.current.as_mut()?;
            // A chunk already at hand (most of an upstream read) is taken
            // without reading the clock or arming the idle timer.
            let next = match current.rest.next().now_or_never() {
                Some(next) => Ok(next),
                None => {
                    let (deadline, phase, limit) =
                        current.deadlines.phase(Instant::now(), "next chunk", idle);
                    tokio::time::timeout_at(deadline, current.rest.next())
                        .await
                        .map_err(|_| (phase, limit))
                }
            };
            let failure = match next {
                Ok(Some(Ok(chunk))) => {
                    self.pending.push_back(chunk);
                    continue;
                }
                Ok(None) if self.finished() => return Some(self.succeed()),
                Ok(None) => ProviderError::new(
                    FailureKind::StreamInterrupted,
                    "the stream ended without a finish reason",
                ),
                Ok(Some(Err(error))) => error,
                Err((phase, limit)) => ProviderError::timeout(phase, limit),
            };
            if self.finished() {
                // The answer itself is complete; only its tail (usage, the
                // terminator) went missing.
                tracing::debug!(error = %failure, "stream tail lost after finish");
                return Some(self.succeed());
            }
            // Boxed: a failover's state (a whole new model call) is large
            // and rare, and would otherwise sit inside every open stream.
            if let Some(item) = Box::pin(self.fail(failure)).await {
                return Some(item);
            }
        }
    }

    /// Rewrites a chunk for the caller and checks a restarted answer
    /// against what was delivered. `Ok(None)` drops a chunk with nothing
    /// left to show.
    fn process(&mut self, mut chunk: ChatChunk) -> Result<Option<ChatChunk>, ProviderError> {
        let Some(current) = &self.current else {
            return Ok(None);
        };
        let model = self.shared.model_id(current.index);
        let resumed = current.continues || self.verify.is_some() || !self.delivered.is_empty();
        // The upstream's text can be written through (with only `model`
        // rewritten) unless this rewrite changes anything else.
        let mut keeps_raw = chunk.raw.is_some()
            && chunk.usage.is_none()
            && self.verify.is_none()
            && chunk.id == self.id
            && chunk.created == self.created;
        if let Some(usage) = chunk.usage.take() {
            self.usage = Some(usage);
        }
        for choice in &chunk.choices {
            let bit = 1u64 << choice.index.min(63);
            self.started_choices |= bit;
            if choice.finish_reason.is_some() {
                self.finished_choices |= bit;
            }
        }
        if let Some(upstream) = &mut self.upstream {
            if upstream.id.is_empty() {
                upstream.id.clone_from(&chunk.id);
                upstream.model.clone_from(&chunk.model);
            }
            upstream
                .finish_reasons
                .extend(chunk.choices.iter().filter_map(|c| c.finish_reason.clone()));
        }
        replace(&mut chunk.id, &self.id);
        replace(&mut chunk.model, model);
        chunk.created = self.created;

        for choice in &mut chunk.choices {
            if resumed && choice.delta.role.take().is_some() {
                keeps_raw = false;
            }
            if choice.index != 0 {
                self.delivered_other = true;
                continue;
            }
            if let Some(verify) = &mut self.verify {
                let text = choice.delta.content.take().unwrap_or_default();
                let rest = verify.expected.get(verify.matched..).unwrap_or_default();
                if text.len() <= rest.len() {
                    if !rest.as_bytes().starts_with(text.as_bytes()) {
                        return Err(diverged(model));
                    }
                    verify.matched += text.len();
                    if verify.matched == verify.expected.len() {
                        // Caught up exactly: what follows is new.
                        self.verify = None;
                    }
                } else {
                    let Some(new) = text.strip_prefix(rest) else {
                        return Err(diverged(model));
                    };
                    choice.delta.content = Some(new.to_owned());
                    self.verify = None;
                }
                if self.verify.is_some() && choice.finish_reason.is_some() {
                    return Err(diverged(model));
                }
            }
            if let Some(text) = &choice.delta.content {
                self.delivered.push(text);
            }
            if choice.delta.carries_extra() {
                self.delivered_other = true;
            }
        }
        let choices = chunk.choices.len();
        chunk.choices.retain(|c| {
            c.delta.role.is_some()
                || c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
                || c.delta.carries_extra()
                || c.finish_reason.is_some()
        });
        if !keeps_raw || chunk.choices.len() != choices {
            chunk.raw = None;
        }
        Ok((!chunk.choices.is_empty()).then_some(chunk))
    }

    /// The current stream finished properly.
    fn succeed(&mut self) -> StreamItem {
        self.done = true;
        let Some(current) = self.current.take() else {
            return self.abort(None);
        };
        let now = Instant::now();
        let total = current.call.elapsed_at(now);
        let streamed = self.streamed_usage();
        let upstream = self.upstream.take();
        let facts = upstream.as_ref().map(|u| ResponseFacts {
            model: &u.model,
            id: &u.id,
            finish_reasons: u.finish_reasons.iter().map(String::as_str).collect(),
            usage: self.usage.clone(),
            output: self.delivered.text(),
        });
        self.shared.recorder().stream_succeeded(
            current.index,
            current.call,
            current.hold,
            current.first_token,
            total,
            self.usage.as_ref().unwrap_or(&streamed),
            facts,
        );
        if let Some(entry) = self.state.trail.get_mut(current.trail_entry) {
            entry.duration = total;
        }
        let annotation = self
            .shared
            .annotate(&self.state, current.index, current.level);
        self.shared.recorder().finished(
            &self.state,
            Some((current.index, current.level)),
            None,
            now,
        );
        StreamItem::Done(Outcome {
            model_used: self.shared.model_id(current.index).clone(),
            fallback_level: current.level,
            attempts: std::mem::take(&mut self.state.trail),
            upstream_attempts: self.state.upstream_calls,
            warning: annotation.warning,
            limitation: annotation.limitation,
            usage: self.usage.take(),
        })
    }

    /// The current stream failed after output reached the caller: record
    /// it, then continue or restart on the next model, or end cleanly.
    async fn fail(&mut self, error: ProviderError) -> Option<StreamItem> {
        let current = self.current.take()?;
        let now = Instant::now();
        self.state.now = now;
        let elapsed = current.call.elapsed_at(now);
        tracing::debug!(model = %self.shared.model_id(current.index), %error, "stream failed mid-answer");
        // Whether the model was already failing does not matter here: a
        // stream cut mid-answer is never retried on the same model.
        let _outage =
            self.shared
                .recorder()
                .call_failed(current.index, current.call, &error, elapsed);
        // The cut attempt still cost something: settle what was streamed.
        current.hold.settle(Some(&self.streamed_usage()));
        if let Some(entry) = self.state.trail.get_mut(current.trail_entry) {
            *entry = Attempt::failed(entry.model.clone(), &error, elapsed);
        }
        self.state.note_failure(error.clone());
        // A failure the table stops on (a content policy refusal, a bad
        // request) ends the answer with that reason, whatever the
        // mid-stream policy: no other model is asked to finish it.
        let stops = decide(&error, u32::MAX, &self.shared.route.policy, 0.0, true) == Next::Stop;
        if stops || self.cut_cause.is_none() {
            self.cut_cause = Some(error);
        }

        let policy = self.shared.route.policy.mid_stream;
        if stops
            || policy == MidStreamPolicy::Error
            || self.delivered_other
            || many_choices(&self.shared.request)
        {
            return Some(self.abort(None));
        }
        // The text is kept whenever a model is left to try (see
        // `text_needed`); without one, `first_success` finds no candidate.
        let delivered = self.delivered.text().unwrap_or_default();
        let prefill = (policy == MidStreamPolicy::Continue && !self.delivered.is_empty())
            .then(|| Arc::new(with_prefill(&self.shared.request, delivered)));
        let requests = Requests { prefill };
        let shared = self.shared.clone();
        match self
            .state
            .first_success::<StreamMode>(&shared, &requests)
            .await
        {
            Ok(winner) => {
                debug_assert!(
                    self.delivered.text().is_some(),
                    "a model was left to try, so the delivered text was kept"
                );
                tracing::info!(
                    model = %self.shared.model_id(winner.index),
                    continues = winner.continues,
                    "stream resumed on another model"
                );
                self.verify = (!winner.continues && !self.delivered.is_empty()).then(|| Verify {
                    expected: self.delivered.text().unwrap_or_default().to_owned(),
                    matched: 0,
                });
                self.take_over(winner);
                None
            }
            Err(error) => Some(self.abort(Some(error))),
        }
    }

    /// Ends the stream with a clean error carrying the whole trail.
    fn abort(&mut self, later: Option<RouteError>) -> StreamItem {
        self.done = true;
        self.current = None;
        let mut attempts = std::mem::take(&mut self.state.trail);
        if let Some(later) = later {
            attempts.extend(later.attempts().iter().cloned());
        }
        let cause = self.cut_cause.clone().unwrap_or_else(|| {
            ProviderError::new(FailureKind::StreamInterrupted, "the stream was cut")
        });
        let error = RouteError::StreamAborted { cause, attempts };
        self.shared.recorder().finished(
            &self.state,
            None,
            Some(error_name(&error)),
            Instant::now(),
        );
        StreamItem::Failed(error)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.done {
            // The caller went away: charge what was streamed, and the call's
            // guard cancels it.
            if let Some(current) = self.current.take() {
                current.hold.settle(Some(&self.streamed_usage()));
            }
            self.shared
                .recorder()
                .finished(&self.state, None, Some("cancelled"), Instant::now());
        }
    }
}

/// Overwrites `target` with `value`, reusing its allocation.
fn replace(target: &mut String, value: &str) {
    if target != value {
        target.clear();
        target.push_str(value);
    }
}

/// Whether the caller asked for several choices (`n` > 1), which no other
/// model can continue faithfully.
fn many_choices(request: &ChatRequest) -> bool {
    request
        .extra
        .get("n")
        .and_then(serde_json::Value::as_u64)
        .is_some_and(|n| n > 1)
}

/// The caller's request with the partial answer as a trailing assistant
/// message (appended to the caller's own prefill, if it had one).
pub(crate) fn with_prefill(request: &ChatRequest, partial: &str) -> ChatRequest {
    let mut request = request.clone();
    match request.messages.last_mut() {
        Some(last) if last.role == Role::Assistant => {
            let mut text = last.text_content();
            text.push_str(partial);
            last.content = Some(Content::Text(text));
        }
        _ => request
            .messages
            .push(Message::text(Role::Assistant, partial)),
    }
    request
}
