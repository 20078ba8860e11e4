//! The fleet seam: what replicas of one gateway share.
//!
//! Strategies keep their hot-path state local (atomics) and tell a
//! [`FleetState`] what a fleet must agree on. Today that is circuit
//! transitions: a replica that opens, cools down, disables or closes a
//! model publishes it, and every other replica adopts it through the
//! [`CircuitListener`] it registered. Budgets that a fleet shares reserve
//! and settle through it too ([`FleetState::reserve_budget`]), and so do
//! rate limits ([`FleetState::acquire_rate`]); the alert
//! rule's window is summed across the fleet ([`SharedCounts`]), and an
//! alert is sent by one replica only ([`FleetState::claim`]). The default,
//! [`LocalState`], shares
//! nothing (one gateway is its own fleet); the Redis implementation lives in
//! the `backstop-fleet` crate. Core knows nothing of any store.
//!
//! The contract keeps the hot path free of the store: publishing never
//! waits (an implementation queues and writes in the background), and
//! adopting is a call into the strategy from the store's own task, so
//! `HealthPolicy::admit` only ever reads local atomics.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::health::CircuitState;

/// A model's circuit as the fleet shares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedCircuit {
    /// Open, cooling down, disabled or closed (half-open is a replica's own
    /// trial period and is not shared).
    pub state: CircuitState,
    /// How long the state lasts from now: the rest of the break or of the
    /// cooldown. `None` for disabled (until a probe succeeds) and closed.
    /// Relative, so replicas' clocks need not agree.
    pub remaining: Option<Duration>,
    /// Cooling down only: the cooldown is the upstream's explicit
    /// Retry-After (probing would only spend its quota).
    pub explicit: bool,
    /// Cooling down only: the cooldown ends half-open rather than closed.
    pub then_half_open: bool,
}

impl SharedCircuit {
    /// A circuit open for `remaining`.
    pub fn open(remaining: Duration) -> Self {
        Self {
            state: CircuitState::Open,
            remaining: Some(remaining),
            explicit: false,
            then_half_open: false,
        }
    }

    /// A model cooling down for `remaining`.
    pub fn cooling_down(remaining: Duration, explicit: bool, then_half_open: bool) -> Self {
        Self {
            state: CircuitState::CoolingDown,
            remaining: Some(remaining),
            explicit,
            then_half_open,
        }
    }

    /// A disabled model.
    pub fn disabled() -> Self {
        Self {
            state: CircuitState::Disabled,
            remaining: None,
            explicit: false,
            then_half_open: false,
        }
    }

    /// A closed circuit.
    pub fn closed() -> Self {
        Self {
            state: CircuitState::Closed,
            remaining: None,
            explicit: false,
            then_half_open: false,
        }
    }
}

/// One capped account of a budget the fleet shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedAccount<'a> {
    /// The account's name, the same on every replica (`total`,
    /// `caller:<key>`, `scenario:<name>`).
    pub name: &'a str,
    /// Its cap per window, in the budget's unit (nano-USD).
    pub cap: u64,
}

/// Where budgets are held, and which window they count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetWindow<'a> {
    /// The budget policy, the same on every replica with the same config.
    pub scope: &'a str,
    /// The window's number (Unix time / `length_ms`).
    pub number: u64,
    /// The window's length.
    pub length_ms: u64,
}

/// One rate limit of a call, as the fleet's store counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedRate<'a> {
    /// The limit's name, the same on every replica (`model:<id>`,
    /// `caller:<label>`).
    pub name: &'a str,
    /// Requests per minute allowed (0: not limited).
    pub rpm: u64,
    /// Tokens per minute allowed (0: not limited).
    pub tpm: u64,
    /// Check the limit and count one request on it; `false` only adds the
    /// tokens (a request's later admissions, for its caller).
    pub check: bool,
}

/// A correction of what a call counted on one rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCorrection<'a> {
    /// The limit's name, as in [`SharedRate::name`].
    pub name: &'a str,
    /// Requests to add (-1 for a call never sent, else 0).
    pub requests: i64,
    /// Tokens to add (actual minus estimate).
    pub tokens: i64,
}

/// The store's answer to a rate-limit acquisition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Counted on every limit; `ticket` names the slot (for the settle).
    Held {
        /// The store's slot number.
        ticket: u64,
    },
    /// `limits[index]` refused; the call fits after `retry_after`.
    Refused {
        /// Which limit of the call.
        index: usize,
        /// Requests (`false`) or tokens (`true`).
        tokens: bool,
        /// How long until it fits.
        retry_after: Duration,
    },
}

/// The store could not answer (down, too slow, refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the fleet's state store failed: {0}")]
pub struct StoreFailure(pub String);

/// What a budget does while the fleet's store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreFailure {
    /// Carry on with this replica's own accounting (each replica then
    /// enforces the cap on its own).
    #[default]
    Local,
    /// Refuse: nothing is spent that the fleet cannot count.
    Closed,
}

/// A strategy that adopts the circuit transitions of other replicas.
pub trait CircuitListener: Send + Sync {
    /// Model `model` (its config id) is in `circuit` across the fleet: a
    /// transition another replica published, or the store's current state
    /// read when this replica (re)connects. Never called for this
    /// replica's own publications.
    fn adopt(&self, model: &str, circuit: SharedCircuit);
}

/// Who sends a fleet-wide alert: the answer to [`FleetState::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This replica holds the claim: it acts (sends the alert).
    Won,
    /// Another replica holds it for `remaining` more: this one stays quiet.
    Lost {
        /// How long the other replica's claim lasts from now.
        remaining: Duration,
    },
    /// The store could not answer: this replica acts on its own (an alert
    /// sent twice beats an alert never sent).
    Unknown,
}

/// Told when the fleet's sums of a [`SharedCounts`] were read anew.
pub trait CountsListener: Send + Sync {
    /// The sums of `counts` changed (or became unknown); read them with
    /// [`SharedCounts::fleet_sums`].
    fn refreshed(&self, counts: &SharedCounts);
}

/// Two counters over a sliding window of wall-clock time that the fleet
/// sums: the alert rule's requests and fallbacks.
///
/// A replica adds its counts here ([`SharedCounts::add`]: a short lock, no
/// I/O); the fleet's store takes them in the background
/// ([`SharedCounts::take_pending`]), adds them to the fleet's buckets and
/// hands back the fleet's sums over the window ([`SharedCounts::set_fleet`]),
/// every ~100 ms. Buckets are numbered from the wall clock (Unix ms /
/// bucket length), so replicas' clocks should agree (NTP), as for budgets.
pub struct SharedCounts {
    name: String,
    bucket_ms: u64,
    buckets: u64,
    /// Counts not yet written, by bucket.
    pending: Mutex<BTreeMap<u64, [u64; 2]>>,
    /// The fleet's sums as last read: the bucket they were read in, and
    /// the sums (`None` when the store failed).
    fleet: Mutex<Option<(u64, [u64; 2])>>,
    /// Whether the last refresh failed (logged once per change).
    degraded: AtomicBool,
    /// A write of the pending counts is queued ([`FleetState::flush_counts`]).
    flush_queued: AtomicBool,
    listener: OnceLock<Weak<dyn CountsListener>>,
}

impl fmt::Debug for SharedCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCounts")
            .field("name", &self.name)
            .field("bucket_ms", &self.bucket_ms)
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

impl SharedCounts {
    /// A window of `window_ms` in `buckets` buckets, named `name` (the
    /// same on every replica).
    pub fn new(name: &str, window_ms: u64, buckets: u32) -> Self {
        let buckets = u64::from(buckets.max(1));
        Self {
            name: name.to_owned(),
            bucket_ms: (window_ms / buckets).max(1),
            buckets,
            pending: Mutex::new(BTreeMap::new()),
            fleet: Mutex::new(None),
            degraded: AtomicBool::new(false),
            flush_queued: AtomicBool::new(false),
            listener: OnceLock::new(),
        }
    }

    /// The window's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One bucket's length, in milliseconds.
    pub fn bucket_ms(&self) -> u64 {
        self.bucket_ms
    }

    /// The window's length, in buckets.
    pub fn buckets(&self) -> u64 {
        self.buckets
    }

    /// The bucket of wall-clock time `unix_ms`.
    pub fn bucket_of(&self, unix_ms: u64) -> u64 {
        unix_ms / self.bucket_ms
    }

    /// The oldest bucket still in the window that ends in bucket `newest`.
    pub fn oldest(&self, newest: u64) -> u64 {
        newest.saturating_sub(self.buckets - 1)
    }

    /// Registers who hears of refreshes (once; later calls are ignored).
    pub fn listen(&self, listener: Weak<dyn CountsListener>) {
        let _ = self.listener.set(listener);
    }

    /// Adds `counts` at wall-clock time `unix_ms`, for the store to take.
    pub fn add(&self, unix_ms: u64, counts: [u64; 2]) {
        let bucket = self.bucket_of(unix_ms);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = pending.entry(bucket).or_insert([0, 0]);
        slot[0] += counts[0];
        slot[1] += counts[1];
    }

    /// Marks a write of the pending counts as queued; `false` when one
    /// already is (it will carry the counts added meanwhile too).
    pub fn queue_flush(&self) -> bool {
        !self.flush_queued.swap(true, Ordering::AcqRel)
    }

    /// Undoes [`Self::queue_flush`] when the write could not be queued.
    pub fn unqueue_flush(&self) {
        self.flush_queued.store(false, Ordering::Release);
    }

    /// Takes every count not yet written, oldest bucket first.
    pub fn take_pending(&self) -> Vec<(u64, [u64; 2])> {
        self.flush_queued.store(false, Ordering::Release);
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
            .into_iter()
            .collect()
    }

    /// Puts back counts the store could not take, keeping only those still
    /// in the window ending at `now_bucket`: they are written once it
    /// answers again.
    pub fn restore_pending(&self, counts: Vec<(u64, [u64; 2])>, now_bucket: u64) {
        let oldest = self.oldest(now_bucket);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|bucket, _| *bucket >= oldest);
        for (bucket, counts) in counts.into_iter().filter(|(b, _)| *b >= oldest) {
            let slot = pending.entry(bucket).or_insert([0, 0]);
            slot[0] += counts[0];
            slot[1] += counts[1];
        }
    }

    /// The store's answer: the fleet's sums over the window ending in
    /// `bucket` (this replica's written counts included), or `None` when it
    /// could not answer. Tells the listener.
    pub fn set_fleet(&self, bucket: u64, sums: Option<[u64; 2]>) {
        *self.fleet.lock().unwrap_or_else(PoisonError::into_inner) = sums.map(|s| (bucket, s));
        let degraded = sums.is_none();
        if self.degraded.swap(degraded, Ordering::AcqRel) != degraded {
            if degraded {
                tracing::warn!(
                    window = %self.name,
                    "the fleet's counts cannot be read; this replica counts its own until the store answers"
                );
            } else {
                tracing::info!(window = %self.name, "the fleet's counts are read again");
            }
        }
        if let Some(listener) = self.listener.get().and_then(Weak::upgrade) {
            listener.refreshed(self);
        }
    }

    /// The fleet's sums over the window ending at `unix_ms`: the last sums
    /// read plus this replica's counts not yet written. `None` when the
    /// store failed, or has not answered for `2 × bucket` plus a second:
    /// the caller then counts on its own.
    pub fn fleet_sums(&self, unix_ms: u64) -> Option<[u64; 2]> {
        let now = self.bucket_of(unix_ms);
        let (read_in, mut sums) = (*self.fleet.lock().unwrap_or_else(PoisonError::into_inner))?;
        let stale_after = 2 + 1_000 / self.bucket_ms;
        if now.saturating_sub(read_in) > stale_after {
            return None;
        }
        let oldest = self.oldest(now);
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, counts) in pending.range(oldest..) {
            sums[0] += counts[0];
            sums[1] += counts[1];
        }
        Some(sums)
    }
}

/// What a fleet of replicas shares. See the module docs.
pub trait FleetState: Send + Sync + fmt::Debug {
    /// The backend's config name (`local`, `redis`).
    fn backend(&self) -> &str;

    /// Tells the fleet that `model`'s circuit is now `circuit`. Never waits
    /// on the store; a store that is down loses the publication (every
    /// replica keeps its own state meanwhile).
    fn publish_circuit(&self, model: &str, circuit: SharedCircuit);

    /// Registers a strategy that adopts other replicas' transitions. Held
    /// weakly: a dropped strategy stops hearing.
    fn subscribe_circuits(&self, listener: Weak<dyn CircuitListener>);

    /// Asks for the right to probe `model` for `ttl`: only one replica of
    /// the fleet probes a model at a time. `true` when this replica may
    /// probe (always, for a backend that shares nothing, and when the store
    /// cannot be reached: probing twice beats never probing).
    fn probe_lease(&self, model: &str, ttl: Duration) -> BoxFuture<'_, bool>;

    /// Whether the shared store answers (always `true` for `local`).
    fn store_up(&self) -> bool;

    /// Whether budgets should reserve through [`FleetState::reserve_budget`].
    fn shares_budgets(&self) -> bool {
        false
    }

    /// Holds `amount` on every account in `window`, all or none, in one
    /// atomic step: `Ok(None)` held, `Ok(Some(i))` refused by `accounts[i]`,
    /// `Err` when the store failed (nothing held).
    fn reserve_budget<'a>(
        &'a self,
        window: BudgetWindow<'a>,
        accounts: &'a [SharedAccount<'a>],
        amount: u64,
    ) -> BoxFuture<'a, Result<Option<usize>, StoreFailure>> {
        let _ = (window, accounts, amount);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Replaces `held` by `actual` on the accounts named (in the current
    /// window). Never waits: queued for the store.
    fn settle_budget(&self, window: BudgetWindow<'_>, accounts: &[&str], held: u64, actual: u64) {
        let _ = (window, accounts, held, actual);
    }

    /// What budgets and rate limits do while the store fails.
    fn on_store_failure(&self) -> OnStoreFailure {
        OnStoreFailure::Local
    }

    /// Whether windows of counts are summed across the fleet
    /// ([`FleetState::share_counts`]).
    fn shares_counts(&self) -> bool {
        false
    }

    /// Sums `counts` across the fleet from now on: the store writes its
    /// pending counts and reads the fleet's sums back in the background.
    fn share_counts(&self, counts: Arc<SharedCounts>) {
        let _ = counts;
    }

    /// Writes `counts`' pending counts and reads the fleet's sums back
    /// now rather than at the next refresh (a circuit's failure: the fleet
    /// must see it within a call or two). Never waits: queued.
    fn flush_counts(&self, counts: &Arc<SharedCounts>) {
        let _ = counts;
    }

    /// Claims `name` (an alert's firing) for `ttl`, so that one replica of
    /// the fleet acts: `then` hears [`Claim::Won`] on the replica that got
    /// it, [`Claim::Lost`] on the others. Never waits: `then` runs later,
    /// on the store's task (at once for a backend that shares nothing,
    /// which always wins).
    fn claim(&self, name: &str, ttl: Duration, then: Box<dyn FnOnce(Claim) + Send>) {
        let _ = (name, ttl);
        then(Claim::Won);
    }

    /// Whether rate limits should count through [`FleetState::acquire_rate`].
    fn shares_rate_limits(&self) -> bool {
        false
    }

    /// Counts one call on every limit, all or none, in one atomic step on
    /// the store's clock: one request (where `check`) and `tokens` within a
    /// sliding minute of `bucket_ms` slots. `Err` when the store failed
    /// (nothing counted).
    fn acquire_rate<'a>(
        &'a self,
        limits: &'a [SharedRate<'a>],
        tokens: u64,
        bucket_ms: u64,
    ) -> BoxFuture<'a, Result<RateVerdict, StoreFailure>> {
        let _ = (limits, tokens, bucket_ms);
        Box::pin(std::future::ready(Ok(RateVerdict::Held { ticket: 0 })))
    }

    /// Applies corrections to what the slot `ticket` counted (nothing if
    /// the slot has left the window). Never waits: queued for the store.
    fn settle_rate(&self, ticket: u64, corrections: &[RateCorrection<'_>]) {
        let _ = (ticket, corrections);
    }
}

fn _fleet_is_object_safe(_: &dyn FleetState) {}

/// The default: nothing is shared, every replica is a fleet of one.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalState;

impl FleetState for LocalState {
    fn backend(&self) -> &str {
        "local"
    }

    fn publish_circuit(&self, _model: &str, _circuit: SharedCircuit) {}

    fn subscribe_circuits(&self, _listener: Weak<dyn CircuitListener>) {}

    fn probe_lease(&self, _model: &str, _ttl: Duration) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(true))
    }

    fn store_up(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_counts_add_pending_to_the_fleets_last_sums_within_the_window() {
        // 10 s in 1 s buckets.
        let counts = SharedCounts::new("alerts", 10_000, 10);
        assert_eq!(counts.fleet_sums(5_000), None, "nothing read yet");
        counts.add(5_000, [1, 0]);
        counts.add(5_500, [1, 1]);
        counts.set_fleet(5, Some([10, 4]));
        assert_eq!(counts.fleet_sums(5_600), Some([12, 5]));
        let taken = counts.take_pending();
        assert_eq!(taken, vec![(5, [2, 1])]);
        assert_eq!(counts.fleet_sums(5_600), Some([10, 4]));
        // Unread for longer than two buckets and a second: unknown.
        assert_eq!(counts.fleet_sums(9_000), None);
        counts.set_fleet(9, None);
        assert_eq!(counts.fleet_sums(9_000), None);
    }

    #[test]
    fn restored_counts_keep_only_what_is_still_in_the_window() {
        let counts = SharedCounts::new("alerts", 10_000, 10);
        counts.add(20_000, [1, 1]);
        counts.restore_pending(vec![(3, [5, 5]), (15, [1, 0])], 20);
        assert_eq!(counts.take_pending(), vec![(15, [1, 0]), (20, [1, 1])]);
    }

    #[test]
    fn local_state_wins_every_claim_at_once() {
        let won = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&won);
        LocalState.claim(
            "alert:fallbacks",
            Duration::from_secs(1),
            Box::new(move |c| *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(c)),
        );
        assert_eq!(
            *won.lock().unwrap_or_else(PoisonError::into_inner),
            Some(Claim::Won)
        );
        assert!(!LocalState.shares_counts());
    }
}
