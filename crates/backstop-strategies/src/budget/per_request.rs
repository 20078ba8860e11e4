//! `per_request`: skip models this request would cost too much on.
//!
//! What it does: estimates the request's cost on each model — estimated
//! prompt tokens at the input price plus the output bound (the caller's
//! `max_tokens`, capped by the model's) at the output price — and refuses
//! the models where that exceeds `max_cost`. A refused model is skipped
//! with `over_budget` in the attempt trail; a cheaper model of the chain may
//! still serve. Spend is counted for status pages.
//!
//! When to pick it: to keep one huge prompt or an unbounded `max_tokens`
//! from landing on an expensive model, without capping total spend.
//!
//! Knobs:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `max_cost` | required | most USD one call may be estimated to cost (>= 0) |

use backstop_core::{
    BudgetPolicy, BudgetSnapshot, ModelIndex, ModelSpec, OverBudget, RequestFacts, Reservation,
    StrategyContext, Usage,
};
use serde::Deserialize;

use super::{Tally, actual_nano, to_nano};
use crate::error::{StrategyError, check_cost};

/// The config `type` name.
pub const NAME: &str = "per_request";

/// Knobs of the per-request budget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerRequestConfig {
    /// Most USD one call may be estimated to cost. Required.
    pub max_cost: f64,
}

/// Refuses models a request would cost more than `max_cost` on.
#[derive(Debug)]
pub struct PerRequest {
    max_cost: f64,
    tally: Tally,
}

impl PerRequest {
    /// The budget.
    pub fn new(config: PerRequestConfig, _ctx: &StrategyContext) -> Result<Self, StrategyError> {
        check_cost("max_cost", config.max_cost)?;
        Ok(Self {
            max_cost: config.max_cost,
            tally: Tally::default(),
        })
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }
}

impl BudgetPolicy for PerRequest {
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
        if amount > self.max_cost {
            return Err(OverBudget {
                needed: amount,
                remaining: self.max_cost,
            });
        }
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
            // The cap is per call, not on the total.
            limit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::test_models::{ctx, facts};

    fn budget(max_cost: f64) -> (PerRequest, StrategyContext) {
        let (ctx, _) = ctx();
        (
            PerRequest::new(PerRequestConfig { max_cost }, &ctx).unwrap(),
            ctx,
        )
    }

    #[test]
    fn skips_models_whose_estimate_exceeds_the_cap() {
        let (b, ctx) = budget(0.0005);
        let f = facts("chat", None);
        let over = b.reserve(0, &ctx.models[0], &f).unwrap_err();
        assert!((over.needed - 0.001).abs() < 1e-12);
        assert_eq!(over.remaining, 0.0005);
        let r = b.reserve(1, &ctx.models[1], &f).unwrap();
        assert!((r.amount - 0.0001).abs() < 1e-12);
        b.settle(r, &ctx.models[1], &f, Some(&Usage::new(500, 100)));
        assert!((b.snapshot().spent - 0.0001).abs() < 1e-12);
    }

    #[test]
    fn the_estimate_uses_the_callers_smaller_max_tokens() {
        let (b, ctx) = budget(0.0005);
        let mut f = facts("chat", None);
        f.max_tokens = Some(40);
        // 40 tokens at 0.01 per 1k: 0.0004.
        let r = b.reserve(0, &ctx.models[0], &f).unwrap();
        assert!((r.amount - 0.0004).abs() < 1e-12);
    }

    #[test]
    fn the_estimate_prices_the_prompt_too() {
        let (b, mut ctx) = budget(0.0015);
        let mut models: Vec<ModelSpec> = ctx.models.to_vec();
        models[0].input_cost_per_1k = 0.002;
        ctx.models = models.into();
        // 500 prompt tokens at 0.002 per 1k plus 0.001 of output.
        let over = b
            .reserve(0, &ctx.models[0], &facts("chat", None))
            .unwrap_err();
        assert!((over.needed - 0.002).abs() < 1e-12);
    }

    #[test]
    fn a_negative_cap_is_refused() {
        let (ctx, _) = ctx();
        let err = PerRequest::from_value(&serde_json::json!({"max_cost": -1}), &ctx).unwrap_err();
        assert_eq!(err.field(), Some("max_cost"));
        let err = PerRequest::from_value(&serde_json::json!({}), &ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `max_cost`"), "{err}");
    }
}
