//! The Router: runs a request down its scenario's fallback chain.
//!
//! For each request it orders the chain (Selector), skips models whose
//! circuit is open (HealthPolicy), that the request cannot afford
//! (BudgetPolicy), that are at their rate limit (RateLimiter) or that
//! cannot serve it (context window, streaming,
//! tools), and calls the rest in turn under the scenario's timeouts and an
//! end-to-end deadline. Each failure's [`FailureKind`](crate::FailureKind)
//! decides between a same-model retry, falling over, routing only to a larger
//! context window, and returning the upstream's error. Every outcome is
//! recorded to health, latency stats, budget and the event sinks, and the
//! ResultHandler annotates the answer.

mod attempt;
mod candidates;
mod complete;
mod decide;
mod embed;
mod guard;
mod hedge;
mod record;
mod run;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::budget::{BudgetPolicy, OverBudget};
use crate::chat::{ChatRequest, Usage};
use crate::clock::SharedClock;
use crate::error::{ProviderError, RouteError};
use crate::events::{Event, EventSink};
use crate::facts::RequestFacts;
use crate::fleet::{FleetState, LocalState};
use crate::health::HealthPolicy;
use crate::latency::LatencyStats;
use crate::model::{ModelIndex, ModelSpec};
use crate::provider::Provider;
use crate::rate_limit::RateLimiter;
use crate::result::{FallbackResult, ResultHandler};
use crate::scenario::{RoutePolicy, Scenario, Timeouts};
use crate::selector::Selector;
use crate::trace::RequestTrace;

pub use embed::EmbeddingsResult;
pub use stream::{FallbackStream, StreamItem, StreamMeta};

/// The four strategies a route runs with.
#[derive(Debug, Clone)]
pub struct Strategies {
    /// Orders the chain.
    pub selector: Arc<dyn Selector>,
    /// Admits models and learns from outcomes.
    pub health: Arc<dyn HealthPolicy>,
    /// Holds and settles spend.
    pub budget: Arc<dyn BudgetPolicy>,
    /// Annotates degraded answers.
    pub result: Arc<dyn ResultHandler>,
}

/// What a strategy factory may know: the model table, the clock, the
/// shared latency estimates and the fleet state.
#[derive(Debug, Clone)]
pub struct StrategyContext {
    /// Every model, by [`ModelIndex`].
    pub models: Arc<[ModelSpec]>,
    /// The clock every strategy reads.
    pub clock: SharedClock,
    /// Latency estimates the Router feeds.
    pub latency: Arc<LatencyStats>,
    /// What the replicas of a fleet share ([`LocalState`]: nothing).
    pub fleet: Arc<dyn FleetState>,
}

impl StrategyContext {
    /// A context for these models.
    pub fn new(models: Vec<ModelSpec>, clock: SharedClock) -> Self {
        let latency = Arc::new(LatencyStats::new(models.len(), clock.clone()));
        Self {
            models: models.into(),
            clock,
            latency,
            fleet: Arc::new(LocalState),
        }
    }

    /// The same context, sharing state through `fleet`.
    pub fn with_fleet(mut self, fleet: Arc<dyn FleetState>) -> Self {
        self.fleet = fleet;
        self
    }

    /// The index of the model with this id.
    pub fn index_of(&self, id: &str) -> Option<ModelIndex> {
        self.models.iter().position(|m| m.id == id)
    }
}

/// Who is calling, for budgets and logs.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// A label for the caller's API key (never the key itself).
    pub caller: Option<Arc<str>>,
    /// The gateway's request id.
    pub request_id: Option<Arc<str>>,
    /// Follows the request's upstream calls (a distributed tracer); `None`
    /// costs nothing.
    pub trace: Option<Arc<dyn RequestTrace>>,
}

/// A scenario (or a single model) ready to serve.
#[derive(Debug)]
pub struct Route {
    /// The name requests use.
    pub name: Arc<str>,
    /// Model indexes in configured order.
    pub chain: Box<[ModelIndex]>,
    /// Timeouts, retries, mid-stream and hedging policy.
    pub policy: RoutePolicy,
    /// The strategies.
    pub strategies: Strategies,
    /// Whether this is a model's single-model route rather than a scenario.
    pub single_model: bool,
}

struct ModelEntry {
    id: Arc<str>,
    provider: Arc<dyn Provider>,
}

pub(crate) struct RouterInner {
    ctx: StrategyContext,
    entries: Box<[ModelEntry]>,
    /// By model: whether its last call failed (on any route). Written and
    /// read only by the [`Recorder`](record::Recorder), which hands it to
    /// `HealthPolicy::outage_in_progress`: a failure right after another is
    /// an outage in progress, not a blip to retry.
    last_failed: Box<[AtomicBool]>,
    routes: HashMap<Box<str>, Arc<Route>>,
    scenario_names: Box<[Arc<str>]>,
    sinks: Box<[Arc<dyn EventSink>]>,
    probe_budget: Option<Arc<dyn BudgetPolicy>>,
    /// The models' quotas and the callers' limits, if any is set.
    rate_limiter: Option<Arc<dyn RateLimiter>>,
}

impl RouterInner {
    fn spec(&self, index: ModelIndex) -> &ModelSpec {
        &self.ctx.models[index]
    }

    fn emit(&self, event: &Event<'_>) {
        for sink in self.sinks.iter() {
            sink.record(event);
        }
    }
}

/// A problem found while assembling a Router.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A model names a provider that was not registered.
    #[error("model `{model}` uses provider `{provider}`, which is not registered")]
    UnknownProvider {
        /// The model.
        model: String,
        /// The missing provider.
        provider: String,
    },
    /// A chain names a model that does not exist.
    #[error("scenario `{scenario}` names model `{model}`, which does not exist")]
    UnknownModel {
        /// The scenario.
        scenario: String,
        /// The missing model.
        model: String,
    },
    /// A scenario has no models.
    #[error("scenario `{0}` has an empty chain")]
    EmptyChain(String),
    /// Two scenarios share a name.
    #[error("scenario `{0}` is defined twice")]
    DuplicateScenario(String),
    /// Two models share an id.
    #[error("model `{0}` is defined twice")]
    DuplicateModel(String),
}

/// Why a background probe says nothing good about a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    /// The probe was not sent: the budget refused its cost. This says
    /// nothing about the model's health.
    #[error("probe not sent: {0}")]
    NotSent(#[from] OverBudget),
    /// The Router has no model with this index.
    #[error("no model with index {0}")]
    NoSuchModel(ModelIndex),
    /// The upstream failed the probe.
    #[error(transparent)]
    Failed(ProviderError),
}

/// Assembles a [`Router`].
pub struct RouterBuilder {
    ctx: StrategyContext,
    providers: HashMap<String, Arc<dyn Provider>>,
    scenarios: Vec<(Scenario, Strategies)>,
    single_model: Option<(RoutePolicy, Strategies)>,
    sinks: Vec<Arc<dyn EventSink>>,
    probe_budget: Option<Arc<dyn BudgetPolicy>>,
    rate_limiter: Option<Arc<dyn RateLimiter>>,
}

impl RouterBuilder {
    /// Starts a Router over the context's models.
    pub fn new(ctx: StrategyContext) -> Self {
        Self {
            ctx,
            providers: HashMap::new(),
            scenarios: Vec::new(),
            single_model: None,
            sinks: Vec::new(),
            probe_budget: None,
            rate_limiter: None,
        }
    }

    /// The rate limits every route's calls are held to (the models'
    /// quotas, the callers' limits). Without it: none.
    #[must_use]
    pub fn rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.rate_limiter = Some(limiter);
        self
    }

    /// The budget background probes are charged to. Without it: the
    /// single-model routes' budget, else the first scenario's.
    #[must_use]
    pub fn probe_budget(mut self, budget: Arc<dyn BudgetPolicy>) -> Self {
        self.probe_budget = Some(budget);
        self
    }

    /// Registers the provider that serves models whose `provider` is `id`.
    #[must_use]
    pub fn provider(mut self, id: impl Into<String>, provider: Arc<dyn Provider>) -> Self {
        self.providers.insert(id.into(), provider);
        self
    }

    /// Adds a scenario.
    #[must_use]
    pub fn scenario(mut self, scenario: Scenario, strategies: Strategies) -> Self {
        self.scenarios.push((scenario, strategies));
        self
    }

    /// Lets every model serve requests that name it directly, with this
    /// policy and these strategies (unless a scenario has the same name).
    #[must_use]
    pub fn single_model_routes(mut self, policy: RoutePolicy, strategies: Strategies) -> Self {
        self.single_model = Some((policy, strategies));
        self
    }

    /// Adds an event sink.
    #[must_use]
    pub fn event_sink(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Checks the wiring and builds the Router.
    pub fn build(self) -> Result<Router, BuildError> {
        let models = &self.ctx.models;
        let mut by_id: HashMap<&str, ModelIndex> = HashMap::with_capacity(models.len());
        let mut entries = Vec::with_capacity(models.len());
        for (index, spec) in models.iter().enumerate() {
            if by_id.insert(spec.id.as_str(), index).is_some() {
                return Err(BuildError::DuplicateModel(spec.id.clone()));
            }
            let provider = self.providers.get(&spec.provider).cloned().ok_or_else(|| {
                BuildError::UnknownProvider {
                    model: spec.id.clone(),
                    provider: spec.provider.clone(),
                }
            })?;
            entries.push(ModelEntry {
                id: spec.id.as_str().into(),
                provider,
            });
        }
        let mut routes: HashMap<Box<str>, Arc<Route>> = HashMap::new();
        let mut scenario_names = Vec::with_capacity(self.scenarios.len());
        let first_scenario_budget = self.scenarios.first().map(|(_, s)| s.budget.clone());
        for (scenario, strategies) in self.scenarios {
            if scenario.chain.is_empty() {
                return Err(BuildError::EmptyChain(scenario.name));
            }
            let chain = scenario
                .chain
                .iter()
                .map(|id| {
                    by_id
                        .get(id.as_str())
                        .copied()
                        .ok_or_else(|| BuildError::UnknownModel {
                            scenario: scenario.name.clone(),
                            model: id.clone(),
                        })
                })
                .collect::<Result<Box<[_]>, _>>()?;
            let name: Arc<str> = scenario.name.as_str().into();
            let route = Route {
                name: name.clone(),
                chain,
                policy: scenario.policy,
                strategies,
                single_model: false,
            };
            if routes
                .insert(scenario.name.clone().into_boxed_str(), Arc::new(route))
                .is_some()
            {
                return Err(BuildError::DuplicateScenario(scenario.name));
            }
            scenario_names.push(name);
        }
        let probe_budget = self.probe_budget.clone().or_else(|| {
            self.single_model
                .as_ref()
                .map(|(_, s)| s.budget.clone())
                .or_else(|| first_scenario_budget.clone())
        });
        if let Some((policy, strategies)) = self.single_model {
            for (index, entry) in entries.iter().enumerate() {
                routes.entry(entry.id.as_ref().into()).or_insert_with(|| {
                    Arc::new(Route {
                        name: entry.id.clone(),
                        chain: Box::new([index]),
                        policy,
                        strategies: strategies.clone(),
                        single_model: true,
                    })
                });
            }
        }

        // Ready every provider for the connect timeouts its routes use.
        let mut prepared: Vec<(ModelIndex, Duration)> = Vec::new();
        for route in routes.values() {
            for &index in route.chain.iter() {
                let key = (index, route.policy.timeouts.connect);
                if !prepared.contains(&key) {
                    entries[index].provider.prepare(key.1);
                    prepared.push(key);
                }
            }
        }

        Ok(Router {
            inner: Arc::new(RouterInner {
                last_failed: (0..entries.len()).map(|_| AtomicBool::new(false)).collect(),
                ctx: self.ctx,
                entries: entries.into(),
                routes,
                scenario_names: scenario_names.into(),
                sinks: self.sinks.into(),
                probe_budget,
                rate_limiter: self.rate_limiter,
            }),
        })
    }
}

/// A probe's budget reservation: settled when the probe ends, released if
/// the probe is dropped first (the prober stopped).
struct ProbeHold<'a> {
    budget: &'a dyn BudgetPolicy,
    spec: &'a ModelSpec,
    facts: RequestFacts<'a>,
    reservation: Option<crate::budget::Reservation>,
}

impl ProbeHold<'_> {
    fn settle(mut self, usage: Option<&Usage>) {
        if let Some(reservation) = self.reservation.take() {
            self.budget
                .settle(reservation, self.spec, &self.facts, usage);
        }
    }
}

impl Drop for ProbeHold<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.budget
                .settle(reservation, self.spec, &self.facts, None);
        }
    }
}

/// Runs requests down fallback chains. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("models", &self.inner.ctx.models.len())
            .field("routes", &self.inner.routes.len())
            .finish()
    }
}

impl Router {
    /// Starts a builder.
    pub fn builder(ctx: StrategyContext) -> RouterBuilder {
        RouterBuilder::new(ctx)
    }

    /// The route a request's `model` field selects: a scenario of that name,
    /// or else the single-model route of a model with that id.
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.inner.routes.get(name)
    }

    /// Scenario names, in configured order.
    pub fn scenario_names(&self) -> &[Arc<str>] {
        &self.inner.scenario_names
    }

    /// Every route: scenarios and single-model routes.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.inner.routes.values()
    }

    /// Every model, by index.
    pub fn models(&self) -> &[ModelSpec] {
        &self.inner.ctx.models
    }

    /// The rate limits (models' quotas, callers' limits), if any is set.
    pub fn rate_limiter(&self) -> Option<&Arc<dyn RateLimiter>> {
        self.inner.rate_limiter.as_ref()
    }

    /// The strategy context (models, clock, latency estimates).
    pub fn context(&self) -> &StrategyContext {
        &self.inner.ctx
    }

    /// Answers a request with a complete response, falling over as needed.
    pub async fn complete(
        &self,
        request: ChatRequest,
        cx: RequestContext,
    ) -> Result<FallbackResult, RouteError> {
        let route = self.resolve(&request.model)?;
        complete::complete(self.inner.clone(), route, request, cx).await
    }

    /// Answers an embeddings request, falling over across the route's
    /// models (deployments of one embedding model) as needed.
    pub async fn embed(
        &self,
        request: crate::embeddings::EmbeddingsRequest,
        cx: RequestContext,
    ) -> Result<EmbeddingsResult, RouteError> {
        let route = self.resolve(&request.model)?;
        embed::embed(self.inner.clone(), route, request, cx).await
    }

    /// Answers a request with a stream. Returns once the first output chunk
    /// of some model arrived (failover before that is invisible to the
    /// caller), or with the error when no model could start.
    pub async fn stream(
        &self,
        request: ChatRequest,
        cx: RequestContext,
    ) -> Result<FallbackStream, RouteError> {
        let route = self.resolve(&request.model)?;
        stream::start(self.inner.clone(), route, request, cx).await
    }

    /// Sends a tiny probe request to a model, outside any request, with its
    /// cost held and settled on the probe budget. Returns the probe's
    /// latency. Health policies are told by the caller (the prober).
    pub async fn probe(
        &self,
        model: ModelIndex,
        timeout: Duration,
    ) -> Result<Duration, ProbeError> {
        let inner = &self.inner;
        let (Some(spec), Some(entry)) = (inner.ctx.models.get(model), inner.entries.get(model))
        else {
            return Err(ProbeError::NoSuchModel(model));
        };
        let probe_request = ChatRequest::user(spec.upstream.clone(), "ping");
        let facts = RequestFacts {
            scenario: "probe",
            caller: None,
            prompt_tokens: probe_request.estimated_prompt_tokens(),
            max_tokens: Some(crate::provider::PROBE_MAX_TOKENS),
            stream: false,
            tools: false,
        };
        let hold = match &inner.probe_budget {
            Some(budget) => Some(ProbeHold {
                reservation: Some(budget.reserve(model, spec, &facts)?),
                budget: &**budget,
                spec,
                facts,
            }),
            None => None,
        };
        let started = tokio::time::Instant::now();
        let connect = timeout.min(Timeouts::default().connect);
        let result = tokio::time::timeout(timeout, entry.provider.probe(spec, connect))
            .await
            .unwrap_or_else(|_| Err(ProviderError::timeout("probe answer", timeout)));
        let elapsed = started.elapsed();
        if let Some(hold) = hold {
            let usage = result
                .is_ok()
                .then(|| Usage::new(facts.prompt_tokens, crate::provider::PROBE_MAX_TOKENS));
            hold.settle(usage.as_ref());
        }
        result.map(|()| elapsed).map_err(ProbeError::Failed)
    }

    fn resolve(&self, name: &str) -> Result<Arc<Route>, RouteError> {
        self.inner
            .routes
            .get(name)
            .cloned()
            .ok_or_else(|| RouteError::UnknownRoute(name.to_owned()))
    }
}
