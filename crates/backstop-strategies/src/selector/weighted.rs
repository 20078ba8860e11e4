//! `weighted`: weighted random order within each priority tier.
//!
//! What it does:
//!
//! 1. Groups the chain into tiers of equal `priority`, tiers in priority
//!    order (lower first).
//! 2. Within a tier, draws the order at random, each model in proportion to
//!    its weight (a weighted shuffle: the first place goes to model `m` with
//!    probability `weight(m) / sum of the tier's weights`, the second among
//!    the rest, and so on). Models of weight 0 go last in their tier, in
//!    chain order: never chosen first, never dropped.
//!
//! The random source is a lock-free SplitMix64 sequence; with `seed` set the
//! orders it draws are reproducible (tests, benchmarks).
//!
//! When to pick it: to spread load across equivalent models or accounts
//! (two regions of the same model, two API keys) while still falling back
//! tier by tier.
//!
//! Knobs (defaults):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `weights` | every model 1 | table of model id to weight (a number >= 0) |
//! | `seed` | random | seed of the random sequence, for reproducible orders |

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_core::{Candidate, RequestFacts, Selector, StrategyContext};
use serde::Deserialize;

use crate::error::StrategyError;

/// The config `type` name.
pub const NAME: &str = "weighted";

/// Knobs of the weighted selector.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightedConfig {
    /// Weight per model id; unlisted models weigh 1.
    pub weights: BTreeMap<String, f64>,
    /// Seed of the random sequence. Default: drawn at random.
    pub seed: Option<u64>,
}

/// Weighted random within priority tiers; see the module docs.
#[derive(Debug)]
pub struct Weighted {
    /// Weight per model index.
    weights: Box<[f64]>,
    rng: SplitMix64,
}

impl Weighted {
    /// A selector over the models of `ctx`.
    pub fn new(config: WeightedConfig, ctx: &StrategyContext) -> Result<Self, StrategyError> {
        let mut weights = vec![1.0; ctx.models.len()];
        for (id, &weight) in &config.weights {
            let field = format!("weights.{id}");
            let Some(index) = ctx.index_of(id) else {
                return Err(StrategyError::invalid(field, "names no configured model"));
            };
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(StrategyError::invalid(
                    field,
                    format!("must be a number >= 0 (got {weight})"),
                ));
            }
            weights[index] = weight;
        }
        Ok(Self {
            weights: weights.into(),
            rng: SplitMix64::new(config.seed.unwrap_or_else(rand::random)),
        })
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }

    fn weight(&self, c: &Candidate<'_>) -> f64 {
        self.weights.get(c.index).copied().unwrap_or(1.0)
    }

    /// Weighted shuffle of one tier, in place.
    fn shuffle(&self, tier: &mut [Candidate<'_>]) {
        for first in 0..tier.len().saturating_sub(1) {
            let rest = &mut tier[first..];
            let total: f64 = rest.iter().map(|c| self.weight(c)).sum();
            if total <= 0.0 {
                // Only weight-0 models are left: they keep chain order.
                return;
            }
            let mut point = self.rng.next_unit() * total;
            let mut chosen = rest.len() - 1;
            for (i, c) in rest.iter().enumerate() {
                let w = self.weight(c);
                if point < w {
                    chosen = i;
                    break;
                }
                point -= w;
            }
            // Rounding can walk past the end; never choose a weight-0 model.
            while chosen > 0 && self.weight(&rest[chosen]) <= 0.0 {
                chosen -= 1;
            }
            // Rotating (not swapping) keeps the others in chain order.
            rest[..=chosen].rotate_right(1);
        }
    }
}

impl Selector for Weighted {
    fn name(&self) -> &str {
        NAME
    }

    fn order(&self, _facts: &RequestFacts<'_>, candidates: &mut [Candidate<'_>]) {
        candidates.sort_unstable_by_key(|c| (c.spec.priority, c.position));
        let mut start = 0;
        while start < candidates.len() {
            let priority = candidates[start].spec.priority;
            let len = candidates[start..]
                .iter()
                .take_while(|c| c.spec.priority == priority)
                .count();
            self.shuffle(&mut candidates[start..start + len]);
            start += len;
        }
    }
}

/// SplitMix64 over an atomic counter: every call takes the next value of
/// the sequence, from any thread, without a lock.
#[derive(Debug)]
struct SplitMix64 {
    state: AtomicU64,
}

impl SplitMix64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(Self::GAMMA, Ordering::Relaxed)
            .wrapping_add(Self::GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::test_chain::{candidates, ctx, facts, ids};

    fn four() -> StrategyContext {
        ctx(&[
            ("east", 1, 0.0, 0.0),
            ("west", 1, 0.0, 0.0),
            ("mini", 2, 0.0, 0.0),
            ("rules", 3, 0.0, 0.0),
        ])
    }

    fn weighted(ctx: &StrategyContext, weights: &[(&str, f64)], seed: u64) -> Weighted {
        Weighted::new(
            WeightedConfig {
                weights: weights.iter().map(|&(k, v)| (k.to_owned(), v)).collect(),
                seed: Some(seed),
            },
            ctx,
        )
        .unwrap()
    }

    fn draw(s: &Weighted, ctx: &StrategyContext) -> Vec<String> {
        let mut chain = candidates(ctx);
        s.order(&facts(10, None, false), &mut chain);
        ids(&chain)
    }

    #[test]
    fn a_seed_makes_the_orders_reproducible() {
        let ctx = four();
        let a = weighted(&ctx, &[], 42);
        let b = weighted(&ctx, &[], 42);
        let first: Vec<_> = (0..50).map(|_| draw(&a, &ctx)).collect();
        let second: Vec<_> = (0..50).map(|_| draw(&b, &ctx)).collect();
        assert_eq!(first, second);
        let c = weighted(&ctx, &[], 7);
        let third: Vec<_> = (0..50).map(|_| draw(&c, &ctx)).collect();
        assert_ne!(first, third);
    }

    #[test]
    fn tiers_stay_in_priority_order() {
        let ctx = four();
        let s = weighted(&ctx, &[], 1);
        for _ in 0..200 {
            let order = draw(&s, &ctx);
            assert_eq!(order[2..], ["mini", "rules"]);
        }
    }

    #[test]
    fn first_place_follows_the_weights() {
        let ctx = four();
        let s = weighted(&ctx, &[("east", 3.0), ("west", 1.0)], 1234);
        let draws = 8_000;
        let east_first = (0..draws).filter(|_| draw(&s, &ctx)[0] == "east").count();
        let share = east_first as f64 / draws as f64;
        assert!(
            (share - 0.75).abs() < 0.03,
            "east first in {share} of draws"
        );
    }

    #[test]
    fn weight_zero_goes_last_in_its_tier_but_stays() {
        let ctx = ctx(&[
            ("drained", 1, 0.0, 0.0),
            ("a", 1, 0.0, 0.0),
            ("b", 1, 0.0, 0.0),
            ("off", 1, 0.0, 0.0),
        ]);
        let s = weighted(&ctx, &[("drained", 0.0), ("off", 0.0)], 9);
        for _ in 0..200 {
            let order = draw(&s, &ctx);
            assert_eq!(order.len(), 4);
            assert_eq!(order[2..], ["drained", "off"]);
        }
    }

    #[test]
    fn weights_must_name_models_and_be_non_negative() {
        let ctx = four();
        let err =
            Weighted::from_value(&serde_json::json!({"weights": {"nope": 1.0}}), &ctx).unwrap_err();
        assert_eq!(err.field(), Some("weights.nope"));
        let err =
            Weighted::from_value(&serde_json::json!({"weights": {"east": -1}}), &ctx).unwrap_err();
        assert_eq!(err.field(), Some("weights.east"));
    }

    #[test]
    fn unit_draws_stay_below_one() {
        let rng = SplitMix64::new(u64::MAX);
        for _ in 0..10_000 {
            let x = rng.next_unit();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
