//! Fake LLM providers that fail on purpose, on 127.0.0.1 ephemeral ports.
//!
//! A [`FakeProvider`] serves the OpenAI chat completions API and the
//! Anthropic Messages API (any path ending in `/chat/completions` or
//! `/messages`), answers [`KNOWN_TEXT`](crate::answer::KNOWN_TEXT) when
//! healthy, and follows its [`Schedule`] otherwise. It runs on one of two
//! backends:
//!
//! - [`Backend::FaultServer`]: our own hyper server over raw tokio TCP, for
//!   everything — paced streams, cuts, stalls, malformed chunks, resets,
//!   hangs and a port that refuses connections while its timeline says so.
//! - [`Backend::Wiremock`]: a `wiremock` server, for HTTP-level faults
//!   (status codes with real error bodies, Retry-After, delays, request-count
//!   sequences). It buffers whole bodies, so its streams arrive in one piece.
//!
//! Every request is logged with its time since the fake's epoch, whether it
//! looked like a health probe, and the behaviour it got, so a run can count
//! upstream attempts and see when traffic left and returned.

mod anthropic;
mod fault_server;
pub mod mock;
mod openai;
mod reply;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::behaviour::{Api, Behaviour, Pacing, Prefill};
use crate::error::FakeError;
use crate::timeline::{Schedule, Timeline};

pub use reply::ENDPOINT_PATHS;

/// Which server a fake provider runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Our hyper/TCP fault server: every behaviour.
    FaultServer,
    /// wiremock: HTTP-level behaviours only ([`Behaviour::wiremock_can`]).
    Wiremock,
}

/// Everything about one fake provider: who it pretends to be and how it
/// misbehaves.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSpec {
    /// The model id it stands for in the rendered config and the report
    /// (`primary`, `secondary`...).
    pub model: String,
    /// The API the config declares for it.
    pub api: Api,
    /// The server it runs on.
    pub backend: Backend,
    /// Its behaviour over time (or over requests).
    pub schedule: Schedule,
    /// How fast it answers when healthy.
    pub pacing: Pacing,
    /// What it does with a trailing assistant message.
    pub prefill: Prefill,
    /// The context window it really enforces (prompt tokens by Backstop's
    /// estimate); a longer prompt gets a context-length error.
    pub context_window: u32,
    /// The window the rendered config declares; `None` declares the real
    /// one. Declaring more than the real window makes the upstream, not the
    /// gateway's estimate, reject long prompts.
    pub declared_context_window: Option<u32>,
    /// Refuse prompts containing [`FLAGGED_MARKER`](crate::answer::FLAGGED_MARKER)
    /// with a content-policy error.
    pub flags_content: bool,
    /// The longest a hang or a stall holds a connection before resetting
    /// it, so nothing the fake does lasts forever.
    pub hold_max: Duration,
}

impl FakeSpec {
    /// A healthy fake on the fault server: default pacing, no prefill, a
    /// 128k window, hangs held for at most 30 s.
    pub fn new(model: impl Into<String>, api: Api) -> Self {
        Self {
            model: model.into(),
            api,
            backend: Backend::FaultServer,
            schedule: Schedule::Timeline(Timeline::healthy()),
            pacing: Pacing::default(),
            prefill: Prefill::Ignore,
            context_window: 128_000,
            declared_context_window: None,
            flags_content: false,
            hold_max: Duration::from_secs(30),
        }
    }

    /// Sets the schedule.
    #[must_use]
    pub fn schedule(mut self, schedule: impl Into<Schedule>) -> Self {
        self.schedule = schedule.into();
        self
    }

    /// Sets the backend.
    #[must_use]
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the pacing.
    #[must_use]
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// Sets the prefill behaviour.
    #[must_use]
    pub fn prefill(mut self, prefill: Prefill) -> Self {
        self.prefill = prefill;
        self
    }

    /// Sets the real context window, and the declared one when given.
    #[must_use]
    pub fn context_window(mut self, real: u32, declared: Option<u32>) -> Self {
        self.context_window = real;
        self.declared_context_window = declared;
        self
    }

    /// Refuses flagged prompts.
    #[must_use]
    pub fn flags_content(mut self) -> Self {
        self.flags_content = true;
        self
    }

    /// Sets how long hangs and stalls hold a connection.
    #[must_use]
    pub fn hold_max(mut self, hold_max: Duration) -> Self {
        self.hold_max = hold_max;
        self
    }

    /// The window the config declares.
    pub fn declared_window(&self) -> u32 {
        self.declared_context_window.unwrap_or(self.context_window)
    }

    fn validate(&self) -> Result<(), FakeError> {
        self.schedule
            .validate()
            .map_err(|reason| FakeError::Schedule {
                model: self.model.clone(),
                reason,
            })?;
        if self.backend == Backend::Wiremock
            && let Some(b) = self
                .schedule
                .behaviours()
                .into_iter()
                .find(|b| !b.wiremock_can())
        {
            return Err(FakeError::Unsupported {
                model: self.model.clone(),
                behaviour: b.name(),
            });
        }
        Ok(())
    }
}

/// One request a fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRequest {
    /// When it arrived, since the fake's epoch.
    pub at: Duration,
    /// Its number among the requests since the epoch, from 0.
    pub index: u64,
    /// It asked for at most [`backstop_core::PROBE_MAX_TOKENS`] tokens: a
    /// health probe rather than a caller's request.
    pub probe: bool,
    /// It asked for a stream.
    pub stream: bool,
    /// It ended with an assistant message (a prefill to continue).
    pub prefill: bool,
    /// The behaviour it got (`healthy`, `server_error`, `context_length`...).
    pub behaviour: &'static str,
}

/// Counts over a fake's request log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// Requests that were not probes.
    pub requests: u64,
    /// Probes.
    pub probes: u64,
    /// Requests per behaviour name.
    pub by_behaviour: BTreeMap<&'static str, u64>,
}

impl FakeStats {
    fn from_log(log: &[ServedRequest]) -> Self {
        let mut stats = FakeStats::default();
        for r in log {
            if r.probe {
                stats.probes += 1;
            } else {
                stats.requests += 1;
            }
            *stats.by_behaviour.entry(r.behaviour).or_default() += 1;
        }
        stats
    }
}

struct Inner {
    epoch: Instant,
    /// Run-time switches: from this time on, this behaviour (or, `None`,
    /// the schedule again). Kept, not replaced, so past times stay
    /// answerable.
    overrides: Vec<(Duration, Option<Behaviour>)>,
    log: Vec<ServedRequest>,
}

/// State shared by a fake's handle and its server.
pub(crate) struct FakeState {
    pub(crate) spec: FakeSpec,
    inner: Mutex<Inner>,
    /// Wakes the fault server's accept loop when the behaviour may have
    /// changed outside the timeline (a switch, a new epoch).
    pub(crate) changed: Notify,
    next_id: AtomicU64,
}

impl FakeState {
    fn new(spec: FakeSpec) -> Self {
        Self {
            spec,
            inner: Mutex::new(Inner {
                epoch: Instant::now(),
                overrides: Vec::new(),
                log: Vec::new(),
            }),
            changed: Notify::new(),
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.lock().epoch)
    }

    pub(crate) fn epoch(&self) -> Instant {
        self.lock().epoch
    }

    fn override_at(inner: &Inner, t: Duration) -> Option<Behaviour> {
        inner
            .overrides
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .and_then(|(_, b)| *b)
    }

    /// The behaviour at `t` for the request numbered `index`.
    fn behaviour_for(&self, inner: &Inner, index: u64, t: Duration) -> Behaviour {
        Self::override_at(inner, t).unwrap_or_else(|| self.spec.schedule.behaviour_for(index, t))
    }

    /// Whether the port should refuse connections at `t`.
    pub(crate) fn refuses_at(&self, t: Duration) -> bool {
        let inner = self.lock();
        let index = inner.log.len() as u64;
        self.behaviour_for(&inner, index, t) == Behaviour::Refused
    }

    /// The next instant after `t` the connection-level behaviour may
    /// change.
    pub(crate) fn next_change_after(&self, t: Duration) -> Option<Duration> {
        let inner = self.lock();
        let from_overrides = inner
            .overrides
            .iter()
            .map(|(from, _)| *from)
            .filter(|from| *from > t)
            .min();
        let from_schedule = match &self.spec.schedule {
            Schedule::Timeline(timeline) => timeline.next_change_after(t),
            Schedule::Sequence { .. } => None,
        };
        match (from_overrides, from_schedule) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Logs a request arriving now and returns the behaviour it gets.
    /// `rejection` names the request-level rule (context window, content
    /// policy) that refuses this request, if any; it is logged instead of
    /// the behaviour when the behaviour would have answered.
    pub(crate) fn admit(
        &self,
        probe: bool,
        stream: bool,
        prefill: bool,
        rejection: Option<&'static str>,
    ) -> Behaviour {
        let mut inner = self.lock();
        let at = Instant::now().saturating_duration_since(inner.epoch);
        let index = inner.log.len() as u64;
        let behaviour = self.behaviour_for(&inner, index, at);
        let label = match rejection {
            Some(rule) if reply::rules_apply(behaviour) => rule,
            _ => behaviour.name(),
        };
        inner.log.push(ServedRequest {
            at,
            index,
            probe,
            stream,
            prefill,
            behaviour: label,
        });
        behaviour
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn arm(&self, epoch: Instant) {
        {
            let mut inner = self.lock();
            inner.epoch = epoch;
            inner.overrides.clear();
            inner.log.clear();
        }
        self.changed.notify_one();
    }

    fn switch(&self, behaviour: Option<Behaviour>) {
        {
            let mut inner = self.lock();
            let at = Instant::now().saturating_duration_since(inner.epoch);
            inner.overrides.push((at, behaviour));
        }
        self.changed.notify_one();
    }

    fn behaviour_now(&self) -> Behaviour {
        let inner = self.lock();
        let t = Instant::now().saturating_duration_since(inner.epoch);
        self.behaviour_for(&inner, inner.log.len() as u64, t)
    }

    fn behaviour_at(&self, t: Duration) -> Behaviour {
        let inner = self.lock();
        Self::override_at(&inner, t).unwrap_or_else(|| match &self.spec.schedule {
            Schedule::Timeline(timeline) => timeline.behaviour_at(t),
            // A count-based schedule has no answer for a time; the
            // behaviour of the request logged last before `t` stands in.
            Schedule::Sequence { .. } => {
                let index = inner.log.iter().filter(|r| r.at <= t).count() as u64;
                self.spec.schedule.behaviour_for(index.saturating_sub(1), t)
            }
        })
    }

    fn log(&self) -> Vec<ServedRequest> {
        self.lock().log.clone()
    }
}

enum Running {
    FaultServer(fault_server::FaultServer),
    Wiremock(wiremock::MockServer),
}

/// A running fake provider.
pub struct FakeProvider {
    state: Arc<FakeState>,
    addr: SocketAddr,
    running: Running,
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvider")
            .field("model", &self.state.spec.model)
            .field("addr", &self.addr)
            .field("backend", &self.state.spec.backend)
            .finish()
    }
}

impl FakeProvider {
    /// Starts the fake on an ephemeral 127.0.0.1 port. Its epoch is now
    /// until [`FakeProvider::arm`] sets another.
    pub async fn start(spec: FakeSpec) -> Result<Self, FakeError> {
        spec.validate()?;
        let model = spec.model.clone();
        let backend = spec.backend;
        let state = Arc::new(FakeState::new(spec));
        let (addr, running) = match backend {
            Backend::FaultServer => {
                let server = fault_server::FaultServer::start(state.clone())
                    .await
                    .map_err(|source| FakeError::Bind {
                        model: model.clone(),
                        source,
                    })?;
                (server.addr(), Running::FaultServer(server))
            }
            Backend::Wiremock => {
                let server = mock::start(state.clone()).await;
                (*server.address(), Running::Wiremock(server))
            }
        };
        tracing::debug!(%model, %addr, ?backend, "fake provider started");
        Ok(Self {
            state,
            addr,
            running,
        })
    }

    /// The model id it stands for.
    pub fn model(&self) -> &str {
        &self.state.spec.model
    }

    /// Its spec.
    pub fn spec(&self) -> &FakeSpec {
        &self.state.spec
    }

    /// The loopback address it serves on (refusing or not).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL in its API's convention, as a provider config expects
    /// it: `http://127.0.0.1:PORT/v1` for OpenAI, `http://127.0.0.1:PORT`
    /// for Anthropic. The fake serves `/v1/...` and bare paths alike.
    pub fn api_base_url(&self) -> String {
        match self.state.spec.api {
            Api::OpenAi => format!("http://{}/v1", self.addr),
            Api::Anthropic => format!("http://{}", self.addr),
        }
    }

    /// The full URL of its declared API's endpoint.
    pub fn endpoint_url(&self) -> String {
        match self.state.spec.api {
            Api::OpenAi => format!("http://{}/v1/chat/completions", self.addr),
            Api::Anthropic => format!("http://{}/v1/messages", self.addr),
        }
    }

    /// Starts the schedule at `epoch` and clears the request log and any
    /// run-time switch. Call it with the load's start so fake time and
    /// load time agree.
    pub fn arm(&self, epoch: Instant) {
        self.state.arm(epoch);
    }

    /// The epoch its schedule counts from.
    pub fn epoch(&self) -> Instant {
        self.state.epoch()
    }

    /// Switches to `behaviour` now, whatever the schedule says, until
    /// [`FakeProvider::resume_schedule`]. Fails when the backend cannot do
    /// it.
    pub fn set_behaviour(&self, behaviour: Behaviour) -> Result<(), FakeError> {
        if self.state.spec.backend == Backend::Wiremock && !behaviour.wiremock_can() {
            return Err(FakeError::Unsupported {
                model: self.state.spec.model.clone(),
                behaviour: behaviour.name(),
            });
        }
        self.state.switch(Some(behaviour));
        Ok(())
    }

    /// Goes back to the schedule from now on.
    pub fn resume_schedule(&self) {
        self.state.switch(None);
    }

    /// What the next request would get now.
    pub fn behaviour_now(&self) -> Behaviour {
        self.state.behaviour_now()
    }

    /// What the fake did (or would have done) at `t` since its epoch,
    /// run-time switches included.
    pub fn behaviour_at(&self, t: Duration) -> Behaviour {
        self.state.behaviour_at(t)
    }

    /// Every request since the epoch, in arrival order.
    pub fn requests(&self) -> Vec<ServedRequest> {
        self.state.log()
    }

    /// Counts over the request log.
    pub fn stats(&self) -> FakeStats {
        FakeStats::from_log(&self.state.log())
    }

    /// Stops serving and closes every connection.
    pub async fn shutdown(self) {
        match self.running {
            Running::FaultServer(server) => server.shutdown().await,
            // wiremock returns its server to a pool when dropped.
            Running::Wiremock(server) => drop(server),
        }
    }
}

/// The running fake providers of one scenario.
#[derive(Debug)]
pub struct FakeSet {
    fakes: Vec<FakeProvider>,
}

impl FakeSet {
    /// Starts one fake per spec.
    pub async fn start(specs: &[FakeSpec]) -> Result<Self, FakeError> {
        let mut seen = std::collections::HashSet::new();
        for spec in specs {
            if !seen.insert(spec.model.as_str()) {
                return Err(FakeError::Duplicate(spec.model.clone()));
            }
        }
        let mut fakes = Vec::with_capacity(specs.len());
        for spec in specs {
            match FakeProvider::start(spec.clone()).await {
                Ok(fake) => fakes.push(fake),
                Err(e) => {
                    for fake in fakes {
                        fake.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Self { fakes })
    }

    /// The fakes, in spec order.
    pub fn fakes(&self) -> &[FakeProvider] {
        &self.fakes
    }

    /// The fake standing for `model`.
    pub fn get(&self, model: &str) -> Option<&FakeProvider> {
        self.fakes.iter().find(|f| f.model() == model)
    }

    /// Model id -> base URL in each fake's API convention
    /// ([`FakeProvider::api_base_url`]), for [`crate::scenario::render_config`].
    pub fn urls(&self) -> BTreeMap<String, String> {
        self.fakes
            .iter()
            .map(|f| (f.model().to_owned(), f.api_base_url()))
            .collect()
    }

    /// Arms every fake at the same epoch.
    pub fn arm(&self, epoch: Instant) {
        for fake in &self.fakes {
            fake.arm(epoch);
        }
    }

    /// Stops every fake.
    pub async fn shutdown(self) {
        for fake in self.fakes {
            fake.shutdown().await;
        }
    }
}
