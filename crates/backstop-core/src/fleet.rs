//! The fleet seam: what replicas of one gateway share.
//!
//! Strategies keep their hot-path state local (atomics) and tell a
//! [`FleetState`] what a fleet must agree on. Today that is circuit
//! transitions: a replica that opens, cools down, disables or closes a
//! model publishes it, and every other replica adopts it through the
//! [`CircuitListener`] it registered. Budgets that a fleet shares reserve
//! and settle through it too ([`FleetState::reserve_budget`]). The default,
//! [`LocalState`], shares
//! nothing (one gateway is its own fleet); the Redis implementation lives in
//! the `backstop-fleet` crate. Core knows nothing of any store.
//!
//! The contract keeps the hot path free of the store: publishing never
//! waits (an implementation queues and writes in the background), and
//! adopting is a call into the strategy from the store's own task, so
//! `HealthPolicy::admit` only ever reads local atomics.

use std::fmt;
use std::sync::Weak;
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

    /// What budgets do while the store fails.
    fn on_store_failure(&self) -> OnStoreFailure {
        OnStoreFailure::Local
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
