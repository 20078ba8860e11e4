//! `unlimited`: no budget.
//!
//! What it does: admits every model for every request, and keeps count of
//! what is held by calls in flight and what settled calls cost (their
//! usage at the model's prices), for status pages.
//!
//! When to pick it: when spend is capped elsewhere (the provider's own
//! limits) or does not matter (local models). It is the natural default:
//! without a budget table, nothing is refused.
//!
//! Knobs: none.

use backstop_core::{
    BudgetPolicy, BudgetSnapshot, ModelIndex, ModelSpec, OverBudget, RequestFacts, Reservation,
    StrategyContext, Usage,
};
use serde::Deserialize;

use super::{Tally, actual_nano, to_nano};
use crate::error::StrategyError;

/// The config `type` name.
pub const NAME: &str = "unlimited";

/// The `unlimited` budget has no knobs; the table may hold only `type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlimitedConfig {}

/// Refuses nothing; counts spend.
#[derive(Debug, Default)]
pub struct Unlimited {
    tally: Tally,
}

impl Unlimited {
    /// The budget.
    pub fn new(_config: UnlimitedConfig, _ctx: &StrategyContext) -> Result<Self, StrategyError> {
        Ok(Self::default())
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }
}

impl BudgetPolicy for Unlimited {
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
        self.tally.hold(held);
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
        _facts: &RequestFacts<'_>,
        usage: Option<&Usage>,
    ) {
        self.tally
            .settle(reservation.ticket, actual_nano(model, usage));
    }

    fn snapshot(&self) -> BudgetSnapshot {
        BudgetSnapshot {
            policy: NAME.into(),
            spent: self.tally.spent_usd(),
            reserved: self.tally.reserved_usd(),
            limit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::test_models::{ctx, facts};

    #[test]
    fn admits_everything_and_counts_spend() {
        let (ctx, _) = ctx();
        let b = Unlimited::new(UnlimitedConfig {}, &ctx).unwrap();
        let f = facts("chat", None);
        let held: Vec<_> = (0..3)
            .map(|_| b.reserve(0, &ctx.models[0], &f).unwrap())
            .collect();
        assert!((b.snapshot().reserved - 0.003).abs() < 1e-12);
        // One answered with 50 output tokens, two failed.
        b.settle(held[0], &ctx.models[0], &f, Some(&Usage::new(500, 50)));
        b.settle(held[1], &ctx.models[0], &f, None);
        b.settle(held[2], &ctx.models[0], &f, None);
        let s = b.snapshot();
        assert_eq!(s.reserved, 0.0);
        assert!((s.spent - 0.0005).abs() < 1e-12);
        assert_eq!(s.limit, None);
        assert_eq!(s.policy, "unlimited");
    }
}
