//! `rolling`: spend caps per time window — in total, per caller, per
//! scenario.
//!
//! What it does:
//!
//! 1. Time is cut into windows of `window_ms`, aligned to UTC (a one-hour
//!    window runs from the top of the hour, a one-day window from midnight
//!    UTC). Each window starts with nothing spent.
//! 2. Before a call, the request's estimated cost (estimated prompt tokens
//!    at the input price plus the output bound at the output price) is
//!    reserved on every account the request draws on: the total
//!    (`max_cost`), its caller's (`max_cost_per_caller`; requests without a
//!    caller share one anonymous account) and its scenario's
//!    (`max_cost_per_scenario`). Each reservation is one compare-and-swap
//!    against the cap, so concurrent reservations can never together exceed
//!    it; if one account refuses, the others are released and the model is
//!    skipped (`over_budget` in the trail; a cheaper model may still fit).
//! 3. After the call the reservation is replaced by the actual cost of the
//!    usage reported, or released when the call failed.
//!
//! Reservations are atomic on the *estimates*. The actual cost a call
//! settles at may exceed its reservation (a prompt longer than estimated),
//! so a window's actual spend can exceed its cap by at most the estimation
//! error of the calls in flight.
//!
//! Calls in flight when a window ends keep their reservation in the next
//! window until they settle, and their cost counts in the window they
//! settle in, so a window boundary cannot be used to overspend either. A
//! settle racing the roll into a new window lands in one window or the
//! other, never lost between them. Probes are counted under the scenario
//! `probe`.
//!
//! In a fleet (`[state] backend = "redis"`), every reservation is also held
//! in the store, on the same accounts, by one Lua script per reservation
//! (all accounts or none) and settled by one per call, so the caps bind the
//! whole fleet: it never spends past a cap by more than the estimation
//! error of the calls in flight. Each replica still counts its own spend
//! (its status page shows it) and refuses past a cap on its own too. While
//! the store fails, `[state] on_store_failure` decides: `local` (each
//! replica enforces the caps on its own) or `closed` (refuse). Windows are
//! numbered from each replica's wall clock.
//!
//! When to pick it: to cap spend per hour or per day, for everyone, per API
//! key, or per product scenario.
//!
//! Knobs (at least one cap is required):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `window_ms` | `3600000` (one hour) | length of a budget window |
//! | `max_cost` | none | USD all requests together may spend per window |
//! | `max_cost_per_caller` | none | USD each caller (API key) may spend per window |
//! | `max_cost_per_scenario` | none | USD each scenario may spend per window |

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use backstop_core::{
    BudgetPolicy, BudgetSnapshot, BudgetWindow, FleetState, ModelIndex, ModelSpec, OnStoreFailure,
    OverBudget, RequestFacts, Reservation, SharedAccount, SharedClock, StrategyContext, Usage,
};
use serde::Deserialize;
use smallvec::SmallVec;

use super::{actual_nano, saturating_sub, to_nano, to_usd};
use crate::error::{StrategyError, check_cost, check_non_zero};

/// The config `type` name.
pub const NAME: &str = "rolling";

/// Knobs of the rolling budget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollingConfig {
    /// Length of a budget window. Default 3600000 (one hour).
    pub window_ms: u64,
    /// USD all requests together may spend per window. Default none.
    pub max_cost: Option<f64>,
    /// USD each caller may spend per window. Default none.
    pub max_cost_per_caller: Option<f64>,
    /// USD each scenario may spend per window. Default none.
    pub max_cost_per_scenario: Option<f64>,
}

impl Default for RollingConfig {
    fn default() -> Self {
        Self {
            window_ms: 3_600_000,
            max_cost: None,
            max_cost_per_caller: None,
            max_cost_per_scenario: None,
        }
    }
}

impl RollingConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), StrategyError> {
        check_non_zero("window_ms", self.window_ms)?;
        for (field, cap) in [
            ("max_cost", self.max_cost),
            ("max_cost_per_caller", self.max_cost_per_caller),
            ("max_cost_per_scenario", self.max_cost_per_scenario),
        ] {
            if let Some(cap) = cap {
                check_cost(field, cap)?;
            }
        }
        if self.max_cost.is_none()
            && self.max_cost_per_caller.is_none()
            && self.max_cost_per_scenario.is_none()
        {
            return Err(StrategyError::invalid(
                "max_cost",
                "is missing: set at least one of max_cost, max_cost_per_caller, max_cost_per_scenario",
            ));
        }
        Ok(())
    }
}

/// Bits of the generation that tags an account's spend with its window.
const GEN_BITS: u32 = 8;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
/// Bits of the spend itself: up to 2^56 nano-dollars (about 72 million
/// USD) per window, beyond which it stops counting.
const AMOUNT_BITS: u32 = 64 - GEN_BITS;
const AMOUNT_MAX: u64 = (1 << AMOUNT_BITS) - 1;

/// One capped account: spend in the current window plus reservations.
///
/// Reservations survive a window's end (they are in `used`, not `spent`);
/// only the spend of the old window is dropped. Rolling into a new window
/// moves `window` forward and bumps its generation; whoever first meets
/// `spent` still tagged with an older generation, roller or settler,
/// replaces it by an empty spend of the new generation with one
/// compare-and-swap and takes the old amount off `used`. That happens
/// exactly once per window, and a cost is only ever added to the spend of
/// the account's current generation, so a settle racing the roll lands in
/// one window or the other, never in the old window's spend after the roll
/// has decided to drop it.
#[derive(Debug)]
struct Account {
    cap: u64,
    /// The current window and its generation (rolls counted modulo
    /// 2^GEN_BITS): `window << GEN_BITS | generation`.
    window: AtomicU64,
    /// Spent in the window plus held by calls in flight: what the cap
    /// bounds.
    used: AtomicU64,
    /// Spent in the window: `generation << AMOUNT_BITS | nano-dollars`.
    spent: AtomicU64,
}

impl Account {
    fn new(cap: u64, window: u64) -> Self {
        Self {
            cap,
            window: AtomicU64::new(window << GEN_BITS),
            used: AtomicU64::new(0),
            spent: AtomicU64::new(0),
        }
    }

    /// Starts `window` if it is newer than the account's: the spend of the
    /// old one is forgotten, reservations in flight are kept.
    fn roll(&self, window: u64) {
        self.advance(window);
        self.sync();
    }

    /// Moves the account to `window` if it is newer, with the next
    /// generation; whether this call moved it. The old window's spend is
    /// dropped by [`Account::sync`].
    fn advance(&self, window: u64) -> bool {
        let mut current = self.window.load(Ordering::Acquire);
        while current >> GEN_BITS < window {
            let next = (window << GEN_BITS) | ((current + 1) & GEN_MASK);
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
        false
    }

    /// Drops the spend of windows the account has left, if nobody has yet;
    /// returns the `spent` word of the current window.
    fn sync(&self) -> u64 {
        loop {
            // Read `spent` first: its generation was the account's at some
            // moment before, so if it differs from the one read now, it is
            // older.
            let word = self.spent.load(Ordering::Acquire);
            let generation = self.window.load(Ordering::Acquire) & GEN_MASK;
            if word >> AMOUNT_BITS == generation {
                return word;
            }
            let fresh = generation << AMOUNT_BITS;
            if self
                .spent
                .compare_exchange(word, fresh, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                saturating_sub(&self.used, word & AMOUNT_MAX);
            }
        }
    }

    /// Adds `amount` to the spend of the current window.
    fn add_spent(&self, amount: u64) {
        if amount == 0 {
            return;
        }
        loop {
            let word = self.sync();
            let spent = (word & AMOUNT_MAX).saturating_add(amount).min(AMOUNT_MAX);
            let next = (word & !AMOUNT_MAX) | spent;
            if self
                .spent
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Holds `amount`, or returns what is left under the cap.
    fn reserve(&self, window: u64, amount: u64) -> Result<(), u64> {
        self.roll(window);
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let after = used.saturating_add(amount);
            if after > self.cap {
                return Err(self.cap.saturating_sub(used));
            }
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => used = actual,
            }
        }
    }

    fn release(&self, amount: u64) {
        saturating_sub(&self.used, amount);
    }

    /// Replaces a reservation of `held` by the `actual` cost, counted in
    /// the account's current window (for a call reserved before a window
    /// ended, the new one).
    fn settle(&self, window: u64, held: u64, actual: u64) {
        self.roll(window);
        // Add before subtracting, so `used` never dips below the truth and
        // lets a concurrent reservation through that should not pass.
        self.used.fetch_add(actual, Ordering::AcqRel);
        self.add_spent(actual);
        saturating_sub(&self.used, held);
    }

    fn snapshot(&self, window: u64, limit: Option<f64>) -> BudgetSnapshot {
        self.roll(window);
        let spent = self.sync() & AMOUNT_MAX;
        let used = self.used.load(Ordering::Acquire);
        BudgetSnapshot {
            policy: NAME.into(),
            spent: to_usd(spent),
            reserved: to_usd(used.saturating_sub(spent)),
            limit,
        }
    }
}

const SHARDS: usize = 8;

/// Accounts by key (caller or scenario), created on first use, sharded so
/// that lookups of different keys do not contend.
#[derive(Debug)]
struct Accounts {
    cap: u64,
    hasher: RandomState,
    shards: [RwLock<HashMap<Box<str>, Arc<Account>>>; SHARDS],
}

impl Accounts {
    fn new(cap: u64) -> Self {
        Self {
            cap,
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
        }
    }

    fn get(&self, key: &str, window: u64) -> Arc<Account> {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        if let Some(account) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return account.clone();
        }
        shard
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.into())
            .or_insert_with(|| Arc::new(Account::new(self.cap, window)))
            .clone()
    }

    fn find(&self, key: &str) -> Option<Arc<Account>> {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }
}

/// The account of requests without a caller.
const ANONYMOUS: &str = "";

/// Marks a reservation's ticket as also held in the fleet's store.
const FLEET_HELD: u64 = 1 << 63;

/// Spend caps per window; see the module docs.
#[derive(Debug)]
pub struct Rolling {
    clock: SharedClock,
    window_ms: u64,
    max_cost: Option<f64>,
    total: Account,
    per_caller: Option<Accounts>,
    per_scenario: Option<Accounts>,
    /// The fleet's store, when it shares budgets.
    fleet: Arc<dyn FleetState>,
    /// This budget's name in the store: the same on every replica with
    /// the same table.
    scope: String,
    /// The last window (plus one; 0 = none) in which a refusal was logged:
    /// the first refusal of a window is a transition worth a warn line,
    /// the rest are per-request detail.
    exhausted_logged: AtomicU64,
}

impl Rolling {
    /// The budget, reading `ctx`'s clock.
    pub fn new(config: RollingConfig, ctx: &StrategyContext) -> Result<Self, StrategyError> {
        config.validate()?;
        let window = ctx.clock.unix_ms() / config.window_ms;
        Ok(Self {
            clock: ctx.clock.clone(),
            window_ms: config.window_ms,
            max_cost: config.max_cost,
            total: Account::new(config.max_cost.map_or(u64::MAX, to_nano), window),
            per_caller: config
                .max_cost_per_caller
                .map(|c| Accounts::new(to_nano(c))),
            per_scenario: config
                .max_cost_per_scenario
                .map(|c| Accounts::new(to_nano(c))),
            fleet: ctx.fleet.clone(),
            exhausted_logged: AtomicU64::new(0),
            scope: format!(
                "rolling:{}:{}:{}:{}",
                config.window_ms,
                config.max_cost.map_or(0, to_nano),
                config.max_cost_per_caller.map_or(0, to_nano),
                config.max_cost_per_scenario.map_or(0, to_nano)
            ),
        })
    }

    /// The request's accounts as the fleet names them, with their caps.
    fn shared_accounts(&self, facts: &RequestFacts<'_>) -> SmallVec<[(String, u64); 3]> {
        let mut out = SmallVec::new();
        if let Some(cap) = self.max_cost {
            out.push(("total".to_owned(), to_nano(cap)));
        }
        if let Some(callers) = &self.per_caller {
            out.push((
                format!("caller:{}", facts.caller.unwrap_or(ANONYMOUS)),
                callers.cap,
            ));
        }
        if let Some(scenarios) = &self.per_scenario {
            out.push((format!("scenario:{}", facts.scenario), scenarios.cap));
        }
        out
    }

    fn shared_window(&self) -> BudgetWindow<'_> {
        BudgetWindow {
            scope: &self.scope,
            number: self.window(),
            length_ms: self.window_ms,
        }
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }

    fn window(&self) -> u64 {
        self.clock.unix_ms() / self.window_ms
    }

    /// Whether this is the first refusal of `window` (and marks it so).
    fn first_refusal(&self, window: u64) -> bool {
        let mark = window.saturating_add(1);
        self.exhausted_logged.swap(mark, Ordering::Relaxed) != mark
    }

    /// A refusal: logged at warn once per window (the budget ran out),
    /// at debug after that.
    fn refused(&self, window: u64, cap: &'static str, over: &OverBudget) {
        if self.first_refusal(window) {
            tracing::warn!(
                cap,
                needed_usd = over.needed,
                remaining_usd = over.remaining,
                window_ms = self.window_ms,
                "budget exhausted for this window: requests are refused on models they cannot afford"
            );
        } else {
            tracing::debug!(cap, needed_usd = over.needed, "over budget");
        }
    }

    /// The keyed accounts a request draws on (the total is separate).
    fn keyed(&self, facts: &RequestFacts<'_>, window: u64) -> SmallVec<[Arc<Account>; 2]> {
        let mut out = SmallVec::new();
        if let Some(callers) = &self.per_caller {
            out.push(callers.get(facts.caller.unwrap_or(ANONYMOUS), window));
        }
        if let Some(scenarios) = &self.per_scenario {
            out.push(scenarios.get(facts.scenario, window));
        }
        out
    }

    /// Spend of one caller in the current window (`None` for requests
    /// without a caller), if per-caller caps are on and it has spent.
    pub fn caller_snapshot(&self, caller: Option<&str>) -> Option<BudgetSnapshot> {
        let callers = self.per_caller.as_ref()?;
        let account = callers.find(caller.unwrap_or(ANONYMOUS))?;
        Some(account.snapshot(self.window(), Some(to_usd(callers.cap))))
    }

    /// Spend of one scenario in the current window, if per-scenario caps
    /// are on and it has spent.
    pub fn scenario_snapshot(&self, scenario: &str) -> Option<BudgetSnapshot> {
        let scenarios = self.per_scenario.as_ref()?;
        let account = scenarios.find(scenario)?;
        Some(account.snapshot(self.window(), Some(to_usd(scenarios.cap))))
    }
}

impl BudgetPolicy for Rolling {
    fn name(&self) -> &str {
        NAME
    }

    fn reserve(
        &self,
        index: ModelIndex,
        model: &ModelSpec,
        facts: &RequestFacts<'_>,
    ) -> Result<Reservation, OverBudget> {
        let amount = model.estimated_request_cost(facts);
        let held = to_nano(amount);
        let window = self.window();
        let over = |remaining: u64| OverBudget {
            needed: amount,
            remaining: to_usd(remaining),
        };
        if let Err(remaining) = self.total.reserve(window, held) {
            let refused = over(remaining);
            self.refused(window, "max_cost", &refused);
            return Err(refused);
        }
        let keyed = self.keyed(facts, window);
        for (i, account) in keyed.iter().enumerate() {
            if let Err(remaining) = account.reserve(window, held) {
                self.total.release(held);
                for taken in &keyed[..i] {
                    taken.release(held);
                }
                let refused = over(remaining);
                let cap = if i == 0 && self.per_caller.is_some() {
                    "max_cost_per_caller"
                } else {
                    "max_cost_per_scenario"
                };
                self.refused(window, cap, &refused);
                return Err(refused);
            }
        }
        Ok(Reservation {
            model: index,
            amount,
            ticket: held,
        })
    }

    fn settle(
        &self,
        reservation: Reservation,
        model: &ModelSpec,
        facts: &RequestFacts<'_>,
        usage: Option<&Usage>,
    ) {
        let actual = actual_nano(model, usage);
        let window = self.window();
        let held = reservation.ticket & !FLEET_HELD;
        self.total.settle(window, held, actual);
        for account in self.keyed(facts, window) {
            account.settle(window, held, actual);
        }
        if reservation.ticket & FLEET_HELD != 0 {
            let accounts = self.shared_accounts(facts);
            let names: SmallVec<[&str; 3]> = accounts.iter().map(|(n, _)| n.as_str()).collect();
            self.fleet
                .settle_budget(self.shared_window(), &names, held, actual);
        }
    }

    fn is_shared(&self) -> bool {
        self.fleet.shares_budgets()
    }

    fn reserve_shared<'a>(
        &'a self,
        index: ModelIndex,
        model: &'a ModelSpec,
        facts: &'a RequestFacts<'a>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Reservation, OverBudget>> + Send + 'a>> {
        Box::pin(async move {
            // This replica's own accounts first: they refuse without a round
            // trip, and they are what it falls back on.
            let mut reservation = self.reserve(index, model, facts)?;
            let owned = self.shared_accounts(facts);
            let accounts: SmallVec<[SharedAccount<'_>; 3]> = owned
                .iter()
                .map(|(name, cap)| SharedAccount { name, cap: *cap })
                .collect();
            let refused = |reservation: Reservation| {
                let needed = reservation.amount;
                self.settle(reservation, model, facts, None);
                OverBudget {
                    needed,
                    remaining: 0.0,
                }
            };
            match self
                .fleet
                .reserve_budget(self.shared_window(), &accounts, reservation.ticket)
                .await
            {
                Ok(None) => {
                    reservation.ticket |= FLEET_HELD;
                    Ok(reservation)
                }
                Ok(Some(i)) => {
                    tracing::debug!(
                        account = accounts.get(i).map_or("?", |a| a.name),
                        "the fleet's budget refused"
                    );
                    Err(refused(reservation))
                }
                Err(failure) => match self.fleet.on_store_failure() {
                    OnStoreFailure::Local => {
                        tracing::debug!(%failure, "budget held on this replica only");
                        Ok(reservation)
                    }
                    OnStoreFailure::Closed => {
                        tracing::debug!(%failure, "budget refused: the store failed and on_store_failure is closed");
                        Err(refused(reservation))
                    }
                },
            }
        })
    }

    fn snapshot(&self) -> BudgetSnapshot {
        self.total.snapshot(self.window(), self.max_cost)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::budget::test_models::{ctx, facts};

    fn rolling(
        config: RollingConfig,
    ) -> (Rolling, StrategyContext, Arc<backstop_core::ManualClock>) {
        let (ctx, clock) = ctx();
        (Rolling::new(config, &ctx).unwrap(), ctx, clock)
    }

    fn total(max_cost: f64) -> RollingConfig {
        RollingConfig {
            max_cost: Some(max_cost),
            ..RollingConfig::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn refuses_past_the_cap_and_a_cheaper_model_may_still_fit() {
        let (b, ctx, _) = rolling(total(0.0025));
        let f = facts("chat", None);
        let r1 = b.reserve(0, &ctx.models[0], &f).unwrap();
        let r2 = b.reserve(0, &ctx.models[0], &f).unwrap();
        let over = b.reserve(0, &ctx.models[0], &f).unwrap_err();
        assert!(close(over.needed, 0.001));
        assert!(close(over.remaining, 0.0005));
        // The cheap model (0.0001) still fits.
        let r3 = b.reserve(1, &ctx.models[1], &f).unwrap();
        let s = b.snapshot();
        assert!(close(s.reserved, 0.0021));
        assert_eq!(s.limit, Some(0.0025));
        // Settling with actual usage frees what was not used; a failure
        // releases it all.
        b.settle(r1, &ctx.models[0], &f, Some(&Usage::new(500, 30)));
        b.settle(r2, &ctx.models[0], &f, None);
        b.settle(r3, &ctx.models[1], &f, None);
        let s = b.snapshot();
        assert!(close(s.spent, 0.0003));
        assert!(close(s.reserved, 0.0));
        b.reserve(0, &ctx.models[0], &f).unwrap();
        b.reserve(0, &ctx.models[0], &f).unwrap();
        assert!(b.reserve(0, &ctx.models[0], &f).is_err());
    }

    #[test]
    fn a_new_window_starts_with_nothing_spent_but_keeps_calls_in_flight() {
        let (b, ctx, clock) = rolling(RollingConfig {
            window_ms: 60_000,
            ..total(0.002)
        });
        let f = facts("chat", None);
        let spent = b.reserve(0, &ctx.models[0], &f).unwrap();
        b.settle(spent, &ctx.models[0], &f, Some(&Usage::new(500, 100)));
        let in_flight = b.reserve(0, &ctx.models[0], &f).unwrap();
        assert!(b.reserve(0, &ctx.models[0], &f).is_err());
        clock.advance(std::time::Duration::from_secs(60));
        // The settled 0.001 is forgotten; the 0.001 in flight still counts.
        let s = b.snapshot();
        assert!(close(s.spent, 0.0));
        assert!(close(s.reserved, 0.001));
        let next = b.reserve(0, &ctx.models[0], &f).unwrap();
        assert!(b.reserve(0, &ctx.models[0], &f).is_err());
        // The call from the old window settles into the new one.
        b.settle(in_flight, &ctx.models[0], &f, Some(&Usage::new(500, 100)));
        b.settle(next, &ctx.models[0], &f, None);
        let s = b.snapshot();
        assert!(close(s.spent, 0.001));
        assert!(close(s.reserved, 0.0));
    }

    #[test]
    fn a_settle_racing_the_window_roll_counts_in_the_new_window() {
        let (b, ctx, clock) = rolling(RollingConfig {
            window_ms: 60_000,
            ..total(0.003)
        });
        let (m, f) = (&ctx.models[0], facts("chat", None));
        // The first window: 0.001 spent, 0.001 in flight.
        let spent = b.reserve(0, m, &f).unwrap();
        b.settle(spent, m, &f, Some(&Usage::new(500, 100)));
        let in_flight = b.reserve(0, m, &f).unwrap();
        // The clock reaches the boundary exactly. Another thread begins the
        // roll: the account is in the new window, the old window's spend
        // not yet dropped.
        clock.advance(std::time::Duration::from_millis(60_000));
        assert!(b.total.advance(b.window()));
        // The call in flight settles now, in the new window...
        b.settle(in_flight, m, &f, Some(&Usage::new(500, 100)));
        // ...and the other thread finishes its roll.
        b.total.sync();
        // The settled call counts in the new window, and under its cap.
        let s = b.snapshot();
        assert!(close(s.spent, 0.001), "{s:?}");
        assert!(close(s.reserved, 0.0), "{s:?}");
        b.reserve(0, m, &f).unwrap();
        b.reserve(0, m, &f).unwrap();
        assert!(b.reserve(0, m, &f).is_err(), "{:?}", b.snapshot());
    }

    #[test]
    fn settles_racing_many_window_rolls_leave_nothing_held() {
        // 1 ms windows while another thread moves the clock: rolls race
        // every reserve and settle.
        let (b, ctx, clock) = rolling(RollingConfig {
            window_ms: 1,
            max_cost_per_caller: Some(1.0),
            ..total(1.0)
        });
        // Each caller's account exists before the race: on a busy machine
        // one thread can fill the total before the clock thread runs, and a
        // caller whose every reserve the total refused would have no
        // account to look at below.
        for caller in ["c0", "c1", "c2"] {
            let f = facts("chat", Some(caller));
            let r = b.reserve(0, &ctx.models[0], &f).unwrap();
            b.settle(r, &ctx.models[0], &f, None);
        }
        let done = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..3 {
                let (b, ctx, done) = (&b, &ctx, &done);
                s.spawn(move || {
                    let caller = format!("c{t}");
                    let f = facts("chat", Some(&caller));
                    for i in 0..5_000 {
                        if let Ok(r) = b.reserve(0, &ctx.models[0], &f) {
                            let usage = (i % 2 == 0).then(|| Usage::new(500, 100));
                            b.settle(r, &ctx.models[0], &f, usage.as_ref());
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
            s.spawn(|| {
                while done.load(Ordering::SeqCst) < 3 {
                    clock.advance(std::time::Duration::from_millis(1));
                    std::thread::yield_now();
                }
            });
        });
        // Everything settled: nothing is held, and what the window spent is
        // all that the cap still counts.
        let s = b.snapshot();
        assert!(close(s.reserved, 0.0), "{s:?}");
        for caller in ["c0", "c1", "c2"] {
            let c = b.caller_snapshot(Some(caller)).unwrap();
            assert!(close(c.reserved, 0.0), "{caller}: {c:?}");
        }
        clock.advance(std::time::Duration::from_millis(1));
        let s = b.snapshot();
        assert!(close(s.spent, 0.0) && close(s.reserved, 0.0), "{s:?}");
    }

    #[test]
    fn the_first_refusal_of_each_window_is_the_one_logged_as_a_transition() {
        let (b, _, _) = rolling(RollingConfig {
            max_cost: Some(1.0),
            ..RollingConfig::default()
        });
        assert!(b.first_refusal(7));
        assert!(!b.first_refusal(7));
        assert!(!b.first_refusal(7));
        assert!(b.first_refusal(8));
        assert!(!b.first_refusal(8));
        // Window 0 is a window like any other.
        assert!(b.first_refusal(0));
    }

    #[test]
    fn callers_and_scenarios_have_their_own_caps() {
        let (b, ctx, _) = rolling(RollingConfig {
            max_cost_per_caller: Some(0.001),
            max_cost_per_scenario: Some(0.002),
            ..RollingConfig::default()
        });
        let m = &ctx.models[0];
        b.reserve(0, m, &facts("chat", Some("alice"))).unwrap();
        // alice is out; bob is not.
        assert!(b.reserve(0, m, &facts("chat", Some("alice"))).is_err());
        b.reserve(0, m, &facts("chat", Some("bob"))).unwrap();
        // The chat scenario is out; another scenario is not.
        assert!(b.reserve(0, m, &facts("chat", Some("carol"))).is_err());
        b.reserve(0, m, &facts("batch", Some("carol"))).unwrap();
        // A refusal by the scenario released carol's caller hold.
        let carol = b.caller_snapshot(Some("carol")).unwrap();
        assert!(close(carol.reserved, 0.001), "{carol:?}");
        assert_eq!(carol.limit, Some(0.001));
        // Requests without a caller share the anonymous account.
        b.reserve(0, m, &facts("other", None)).unwrap();
        assert!(b.reserve(0, m, &facts("other", None)).is_err());
        assert!(b.scenario_snapshot("chat").is_some());
        assert!(b.scenario_snapshot("never-seen").is_none());
        // No total cap: the total is counted but unlimited.
        assert_eq!(b.snapshot().limit, None);
        assert!(close(b.snapshot().reserved, 0.004));
    }

    #[test]
    fn concurrent_reservations_never_overspend() {
        // 1000 reservations of 0.001 fit under 1.0; 8 threads try 4000.
        let (b, ctx, _) = rolling(total(1.0));
        let granted = AtomicUsize::new(0);
        let held = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..8 {
                let (b, ctx, granted, held) = (&b, &ctx, &granted, &held);
                s.spawn(move || {
                    let caller = format!("c{t}");
                    let f = facts("chat", Some(&caller));
                    for _ in 0..500 {
                        if let Ok(r) = b.reserve(0, &ctx.models[0], &f) {
                            granted.fetch_add(1, Ordering::SeqCst);
                            held.lock().unwrap().push(r);
                        }
                        let snap = b.snapshot();
                        assert!(snap.spent + snap.reserved <= 1.0 + 1e-9, "{snap:?}");
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::SeqCst), 1_000);
        let f = facts("chat", None);
        for r in held.into_inner().unwrap() {
            b.settle(r, &ctx.models[0], &f, Some(&Usage::new(500, 100)));
        }
        let s = b.snapshot();
        assert!(close(s.spent, 1.0), "{s:?}");
        assert!(close(s.reserved, 0.0));
    }

    #[test]
    fn concurrent_holds_and_releases_keep_within_the_cap() {
        let (b, ctx, _) = rolling(RollingConfig {
            max_cost_per_caller: Some(0.003),
            ..total(0.005)
        });
        std::thread::scope(|s| {
            for t in 0..4 {
                let (b, ctx) = (&b, &ctx);
                s.spawn(move || {
                    let caller = format!("c{t}");
                    let f = facts("chat", Some(&caller));
                    for i in 0..2_000 {
                        if let Ok(r) = b.reserve(0, &ctx.models[0], &f) {
                            let snap = b.snapshot();
                            assert!(snap.reserved <= 0.005 + 1e-9, "{snap:?}");
                            let usage = (i % 3 == 0).then(|| Usage::new(500, 10));
                            b.settle(r, &ctx.models[0], &f, usage.as_ref());
                        }
                    }
                });
            }
        });
        let s = b.snapshot();
        assert!(close(s.reserved, 0.0), "{s:?}");
        // Everything spent is counted: spent never exceeds the cap.
        assert!(s.spent <= 0.005 + 1e-9);
    }

    #[test]
    fn at_least_one_cap_is_required_and_caps_are_checked() {
        let (ctx, _) = ctx();
        let err = Rolling::from_value(&serde_json::json!({"window_ms": 1000}), &ctx).unwrap_err();
        assert_eq!(err.field(), Some("max_cost"));
        let err = Rolling::from_value(&serde_json::json!({"max_cost_per_caller": -2.0}), &ctx)
            .unwrap_err();
        assert_eq!(err.field(), Some("max_cost_per_caller"));
        let err = Rolling::from_value(&serde_json::json!({"max_cost": 1, "window_ms": 0}), &ctx)
            .unwrap_err();
        assert_eq!(err.field(), Some("window_ms"));
    }
}
