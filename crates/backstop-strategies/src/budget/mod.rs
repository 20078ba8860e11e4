//! Budgets: whether a request may spend money on a model.
//!
//! - [`unlimited`]: no cap; keeps count of spend for status pages.
//! - [`per_request`]: skip models this request would cost too much on.
//! - [`rolling`]: caps per time window, in total, per caller and per
//!   scenario, with atomic reservations.
//!
//! Money is counted in nano-dollars (1e-9 USD) in `AtomicU64`s, so holding
//! and settling spend is lock-free and exact. A request's estimated cost is
//! its estimated prompt tokens at the model's input price plus its output
//! bound (the caller's `max_tokens` capped by the model's) at the output
//! price; a settled call costs its reported usage.

pub mod per_request;
pub mod rolling;
pub mod unlimited;

pub use per_request::{PerRequest, PerRequestConfig};
pub use rolling::{Rolling, RollingConfig};
pub use unlimited::{Unlimited, UnlimitedConfig};

use std::sync::atomic::{AtomicU64, Ordering};

use backstop_core::{ModelSpec, Usage};

/// Nano-dollars in one USD.
const NANOS_PER_USD: f64 = 1e9;

/// USD as nano-dollars, rounded to the nearest one; negative and NaN
/// amounts count as zero.
pub(crate) fn to_nano(usd: f64) -> u64 {
    if usd > 0.0 {
        // `as` saturates at u64::MAX for huge values.
        (usd * NANOS_PER_USD).round() as u64
    } else {
        0
    }
}

/// Nano-dollars as USD.
pub(crate) fn to_usd(nano: u64) -> f64 {
    nano as f64 / NANOS_PER_USD
}

/// What a finished call cost, in nano-dollars: its usage, or nothing when
/// it failed.
pub(crate) fn actual_nano(model: &ModelSpec, usage: Option<&Usage>) -> u64 {
    usage.map_or(0, |u| {
        to_nano(model.estimated_cost(u.prompt_tokens, u.completion_tokens))
    })
}

/// Subtracts without wrapping below zero.
pub(crate) fn saturating_sub(counter: &AtomicU64, amount: u64) {
    if amount == 0 {
        return;
    }
    let mut current = counter.load(Ordering::Relaxed);
    loop {
        match counter.compare_exchange_weak(
            current,
            current.saturating_sub(amount),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// Spend without a cap: settled and held amounts, for snapshots.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    spent: AtomicU64,
    reserved: AtomicU64,
}

impl Tally {
    pub(crate) fn hold(&self, nano: u64) {
        self.reserved.fetch_add(nano, Ordering::Relaxed);
    }

    pub(crate) fn settle(&self, held: u64, actual: u64) {
        self.spent.fetch_add(actual, Ordering::Relaxed);
        saturating_sub(&self.reserved, held);
    }

    pub(crate) fn spent_usd(&self) -> f64 {
        to_usd(self.spent.load(Ordering::Relaxed))
    }

    pub(crate) fn reserved_usd(&self) -> f64 {
        to_usd(self.reserved.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
pub(crate) mod test_models {
    //! Models with round prices for budget tests.

    use backstop_core::{ManualClock, ModelSpec, RequestFacts, StrategyContext};
    use std::sync::Arc;

    /// Model 0 costs 0.001 USD per request of `facts(_, None)` (100 output
    /// tokens at 0.01 per 1k, free input); model 1 ten times less.
    pub fn ctx() -> (StrategyContext, Arc<ManualClock>) {
        let clock = ManualClock::shared();
        let mut pricey = ModelSpec::new("pricey", "p");
        pricey.input_cost_per_1k = 0.0;
        pricey.output_cost_per_1k = 0.01;
        pricey.max_tokens = 100;
        let mut cheap = pricey.clone();
        cheap.id = "cheap".into();
        cheap.output_cost_per_1k = 0.001;
        (
            StrategyContext::new(vec![pricey, cheap], clock.clone()),
            clock,
        )
    }

    /// A request from `caller` on `scenario`.
    pub fn facts<'a>(scenario: &'a str, caller: Option<&'a str>) -> RequestFacts<'a> {
        RequestFacts {
            scenario,
            caller,
            prompt_tokens: 500,
            max_tokens: None,
            stream: false,
            tools: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_dollars_round_trip_prices() {
        assert_eq!(to_nano(0.001), 1_000_000);
        assert_eq!(to_nano(-1.0), 0);
        assert_eq!(to_nano(f64::NAN), 0);
        assert_eq!(to_nano(1e30), u64::MAX);
        assert_eq!(to_usd(2_500_000_000), 2.5);
    }

    #[test]
    fn subtraction_stops_at_zero() {
        let c = AtomicU64::new(5);
        saturating_sub(&c, 7);
        assert_eq!(c.load(Ordering::Relaxed), 0);
    }
}
