//! `latency_aware`: fastest first, by the Router's latency estimates.
//!
//! What it does:
//!
//! 1. Reads each model's estimate from the Router's shared
//!    [`LatencyStats`]: a peak-sensitive EWMA (one slow spike counts at
//!    once, then decays) of the time to first token for streaming requests
//!    and of the total time otherwise.
//! 2. Orders the measured models whose estimate is within `max_latency_ms`
//!    fastest first.
//! 3. Places the models with no data yet by priority among them: an
//!    unmeasured model goes before the first measured model of a higher
//!    priority number, so a primary that has never answered (for instance
//!    because it was down at startup) is still tried before its backups,
//!    and a never-used backup is not tried early just because it is
//!    unmeasured.
//! 4. Moves models whose estimate exceeds `max_latency_ms` behind all of
//!    those, fastest first: they are never dropped, and when every model is
//!    over the limit the fastest still goes first.
//!
//! Ties keep priority order, then chain order.
//!
//! When to pick it: for interactive scenarios (chat, autocomplete) where
//! time to the first token matters more than which model answers, among
//! models of similar quality.
//!
//! Knobs (defaults):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `max_latency_ms` | none (no limit) | models estimated slower than this go behind the others |

use std::sync::Arc;
use std::time::Duration;

use backstop_core::{
    Candidate, LatencyKind, LatencyStats, RequestFacts, Selector, StrategyContext,
};
use serde::Deserialize;
use smallvec::SmallVec;

use crate::error::{StrategyError, check_non_zero};

/// The config `type` name.
pub const NAME: &str = "latency_aware";

/// Knobs of the latency-aware selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyAwareConfig {
    /// Models estimated slower than this go behind the others. Default
    /// none (no limit).
    pub max_latency_ms: Option<u64>,
}

/// Orders by latency estimate; see the module docs.
#[derive(Debug, Clone)]
pub struct LatencyAware {
    latency: Arc<LatencyStats>,
    max_latency: Option<Duration>,
}

impl LatencyAware {
    /// A selector reading `ctx`'s latency estimates.
    pub fn new(config: LatencyAwareConfig, ctx: &StrategyContext) -> Result<Self, StrategyError> {
        if let Some(max) = config.max_latency_ms {
            check_non_zero("max_latency_ms", max)?;
        }
        Ok(Self {
            latency: ctx.latency.clone(),
            max_latency: config.max_latency_ms.map(Duration::from_millis),
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

/// Where a model goes, in this order.
const FAST: u128 = 0;
const UNMEASURED: u128 = 1;
const SLOW: u128 = 2;

/// A candidate's sort key, read once (so estimates moving under a
/// concurrent update cannot make the order inconsistent) and packed into
/// one integer that compares in the order wanted: group (2 bits), estimate
/// in nanoseconds (64), priority (32), position in the chain (30).
fn key(group: u128, estimate: Duration, priority: u32, position: usize) -> u128 {
    let nanos = u64::try_from(estimate.as_nanos()).unwrap_or(u64::MAX);
    let position = (position as u128).min(RANK_POSITION_MASK);
    (group << 126) | (u128::from(nanos) << 62) | (u128::from(priority) << 30) | position
}

const RANK_POSITION_MASK: u128 = (1 << 30) - 1;
/// Priority and position: what ranks an unmeasured model against others.
const RANK_MASK: u128 = (1 << 62) - 1;

fn group_of(key: u128) -> u128 {
    key >> 126
}

impl Selector for LatencyAware {
    fn name(&self) -> &str {
        NAME
    }

    fn order(&self, facts: &RequestFacts<'_>, candidates: &mut [Candidate<'_>]) {
        let kind = if facts.stream {
            LatencyKind::FirstToken
        } else {
            LatencyKind::Total
        };
        let mut keys: SmallVec<[u128; 8]> = candidates
            .iter()
            .map(|c| {
                let estimate = self.latency.estimate(c.index, kind);
                let (group, estimate) = match (estimate, self.max_latency) {
                    (None, _) => (UNMEASURED, Duration::ZERO),
                    (Some(e), Some(max)) if e > max => (SLOW, e),
                    (Some(e), _) => (FAST, e),
                };
                key(group, estimate, c.spec.priority, c.position)
            })
            .collect();
        arrange(&mut keys, candidates);
    }
}

/// Sorts `candidates` by `keys` (moving both alike), then merges the
/// unmeasured run into the fast run by priority: before each fast model go
/// the unmeasured ones that outrank it.
fn arrange(keys: &mut [u128], candidates: &mut [Candidate<'_>]) {
    // Chains are short: an insertion sort that moves keys and candidates
    // together beats sorting pairs, which moves more memory.
    for i in 1..keys.len() {
        let mut j = i;
        while j > 0 && keys[j - 1] > keys[j] {
            keys.swap(j - 1, j);
            candidates.swap(j - 1, j);
            j -= 1;
        }
    }
    let fast_end = keys.partition_point(|&k| group_of(k) == FAST);
    let unmeasured_end = keys.partition_point(|&k| group_of(k) <= UNMEASURED);
    let (mut next, mut fast_end, mut unmeasured) = (0, fast_end, fast_end);
    while next < fast_end && unmeasured < unmeasured_end {
        if keys[unmeasured] & RANK_MASK < keys[next] & RANK_MASK {
            keys[next..=unmeasured].rotate_right(1);
            candidates[next..=unmeasured].rotate_right(1);
            fast_end += 1;
            unmeasured += 1;
        }
        next += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::test_chain::{candidates, ctx, facts, ids};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn selector(ctx: &StrategyContext, max: Option<u64>) -> LatencyAware {
        LatencyAware::new(
            LatencyAwareConfig {
                max_latency_ms: max,
            },
            ctx,
        )
        .unwrap()
    }

    fn four() -> StrategyContext {
        ctx(&[
            ("a", 1, 0.0, 0.0),
            ("b", 2, 0.0, 0.0),
            ("c", 3, 0.0, 0.0),
            ("d", 4, 0.0, 0.0),
        ])
    }

    fn order(s: &LatencyAware, ctx: &StrategyContext, stream: bool) -> Vec<String> {
        let mut chain = candidates(ctx);
        s.order(&facts(10, None, stream), &mut chain);
        ids(&chain)
    }

    #[test]
    fn fastest_first() {
        let ctx = four();
        for (i, t) in [400, 100, 300, 200].into_iter().enumerate() {
            ctx.latency.observe(i, LatencyKind::Total, ms(t));
        }
        assert_eq!(
            order(&selector(&ctx, None), &ctx, false),
            ["b", "d", "c", "a"]
        );
    }

    #[test]
    fn models_without_data_rank_by_priority() {
        let ctx = four();
        let s = selector(&ctx, None);
        assert_eq!(order(&s, &ctx, false), ["a", "b", "c", "d"]);
        // Only the backups b and d were measured (the primary was down):
        // the primary still goes first; c (priority 3) goes before the
        // faster d (priority 4), and b follows d, being slower.
        ctx.latency.observe(1, LatencyKind::Total, ms(300));
        ctx.latency.observe(3, LatencyKind::Total, ms(100));
        assert_eq!(order(&s, &ctx, false), ["a", "c", "d", "b"]);
        // Once c is measured too, the measured models sort by speed.
        ctx.latency.observe(2, LatencyKind::Total, ms(200));
        assert_eq!(order(&s, &ctx, false), ["a", "d", "c", "b"]);
        // Only the primary measured: the backups stay behind it by priority.
        let ctx = four();
        let s = selector(&ctx, None);
        ctx.latency.observe(0, LatencyKind::Total, ms(900));
        assert_eq!(order(&s, &ctx, false), ["a", "b", "c", "d"]);
    }

    #[test]
    fn over_max_latency_moves_behind_and_is_never_dropped() {
        let ctx = four();
        let s = selector(&ctx, Some(1_000));
        ctx.latency.observe(0, LatencyKind::Total, ms(5_000));
        ctx.latency.observe(1, LatencyKind::Total, ms(800));
        ctx.latency.observe(2, LatencyKind::Total, ms(2_000));
        // d has no data: it is not known to be slow.
        assert_eq!(order(&s, &ctx, false), ["b", "d", "c", "a"]);
    }

    #[test]
    fn when_all_are_over_the_fastest_goes_first() {
        let ctx = four();
        let s = selector(&ctx, Some(100));
        for (i, t) in [900, 300, 700, 500].into_iter().enumerate() {
            ctx.latency.observe(i, LatencyKind::Total, ms(t));
        }
        assert_eq!(order(&s, &ctx, false), ["b", "d", "c", "a"]);
    }

    #[test]
    fn streams_rank_by_time_to_first_token() {
        let ctx = four();
        let s = selector(&ctx, None);
        // a answers fast in total but starts streaming late.
        ctx.latency.observe(0, LatencyKind::Total, ms(100));
        ctx.latency.observe(0, LatencyKind::FirstToken, ms(900));
        ctx.latency.observe(1, LatencyKind::Total, ms(2_000));
        ctx.latency.observe(1, LatencyKind::FirstToken, ms(200));
        assert_eq!(order(&s, &ctx, false)[..2], ["a", "b"]);
        assert_eq!(order(&s, &ctx, true)[..2], ["b", "a"]);
    }

    #[test]
    fn a_slow_spike_counts_at_once() {
        let ctx = four();
        let s = selector(&ctx, None);
        ctx.latency.observe(0, LatencyKind::Total, ms(100));
        ctx.latency.observe(1, LatencyKind::Total, ms(200));
        assert_eq!(order(&s, &ctx, false)[..2], ["a", "b"]);
        ctx.latency.observe(0, LatencyKind::Total, ms(3_000));
        assert_eq!(order(&s, &ctx, false)[..2], ["b", "a"]);
    }

    #[test]
    fn a_long_chain_orders_the_same_way() {
        let models: Vec<(String, u32)> = (0..12).map(|i| (format!("m{i:02}"), i)).collect();
        let specs: Vec<(&str, u32, f64, f64)> = models
            .iter()
            .map(|(id, p)| (id.as_str(), *p, 0.0, 0.0))
            .collect();
        let ctx = ctx(&specs);
        let s = selector(&ctx, Some(1_000));
        // m11 fastest, m05 over the limit, the rest unmeasured.
        ctx.latency.observe(11, LatencyKind::Total, ms(10));
        ctx.latency.observe(5, LatencyKind::Total, ms(5_000));
        let order = order(&s, &ctx, false);
        let expected: Vec<String> = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 5]
            .iter()
            .map(|i| format!("m{i:02}"))
            .collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn a_zero_limit_is_refused() {
        let ctx = four();
        let err =
            LatencyAware::from_value(&serde_json::json!({"max_latency_ms": 0}), &ctx).unwrap_err();
        assert_eq!(err.field(), Some("max_latency_ms"));
    }
}
