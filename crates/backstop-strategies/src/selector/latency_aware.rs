//! `latency_aware`: fastest first, by the Router's latency estimates, and
//! it keeps measuring so that "fastest" stays true.
//!
//! The technique: **peak-EWMA ranking with deterministic ε-exploration and
//! ageing** (the peak-EWMA of Finagle and linkerd for the estimate; a fixed
//! exploration share, as in ε-greedy, spent only on models whose estimate
//! is missing or stale).
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
//!    because it was down at startup) is still tried before its backups.
//! 4. Moves models whose estimate exceeds `max_latency_ms` behind all of
//!    those, fastest first: they are never dropped, and when every model is
//!    over the limit the fastest still goes first.
//! 5. **Explores**: one request in `explore_every` (counted per selector)
//!    puts first the model that most needs a measurement, if any: one with
//!    no estimate for the request's kind (those with the fastest probe
//!    round trip first, then in the order above), else the one whose last
//!    sample is oldest, if older than `max_age_ms`. A model whose last call
//!    or probe failed is not explored until it answers again (a probe or a
//!    fall-over call). Exploration only reorders: the Router still skips a
//!    model whose circuit is open or that the budget refuses, and a model
//!    marked `last_resort` stays last.
//!
//! Ties keep priority order, then chain order.
//!
//! **The bound.** In a chain of `k` models that answer, every one has an
//! estimate within `explore_every × (k − 1)` requests (10 with the
//! defaults and two models): the first by priority is measured by regular
//! traffic, each exploration turn measures one more. From then on the
//! fastest model goes first on every request but the exploration turns,
//! and an exploration turn is spent only on a model not measured for
//! `max_age_ms`: at most `k − 1` requests per `max_age_ms`. **Tracking.**
//! When the fast model slows down, its next answer raises its estimate at
//! once (peak) and traffic moves to the next fastest; when it recovers, the
//! ageing rule re-measures it within `max_age_ms` (plus one exploration
//! turn), and its estimate falls as the EWMA decays.
//!
//! Background probes feed a separate probe estimate (a request of a few
//! tokens measures the round trip, not a real answer): it orders the
//! unmeasured models for exploration and shows on the status page, but is
//! never compared with real traffic's estimates.
//!
//! When to pick it: for interactive scenarios (chat, autocomplete) where
//! time to the first token matters more than which model answers, among
//! models of similar quality.
//!
//! With no history at all it orders like `priority`, and explores from the
//! `explore_every`-th request on.
//!
//! Knobs (defaults):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `max_latency_ms` | none (no limit) | models estimated slower than this go behind the others |
//! | `explore_every` | `10` | one request in this many measures a model without a fresh estimate; `0` turns exploration off |
//! | `max_age_ms` | `30000` | an estimate older than this is re-measured by exploration |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyAwareConfig {
    /// Models estimated slower than this go behind the others. Default
    /// none (no limit).
    pub max_latency_ms: Option<u64>,
    /// One request in this many explores; 0 turns exploration off.
    /// Default 10.
    pub explore_every: u64,
    /// An estimate older than this is re-measured. Default 30000.
    pub max_age_ms: u64,
}

impl Default for LatencyAwareConfig {
    fn default() -> Self {
        Self {
            max_latency_ms: None,
            explore_every: 10,
            max_age_ms: 30_000,
        }
    }
}

/// Orders by latency estimate and explores; see the module docs.
#[derive(Debug)]
pub struct LatencyAware {
    latency: Arc<LatencyStats>,
    max_latency: Option<Duration>,
    explore_every: u64,
    max_age: Duration,
    requests: AtomicU64,
}

impl LatencyAware {
    /// A selector reading `ctx`'s latency estimates.
    pub fn new(config: LatencyAwareConfig, ctx: &StrategyContext) -> Result<Self, StrategyError> {
        if let Some(max) = config.max_latency_ms {
            check_non_zero("max_latency_ms", max)?;
        }
        check_non_zero("max_age_ms", config.max_age_ms)?;
        Ok(Self {
            latency: ctx.latency.clone(),
            max_latency: config.max_latency_ms.map(Duration::from_millis),
            explore_every: config.explore_every,
            max_age: Duration::from_millis(config.max_age_ms),
            requests: AtomicU64::new(0),
        })
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }

    /// Whether this request is an exploration turn: the
    /// `explore_every`-th, `2 × explore_every`-th, ... of this selector.
    fn explores(&self) -> bool {
        if self.explore_every == 0 {
            return false;
        }
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        n % self.explore_every == self.explore_every - 1
    }

    /// The position (after the first) of the model that most needs a
    /// measurement, if any: unmeasured ones first (fastest probe, then
    /// current order), else the stalest past `max_age`. Models believed
    /// down are left alone.
    fn explore_target(&self, kind: LatencyKind, candidates: &[Candidate<'_>]) -> Option<usize> {
        // (needs: 0 unmeasured / 1 stale, rank within, position)
        let mut best: Option<(u8, u64, usize)> = None;
        let now = self.latency.clock().now();
        for (position, c) in candidates.iter().enumerate().skip(1) {
            if self.latency.is_failing(c.index) {
                continue;
            }
            let rank = match self.latency.age_at(c.index, kind, now) {
                None => {
                    let probe = self.latency.estimate(c.index, LatencyKind::Probe);
                    (0, probe.map_or(u64::MAX, nanos))
                }
                Some(age) if age > self.max_age => (1, u64::MAX - nanos(age)),
                Some(_) => continue,
            };
            let key = (rank.0, rank.1, position);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        best.map(|(_, _, position)| position)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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
    let nanos = nanos(estimate);
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
        if self.explores()
            && let Some(target) = self.explore_target(kind, candidates)
        {
            candidates[..=target].rotate_right(1);
        }
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
    use crate::selector::test_chain::{candidates, clocked, ctx, facts, ids};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn selector(ctx: &StrategyContext, max: Option<u64>) -> LatencyAware {
        LatencyAware::new(
            LatencyAwareConfig {
                max_latency_ms: max,
                explore_every: 0,
                ..LatencyAwareConfig::default()
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

    fn exploring(ctx: &StrategyContext, every: u64) -> LatencyAware {
        LatencyAware::new(
            LatencyAwareConfig {
                explore_every: every,
                max_age_ms: 30_000,
                max_latency_ms: None,
            },
            ctx,
        )
        .unwrap()
    }

    /// The first model of the next `n` orders of non-streaming requests.
    fn firsts(s: &LatencyAware, ctx: &StrategyContext, n: usize) -> Vec<String> {
        (0..n).map(|_| order(s, ctx, false)[0].clone()).collect()
    }

    #[test]
    fn every_nth_request_measures_an_unmeasured_backup_then_the_fastest_leads() {
        let ctx = ctx(&[("slow", 1, 0.0, 0.0), ("fast", 2, 0.0, 0.0)]);
        let s = exploring(&ctx, 4);
        ctx.latency.observe(0, LatencyKind::Total, ms(300));
        // Three requests by priority, the fourth explores the backup.
        assert_eq!(firsts(&s, &ctx, 4), ["slow", "slow", "slow", "fast"]);
        ctx.latency.observe(1, LatencyKind::Total, ms(10));
        // Measured and fresh: the fastest leads, exploration has nothing to
        // measure.
        assert_eq!(firsts(&s, &ctx, 8), ["fast"; 8]);
        // The fast model slows down: its next answer moves traffic back.
        ctx.latency.observe(1, LatencyKind::Total, ms(900));
        assert_eq!(firsts(&s, &ctx, 4), ["slow"; 4]);
    }

    #[test]
    fn a_stale_estimate_is_re_measured_and_a_failing_model_is_not_explored() {
        let (ctx, clock) = clocked(&[("slow", 1, 0.0, 0.0), ("fast", 2, 0.0, 0.0)]);
        let s = exploring(&ctx, 4);
        ctx.latency.observe(0, LatencyKind::Total, ms(300));
        ctx.latency.observe(1, LatencyKind::Total, ms(10));
        // Within max_age nothing is explored.
        clock.advance(Duration::from_secs(30));
        assert_eq!(firsts(&s, &ctx, 4), ["fast"; 4]);
        // Past it, the slow model's old estimate is re-measured once per
        // exploration turn until it answers.
        clock.advance(Duration::from_millis(1));
        ctx.latency.observe(1, LatencyKind::Total, ms(10));
        assert_eq!(firsts(&s, &ctx, 4), ["fast", "fast", "fast", "slow"]);
        assert_eq!(firsts(&s, &ctx, 4), ["fast", "fast", "fast", "slow"]);
        ctx.latency.observe(0, LatencyKind::Total, ms(300));
        assert_eq!(firsts(&s, &ctx, 4), ["fast"; 4]);
        // Stale again, but its last call failed: not explored until it
        // answers (a probe, a fall-over call).
        clock.advance(Duration::from_secs(31));
        ctx.latency.observe(1, LatencyKind::Total, ms(10));
        ctx.latency.note_failure(0);
        assert_eq!(firsts(&s, &ctx, 8), ["fast"; 8]);
        ctx.latency.observe(0, LatencyKind::Probe, ms(5));
        assert_eq!(firsts(&s, &ctx, 4), ["fast", "fast", "fast", "slow"]);
    }

    #[test]
    fn unmeasured_models_are_explored_before_stale_ones_fastest_probe_first() {
        let (ctx, clock) = clocked(&[
            ("a", 1, 0.0, 0.0),
            ("b", 2, 0.0, 0.0),
            ("c", 3, 0.0, 0.0),
            ("d", 4, 0.0, 0.0),
        ]);
        let s = exploring(&ctx, 1);
        ctx.latency.observe(0, LatencyKind::Total, ms(100));
        ctx.latency.observe(1, LatencyKind::Total, ms(200));
        clock.advance(Duration::from_secs(60));
        ctx.latency.observe(0, LatencyKind::Total, ms(100));
        // b is stale, c and d unmeasured; d answered a probe faster than c.
        ctx.latency.observe(2, LatencyKind::Probe, ms(80));
        ctx.latency.observe(3, LatencyKind::Probe, ms(40));
        assert_eq!(order(&s, &ctx, false), ["d", "a", "b", "c"]);
        ctx.latency.observe(3, LatencyKind::Total, ms(150));
        assert_eq!(order(&s, &ctx, false)[0], "c");
        ctx.latency.observe(2, LatencyKind::Total, ms(150));
        assert_eq!(order(&s, &ctx, false)[0], "b");
        ctx.latency.observe(1, LatencyKind::Total, ms(200));
        // Everything fresh: the plain order, fastest first.
        assert_eq!(order(&s, &ctx, false), ["a", "c", "d", "b"]);
        // A stream explores by its own kind: nothing has a first-token
        // estimate yet; a, first by priority, is measured anyway, and of
        // the rest d answered its probe fastest.
        assert_eq!(order(&s, &ctx, true), ["d", "a", "b", "c"]);
    }

    #[test]
    fn exploration_off_never_reorders() {
        let ctx = ctx(&[("slow", 1, 0.0, 0.0), ("fast", 2, 0.0, 0.0)]);
        let s = exploring(&ctx, 0);
        ctx.latency.observe(0, LatencyKind::Total, ms(300));
        assert_eq!(firsts(&s, &ctx, 30), ["slow"; 30]);
    }

    #[test]
    fn a_zero_limit_is_refused() {
        let ctx = four();
        let err =
            LatencyAware::from_value(&serde_json::json!({"max_latency_ms": 0}), &ctx).unwrap_err();
        assert_eq!(err.field(), Some("max_latency_ms"));
    }
}
