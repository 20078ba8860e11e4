//! `priority`: the chain in priority order.
//!
//! What it does: orders the chain by each model's configured `priority`
//! (lower first); models of equal priority keep their order in the chain.
//! For a scenario whose chain is already written in the intended order,
//! this is the chain as written.
//!
//! When to pick it: when the chain encodes a quality ladder (best model
//! first, cheaper and local ones behind, the template last) and only
//! failures should move traffic down it. It is the default selector.
//!
//! Knobs: none.

use backstop_core::{Candidate, RequestFacts, Selector, StrategyContext};
use serde::Deserialize;

use crate::error::StrategyError;

/// The config `type` name.
pub const NAME: &str = "priority";

/// The `priority` selector has no knobs; the table may hold only `type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityConfig {}

/// Orders by priority, ties in chain order.
#[derive(Debug, Clone, Default)]
pub struct Priority;

impl Priority {
    /// The selector.
    pub fn new(_config: PriorityConfig, _ctx: &StrategyContext) -> Result<Self, StrategyError> {
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

impl Selector for Priority {
    fn name(&self) -> &str {
        NAME
    }

    fn order(&self, _facts: &RequestFacts<'_>, candidates: &mut [Candidate<'_>]) {
        // Positions are unique, so the unstable (allocation-free) sort is
        // as stable as a stable one.
        candidates.sort_unstable_by_key(|c| (c.spec.priority, c.position));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::test_chain::{candidates, ctx, facts, ids};

    #[test]
    fn orders_by_priority_and_keeps_chain_order_on_ties() {
        let ctx = ctx(&[
            ("c", 3, 0.0, 0.0),
            ("a1", 1, 0.0, 0.0),
            ("b", 2, 0.0, 0.0),
            ("a2", 1, 0.0, 0.0),
        ]);
        let mut chain = candidates(&ctx);
        Priority.order(&facts(10, None, false), &mut chain);
        assert_eq!(ids(&chain), ["a1", "a2", "b", "c"]);
    }

    #[test]
    fn a_scenario_chain_keeps_its_own_positions() {
        let ctx = ctx(&[("x", 1, 0.0, 0.0), ("y", 1, 0.0, 0.0)]);
        // The chain lists y before x.
        let mut chain = vec![
            Candidate {
                index: 1,
                spec: &ctx.models[1],
                position: 0,
            },
            Candidate {
                index: 0,
                spec: &ctx.models[0],
                position: 1,
            },
        ];
        Priority.order(&facts(10, None, false), &mut chain);
        assert_eq!(ids(&chain), ["y", "x"]);
    }

    #[test]
    fn knobs_are_refused() {
        let ctx = ctx(&[("x", 1, 0.0, 0.0)]);
        let err = Priority::from_value(&serde_json::json!({"max_latency_ms": 5}), &ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `max_latency_ms`"), "{err}");
    }
}
