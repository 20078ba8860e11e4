//! `active_probe`: the background prober that gives recovered models their
//! traffic back.
//!
//! What it does:
//!
//! 1. Every `interval_ms` it asks each distinct health policy of the Router
//!    (scenarios that share a policy share it here too) which of its models
//!    want a probe ([`HealthPolicy::probe_targets`]): open, half-open,
//!    disabled or cooling-down circuits, and models without traffic for
//!    `idle_ms`. A healthy, busy model is never listed, so it costs nothing.
//!    Only models that a route using the policy can actually reach count.
//! 2. For each of them that has no probe in flight and is not backing off,
//!    it spawns [`Router::probe`]: a tiny request (a few max tokens) whose
//!    cost the Router holds and settles on the default budget. At most one
//!    probe is in flight per model, however slow the upstream is.
//!
//!    **A probe is judged by the route's own limits.** Its timeout is the
//!    smallest of `timeout_ms` and the `first_token_ms` and `attempt_ms` of
//!    every route that reaches the model: a model that answers a probe, but
//!    slower than its routes would wait for a real call, has failed the
//!    probe as a `timeout`, and its circuit stays open, instead of being
//!    re-admitted only for every request to wait out the timeout again.
//!
//!    **Probes back off.** After one failed probe a model is probed again
//!    at the next round; after `n >= 2` failed probes in a row, not before
//!    `interval_ms × 2^(n−1)` (capped at `backoff_max_ms`) with equal
//!    jitter (between half and all of that) has passed since the failed
//!    probe was sent, at the first round after that, and never before the
//!    upstream's Retry-After. Its first answered probe resets this. A
//!    model answering 429 or 503 is not hammered once per interval for as
//!    long as the outage lasts. `backoff_max_ms = interval_ms` turns the
//!    backoff off.
//! 3. It feeds each answered probe's round trip to the Router's latency
//!    estimates (as the separate `probe` estimate, see
//!    [`LatencyStats`](backstop_core::LatencyStats)), and marks a model
//!    whose probe failed as failing, so `latency_aware` does not explore
//!    it until it answers.
//! 4. It reports each result to every policy that routes to the model
//!    ([`HealthPolicy::record_probe`]): a success closes an open circuit or
//!    re-enables a disabled model, so a recovered primary gets traffic back
//!    within one interval; a failure opens the circuit of a model probed for
//!    being idle only if it is still idle, so calls that reached it while
//!    the probe was out decide for themselves. Transitions are logged and
//!    sent to the event sinks given to [`ActiveProbe::event_sink`] (alerts,
//!    metrics).
//!
//! In a fleet (`[state] backend = "redis"`), a replica probes a model only
//! while it holds the model's probe lease
//! ([`FleetState::probe_lease`](backstop_core::FleetState::probe_lease), for
//! the longer of `interval_ms` and `backoff_max_ms`, plus `timeout_ms`): one
//! prober per model per fleet. The transition its result causes is published
//! by the health policy, so the other replicas adopt it.
//!
//! A probe the budget refused is not a health signal and is not reported.
//! The task stops when its [`ProberHandle`] is dropped.
//!
//! When to pick it: in every long-running deployment (the gateway runs it).
//! Without it an open circuit recovers only through half-open trial calls
//! of real traffic, and a disabled model never comes back.
//!
//! Knobs (the config's `probe` table; defaults):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `interval_ms` | `5000` | time between two rounds of probes |
//! | `idle_ms` | `60000` | a closed model without traffic for this long is probed |
//! | `timeout_ms` | `10000` | a probe slower than this fails as a timeout (and never waits longer than the model's routes would) |
//! | `backoff_max_ms` | `60000` | longest wait between two probes of a model that keeps failing them (>= `interval_ms`) |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backstop_core::{
    Event, EventSink, FailureKind, FleetState, HealthEffect, HealthPolicy, LatencyKind, ModelIndex,
    ProbeError, ProbeFailure, ProviderError, Router, StrategyContext,
};
use serde::Deserialize;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::{StrategyError, check_non_zero};

/// The config name of the prober.
pub const NAME: &str = "active_probe";

/// Knobs of the prober; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveProbeConfig {
    /// Time between two rounds of probes. Default 5000.
    pub interval_ms: u64,
    /// A closed model without traffic for this long is probed. Default 60000.
    pub idle_ms: u64,
    /// A probe slower than this fails as a timeout. Default 10000.
    pub timeout_ms: u64,
    /// Longest wait between two probes of a model that keeps failing them.
    /// Default 60000.
    pub backoff_max_ms: u64,
}

impl Default for ActiveProbeConfig {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            idle_ms: 60_000,
            timeout_ms: 10_000,
            backoff_max_ms: 60_000,
        }
    }
}

impl ActiveProbeConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), StrategyError> {
        check_non_zero("interval_ms", self.interval_ms)?;
        check_non_zero("idle_ms", self.idle_ms)?;
        check_non_zero("timeout_ms", self.timeout_ms)?;
        if self.backoff_max_ms < self.interval_ms {
            return Err(StrategyError::invalid(
                "backoff_max_ms",
                format!(
                    "must be at least interval_ms ({} ms), got {} ms",
                    self.interval_ms, self.backoff_max_ms
                ),
            ));
        }
        Ok(())
    }
}

/// A configured prober, ready to [`spawn`](ActiveProbe::spawn).
#[derive(Debug, Clone)]
pub struct ActiveProbe {
    interval: Duration,
    idle: Duration,
    timeout: Duration,
    backoff_max: Duration,
    models: usize,
    sinks: Vec<Arc<dyn EventSink>>,
    /// Whose probe lease decides which replica probes.
    fleet: Arc<dyn FleetState>,
    /// Wait before the first round (zero: at once).
    first_round: Duration,
}

impl ActiveProbe {
    /// A prober for the models of `ctx`.
    pub fn new(config: ActiveProbeConfig, ctx: &StrategyContext) -> Result<Self, StrategyError> {
        config.validate()?;
        Ok(Self {
            interval: Duration::from_millis(config.interval_ms),
            idle: Duration::from_millis(config.idle_ms),
            timeout: Duration::from_millis(config.timeout_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
            models: ctx.models.len(),
            sinks: Vec::new(),
            fleet: ctx.fleet.clone(),
            first_round: Duration::ZERO,
        })
    }

    /// Waits `delay` before the first round instead of probing at once.
    /// A gateway reloading its configuration starts the new prober one
    /// interval late, so that replacing the prober adds no round.
    #[must_use]
    pub fn first_round_after(mut self, delay: Duration) -> Self {
        self.first_round = delay;
        self
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }

    /// Also sends the health transitions that probes cause to `sink`.
    #[must_use]
    pub fn event_sink(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Starts probing `router`'s models on the current tokio runtime. The
    /// task runs until the returned handle is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn(self, router: Router) -> ProberHandle {
        let policies = PolicyRoutes::of(&router, self.models);
        ProberHandle {
            task: tokio::spawn(self.run(router, policies)),
        }
    }

    async fn run(self, router: Router, policies: Vec<PolicyRoutes>) {
        let mut ticks = tokio::time::interval_at(Instant::now() + self.first_round, self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // `None`: another replica of the fleet holds the model's probe lease.
        let mut probes: JoinSet<(ModelIndex, Option<Result<Duration, ProbeError>>)> =
            JoinSet::new();
        // Long enough to keep across the holder's own backoff.
        let lease = self
            .interval
            .max(self.backoff_max)
            .saturating_add(self.timeout);
        let mut in_flight = vec![false; self.models];
        let timeouts = self.timeouts(&router);
        let mut backoff = vec![Backoff::default(); self.models];
        let mut by_task: HashMap<tokio::task::Id, ModelIndex> = HashMap::new();
        let mut targets = Vec::new();
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    for policy in &policies {
                        targets.clear();
                        policy.health.probe_targets(self.idle, &mut targets);
                        for &model in &targets {
                            let reachable = policy.models.get(model).copied().unwrap_or(false);
                            let Some(busy) = in_flight.get_mut(model) else { continue };
                            let waiting = backoff.get(model).is_some_and(|b| b.waiting(Instant::now()));
                            if !reachable || *busy || waiting {
                                continue;
                            }
                            *busy = true;
                            if let Some(b) = backoff.get_mut(model) {
                                b.sent_at = Some(Instant::now());
                            }
                            let router = router.clone();
                            let timeout = timeouts.get(model).copied().unwrap_or(self.timeout);
                            let fleet = self.fleet.clone();
                            let handle = probes.spawn(async move {
                                let id = model_id(&router, model).to_owned();
                                if !fleet.probe_lease(&id, lease).await {
                                    return (model, None);
                                }
                                (model, Some(router.probe(model, timeout).await))
                            });
                            by_task.insert(handle.id(), model);
                        }
                    }
                }
                Some(joined) = probes.join_next_with_id() => {
                    match joined {
                        Ok((id, (model, result))) => {
                            by_task.remove(&id);
                            if let Some(busy) = in_flight.get_mut(model) {
                                *busy = false;
                            }
                            // A probe another replica holds the lease for
                            // says nothing of the model: no backoff, no report.
                            if let Some(result) = result {
                                if let Some(backoff) = backoff.get_mut(model) {
                                    self.back_off(backoff, &router, model, &result);
                                }
                                self.report(&router, &policies, model, result);
                            }
                        }
                        Err(error) => {
                            // The provider panicked inside its probe: count it
                            // as a broken answer, and free the model's slot.
                            if let Some(model) = by_task.remove(&error.id()) {
                                if let Some(busy) = in_flight.get_mut(model) {
                                    *busy = false;
                                }
                                tracing::warn!(model = %model_id(&router, model), %error, "probe task failed");
                                let failed = Err(ProbeError::Failed(ProviderError::new(
                                    FailureKind::InvalidResponse,
                                    "the probe panicked",
                                )));
                                if let Some(backoff) = backoff.get_mut(model) {
                                    self.back_off(backoff, &router, model, &failed);
                                }
                                self.report(&router, &policies, model, failed);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Each model's probe timeout: `timeout_ms`, or less when a route that
    /// reaches the model would give a real call less time to answer.
    fn timeouts(&self, router: &Router) -> Vec<Duration> {
        let mut out = vec![self.timeout; self.models];
        for route in router.routes() {
            let t = &route.policy.timeouts;
            let limit = t.first_token.min(t.attempt);
            for &model in route.chain.iter() {
                if let Some(slot) = out.get_mut(model) {
                    *slot = (*slot).min(limit);
                }
            }
        }
        out
    }

    /// Moves the model's next probe out after a failure, back in after an
    /// answer.
    fn back_off(
        &self,
        backoff: &mut Backoff,
        router: &Router,
        model: ModelIndex,
        result: &Result<Duration, ProbeError>,
    ) {
        match result {
            Ok(_) => *backoff = Backoff::default(),
            Err(ProbeError::Failed(error)) => {
                let now = Instant::now();
                let wait = backoff.failed(self.interval, self.backoff_max, rand::random::<f64>());
                let mut next = backoff.sent_at.unwrap_or(now) + wait;
                if let Some(retry_after) = error.retry_after {
                    next = next.max(now + retry_after);
                }
                if next > now {
                    tracing::debug!(
                        model = model_id(router, model),
                        failures = backoff.failures,
                        next_probe_in_ms = next.saturating_duration_since(now).as_millis() as u64,
                        "probe backing off"
                    );
                }
                backoff.not_before = Some(next);
            }
            Err(ProbeError::NotSent(_) | ProbeError::NoSuchModel(_)) => {}
        }
    }

    fn report(
        &self,
        router: &Router,
        policies: &[PolicyRoutes],
        model: ModelIndex,
        result: Result<Duration, ProbeError>,
    ) {
        let id = model_id(router, model);
        let latency_stats = &router.context().latency;
        let result = match result {
            Ok(latency) => {
                tracing::debug!(
                    model = id,
                    latency_ms = latency.as_millis() as u64,
                    "probe answered"
                );
                latency_stats.observe(model, LatencyKind::Probe, latency);
                Ok(latency)
            }
            Err(error @ (ProbeError::NotSent(_) | ProbeError::NoSuchModel(_))) => {
                tracing::debug!(model = id, %error, "probe not sent");
                return;
            }
            Err(ProbeError::Failed(error)) => {
                tracing::debug!(model = id, %error, "probe failed");
                if error.kind.health_effect() != HealthEffect::None {
                    latency_stats.note_failure(model);
                }
                Err(ProbeFailure {
                    kind: error.kind,
                    retry_after: error.retry_after,
                })
            }
        };
        for policy in policies {
            if !policy.models.get(model).copied().unwrap_or(false) {
                continue;
            }
            if let Some(transition) = policy.health.record_probe(model, result) {
                transition.log(id, "circuit changed after a probe");
                let event = Event::Health {
                    model: id,
                    transition,
                };
                for sink in &self.sinks {
                    sink.record(&event);
                }
            }
        }
    }
}

fn model_id(router: &Router, model: ModelIndex) -> &str {
    router.models().get(model).map_or("?", |m| m.id.as_str())
}

/// A model's probe backoff: failed probes in a row, when its last probe
/// was sent, and the earliest time of its next probe.
#[derive(Debug, Clone, Copy, Default)]
struct Backoff {
    failures: u32,
    sent_at: Option<Instant>,
    not_before: Option<Instant>,
}

impl Backoff {
    fn waiting(&self, now: Instant) -> bool {
        self.not_before.is_some_and(|at| now < at)
    }

    /// Counts a failure; returns the wait, from the failed probe's send
    /// time, before the next probe: none after the first failure, then
    /// `interval × 2^(failures − 1)` up to `max` with equal jitter
    /// (`jitter` uniform in `[0, 1)`).
    fn failed(&mut self, interval: Duration, max: Duration, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(31);
        if doublings == 0 {
            return Duration::ZERO;
        }
        let step = interval.saturating_mul(1 << doublings).min(max);
        step / 2 + step.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// One distinct health policy and the models its routes reach.
struct PolicyRoutes {
    health: Arc<dyn HealthPolicy>,
    models: Vec<bool>,
}

impl PolicyRoutes {
    fn of(router: &Router, models: usize) -> Vec<PolicyRoutes> {
        let mut out: Vec<PolicyRoutes> = Vec::new();
        let mut routes: Vec<_> = router.routes().collect();
        // Routes come from a hash map; sort them so probing order is stable.
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        for route in routes {
            let health = &route.strategies.health;
            let position = out
                .iter()
                .position(|p| std::ptr::addr_eq(Arc::as_ptr(&p.health), Arc::as_ptr(health)));
            let index = position.unwrap_or_else(|| {
                out.push(PolicyRoutes {
                    health: health.clone(),
                    models: vec![false; models],
                });
                out.len() - 1
            });
            for &model in route.chain.iter() {
                if let Some(slot) = out[index].models.get_mut(model) {
                    *slot = true;
                }
            }
        }
        out
    }
}

/// Keeps the prober running; dropping it stops the task and cancels the
/// probes in flight.
#[derive(Debug)]
pub struct ProberHandle {
    task: JoinHandle<()>,
}

impl ProberHandle {
    /// Stops the prober (the same as dropping the handle).
    pub fn stop(self) {}

    /// Whether the task has ended (it ends only when stopped, or when its
    /// runtime shuts down).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ProberHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn backoff_doubles_from_the_second_failure_with_equal_jitter_up_to_the_cap() {
        let mut b = Backoff::default();
        let (interval, max) = (ms(1_000), ms(8_000));
        let waits: Vec<Duration> = (0..6).map(|_| b.failed(interval, max, 1.0)).collect();
        assert_eq!(
            waits,
            [ms(0), ms(2_000), ms(4_000), ms(8_000), ms(8_000), ms(8_000)]
        );
        let mut b = Backoff::default();
        assert_eq!(b.failed(interval, max, 0.0), ms(0));
        assert_eq!(b.failed(interval, max, 0.0), ms(1_000));
        assert_eq!(b.failed(interval, max, 0.5), ms(3_000));
        // A cap equal to the interval never waits past the next round.
        let mut b = Backoff::default();
        for _ in 0..100 {
            assert!(b.failed(interval, interval, 0.999) < interval);
        }
        // Thousands of failures neither overflow nor pass the cap.
        let mut b = Backoff::default();
        for _ in 0..10_000 {
            assert!(b.failed(interval, max, 0.999) <= max);
        }
    }

    #[test]
    fn a_backoff_cap_under_the_interval_is_refused() {
        let config = ActiveProbeConfig {
            interval_ms: 5_000,
            backoff_max_ms: 1_000,
            ..ActiveProbeConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.field(), Some("backoff_max_ms"));
    }
}
