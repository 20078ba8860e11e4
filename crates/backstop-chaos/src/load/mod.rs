//! An open-loop, fixed-rate load generator for any OpenAI-compatible base
//! URL.
//!
//! Request `i` is meant to leave at `epoch + i / rate`, and its latency is
//! measured from that intended time, not from when it actually left: a
//! stalled gateway (or a starved load generator) cannot hide its queueing
//! (no coordinated omission). Every loop is bounded: at most `requests`
//! are issued, none after `max_duration`, and each one is abandoned (and
//! counted lost) at its deadline.

mod check;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::answer::{FLAGGED_MARKER, prompt_of_size};
use crate::error::LoadError;
use crate::scenario::{RequestMix, ScenarioSpec};

pub use check::{AnswerCheck, LostReason, Outcome, RequestRecord, TrailEntry};
use check::{BackstopHeaders, StreamReader, classify_completion, classify_error};

/// What to send, how fast, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadPlan {
    /// The `model` field of every request (a scenario name).
    pub model: String,
    /// Requests per second.
    pub rate_per_sec: f64,
    /// At most this many requests.
    pub requests: u64,
    /// No request is issued later than this after the epoch.
    pub max_duration: Duration,
    /// A request unanswered this long after its intended send time is lost.
    pub deadline: Duration,
    /// The request mix.
    pub mix: RequestMix,
    /// At most this many requests in flight; further ones wait (their
    /// latency still counts from their intended time).
    pub max_in_flight: usize,
    /// Requests meant to leave together: request `i` is meant to leave at
    /// `floor(i / burst) x burst / rate`, so bursts of `burst` requests
    /// arrive at once and the mean rate stays `rate`. 1 spaces every
    /// request evenly.
    pub burst: u64,
    /// Send each request within microseconds of its intended time: the
    /// last [`PRECISE_WINDOW`] of each wait yields to other tasks instead
    /// of sleeping on tokio's 1 ms timer wheel (which sends up to a tick
    /// late, or later when the idle CPU is slow to wake, and adds that to
    /// every latency). Keeps the generator's thread busy while it waits:
    /// for sub-millisecond measurements on a core of its own, not for a
    /// paused clock.
    pub precise_start: bool,
}

impl LoadPlan {
    /// The plan a scenario asks for: its rate and count, sending allowed
    /// for up to 1.5 x the nominal duration plus a second.
    pub fn for_scenario(spec: &ScenarioSpec) -> Self {
        let load = spec.load();
        Self {
            model: spec.name.to_owned(),
            rate_per_sec: load.rate_per_sec,
            requests: load.requests,
            max_duration: load.duration().mul_f64(1.5) + Duration::from_secs(1),
            deadline: spec.request_deadline(),
            mix: spec.mix,
            max_in_flight: 1024,
            burst: 1,
            precise_start: false,
        }
    }

    fn validate(&self) -> Result<(), LoadError> {
        if !(self.rate_per_sec.is_finite() && self.rate_per_sec > 0.0) {
            return Err(LoadError::Plan(format!(
                "rate must be positive, got {}",
                self.rate_per_sec
            )));
        }
        if self.requests == 0 {
            return Err(LoadError::Plan("requests must be at least 1".into()));
        }
        if self.max_duration.is_zero() || self.deadline.is_zero() {
            return Err(LoadError::Plan(
                "max_duration and deadline must be positive".into(),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(LoadError::Plan("max_in_flight must be at least 1".into()));
        }
        if self.burst == 0 {
            return Err(LoadError::Plan("burst must be at least 1".into()));
        }
        Ok(())
    }

    /// When request `index` is meant to leave, after the epoch.
    pub fn intended_at(&self, index: u64) -> Duration {
        let burst = self.burst.max(1);
        Duration::from_secs_f64((index - index % burst) as f64 / self.rate_per_sec)
    }
}

/// Where the load goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The OpenAI-compatible base URL (`http://127.0.0.1:8080/v1`); requests
    /// go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// Sent as a bearer token when set.
    pub api_key: Option<String>,
}

impl Target {
    /// A target without a key.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
        }
    }

    fn endpoint(&self) -> Result<reqwest::Url, LoadError> {
        let url = format!("{}/chat/completions", self.base_url.trim_end_matches('/'));
        reqwest::Url::parse(&url).map_err(|e| LoadError::Url {
            url,
            reason: e.to_string(),
        })
    }
}

/// Every request of one load run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadRun {
    /// One record per issued request, by index.
    pub records: Vec<RequestRecord>,
    /// From the epoch to the last answer.
    pub elapsed: Duration,
}

/// Drives a [`LoadPlan`] at a [`Target`].
#[derive(Debug, Clone)]
pub struct LoadGenerator {
    client: reqwest::Client,
    plan: LoadPlan,
    check: Arc<AnswerCheck>,
    progress: bool,
    label: String,
}

/// The four request bodies of a mix (streaming or not, flagged or not).
struct Bodies {
    plain: Bytes,
    stream: Bytes,
    flagged: Bytes,
    flagged_stream: Bytes,
}

impl Bodies {
    fn new(plan: &LoadPlan) -> Self {
        let prompt = prompt_of_size(plan.mix.prompt_tokens);
        let flagged_prompt = format!("{prompt} {FLAGGED_MARKER}");
        let body = |prompt: &str, stream: bool| {
            let mut request = backstop_core::ChatRequest::user(plan.model.clone(), prompt);
            request.max_tokens = plan.mix.max_tokens;
            if stream {
                request.stream = Some(true);
                request.stream_options = Some(backstop_core::StreamOptions {
                    include_usage: true,
                    extra: backstop_core::Extra::new(),
                });
            }
            Bytes::from(serde_json::to_vec(&request).unwrap_or_default())
        };
        Self {
            plain: body(&prompt, false),
            stream: body(&prompt, true),
            flagged: body(&flagged_prompt, false),
            flagged_stream: body(&flagged_prompt, true),
        }
    }

    fn pick(&self, stream: bool, flagged: bool) -> Bytes {
        match (stream, flagged) {
            (false, false) => self.plain.clone(),
            (true, false) => self.stream.clone(),
            (false, true) => self.flagged.clone(),
            (true, true) => self.flagged_stream.clone(),
        }
    }
}

impl LoadGenerator {
    /// A generator for `plan`, checking answers with `check`; no progress
    /// bar.
    pub fn new(plan: LoadPlan, check: AnswerCheck) -> Result<Self, LoadError> {
        plan.validate()?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(plan.max_in_flight)
            .build()
            .map_err(LoadError::Client)?;
        Ok(Self {
            client,
            label: plan.model.clone(),
            plan,
            check: Arc::new(check),
            progress: false,
        })
    }

    /// A generator for another plan that shares this one's HTTP client
    /// (and its open connections), so a warm-up run can precede a
    /// measured one.
    pub fn with_plan(&self, plan: LoadPlan) -> Result<Self, LoadError> {
        plan.validate()?;
        Ok(Self {
            client: self.client.clone(),
            label: plan.model.clone(),
            plan,
            check: self.check.clone(),
            progress: self.progress,
        })
    }

    /// Shows (or hides) a progress bar on stderr.
    #[must_use]
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// The plan.
    pub fn plan(&self) -> &LoadPlan {
        &self.plan
    }

    fn progress_bar(&self) -> ProgressBar {
        let target = if self.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(self.plan.requests), target);
        if let Ok(style) = ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(self.label.clone());
        bar
    }

    /// Sends the plan's requests at `target`, request `i` meant to leave at
    /// `epoch + i / rate`. Returns when every issued request has an
    /// outcome.
    pub async fn run(&self, target: &Target, epoch: Instant) -> Result<LoadRun, LoadError> {
        let url = target.endpoint()?;
        let bodies = Arc::new(Bodies::new(&self.plan));
        let permits = Arc::new(Semaphore::new(self.plan.max_in_flight));
        let bar = self.progress_bar();
        let stop_issuing = epoch + self.plan.max_duration;
        let mut tasks = JoinSet::new();
        let mut records = Vec::with_capacity(usize::try_from(self.plan.requests).unwrap_or(0));
        let mut lost = 0u64;

        for index in 0..self.plan.requests {
            let intended_at = self.plan.intended_at(index);
            let intended = epoch + intended_at;
            if intended > stop_issuing {
                break;
            }
            if self.plan.precise_start {
                wait_precisely(intended).await;
            } else {
                tokio::time::sleep_until(intended).await;
            }
            let Ok(Ok(permit)) =
                tokio::time::timeout_at(stop_issuing, permits.clone().acquire_owned()).await
            else {
                tracing::warn!(
                    index,
                    "load generator stopped issuing: in-flight limit held past max_duration"
                );
                break;
            };
            let stream = self.plan.mix.streams(index);
            let flagged = self.plan.mix.flagged(index);
            let request = Request {
                client: self.client.clone(),
                url: url.clone(),
                api_key: target.api_key.clone(),
                body: bodies.pick(stream, flagged),
                check: self.check.clone(),
                index,
                stream,
                flagged,
                intended,
                intended_at,
                deadline: intended + self.plan.deadline,
            };
            tasks.spawn(async move {
                let record = request.send().await;
                drop(permit);
                record
            });
            while let Some(done) = tasks.try_join_next() {
                collect(done, &mut records, &mut lost, &bar);
            }
        }
        while let Some(done) = tasks.join_next().await {
            collect(done, &mut records, &mut lost, &bar);
        }
        bar.finish_and_clear();
        records.sort_by_key(|r| r.index);
        Ok(LoadRun {
            records,
            elapsed: epoch.elapsed(),
        })
    }
}

/// How much of each wait [`LoadPlan::precise_start`] spends yielding
/// rather than sleeping: well over the timer wheel's 1 ms resolution,
/// because a thread that sleeps can take longer still to wake up on a
/// virtual machine's idle CPU.
pub const PRECISE_WINDOW: Duration = Duration::from_millis(3);

/// Sleeps until shortly before `until`, then yields until it passes. The
/// yielding part is bounded by the real clock to [`PRECISE_WINDOW`].
async fn wait_precisely(until: Instant) {
    let now = Instant::now();
    if until <= now {
        return;
    }
    if until - now > PRECISE_WINDOW {
        tokio::time::sleep_until(until - PRECISE_WINDOW).await;
    }
    let left = until.saturating_duration_since(Instant::now());
    let spin_until = std::time::Instant::now() + left.min(PRECISE_WINDOW);
    while std::time::Instant::now() < spin_until {
        tokio::task::yield_now().await;
    }
}

fn collect(
    done: Result<RequestRecord, tokio::task::JoinError>,
    records: &mut Vec<RequestRecord>,
    lost: &mut u64,
    bar: &ProgressBar,
) {
    match done {
        Ok(record) => {
            if matches!(record.outcome, Outcome::Lost(_)) {
                *lost += 1;
                bar.set_message(format!("lost {lost}"));
            }
            records.push(record);
        }
        Err(e) => tracing::error!(error = %e, "a request task panicked"),
    }
    bar.inc(1);
}

struct Request {
    client: reqwest::Client,
    url: reqwest::Url,
    api_key: Option<String>,
    body: Bytes,
    check: Arc<AnswerCheck>,
    index: u64,
    stream: bool,
    flagged: bool,
    intended: Instant,
    intended_at: Duration,
    deadline: Instant,
}

impl Request {
    async fn send(self) -> RequestRecord {
        let mut builder = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone());
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let exchange = self.exchange(builder);
        match tokio::time::timeout_at(self.deadline, exchange).await {
            Ok(verdict) => {
                let latency = self.intended.elapsed();
                RequestRecord {
                    index: self.index,
                    stream: self.stream,
                    flagged: self.flagged,
                    intended_at: self.intended_at,
                    latency,
                    first_text: verdict.first_text,
                    outcome: verdict.outcome,
                    model: verdict.model,
                    fallback_level: verdict.fallback_level,
                    attempts_header: verdict.attempts_header,
                    trail: verdict.trail,
                    usage_present: verdict.usage_present,
                    missing_done: verdict.missing_done,
                }
            }
            Err(_) => RequestRecord::lost(
                self.index,
                self.stream,
                self.flagged,
                self.intended_at,
                self.intended.elapsed(),
                LostReason::Deadline,
            ),
        }
    }

    async fn exchange(&self, builder: reqwest::RequestBuilder) -> check::Verdict {
        let transport = |headers: &BackstopHeaders| check::Verdict {
            outcome: Outcome::Lost(LostReason::Transport),
            model: headers.model.clone(),
            fallback_level: headers.fallback_level,
            attempts_header: headers.attempts,
            trail: Vec::new(),
            usage_present: false,
            missing_done: false,
            first_text: None,
        };
        let mut response = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(index = self.index, error = %e, "request failed in transport");
                return transport(&BackstopHeaders::default());
            }
        };
        let status = response.status().as_u16();
        let headers = BackstopHeaders::from_headers(response.headers());
        if !response.status().is_success() {
            return match response.bytes().await {
                Ok(body) => classify_error(status, &headers, &body),
                Err(_) => transport(&headers),
            };
        }
        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_stream {
            return match response.bytes().await {
                Ok(body) => {
                    let mut verdict = classify_completion(&self.check, &headers, &body);
                    if self.stream && verdict.outcome == Outcome::Succeeded {
                        // Asked for a stream, got a whole body: the answer
                        // is complete, but a streaming client would choke.
                        verdict.outcome = Outcome::Lost(LostReason::Malformed);
                    }
                    verdict
                }
                Err(_) => transport(&headers),
            };
        }
        let mut reader = StreamReader::new(&self.check, &headers);
        let mut transport_error = false;
        loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    if reader.feed(&bytes, self.intended.elapsed()) {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(index = self.index, error = %e, "stream ended with a transport error");
                    transport_error = true;
                    break;
                }
            }
        }
        reader.finish(transport_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How late a real timer wakes depends on the machine's load, so only
    /// the property that holds everywhere is tested: never early.
    #[tokio::test]
    async fn precise_wait_is_never_early() {
        for i in 0..20u32 {
            let until = Instant::now() + Duration::from_micros(2500 + 337 * u64::from(i));
            wait_precisely(until).await;
            let now = Instant::now();
            assert!(now >= until, "woke {:?} early", until - now);
        }
    }
}
