//! `cost_aware`: cheapest first for this request.
//!
//! What it does: estimates what this request would cost on each model —
//! estimated prompt tokens at the model's input price plus the request's
//! output bound (the caller's `max_tokens`, capped by the model's) at its
//! output price — and orders the chain cheapest first. Equal costs keep
//! priority order, then chain order.
//!
//! When to pick it: for batch or background scenarios where any model of
//! the chain is good enough and spend matters more than quality or speed.
//! Combine with a budget to also cap spend.
//!
//! Knobs: none.

use backstop_core::{Candidate, RequestFacts, Selector, StrategyContext};
use serde::Deserialize;

use crate::error::StrategyError;

/// The config `type` name.
pub const NAME: &str = "cost_aware";

/// The `cost_aware` selector has no knobs; the table may hold only `type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostAwareConfig {}

/// Orders by estimated request cost, cheapest first.
#[derive(Debug, Clone, Default)]
pub struct CostAware;

impl CostAware {
    /// The selector.
    pub fn new(_config: CostAwareConfig, _ctx: &StrategyContext) -> Result<Self, StrategyError> {
        Ok(Self)
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }
}

impl Selector for CostAware {
    fn name(&self) -> &str {
        NAME
    }

    fn order(&self, facts: &RequestFacts<'_>, candidates: &mut [Candidate<'_>]) {
        candidates.sort_unstable_by(|a, b| {
            a.spec
                .estimated_request_cost(facts)
                .total_cmp(&b.spec.estimated_request_cost(facts))
                .then(a.spec.priority.cmp(&b.spec.priority))
                .then(a.position.cmp(&b.position))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::test_chain::{candidates, ctx, facts, ids};
    use backstop_core::ModelSpec;

    #[test]
    fn cheapest_first_with_input_and_output_priced_apart() {
        // Per 1k tokens: (input, output).
        let ctx = ctx(&[
            ("gpt-4o", 1, 0.0025, 0.01),
            ("claude", 2, 0.003, 0.015),
            ("mini", 3, 0.00015, 0.0006),
            ("prompt-cheap", 4, 0.0001, 0.02),
        ]);
        // A long prompt and a short answer: input price dominates.
        let mut chain = candidates(&ctx);
        CostAware.order(&facts(100_000, Some(10), false), &mut chain);
        assert_eq!(ids(&chain), ["prompt-cheap", "mini", "gpt-4o", "claude"]);
        // A short prompt and a long answer: output price dominates.
        let mut chain = candidates(&ctx);
        CostAware.order(&facts(10, Some(4000), false), &mut chain);
        assert_eq!(ids(&chain), ["mini", "gpt-4o", "claude", "prompt-cheap"]);
    }

    #[test]
    fn the_output_bound_is_capped_by_each_model() {
        let mut ctx_models = ctx(&[("big", 1, 0.0, 0.01), ("small", 2, 0.0, 0.005)]);
        // "small" may answer at most 100 tokens; "big" 4096.
        let models: Vec<ModelSpec> = ctx_models
            .models
            .iter()
            .cloned()
            .map(|mut m| {
                if m.id == "small" {
                    m.max_tokens = 100;
                    m.output_cost_per_1k = 0.05;
                }
                m
            })
            .collect();
        ctx_models.models = models.into();
        let mut chain = candidates(&ctx_models);
        // Uncapped, small would cost 0.05 * 4.096; capped, 0.05 * 0.1.
        CostAware.order(&facts(0, None, false), &mut chain);
        assert_eq!(ids(&chain), ["small", "big"]);
    }

    #[test]
    fn equal_costs_keep_priority_then_chain_order() {
        let ctx = ctx(&[
            ("b", 2, 0.0, 0.0),
            ("a", 1, 0.0, 0.0),
            ("free-rules", 2, 0.0, 0.0),
        ]);
        let mut chain = candidates(&ctx);
        CostAware.order(&facts(10, None, false), &mut chain);
        assert_eq!(ids(&chain), ["a", "b", "free-rules"]);
    }
}
