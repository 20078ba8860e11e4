//! The prober's discipline, through a real Router, on tokio's paused clock
//! (the Router's SystemClock follows it, so breaker windows and probe
//! intervals move together).

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backstop_core::testing::{Recorded, RecordingSink};
use backstop_core::{
    Admission, BudgetPolicy, Call, CallOutcome, ChatRequest, ChatResponse, ChunkStream,
    CircuitState, FailureKind, HealthPolicy, HealthSnapshot, HealthTransition, ModelIndex,
    ModelSpec, Permit, ProbeFailure, Provider, ProviderError, RequestContext, RoutePolicy, Router,
    Scenario, Strategies, StrategyContext, SystemClock, Usage,
};
use backstop_strategies::budget::{PerRequest, PerRequestConfig, Unlimited, UnlimitedConfig};
use backstop_strategies::health::{
    ActiveProbe, ActiveProbeConfig, CircuitBreaker, CircuitBreakerConfig,
};
use backstop_strategies::result::{Annotate, AnnotateConfig};
use backstop_strategies::selector::{Priority, PriorityConfig};

/// An upstream that is up or down on command, and counts real calls and
/// probes apart.
#[derive(Debug, Default)]
struct Upstream {
    down: AtomicBool,
    bad_key: AtomicBool,
    hang_probes: AtomicBool,
    calls: AtomicUsize,
    probes: AtomicUsize,
}

impl Upstream {
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn probes(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for Upstream {
    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        if call.scenario == "probe" {
            self.probes.fetch_add(1, Ordering::SeqCst);
            if self.hang_probes.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        } else {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
        if self.bad_key.load(Ordering::SeqCst) {
            return Err(ProviderError::new(FailureKind::Auth, "bad key").with_status(401));
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(ProviderError::new(FailureKind::Server, "down").with_status(503));
        }
        Ok(ChatResponse::assistant(
            "cmpl-1",
            call.model.upstream.clone(),
            0,
            "hello",
            Some(Usage::new(5, 1)),
        ))
    }

    async fn stream(&self, _call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        Err(ProviderError::new(
            FailureKind::BadRequest,
            "no streams here",
        ))
    }
}

struct Setup {
    router: Router,
    breaker: Arc<CircuitBreaker>,
    primary: Arc<Upstream>,
    backup: Arc<Upstream>,
    spare: Arc<Upstream>,
    sink: Arc<RecordingSink>,
}

/// primary -> backup in scenario `chat`; `spare` is configured but in no
/// chain.
fn setup(budget: Option<Arc<dyn BudgetPolicy>>) -> Setup {
    let mut priced = ModelSpec::new("primary", "primary");
    priced.input_cost_per_1k = 1.0;
    let models = vec![
        priced,
        ModelSpec::new("backup", "backup"),
        ModelSpec::new("spare", "spare"),
    ];
    let ctx = StrategyContext::new(models, SystemClock::shared());
    let breaker = Arc::new(CircuitBreaker::new(CircuitBreakerConfig::default(), &ctx).unwrap());
    let strategies = Strategies {
        selector: Arc::new(Priority::new(PriorityConfig {}, &ctx).unwrap()),
        health: breaker.clone(),
        budget: budget
            .unwrap_or_else(|| Arc::new(Unlimited::new(UnlimitedConfig {}, &ctx).unwrap())),
        result: Arc::new(Annotate::new(AnnotateConfig::default(), &ctx).unwrap()),
    };
    let mut policy = RoutePolicy::default();
    policy.retries.same_model = 0;
    // The route waits longer than any probe timeout here, so the prober's
    // own `timeout_ms` is what each test sets (see
    // `a_probe_slower_than_its_routes_allow_fails_as_a_timeout`).
    policy.timeouts.first_token = ms(120_000);
    policy.timeouts.attempt = ms(120_000);
    let (primary, backup, spare) = (
        Arc::new(Upstream::default()),
        Arc::new(Upstream::default()),
        Arc::new(Upstream::default()),
    );
    let sink = Arc::new(RecordingSink::default());
    let router = Router::builder(ctx)
        .provider("primary", primary.clone())
        .provider("backup", backup.clone())
        .provider("spare", spare.clone())
        .scenario(
            Scenario {
                name: "chat".into(),
                chain: vec!["primary".into(), "backup".into()],
                policy,
            },
            strategies,
        )
        .event_sink(sink.clone())
        .build()
        .unwrap();
    Setup {
        router,
        breaker,
        primary,
        backup,
        spare,
        sink,
    }
}

fn prober(s: &Setup, interval_ms: u64, timeout_ms: u64) -> ActiveProbe {
    ActiveProbe::new(
        ActiveProbeConfig {
            interval_ms,
            idle_ms: 60_000,
            timeout_ms,
            // These tests pin the per-round discipline; the backoff has
            // tests of its own (`backoff`).
            backoff_max_ms: interval_ms,
        },
        s.router.context(),
    )
    .unwrap()
    .event_sink(s.sink.clone())
}

/// Sends one request; returns the model that answered and its level.
async fn ask(router: &Router) -> (String, usize) {
    let result = router
        .complete(ChatRequest::user("chat", "hi"), RequestContext::default())
        .await
        .unwrap();
    (
        result.outcome.model_used.to_string(),
        result.outcome.fallback_level,
    )
}

/// Opens the primary's circuit with five failures.
async fn break_primary(s: &Setup) {
    s.primary.set_down(true);
    for _ in 0..5 {
        assert_eq!(ask(&s.router).await, ("backup".into(), 1));
    }
    assert_eq!(s.breaker.snapshot(0).state, CircuitState::Open);
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[tokio::test(start_paused = true)]
async fn a_recovered_primary_gets_traffic_back_within_one_interval() {
    let s = setup(None);
    break_primary(&s).await;
    let _prober = prober(&s, 5_000, 1_000).spawn(s.router.clone());

    // Probes at 0 s, 5 s and 10 s find it still down; the circuit stays
    // open (each failed probe starts the break over).
    tokio::time::sleep(ms(12_000)).await;
    assert_eq!(s.primary.probes(), 3);
    assert_eq!(s.breaker.snapshot(0).state, CircuitState::Open);
    let calls_before = s.primary.calls();

    // It recovers at 12 s. Until the next probe, traffic still avoids it.
    s.primary.set_down(false);
    tokio::time::sleep(ms(2_900)).await;
    assert_eq!(ask(&s.router).await, ("backup".into(), 1));
    assert_eq!(s.primary.calls(), calls_before);

    // The probe at 15 s closes the circuit: the primary answers again.
    tokio::time::sleep(ms(200)).await;
    assert_eq!(s.primary.probes(), 4);
    assert_eq!(s.breaker.snapshot(0).state, CircuitState::Closed);
    assert_eq!(ask(&s.router).await, ("primary".into(), 0));
    assert!(
        s.sink.events().contains(&Recorded::Health(
            "primary".into(),
            CircuitState::Open,
            CircuitState::Closed
        )),
        "the probe's transition reached the sinks"
    );
}

#[tokio::test(start_paused = true)]
async fn a_healthy_busy_model_is_never_probed() {
    let s = setup(None);
    let _prober = prober(&s, 5_000, 1_000).spawn(s.router.clone());
    // Three minutes of steady traffic, one request a second, between the
    // probe rounds (every 5 s from 0 s).
    tokio::time::sleep(ms(500)).await;
    for _ in 0..180 {
        assert_eq!(ask(&s.router).await, ("primary".into(), 0));
        tokio::time::sleep(ms(1_000)).await;
    }
    assert_eq!(s.primary.probes(), 0);
    assert_eq!(s.primary.calls(), 180);
    // The idle backup is checked about once per idle_ms, never more.
    let backup_probes = s.backup.probes();
    assert!((2..=3).contains(&backup_probes), "{backup_probes} probes");
    // A model no route reaches is never probed.
    assert_eq!(s.spare.probes(), 0);
}

#[tokio::test(start_paused = true)]
async fn at_most_one_probe_is_in_flight_per_model() {
    let s = setup(None);
    break_primary(&s).await;
    s.primary.hang_probes.store(true, Ordering::SeqCst);
    let _prober = prober(&s, 5_000, 60_000).spawn(s.router.clone());
    // Twelve intervals pass while the first probe hangs.
    tokio::time::sleep(ms(59_000)).await;
    assert_eq!(s.primary.probes(), 1);
    // It times out at 60 s; the next round (at 60 s or 65 s, whichever
    // sees the slot free first) sends the next one.
    tokio::time::sleep(ms(7_500)).await;
    assert_eq!(s.primary.probes(), 2);
    assert_eq!(s.breaker.snapshot(0).state, CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_disabled_model_comes_back_only_through_a_probe() {
    let s = setup(None);
    s.primary.bad_key.store(true, Ordering::SeqCst);
    assert_eq!(ask(&s.router).await, ("backup".into(), 1));
    assert_eq!(s.breaker.snapshot(0).state, CircuitState::Disabled);
    assert!(s.sink.events().contains(&Recorded::Health(
        "primary".into(),
        CircuitState::Closed,
        CircuitState::Disabled
    )));
    let _prober = prober(&s, 5_000, 1_000).spawn(s.router.clone());
    // Assertions fall between the probe rounds (every 5 s from 0 s).
    tokio::time::sleep(ms(20_500)).await;
    assert_eq!(s.breaker.snapshot(0).state, CircuitState::Disabled);
    assert_eq!(ask(&s.router).await, ("backup".into(), 1));
    // The key is fixed: within one interval the primary is back.
    s.primary.bad_key.store(false, Ordering::SeqCst);
    tokio::time::sleep(ms(5_000)).await;
    assert_eq!(s.breaker.snapshot(0).state, CircuitState::Closed);
    assert_eq!(ask(&s.router).await, ("primary".into(), 0));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_the_prober() {
    let s = setup(None);
    break_primary(&s).await;
    let handle = prober(&s, 5_000, 1_000).spawn(s.router.clone());
    tokio::time::sleep(ms(1)).await;
    assert_eq!(s.primary.probes(), 1);
    drop(handle);
    tokio::time::sleep(ms(60_000)).await;
    assert_eq!(s.primary.probes(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_probe_the_budget_refuses_is_not_a_health_signal() {
    // The primary's probe costs more than the per-request cap allows (its
    // prompt is priced at 1 USD per 1k tokens): Router::probe refuses it.
    let ctx = StrategyContext::new(vec![ModelSpec::new("x", "x")], SystemClock::shared());
    let budget = Arc::new(PerRequest::new(PerRequestConfig { max_cost: 0.001 }, &ctx).unwrap());
    let s = setup(Some(budget));
    s.primary.set_down(true);
    // Requests to the primary are refused by budget too; open it directly.
    for _ in 0..5 {
        let permit = match s.breaker.admit(0) {
            backstop_core::Admission::Admit(p) => p,
            backstop_core::Admission::Reject { .. } => panic!("rejected"),
        };
        s.breaker.record(
            0,
            permit,
            backstop_core::CallOutcome::Failure {
                kind: FailureKind::Server,
                retry_after: None,
                latency: ms(1),
            },
        );
    }
    let _prober = prober(&s, 5_000, 1_000).spawn(s.router.clone());
    tokio::time::sleep(ms(11_000)).await;
    assert_eq!(
        s.primary.probes(),
        0,
        "the budget kept the probe from the upstream"
    );
    // Not disabled as if the upstream's quota were exhausted.
    assert_eq!(s.breaker.snapshot(0).state, CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_failed_idle_probe_does_not_open_a_model_that_got_traffic_meanwhile() {
    let s = setup(None);
    s.backup.hang_probes.store(true, Ordering::SeqCst);
    let _prober = prober(&s, 5_000, 10_000).spawn(s.router.clone());
    // The backup has had no call since the start: the round at 60 s lists
    // it as idle, and its probe hangs until the 10 s timeout, at 70 s.
    tokio::time::sleep(ms(62_000)).await;
    assert_eq!(s.backup.probes(), 1);
    // Meanwhile it serves real traffic that succeeds.
    for _ in 0..6 {
        let permit = match s.breaker.admit(1) {
            backstop_core::Admission::Admit(p) => p,
            backstop_core::Admission::Reject { .. } => panic!("rejected"),
        };
        s.breaker.record(
            1,
            permit,
            backstop_core::CallOutcome::Success { latency: ms(20) },
        );
        tokio::time::sleep(ms(1_000)).await;
    }
    // The probe has timed out; the busy backup stays closed.
    tokio::time::sleep(ms(4_500)).await;
    assert_eq!(s.backup.probes(), 1);
    assert_eq!(s.breaker.snapshot(1).state, CircuitState::Closed);
    assert!(
        !s.sink.events().iter().any(
            |e| matches!(e, Recorded::Health(model, _, CircuitState::Open) if model == "backup")
        ),
        "{:?}",
        s.sink.events()
    );
}

/// A health policy that admits everything, asks for probes of the models it
/// is given, and logs which models' probe results it was told.
#[derive(Debug)]
struct ProbeLog {
    wants: Vec<ModelIndex>,
    told: std::sync::Mutex<Vec<ModelIndex>>,
}

impl ProbeLog {
    fn new(wants: Vec<ModelIndex>) -> Arc<Self> {
        Arc::new(Self {
            wants,
            told: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn told(&self) -> Vec<ModelIndex> {
        let mut told = self.told.lock().unwrap().clone();
        told.sort_unstable();
        told.dedup();
        told
    }
}

impl HealthPolicy for ProbeLog {
    fn name(&self) -> &str {
        "probe_log"
    }

    fn admit(&self, _: ModelIndex) -> Admission {
        Admission::Admit(Permit::default())
    }

    fn record(&self, _: ModelIndex, _: Permit, _: CallOutcome) -> Option<HealthTransition> {
        None
    }

    fn record_probe(
        &self,
        model: ModelIndex,
        _: Result<Duration, ProbeFailure>,
    ) -> Option<HealthTransition> {
        self.told.lock().unwrap().push(model);
        None
    }

    fn probe_targets(&self, _: Duration, out: &mut Vec<ModelIndex>) {
        out.extend_from_slice(&self.wants);
    }

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

#[tokio::test(start_paused = true)]
async fn probe_results_reach_only_the_policies_whose_routes_list_the_model() {
    // Scenario `chat` (policy A) routes primary -> backup; scenario `solo`
    // (policy B) routes spare -> backup. Each policy also asks for a model
    // none of its routes reach.
    let models = vec![
        ModelSpec::new("primary", "primary"),
        ModelSpec::new("backup", "backup"),
        ModelSpec::new("spare", "spare"),
    ];
    let ctx = StrategyContext::new(models, SystemClock::shared());
    let (a, b) = (ProbeLog::new(vec![0, 1, 2]), ProbeLog::new(vec![0, 2]));
    let strategies = |health: Arc<ProbeLog>| Strategies {
        selector: Arc::new(Priority::new(PriorityConfig {}, &ctx).unwrap()),
        health,
        budget: Arc::new(Unlimited::new(UnlimitedConfig {}, &ctx).unwrap()),
        result: Arc::new(Annotate::new(AnnotateConfig::default(), &ctx).unwrap()),
    };
    let upstreams: Vec<Arc<Upstream>> = (0..3).map(|_| Arc::new(Upstream::default())).collect();
    let router = Router::builder(ctx.clone())
        .provider("primary", upstreams[0].clone())
        .provider("backup", upstreams[1].clone())
        .provider("spare", upstreams[2].clone())
        .scenario(
            Scenario {
                name: "chat".into(),
                chain: vec!["primary".into(), "backup".into()],
                policy: RoutePolicy::default(),
            },
            strategies(a.clone()),
        )
        .scenario(
            Scenario {
                name: "solo".into(),
                chain: vec!["spare".into(), "backup".into()],
                policy: RoutePolicy::default(),
            },
            strategies(b.clone()),
        )
        .build()
        .unwrap();
    let _prober = ActiveProbe::new(ActiveProbeConfig::default(), &ctx)
        .unwrap()
        .spawn(router.clone());
    tokio::time::sleep(ms(1_000)).await;
    // Every model is probed once: each is listed by a policy that reaches it.
    for upstream in &upstreams {
        assert_eq!(upstream.probes(), 1);
    }
    // A hears about primary and backup, never spare (which only B's route
    // reaches, though A asked for it); B about spare and backup, never
    // primary. The shared backup's result reaches both.
    assert_eq!(a.told(), vec![0, 1]);
    assert_eq!(b.told(), vec![1, 2]);
}

#[tokio::test(start_paused = true)]
async fn probes_of_a_model_that_keeps_failing_back_off_to_the_cap_and_reset_on_an_answer() {
    let s = setup(None);
    break_primary(&s).await;
    let config = ActiveProbeConfig {
        interval_ms: 5_000,
        idle_ms: 60_000,
        timeout_ms: 1_000,
        backoff_max_ms: 60_000,
    };
    let _prober = ActiveProbe::new(config, s.router.context())
        .unwrap()
        .spawn(s.router.clone());

    // Ten minutes down: one probe per round would be 120. Backing off
    // (5, 10, 20, 40 s, then 30..60 s with jitter) it is a few dozen at
    // most, and at least one per minute (the cap).
    tokio::time::sleep(ms(600_000)).await;
    let probes = s.primary.probes();
    assert!((10..=25).contains(&probes), "{probes} probes in 10 min");
    assert_eq!(s.breaker.snapshot(0).state, CircuitState::Open);

    // It recovers: the next probe, within the cap and a round, closes it.
    s.primary.set_down(false);
    tokio::time::sleep(ms(65_000)).await;
    assert_eq!(s.breaker.snapshot(0).state, CircuitState::Closed);
    assert_eq!(ask(&s.router).await, ("primary".into(), 0));

    // The answer reset the backoff: a new outage is probed at the next
    // rounds again, not a minute later.
    break_primary(&s).await;
    let before = s.primary.probes();
    tokio::time::sleep(ms(11_000)).await;
    assert!(
        s.primary.probes() >= before + 2,
        "probed at the next rounds"
    );
}
