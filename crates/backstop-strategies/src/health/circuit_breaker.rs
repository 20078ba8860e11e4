//! `circuit_breaker`: passive health from real outcomes, per model.
//!
//! What it does, per model:
//!
//! 1. **Closed**: calls flow. Every outcome lands in a sliding window of
//!    `window_ms` split into `buckets` time buckets. When the window holds at
//!    least `min_calls` calls and failures / calls >= `failure_ratio` (or,
//!    with `slow_call_ms` set, slow calls / calls >= `slow_call_ratio`), the
//!    circuit opens. In a fleet that shares counts (`[state] backend =
//!    "redis"`), calls and failures are the fleet's: each outcome is also
//!    added to the model's window in the store (a failure written at once,
//!    successes every 100 ms), the threshold reads the fleet's sums, and
//!    the replica that sees them cross opens and publishes, so a dead
//!    primary costs the fleet about `min_calls` calls, not `min_calls` per
//!    replica. Slow calls stay per replica. After a close, the fleet's
//!    window (which still holds the failures that opened it) is ignored
//!    for one `window_ms`; while the store fails, the window is local.
//! 2. **Open**: calls are rejected with `retry_after` until the break ends.
//!    The first break lasts `break_ms`.
//! 3. **Half-open**: after the break, up to `half_open_calls` trial calls are
//!    admitted (their permits are marked, so a cancelled trial gives its
//!    permit back). When that many trials succeed the circuit closes and the
//!    window starts empty; the first trial that fails re-opens it with the
//!    break multiplied by `break_multiplier`, up to `max_break_ms`.
//! 4. **Cooling down**: a 429 cools the model for its Retry-After; without
//!    one, for `cooldown_ms`, doubling while 429s persist (up to
//!    `max_cooldown_ms`), so a 429 storm without Retry-After is not
//!    hammered. A success resets the doubling. A cooldown ends where it
//!    began: a closed circuit closes again, but one that was half-open (a
//!    trial answered 429) or open (a probe answered 429) goes half-open, so
//!    the next call is a trial again: a 429 says the model is up, not that
//!    it has recovered.
//! 5. **Disabled**: an auth failure or an exhausted quota disables the model
//!    until a probe succeeds; the transition is reported so the Router raises
//!    an alert event.
//!
//! Which failures count follows [`FailureKind::health_effect`]: request
//! faults (context length, content policy, bad request) say nothing about the
//! model and count for nothing.
//!
//! Background probes ([`super::active_probe`]) feed [`HealthPolicy::record_probe`]:
//! a successful probe closes the circuit from any state; a failed one
//! extends an open circuit, and opens a closed one only if the model is
//! still idle: listed as idle by [`HealthPolicy::probe_targets`] and without
//! a call since (an idle model found dead). A model that got traffic while
//! its probe was out is judged by that traffic, in its window.
//! Models that want a probe are open, half-open, disabled or cooling down
//! without an explicit Retry-After, or closed and idle for the prober's
//! `idle_ms`; a healthy, busy model is never listed.
//!
//! In a fleet (`[state] backend = "redis"`), every transition this breaker
//! makes on its own (open, cooling down or a longer cooldown, disabled,
//! closed) is published through the context's
//! [`FleetState`](backstop_core::FleetState), and the transitions of other
//! replicas are adopted ([`CircuitListener::adopt`]): an open break or a
//! cooldown only ever lengthens the local one, a disable disables, a close
//! closes with a fresh window. Admission still reads only the local atomic
//! word.
//!
//! Half-open trials are fleet-wide: the replica that opened the circuit
//! admits the `half_open_calls` trials when its break ends, and their
//! outcome (closed, or re-opened with a longer break) is published for all.
//! A replica that adopted the break waits `break_ms` longer for that
//! verdict (or for a probe's) before it tries trials of its own, so the
//! fleet tries at most `half_open_calls` trial calls while the opener is
//! alive, and never stays open for good when it is not.
//!
//! When to pick it: always, unless a plugin replaces it. It is the default
//! health policy.
//!
//! Admission is lock-free: each model's state is one `AtomicU64` (state,
//! trial counts and the break's end), so admitting a call to a closed
//! circuit is one atomic load, and recording an outcome is a `fetch_add` on
//! a window bucket. No mutex anywhere.
//!
//! Knobs (defaults):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `failure_ratio` | `0.5` | failures / calls in the window that opens the circuit (above 0, at most 1) |
//! | `min_calls` | `5` | calls the window must hold before it can open |
//! | `window_ms` | `30000` | length of the sliding window |
//! | `buckets` | `10` | time buckets the window is split into |
//! | `slow_call_ms` | none (off) | a call at least this long is slow |
//! | `slow_call_ratio` | `1.0` | slow calls / calls that opens the circuit (above 0, at most 1) |
//! | `break_ms` | `5000` | first break (open) duration |
//! | `break_multiplier` | `2.0` | growth of the break on each re-open (>= 1) |
//! | `max_break_ms` | `60000` | cap of the break |
//! | `half_open_calls` | `1` | trial calls after a break; all must succeed to close (1..=63) |
//! | `cooldown_ms` | `1000` | cooldown after a 429 without Retry-After |
//! | `max_cooldown_ms` | `60000` | cap of the doubling cooldown |

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use backstop_core::{
    Admission, CallOutcome, CircuitListener, CircuitState, CountsListener, FailureKind, FleetState,
    HealthEffect, HealthPolicy, HealthSnapshot, HealthTransition, ModelIndex, ModelSpec, Permit,
    ProbeFailure, SharedCircuit, SharedClock, SharedCounts, StrategyContext,
};
use serde::Deserialize;

use crate::error::{StrategyError, check_non_zero, check_ratio};
use crate::sliding_window::SlidingWindow;

/// The config `type` name.
pub const NAME: &str = "circuit_breaker";

/// Knobs of the circuit breaker; see the module docs for their meaning.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Failures / calls that opens the circuit, above 0 and at most 1.
    /// Default 0.5.
    pub failure_ratio: f64,
    /// Calls the window must hold before it may open. Default 5.
    pub min_calls: u32,
    /// Length of the sliding window. Default 30000.
    pub window_ms: u64,
    /// Buckets the window is split into. Default 10.
    pub buckets: u32,
    /// A call at least this long is slow. Default none (slow calls off).
    pub slow_call_ms: Option<u64>,
    /// Slow calls / calls that opens the circuit, above 0 and at most 1.
    /// Default 1.0.
    pub slow_call_ratio: f64,
    /// First break duration. Default 5000.
    pub break_ms: u64,
    /// Growth of the break on each re-open. Default 2.0.
    pub break_multiplier: f64,
    /// Cap of the break. Default 60000.
    pub max_break_ms: u64,
    /// Trial calls after a break; all must succeed to close. Default 1.
    pub half_open_calls: u32,
    /// Cooldown after a 429 without Retry-After. Default 1000.
    pub cooldown_ms: u64,
    /// Cap of the doubling cooldown. Default 60000.
    pub max_cooldown_ms: u64,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            min_calls: 5,
            window_ms: 30_000,
            buckets: 10,
            slow_call_ms: None,
            slow_call_ratio: 1.0,
            break_ms: 5_000,
            break_multiplier: 2.0,
            max_break_ms: 60_000,
            half_open_calls: 1,
            cooldown_ms: 1_000,
            max_cooldown_ms: 60_000,
        }
    }
}

impl CircuitBreakerConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), StrategyError> {
        check_ratio("failure_ratio", self.failure_ratio)?;
        check_ratio("slow_call_ratio", self.slow_call_ratio)?;
        check_non_zero("min_calls", u64::from(self.min_calls))?;
        check_non_zero("window_ms", self.window_ms)?;
        check_non_zero("buckets", u64::from(self.buckets))?;
        if u64::from(self.buckets) > self.window_ms {
            return Err(StrategyError::invalid(
                "buckets",
                format!(
                    "must not exceed window_ms ({}), so each bucket spans at least 1 ms",
                    self.window_ms
                ),
            ));
        }
        if let Some(slow) = self.slow_call_ms {
            check_non_zero("slow_call_ms", slow)?;
        }
        check_non_zero("break_ms", self.break_ms)?;
        if !(self.break_multiplier.is_finite() && self.break_multiplier >= 1.0) {
            return Err(StrategyError::invalid(
                "break_multiplier",
                format!("must be a number >= 1 (got {})", self.break_multiplier),
            ));
        }
        if self.max_break_ms < self.break_ms {
            return Err(StrategyError::invalid(
                "max_break_ms",
                format!("must be at least break_ms ({})", self.break_ms),
            ));
        }
        if !(1..=FIELD_MAX).contains(&u64::from(self.half_open_calls)) {
            return Err(StrategyError::invalid(
                "half_open_calls",
                format!(
                    "must be within 1..={FIELD_MAX} (got {})",
                    self.half_open_calls
                ),
            ));
        }
        check_non_zero("cooldown_ms", self.cooldown_ms)?;
        if self.max_cooldown_ms < self.cooldown_ms {
            return Err(StrategyError::invalid(
                "max_cooldown_ms",
                format!("must be at least cooldown_ms ({})", self.cooldown_ms),
            ));
        }
        Ok(())
    }
}

// One model's circuit in one word:
//   bits 0..3   state code
//   bit  3      cooling down for an explicit Retry-After
//   bits 4..10  trial calls admitted in this half-open period; cooling
//               down, bit 4 says the cooldown ends half-open, not closed
//   bits 10..16 trial calls that succeeded
//   bits 16..64 end of the break or cooldown, in clock milliseconds (open,
//               cooling down), kept through half-open to name the period
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const COOLING_DOWN: u64 = 3;
const DISABLED: u64 = 4;
const STATE_MASK: u64 = 0b111;
const EXPLICIT: u64 = 0b1000;
/// Cooling down only: the cooldown ends half-open (it began on a trial or
/// on a probe of an open circuit).
const THEN_HALF_OPEN: u64 = 0b1_0000;
const TRIALS_SHIFT: u32 = 4;
const SUCCESSES_SHIFT: u32 = 10;
const FIELD_MAX: u64 = 0b11_1111;
const UNTIL_SHIFT: u32 = 16;
const UNTIL_MAX: u64 = (1 << (64 - UNTIL_SHIFT)) - 1;

/// Marks a trial permit; the low bits carry the half-open period's `until`.
const TRIAL: u64 = 1 << 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word(u64);

impl Word {
    fn closed() -> Self {
        Word(CLOSED)
    }

    fn open(until_ms: u64) -> Self {
        Word(OPEN | (until_ms.min(UNTIL_MAX) << UNTIL_SHIFT))
    }

    fn half_open(until_ms: u64, trials: u64, successes: u64) -> Self {
        Word(
            HALF_OPEN
                | (trials.min(FIELD_MAX) << TRIALS_SHIFT)
                | (successes.min(FIELD_MAX) << SUCCESSES_SHIFT)
                | (until_ms.min(UNTIL_MAX) << UNTIL_SHIFT),
        )
    }

    fn cooling_down(until_ms: u64, explicit: bool, then_half_open: bool) -> Self {
        let explicit = if explicit { EXPLICIT } else { 0 };
        let then = if then_half_open { THEN_HALF_OPEN } else { 0 };
        Word(COOLING_DOWN | explicit | then | (until_ms.min(UNTIL_MAX) << UNTIL_SHIFT))
    }

    fn disabled() -> Self {
        Word(DISABLED)
    }

    fn code(self) -> u64 {
        self.0 & STATE_MASK
    }

    fn explicit(self) -> bool {
        self.0 & EXPLICIT != 0
    }

    /// Whether a cooldown ends half-open rather than closed.
    fn then_half_open(self) -> bool {
        self.code() == COOLING_DOWN && self.0 & THEN_HALF_OPEN != 0
    }

    fn trials(self) -> u64 {
        (self.0 >> TRIALS_SHIFT) & FIELD_MAX
    }

    fn successes(self) -> u64 {
        (self.0 >> SUCCESSES_SHIFT) & FIELD_MAX
    }

    fn until_ms(self) -> u64 {
        self.0 >> UNTIL_SHIFT
    }

    fn state(self) -> CircuitState {
        match self.code() {
            OPEN => CircuitState::Open,
            HALF_OPEN => CircuitState::HalfOpen,
            COOLING_DOWN => CircuitState::CoolingDown,
            DISABLED => CircuitState::Disabled,
            _ => CircuitState::Closed,
        }
    }

    /// Whether this is the half-open period a trial permit was issued in.
    fn is_trial_period(self, permit_until: u64) -> bool {
        self.code() == HALF_OPEN && self.until_ms() == permit_until
    }
}

fn trial_permit(until_ms: u64) -> Permit {
    Permit(TRIAL | until_ms)
}

/// The half-open period of a trial permit; `None` for ordinary permits.
fn trial_of(permit: Permit) -> Option<u64> {
    (permit.0 & TRIAL != 0).then_some(permit.0 & !TRIAL)
}

/// One model's circuit, on its own cache lines so models do not contend.
#[derive(Debug)]
#[repr(align(128))]
struct Circuit {
    word: AtomicU64,
    /// Re-opens since the circuit last closed; sizes the next break.
    reopens: AtomicU32,
    /// Cooldowns since the last success; sizes the next default cooldown.
    cooldowns: AtomicU32,
    /// Clock milliseconds of the last outcome or probe, with
    /// [`LISTED_IDLE`] set while the model is listed for a probe as idle
    /// and no call has been recorded since.
    last_activity_ms: AtomicU64,
    /// Calls, failures, slow calls.
    window: SlidingWindow<3>,
    /// Clock milliseconds of the last change of state (creation, at
    /// first): what a status page shows as "open since". Stored after the
    /// word changed, so a reader may briefly see the new state with the
    /// old time.
    changed_ms: AtomicU64,
    /// Calls and failures summed across the fleet, when it shares counts.
    shared: Option<Arc<SharedCounts>>,
    /// Wall-clock ms before which the fleet's window is not read (one
    /// window after a close).
    fleet_from_unix_ms: AtomicU64,
}

impl Circuit {
    /// Notes that the state changed from `from` to `to` at `at_ms`.
    fn changed(&self, from: Word, to: Word, at_ms: u64) {
        if from.code() != to.code() {
            self.changed_ms.store(at_ms, Ordering::Relaxed);
        }
    }
}

/// Marks `last_activity_ms` of a closed model listed for a probe because it
/// was idle; the next recorded call clears it.
const LISTED_IDLE: u64 = 1 << 63;

/// Outcome counters of the window.
const CALLS: usize = 0;
const FAILURES: usize = 1;
const SLOW: usize = 2;

/// The circuit breaker. See the module docs.
#[derive(Debug)]
pub struct CircuitBreaker {
    clock: SharedClock,
    circuits: Box<[Circuit]>,
    /// The models, for their ids in the fleet.
    models: Arc<[ModelSpec]>,
    /// Where transitions are published (nowhere, by default).
    fleet: Arc<dyn FleetState>,
    failure_ratio: f64,
    min_calls: u64,
    window_ms: u64,
    buckets: u32,
    slow_call: Option<Duration>,
    slow_call_ratio: f64,
    break_ms: u64,
    break_multiplier: f64,
    max_break_ms: u64,
    half_open_calls: u64,
    cooldown_ms: u64,
    max_cooldown_ms: u64,
}

impl CircuitBreaker {
    /// A breaker for every model of `ctx`, reading `ctx`'s clock.
    pub fn new(config: CircuitBreakerConfig, ctx: &StrategyContext) -> Result<Self, StrategyError> {
        config.validate()?;
        let window = Duration::from_millis(config.window_ms);
        let created_ms = Self::now_ms(ctx.clock.now());
        Ok(Self {
            clock: ctx.clock.clone(),
            models: ctx.models.clone(),
            fleet: ctx.fleet.clone(),
            circuits: (0..ctx.models.len())
                .map(|_| Circuit {
                    word: AtomicU64::new(Word::closed().0),
                    reopens: AtomicU32::new(0),
                    cooldowns: AtomicU32::new(0),
                    last_activity_ms: AtomicU64::new(0),
                    window: SlidingWindow::new(window, config.buckets),
                    changed_ms: AtomicU64::new(created_ms),
                    shared: None,
                    fleet_from_unix_ms: AtomicU64::new(0),
                })
                .collect(),
            failure_ratio: config.failure_ratio,
            min_calls: u64::from(config.min_calls),
            window_ms: config.window_ms,
            buckets: config.buckets,
            slow_call: config.slow_call_ms.map(Duration::from_millis),
            slow_call_ratio: config.slow_call_ratio,
            break_ms: config.break_ms,
            break_multiplier: config.break_multiplier,
            max_break_ms: config.max_break_ms,
            half_open_calls: u64::from(config.half_open_calls),
            cooldown_ms: config.cooldown_ms,
            max_cooldown_ms: config.max_cooldown_ms,
        })
    }

    /// Builds one from its config table (the catalog's factory).
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }

    /// Shares the breaker and subscribes it to the fleet's transitions, so
    /// it adopts what other replicas publish.
    pub fn into_shared(self) -> Arc<Self> {
        let mut breaker = self;
        if breaker.fleet.shares_counts() {
            for (circuit, spec) in breaker.circuits.iter_mut().zip(breaker.models.iter()) {
                circuit.shared = Some(Arc::new(SharedCounts::new(
                    &format!("circuit:{}", spec.id),
                    breaker.window_ms,
                    breaker.buckets,
                )));
            }
        }
        let shared = Arc::new(breaker);
        let weak = Arc::downgrade(&shared);
        let listener: Weak<dyn CircuitListener> = weak.clone();
        shared.fleet.subscribe_circuits(listener);
        for counts in shared.circuits.iter().filter_map(|c| c.shared.as_ref()) {
            let listener: Weak<dyn CountsListener> = weak.clone();
            counts.listen(listener);
            shared.fleet.share_counts(Arc::clone(counts));
        }
        shared
    }

    /// Adds an outcome to the fleet's window of `circuit`; a failure is
    /// written at once, so the fleet counts it within a call or two.
    fn count_shared(&self, circuit: &Circuit, failed: bool) {
        if let Some(counts) = &circuit.shared {
            counts.add(self.clock.unix_ms(), [1, u64::from(failed)]);
            if failed {
                self.fleet.flush_counts(counts);
            }
        }
    }

    /// Publishes the circuit's state to the fleet after a transition of
    /// this replica's own making, and passes the transition on.
    fn publish(&self, model: ModelIndex, t: Option<HealthTransition>) -> Option<HealthTransition> {
        if let Some(t) = t {
            self.publish_current(model, t.to);
        }
        t
    }

    /// Publishes the circuit's state if it is `state` (a concurrent change
    /// since is published by whoever made it).
    fn publish_current(&self, model: ModelIndex, state: CircuitState) {
        let (Some(circuit), Some(spec)) = (self.circuits.get(model), self.models.get(model)) else {
            return;
        };
        let current = Word(circuit.word.load(Ordering::Acquire));
        if current.state() != state {
            return;
        }
        let remaining = || {
            Duration::from_millis(
                current
                    .until_ms()
                    .saturating_sub(Self::now_ms(self.clock.now())),
            )
        };
        let shared = match current.code() {
            OPEN => SharedCircuit::open(remaining()),
            COOLING_DOWN => SharedCircuit::cooling_down(
                remaining(),
                current.explicit(),
                current.then_half_open(),
            ),
            DISABLED => SharedCircuit::disabled(),
            CLOSED => SharedCircuit::closed(),
            _ => return,
        };
        self.fleet.publish_circuit(&spec.id, shared);
    }

    fn now_ms(now: Duration) -> u64 {
        u64::try_from(now.as_millis())
            .unwrap_or(u64::MAX)
            .min(UNTIL_MAX)
    }

    /// The break after `reopens` re-opens: `break_ms * multiplier^reopens`,
    /// capped.
    fn break_for(&self, reopens: u32) -> u64 {
        let grown = self.break_ms as f64 * self.break_multiplier.powi(reopens.min(64) as i32);
        if grown >= self.max_break_ms as f64 {
            self.max_break_ms
        } else {
            grown as u64
        }
    }

    /// The default cooldown of the `n`th cooldown in a row (n >= 1).
    fn default_cooldown(&self, n: u32) -> u64 {
        let doublings = n.saturating_sub(1).min(32);
        self.cooldown_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_cooldown_ms)
    }

    fn is_slow(&self, latency: Duration) -> bool {
        self.slow_call.is_some_and(|slow| latency >= slow)
    }

    /// Notes a call. Idleness is judged in seconds, so a store at most
    /// every 100 ms keeps the shared line quiet under load; the first call
    /// after the model was listed as idle always stores, ending that.
    fn touch(circuit: &Circuit, now_ms: u64) {
        let last = circuit.last_activity_ms.load(Ordering::Relaxed);
        if last & LISTED_IDLE != 0 || now_ms.saturating_sub(last) >= 100 {
            circuit.last_activity_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Whether a closed model has had no call for `idle_ms`; if so, marks it
    /// listed as idle, so a failed probe may open it unless a call comes
    /// first. A call recorded between the check and the mark makes the
    /// model busy, not listed.
    fn list_if_idle(circuit: &Circuit, now_ms: u64, idle_ms: u64) -> bool {
        let last = circuit.last_activity_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last & !LISTED_IDLE) < idle_ms {
            return false;
        }
        last & LISTED_IDLE != 0
            || circuit
                .last_activity_ms
                .compare_exchange(
                    last,
                    last | LISTED_IDLE,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn transition(from: Word, to: CircuitState, cause: Option<FailureKind>) -> HealthTransition {
        HealthTransition {
            from: from.state(),
            to,
            cause,
        }
    }

    /// Opens a closed circuit if the window says so.
    fn evaluate(
        &self,
        circuit: &Circuit,
        now: Duration,
        cause: Option<FailureKind>,
    ) -> Option<HealthTransition> {
        let current = Word(circuit.word.load(Ordering::Acquire));
        if current.code() != CLOSED {
            return None;
        }
        let sums = circuit.window.sums(now);
        // Calls and failures are the fleet's when it shares them (and its
        // store answers); slow calls are this replica's own.
        let unix_ms = self.clock.unix_ms();
        let (calls, failures) = match circuit
            .shared
            .as_ref()
            .filter(|_| unix_ms >= circuit.fleet_from_unix_ms.load(Ordering::Acquire))
            .and_then(|c| c.fleet_sums(unix_ms))
        {
            Some(fleet) => (fleet[0].max(sums[CALLS]), fleet[1].max(sums[FAILURES])),
            None => (sums[CALLS], sums[FAILURES]),
        };
        if calls < self.min_calls {
            return None;
        }
        let calls_f = calls as f64;
        let failing = failures as f64 >= self.failure_ratio * calls_f;
        let slow = self.slow_call.is_some()
            && sums[CALLS] > 0
            && sums[SLOW] as f64 >= self.slow_call_ratio * sums[CALLS] as f64;
        if !(failing || slow) {
            return None;
        }
        let reopens = circuit.reopens.load(Ordering::Relaxed);
        let until = Self::now_ms(now).saturating_add(self.break_for(reopens));
        let next = Word::open(until);
        circuit
            .word
            .compare_exchange(current.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| {
                circuit.changed(current, next, Self::now_ms(now));
                Self::transition(current, CircuitState::Open, cause)
            })
    }

    /// Closes a circuit from any state, with a fresh window.
    fn close(&self, circuit: &Circuit, only_period: Option<u64>) -> Option<HealthTransition> {
        let mut current = Word(circuit.word.load(Ordering::Acquire));
        loop {
            if current.code() == CLOSED {
                return None;
            }
            if let Some(period) = only_period
                && !current.is_trial_period(period)
            {
                return None;
            }
            match circuit.word.compare_exchange_weak(
                current.0,
                Word::closed().0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    circuit.changed(current, Word::closed(), Self::now_ms(self.clock.now()));
                    circuit.reopens.store(0, Ordering::Relaxed);
                    circuit.window.reset();
                    // The fleet's window still holds the failures that
                    // opened the circuit: count alone for one window.
                    circuit.fleet_from_unix_ms.store(
                        self.clock.unix_ms().saturating_add(self.window_ms),
                        Ordering::Release,
                    );
                    return Some(Self::transition(current, CircuitState::Closed, None));
                }
                Err(actual) => current = Word(actual),
            }
        }
    }

    /// A trial of half-open period `period` succeeded.
    fn trial_succeeded(&self, circuit: &Circuit, period: u64) -> Option<HealthTransition> {
        let mut current = Word(circuit.word.load(Ordering::Acquire));
        loop {
            if !current.is_trial_period(period) {
                return None;
            }
            let successes = current.successes() + 1;
            if successes >= self.half_open_calls {
                return self.close(circuit, Some(period));
            }
            let next = Word::half_open(period, current.trials(), successes);
            match circuit.word.compare_exchange_weak(
                current.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return None,
                Err(actual) => current = Word(actual),
            }
        }
    }

    /// Re-opens the circuit with a grown break, if it is in the state
    /// `accept` allows.
    fn reopen(
        &self,
        circuit: &Circuit,
        now: Duration,
        cause: FailureKind,
        accept: impl Fn(Word) -> bool,
    ) -> Option<HealthTransition> {
        let mut current = Word(circuit.word.load(Ordering::Acquire));
        loop {
            if !accept(current) {
                return None;
            }
            let reopens = circuit.reopens.load(Ordering::Relaxed).saturating_add(1);
            let until = Self::now_ms(now).saturating_add(self.break_for(reopens));
            let next = Word::open(until);
            match circuit.word.compare_exchange_weak(
                current.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    circuit.changed(current, next, Self::now_ms(now));
                    circuit.reopens.store(reopens, Ordering::Relaxed);
                    return (current.code() != OPEN)
                        .then(|| Self::transition(current, CircuitState::Open, Some(cause)));
                }
                Err(actual) => current = Word(actual),
            }
        }
    }

    /// Gives a trial permit of `period` back.
    fn release_trial(circuit: &Circuit, period: u64) {
        let mut current = Word(circuit.word.load(Ordering::Acquire));
        while current.is_trial_period(period) && current.trials() > 0 {
            let next = Word::half_open(period, current.trials() - 1, current.successes());
            match circuit.word.compare_exchange_weak(
                current.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => current = Word(actual),
            }
        }
    }

    /// A 429: cool the model down for `retry_after`, or the doubling default.
    /// `trial` is the permit's half-open period; `from_probe` lets a probe's
    /// 429 cool down an open or half-open circuit too.
    fn cool_down(
        &self,
        circuit: &Circuit,
        now: Duration,
        retry_after: Option<Duration>,
        trial: Option<u64>,
        from_probe: bool,
    ) -> Option<HealthTransition> {
        let now_ms = Self::now_ms(now);
        let explicit = retry_after.is_some();
        let explicit_ms = retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut current = Word(circuit.word.load(Ordering::Acquire));
        loop {
            let starts = match current.code() {
                CLOSED => true,
                HALF_OPEN => from_probe || trial.is_some_and(|p| current.is_trial_period(p)),
                OPEN => from_probe,
                COOLING_DOWN => false,
                _ => return None,
            };
            let (next, streak) = if starts {
                let streak = circuit.cooldowns.load(Ordering::Relaxed).saturating_add(1);
                let mut wait = explicit_ms.unwrap_or_else(|| self.default_cooldown(streak));
                // A 429 shows the model is up, not that it has recovered: a
                // circuit that was not closed goes back to trials after the
                // cooldown.
                let then_half_open = current.code() != CLOSED;
                if then_half_open {
                    // The half-open period that follows is named by the
                    // cooldown's end; at least 1 ms ahead keeps that name
                    // apart from the period whose trial got the 429.
                    wait = wait.max(1);
                }
                (
                    Word::cooling_down(now_ms.saturating_add(wait), explicit, then_half_open),
                    Some(streak),
                )
            } else {
                if current.code() != COOLING_DOWN {
                    return None;
                }
                // Another 429 while cooling down (a call that was already in
                // flight): extend, without counting a new cooldown.
                let streak = circuit.cooldowns.load(Ordering::Relaxed).max(1);
                let wait = explicit_ms.unwrap_or_else(|| self.default_cooldown(streak));
                let until = now_ms.saturating_add(wait).max(current.until_ms());
                let next = Word::cooling_down(
                    until,
                    explicit || current.explicit(),
                    current.then_half_open(),
                );
                if next == current {
                    return None;
                }
                (next, None)
            };
            match circuit.word.compare_exchange_weak(
                current.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    circuit.changed(current, next, now_ms);
                    return streak.map(|streak| {
                        circuit.cooldowns.store(streak, Ordering::Relaxed);
                        Self::transition(
                            current,
                            CircuitState::CoolingDown,
                            Some(FailureKind::RateLimited),
                        )
                    });
                }
                Err(actual) => current = Word(actual),
            }
        }
    }

    /// Disables the model until a probe succeeds.
    fn disable(circuit: &Circuit, cause: FailureKind, now_ms: u64) -> Option<HealthTransition> {
        let previous = Word(circuit.word.swap(Word::disabled().0, Ordering::AcqRel));
        circuit.changed(previous, Word::disabled(), now_ms);
        (previous.code() != DISABLED)
            .then(|| Self::transition(previous, CircuitState::Disabled, Some(cause)))
    }

    fn reset_cooldowns(circuit: &Circuit) {
        if circuit.cooldowns.load(Ordering::Relaxed) != 0 {
            circuit.cooldowns.store(0, Ordering::Relaxed);
        }
    }
}

impl CircuitBreaker {
    /// [`HealthPolicy::record`] without the publication.
    fn record_local(
        &self,
        model: ModelIndex,
        permit: Permit,
        outcome: CallOutcome,
    ) -> Option<HealthTransition> {
        let circuit = self.circuits.get(model)?;
        let trial = trial_of(permit);
        let (kind, retry_after, latency) = match outcome {
            CallOutcome::Cancelled => {
                if let Some(period) = trial {
                    Self::release_trial(circuit, period);
                }
                return None;
            }
            CallOutcome::Success { latency } => {
                let now = self.clock.now();
                Self::touch(circuit, Self::now_ms(now));
                let slow = self.is_slow(latency);
                circuit.window.add(now, [1, 0, u64::from(slow)]);
                self.count_shared(circuit, false);
                Self::reset_cooldowns(circuit);
                if let Some(period) = trial
                    && let Some(t) = self.trial_succeeded(circuit, period)
                {
                    return Some(t);
                }
                return if slow {
                    self.evaluate(circuit, now, None)
                } else {
                    None
                };
            }
            CallOutcome::Failure {
                kind,
                retry_after,
                latency,
            } => (kind, retry_after, latency),
        };
        let now = self.clock.now();
        Self::touch(circuit, Self::now_ms(now));
        match kind.health_effect() {
            HealthEffect::None => {
                if let Some(period) = trial {
                    Self::release_trial(circuit, period);
                }
                None
            }
            HealthEffect::Failure => {
                let slow = self.is_slow(latency);
                circuit.window.add(now, [1, 1, u64::from(slow)]);
                self.count_shared(circuit, true);
                if let Some(period) = trial
                    && let Some(t) = self.reopen(circuit, now, kind, |w| w.is_trial_period(period))
                {
                    return Some(t);
                }
                self.evaluate(circuit, now, Some(kind))
            }
            HealthEffect::Cooldown => self.cool_down(circuit, now, retry_after, trial, false),
            HealthEffect::Disable => Self::disable(circuit, kind, Self::now_ms(now)),
        }
    }

    /// [`HealthPolicy::record_probe`] without the publication.
    fn record_probe_local(
        &self,
        model: ModelIndex,
        result: Result<Duration, ProbeFailure>,
    ) -> Option<HealthTransition> {
        let circuit = self.circuits.get(model)?;
        let now = self.clock.now();
        // A probe counts as activity: an idle model is probed again only
        // after idling for the prober's idle_ms once more.
        let before = circuit
            .last_activity_ms
            .swap(Self::now_ms(now), Ordering::Relaxed);
        let still_idle = before & LISTED_IDLE != 0;
        let ProbeFailure { kind, retry_after } = match result {
            Ok(_) => {
                Self::reset_cooldowns(circuit);
                return self.close(circuit, None);
            }
            Err(failure) => failure,
        };
        match kind.health_effect() {
            HealthEffect::None => None,
            HealthEffect::Disable => Self::disable(circuit, kind, Self::now_ms(now)),
            // A probe answered with 429 and Retry-After says when to come
            // back: cool down for that long, not for the default.
            HealthEffect::Cooldown => self.cool_down(circuit, now, retry_after, None, true),
            HealthEffect::Failure => {
                let current = Word(circuit.word.load(Ordering::Acquire));
                if current.code() == CLOSED {
                    if !still_idle {
                        // Calls reached the model while the probe was out
                        // (or it was never listed as idle): they, through
                        // the window, say whether it is down.
                        return None;
                    }
                    // An idle model found dead: open with the first break,
                    // so traffic does not discover it the hard way.
                    let until = Self::now_ms(now).saturating_add(self.break_for(0));
                    let next = Word::open(until);
                    return circuit
                        .word
                        .compare_exchange(current.0, next.0, Ordering::AcqRel, Ordering::Acquire)
                        .ok()
                        .map(|_| {
                            circuit.changed(current, next, Self::now_ms(now));
                            Self::transition(current, CircuitState::Open, Some(kind))
                        });
                }
                self.reopen(circuit, now, kind, |w| matches!(w.code(), OPEN | HALF_OPEN))
            }
        }
    }
}

impl CircuitListener for CircuitBreaker {
    fn adopt(&self, model: &str, shared: SharedCircuit) {
        let Some(index) = self.models.iter().position(|m| m.id == model) else {
            return;
        };
        let circuit = &self.circuits[index];
        if shared.state == CircuitState::Closed {
            if let Some(t) = self.close(circuit, None) {
                tracing::info!(model, from = t.from.as_str(), "circuit closed by the fleet");
            }
            return;
        }
        let now_ms = Self::now_ms(self.clock.now());
        let until = now_ms.saturating_add(
            shared
                .remaining
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        );
        // An adopted break ends `break_ms` later here than on the replica
        // that opened it: that one's trials decide for the fleet first.
        let verdict_until = until.saturating_add(self.break_ms);
        let mut current = Word(circuit.word.load(Ordering::Acquire));
        loop {
            let next = match (shared.state, current.code()) {
                (CircuitState::Disabled, DISABLED) => return,
                (CircuitState::Disabled, _) => Word::disabled(),
                // A disabled model waits for a probe, whatever the fleet
                // says of breaks and cooldowns.
                (_, DISABLED) => return,
                (CircuitState::Open, OPEN) if current.until_ms() >= verdict_until => return,
                (CircuitState::Open, _) => Word::open(verdict_until),
                // An open break outranks a cooldown; a cooldown only grows.
                (CircuitState::CoolingDown, OPEN) => return,
                (CircuitState::CoolingDown, COOLING_DOWN) => {
                    if current.until_ms() >= until {
                        return;
                    }
                    Word::cooling_down(
                        until,
                        shared.explicit || current.explicit(),
                        shared.then_half_open || current.then_half_open(),
                    )
                }
                (CircuitState::CoolingDown, code) => Word::cooling_down(
                    until,
                    shared.explicit,
                    shared.then_half_open || code == HALF_OPEN,
                ),
                _ => return,
            };
            match circuit.word.compare_exchange_weak(
                current.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    circuit.changed(current, next, now_ms);
                    if current.code() != next.code() {
                        tracing::info!(
                            model,
                            from = current.state().as_str(),
                            to = next.state().as_str(),
                            "circuit adopted from the fleet"
                        );
                    }
                    return;
                }
                Err(actual) => current = Word(actual),
            }
        }
    }
}

impl CountsListener for CircuitBreaker {
    fn refreshed(&self, counts: &SharedCounts) {
        // The fleet's window may have crossed the threshold with the
        // failures of other replicas: open here and tell the fleet.
        let Some(model) = self.circuits.iter().position(|c| {
            c.shared
                .as_ref()
                .is_some_and(|s| std::ptr::eq(&**s, counts))
        }) else {
            return;
        };
        let t = self.evaluate(&self.circuits[model], self.clock.now(), None);
        if let Some(t) = self.publish(model, t) {
            tracing::info!(
                model = %self.models[model].id,
                from = t.from.as_str(),
                "circuit opened by the fleet's window"
            );
        }
    }
}

impl HealthPolicy for CircuitBreaker {
    fn name(&self) -> &str {
        NAME
    }

    fn admit(&self, model: ModelIndex) -> Admission {
        let Some(circuit) = self.circuits.get(model) else {
            // A model this breaker was not built for: nothing is known.
            return Admission::Admit(Permit::default());
        };
        let mut current = Word(circuit.word.load(Ordering::Acquire));
        loop {
            let next = match current.code() {
                CLOSED => return Admission::Admit(Permit::default()),
                DISABLED => {
                    return Admission::Reject {
                        retry_after: Duration::ZERO,
                    };
                }
                OPEN | COOLING_DOWN => {
                    let now_ms = Self::now_ms(self.clock.now());
                    let until = current.until_ms();
                    if now_ms < until {
                        return Admission::Reject {
                            retry_after: Duration::from_millis(until - now_ms),
                        };
                    }
                    if current.code() == OPEN || current.then_half_open() {
                        Word::half_open(until, 1, 0)
                    } else {
                        Word::closed()
                    }
                }
                _ => {
                    if current.trials() >= self.half_open_calls {
                        return Admission::Reject {
                            retry_after: Duration::ZERO,
                        };
                    }
                    Word::half_open(
                        current.until_ms(),
                        current.trials() + 1,
                        current.successes(),
                    )
                }
            };
            match circuit.word.compare_exchange_weak(
                current.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // A break or cooldown ended at its `until`, not when
                    // the next call happened to come.
                    circuit.changed(current, next, current.until_ms());
                    return Admission::Admit(if next.code() == HALF_OPEN {
                        trial_permit(next.until_ms())
                    } else {
                        Permit::default()
                    });
                }
                Err(actual) => current = Word(actual),
            }
        }
    }

    fn record(
        &self,
        model: ModelIndex,
        permit: Permit,
        outcome: CallOutcome,
    ) -> Option<HealthTransition> {
        let cooldown = matches!(
            outcome,
            CallOutcome::Failure { kind, .. } if kind.health_effect() == HealthEffect::Cooldown
        );
        let t = self.record_local(model, permit, outcome);
        if t.is_none() && cooldown {
            // A longer cooldown than the fleet's is published too: the
            // store keeps the longer of the two.
            self.publish_current(model, CircuitState::CoolingDown);
        }
        self.publish(model, t)
    }

    fn record_probe(
        &self,
        model: ModelIndex,
        result: Result<Duration, ProbeFailure>,
    ) -> Option<HealthTransition> {
        let cooldown = matches!(
            result,
            Err(ProbeFailure { kind, .. }) if kind.health_effect() == HealthEffect::Cooldown
        );
        let t = self.record_probe_local(model, result);
        if t.is_none() && cooldown {
            self.publish_current(model, CircuitState::CoolingDown);
        }
        self.publish(model, t)
    }

    fn probe_targets(&self, idle: Duration, out: &mut Vec<ModelIndex>) {
        let now_ms = Self::now_ms(self.clock.now());
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        for (index, circuit) in self.circuits.iter().enumerate() {
            let current = Word(circuit.word.load(Ordering::Acquire));
            let wants = match current.code() {
                OPEN | HALF_OPEN | DISABLED => true,
                // An explicit Retry-After is the upstream's word; it ends by
                // itself and probing would only spend its quota.
                COOLING_DOWN => !current.explicit(),
                _ => Self::list_if_idle(circuit, now_ms, idle_ms),
            };
            if wants {
                out.push(index);
            }
        }
    }

    fn snapshot(&self, model: ModelIndex) -> HealthSnapshot {
        let Some(circuit) = self.circuits.get(model) else {
            return HealthSnapshot {
                state: CircuitState::Closed,
                retry_after_ms: None,
                window_calls: 0,
                failure_ratio: 0.0,
                in_state_ms: None,
            };
        };
        let now = self.clock.now();
        let current = Word(circuit.word.load(Ordering::Acquire));
        let retry_after_ms = matches!(current.code(), OPEN | COOLING_DOWN)
            .then(|| current.until_ms().saturating_sub(Self::now_ms(now)));
        let sums = circuit.window.sums(now);
        let changed_ms = circuit.changed_ms.load(Ordering::Relaxed);
        HealthSnapshot {
            state: current.state(),
            retry_after_ms,
            window_calls: sums[CALLS],
            failure_ratio: if sums[CALLS] == 0 {
                0.0
            } else {
                sums[FAILURES] as f64 / sums[CALLS] as f64
            },
            in_state_ms: Some(Self::now_ms(now).saturating_sub(changed_ms)),
        }
    }
}

#[cfg(test)]
mod tests;
