//! `sliding_minute`: requests and tokens per minute over a sliding minute,
//! for each model's provider quota and each caller's limit.
//!
//! What it does:
//!
//! 1. Each limit (a model with `rpm` / `tpm`, each caller under
//!    `[limits] per_caller`) counts the requests and tokens of its calls in
//!    one-second slots (61 of them, a ring).
//! 2. A call is admitted when the requests and tokens of every slot that
//!    overlaps the last minute, plus its own (one request, its prompt plus
//!    its output bound in tokens), stay within the limit. The oldest slot,
//!    only partly inside the minute, counts in full, so the count never
//!    underestimates: in *any* 60 seconds, a limit never admits more than
//!    its quota (no burst at a window's edge, as fixed windows allow, and
//!    no doubling after an idle spell, as a token bucket with a full
//!    minute of burst allows). The price is that up to one second's worth
//!    of calls is held back a second too long.
//! 3. A model and its caller are checked and counted together, all or
//!    none, under the limits' locks (held for a few comparisons). A
//!    request's later admissions (fallbacks, hedges) add their tokens to
//!    the caller without checking or counting a request again.
//! 4. A refusal says when the call would fit: when enough old slots have
//!    left the minute (at most 61 s; a call whose tokens alone exceed `tpm`
//!    never fits and is told 61 s).
//! 5. When the call is settled, its estimated tokens are replaced by the
//!    usage reported (0 for a failed call), in the slot it counted in, if
//!    that slot is still in the minute; a call never sent gives its
//!    request back too.
//!
//! In a fleet (`[state] backend = "redis"` and the store shares rate
//! limits), every admission also runs one Lua script in the store, on the
//! store's clock, with the same slots and rule across every replica, after
//! this replica's own count has admitted it (a replica refuses past a
//! limit on its own first, without a round trip). Settlements are queued
//! for the store, never waited on. While the store fails, `[state]
//! on_store_failure` decides: `local` (each replica enforces the limits on
//! its own count) or `closed` (refuse).
//!
//! When to pick it: it is the only rate limiter, used whenever a model
//! declares `rpm` / `tpm` or `[limits] per_caller` is set.
//!
//! Knobs: on a model, `rpm` and `tpm` (none by default: no limit); in
//! `[limits]`, `per_caller = { rpm, tpm }` (none by default).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use backstop_core::{
    FleetState, OnStoreFailure, OverRateLimit, RATE_WINDOW, RateCall, RateCause, RateCorrection,
    RateHold, RateLimitSnapshot, RateLimiter, RateQuota, RateScope, RateUse, RateVerdict,
    SharedClock, SharedRate, StrategyContext,
};
use smallvec::SmallVec;

/// Length of one slot.
pub const BUCKET_MS: u64 = 1000;
/// Slots in a minute.
const SPAN: u64 = RATE_WINDOW.as_millis() as u64 / BUCKET_MS;
/// Slots kept: the minute and the one it partly overlaps.
const SLOTS: usize = SPAN as usize + 1;
/// A slot holding nothing.
const EMPTY: u64 = u64::MAX;
/// What a refusal says when a call can never fit, and what a closed store
/// failure says.
const NEVER: Duration = Duration::from_millis((SPAN + 1) * BUCKET_MS);
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The name requests without a caller are counted under.
const ANONYMOUS: &str = "";

#[derive(Debug, Clone, Copy)]
struct Slot {
    bucket: u64,
    requests: u64,
    tokens: u64,
}

/// One limit's slots.
#[derive(Debug)]
struct Window {
    slots: [Slot; SLOTS],
}

/// A limit that refused: which one, and when the call fits.
type Refusal = (RateCause, u64, Duration);

impl Window {
    fn new() -> Self {
        Self {
            slots: [Slot {
                bucket: EMPTY,
                requests: 0,
                tokens: 0,
            }; SLOTS],
        }
    }

    /// Slots overlapping the minute that ends in `bucket`, oldest first.
    fn live(&self, bucket: u64) -> SmallVec<[Slot; SLOTS]> {
        let oldest = bucket.saturating_sub(SPAN);
        let mut live: SmallVec<[Slot; SLOTS]> = self
            .slots
            .iter()
            .filter(|s| s.bucket != EMPTY && s.bucket >= oldest && s.bucket <= bucket)
            .copied()
            .collect();
        live.sort_unstable_by_key(|s| s.bucket);
        live
    }

    fn totals(&self, bucket: u64) -> (u64, u64) {
        self.live(bucket).iter().fold((0, 0), |(r, t), s| {
            (r.saturating_add(s.requests), t.saturating_add(s.tokens))
        })
    }

    /// Whether one more request and `tokens` fit `quota` at `now_ms`.
    fn check(&self, now_ms: u64, quota: RateQuota, tokens: u64) -> Result<(), Refusal> {
        let bucket = now_ms / BUCKET_MS;
        let live = self.live(bucket);
        let (requests, used) = live.iter().fold((0u64, 0u64), |(r, t), s| {
            (r.saturating_add(s.requests), t.saturating_add(s.tokens))
        });
        if let Some(rpm) = quota.rpm
            && requests.saturating_add(1) > rpm
        {
            let wait = wait(&live, now_ms, requests + 1 - rpm, |s| s.requests);
            return Err((RateCause::Rpm, rpm, wait));
        }
        if let Some(tpm) = quota.tpm
            && used.saturating_add(tokens) > tpm
        {
            let wait = if tokens > tpm {
                NEVER
            } else {
                wait(&live, now_ms, used + tokens - tpm, |s| s.tokens)
            };
            return Err((RateCause::Tpm, tpm, wait));
        }
        Ok(())
    }

    fn slot(&mut self, bucket: u64) -> &mut Slot {
        // `bucket % SLOTS` is below SLOTS, so it fits a usize.
        let slot = &mut self.slots[(bucket % SLOTS as u64) as usize];
        if slot.bucket != bucket {
            *slot = Slot {
                bucket,
                requests: 0,
                tokens: 0,
            };
        }
        slot
    }

    fn add(&mut self, bucket: u64, requests: u64, tokens: u64) {
        let slot = self.slot(bucket);
        slot.requests = slot.requests.saturating_add(requests);
        slot.tokens = slot.tokens.saturating_add(tokens);
    }

    /// Corrects what `bucket` counted, if it is still kept.
    fn correct(&mut self, bucket: u64, requests: i64, tokens: i64) {
        let slot = &mut self.slots[(bucket % SLOTS as u64) as usize];
        if slot.bucket == bucket {
            slot.requests = slot.requests.saturating_add_signed(requests);
            slot.tokens = slot.tokens.saturating_add_signed(tokens);
        }
    }
}

/// How long until the oldest slots, leaving the minute, free `excess`.
fn wait(live: &[Slot], now_ms: u64, excess: u64, count: impl Fn(&Slot) -> u64) -> Duration {
    let mut freed = 0u64;
    for slot in live {
        freed = freed.saturating_add(count(slot));
        if freed >= excess {
            // A slot counts while it overlaps the minute: it leaves once
            // the minute starts after its end.
            let leaves = (slot.bucket + SPAN + 1).saturating_mul(BUCKET_MS);
            return Duration::from_millis(leaves.saturating_sub(now_ms).max(1));
        }
    }
    NEVER
}

/// One limit: its quota, its slots and its refusals.
#[derive(Debug)]
struct Limit {
    /// The fleet's name of it (`model:<id>`, `caller:<label>`).
    shared_name: String,
    /// The status page's name of it (the model id, the caller label).
    name: String,
    quota: RateQuota,
    window: Mutex<Window>,
    refused: AtomicU64,
}

impl Limit {
    fn new(scope: RateScope, name: &str, quota: RateQuota) -> Self {
        Self {
            shared_name: format!("{}:{name}", scope.as_str()),
            name: if name.is_empty() {
                "anonymous".to_owned()
            } else {
                name.to_owned()
            },
            quota,
            window: Mutex::new(Window::new()),
            refused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shared(&self, check: bool) -> SharedRate<'_> {
        SharedRate {
            name: &self.shared_name,
            rpm: self.quota.rpm.unwrap_or(0),
            tpm: self.quota.tpm.unwrap_or(0),
            check,
        }
    }

    fn snapshot(&self, scope: RateScope, now_ms: u64, shared: bool) -> RateLimitSnapshot {
        let (requests, tokens) = self.lock().totals(now_ms / BUCKET_MS);
        RateLimitSnapshot {
            scope,
            name: self.name.clone(),
            rpm: self.quota.rpm,
            tpm: self.quota.tpm,
            requests,
            tokens,
            refused: self.refused.load(Ordering::Relaxed),
            shared,
        }
    }
}

/// Each caller's limit, created on a caller's first call.
#[derive(Debug)]
struct Callers {
    quota: RateQuota,
    by_label: RwLock<HashMap<Box<str>, Arc<Limit>>>,
}

impl Callers {
    fn get(&self, caller: Option<&str>) -> Arc<Limit> {
        let key = caller.unwrap_or(ANONYMOUS);
        if let Some(limit) = self
            .by_label
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return limit.clone();
        }
        self.by_label
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.into())
            .or_insert_with(|| Arc::new(Limit::new(RateScope::Caller, key, self.quota)))
            .clone()
    }

    fn find(&self, caller: Option<&str>) -> Option<Arc<Limit>> {
        self.by_label
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(caller.unwrap_or(ANONYMOUS))
            .cloned()
    }
}

/// Per-minute limits on models and callers; see the module docs.
#[derive(Debug)]
pub struct SlidingMinute {
    clock: SharedClock,
    /// By model index: its quota, when it has one.
    models: Box<[Option<Limit>]>,
    callers: Option<Callers>,
    fleet: Arc<dyn FleetState>,
}

impl SlidingMinute {
    /// Limits for `ctx`'s models (their `quota`) and, with `per_caller`,
    /// for each caller. `None` when there is nothing to limit.
    pub fn new(ctx: &StrategyContext, per_caller: Option<RateQuota>) -> Option<Self> {
        let models: Box<[Option<Limit>]> = ctx
            .models
            .iter()
            .map(|m| {
                (!m.quota.is_unlimited()).then(|| Limit::new(RateScope::Model, &m.id, m.quota))
            })
            .collect();
        let callers = per_caller
            .filter(|q| !q.is_unlimited())
            .map(|quota| Callers {
                quota,
                by_label: RwLock::new(HashMap::new()),
            });
        if callers.is_none() && models.iter().all(Option::is_none) {
            return None;
        }
        Some(Self {
            clock: ctx.clock.clone(),
            models,
            callers,
            fleet: ctx.fleet.clone(),
        })
    }

    fn model(&self, index: usize) -> Option<&Limit> {
        self.models.get(index).and_then(Option::as_ref)
    }

    /// The use of one caller's limit in the current minute, if it has
    /// called.
    pub fn caller_snapshot(&self, caller: Option<&str>) -> Option<RateLimitSnapshot> {
        let limit = self.callers.as_ref()?.find(caller)?;
        Some(limit.snapshot(RateScope::Caller, self.clock.unix_ms(), self.is_shared()))
    }

    /// Counts the call on this replica's limits, or refuses.
    fn take(
        &self,
        call: &RateCall<'_>,
        model: Option<&Limit>,
        caller: Option<&Limit>,
    ) -> Result<RateHold, OverRateLimit> {
        let now_ms = self.clock.unix_ms();
        let bucket = now_ms / BUCKET_MS;
        // Locks are always taken model first, then caller.
        let mut model_window = model.map(Limit::lock);
        let mut caller_window = caller.map(Limit::lock);
        let refuse = |limit: &Limit, scope, (cause, value, retry_after): Refusal| {
            limit.refused.fetch_add(1, Ordering::Relaxed);
            OverRateLimit {
                scope,
                cause,
                limit: value,
                retry_after,
            }
        };
        if let (Some(limit), Some(window)) = (model, &model_window) {
            window
                .check(now_ms, limit.quota, call.tokens)
                .map_err(|r| refuse(limit, RateScope::Model, r))?;
        }
        if call.first
            && let (Some(limit), Some(window)) = (caller, &caller_window)
        {
            window
                .check(now_ms, limit.quota, call.tokens)
                .map_err(|r| refuse(limit, RateScope::Caller, r))?;
        }
        if let Some(window) = &mut model_window {
            window.add(bucket, 1, call.tokens);
        }
        if let Some(window) = &mut caller_window {
            window.add(bucket, u64::from(call.first), call.tokens);
        }
        Ok(RateHold {
            model: call.model,
            tokens: call.tokens,
            caller: caller.is_some(),
            caller_request: caller.is_some() && call.first,
            ticket: bucket,
            fleet_ticket: None,
        })
    }

    /// Gives a hold back to this replica's limits only.
    fn release_local(&self, hold: &RateHold, caller: Option<&Limit>) {
        let tokens = -i64::try_from(hold.tokens).unwrap_or(i64::MAX);
        if let Some(limit) = self.model(hold.model) {
            limit.lock().correct(hold.ticket, -1, tokens);
        }
        if let Some(limit) = caller {
            limit
                .lock()
                .correct(hold.ticket, -i64::from(hold.caller_request), tokens);
        }
    }

    async fn take_shared(&self, call: RateCall<'_>) -> Result<RateHold, OverRateLimit> {
        let model = self.model(call.model);
        let caller = self.callers.as_ref().map(|c| c.get(call.caller));
        let mut hold = self.take(&call, model, caller.as_deref())?;
        let mut limits: SmallVec<[(RateScope, &Limit); 2]> = SmallVec::new();
        if let Some(limit) = model {
            limits.push((RateScope::Model, limit));
        }
        if let Some(limit) = caller.as_deref() {
            limits.push((RateScope::Caller, limit));
        }
        let shared: SmallVec<[SharedRate<'_>; 2]> = limits
            .iter()
            .map(|(scope, limit)| limit.shared(*scope == RateScope::Model || call.first))
            .collect();
        match self
            .fleet
            .acquire_rate(&shared, call.tokens, BUCKET_MS)
            .await
        {
            Ok(RateVerdict::Held { ticket }) => {
                hold.fleet_ticket = Some(ticket);
                Ok(hold)
            }
            Ok(RateVerdict::Refused {
                index,
                tokens,
                retry_after,
            }) => {
                self.release_local(&hold, caller.as_deref());
                let (scope, limit) = limits.get(index).copied().unwrap_or(limits[0]);
                limit.refused.fetch_add(1, Ordering::Relaxed);
                let (cause, value) = if tokens {
                    (RateCause::Tpm, limit.quota.tpm.unwrap_or(0))
                } else {
                    (RateCause::Rpm, limit.quota.rpm.unwrap_or(0))
                };
                Err(OverRateLimit {
                    scope,
                    cause,
                    limit: value,
                    retry_after,
                })
            }
            Err(failure) => match self.fleet.on_store_failure() {
                OnStoreFailure::Local => {
                    tracing::debug!(%failure, "rate limit counted on this replica only");
                    Ok(hold)
                }
                OnStoreFailure::Closed => {
                    self.release_local(&hold, caller.as_deref());
                    let (scope, limit) = limits[0];
                    limit.refused.fetch_add(1, Ordering::Relaxed);
                    Err(OverRateLimit {
                        scope,
                        cause: RateCause::StoreUnavailable,
                        limit: 0,
                        retry_after: STORE_RETRY,
                    })
                }
            },
        }
    }
}

impl RateLimiter for SlidingMinute {
    fn acquire(&self, call: &RateCall<'_>) -> Result<RateHold, OverRateLimit> {
        let caller = self.callers.as_ref().map(|c| c.get(call.caller));
        self.take(call, self.model(call.model), caller.as_deref())
    }

    fn settle(&self, hold: RateHold, caller: Option<&str>, used: RateUse) {
        let estimate = i64::try_from(hold.tokens).unwrap_or(i64::MAX);
        let (requests, tokens) = match used {
            RateUse::Released => (-1, -estimate),
            RateUse::Sent { tokens } => (
                0,
                i64::try_from(tokens)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(estimate),
            ),
        };
        if requests == 0 && tokens == 0 {
            return;
        }
        let model = self.model(hold.model);
        let caller_limit = if hold.caller {
            self.callers.as_ref().and_then(|c| c.find(caller))
        } else {
            None
        };
        let caller_requests = if hold.caller_request { requests } else { 0 };
        if let Some(limit) = model {
            limit.lock().correct(hold.ticket, requests, tokens);
        }
        if let Some(limit) = &caller_limit {
            limit.lock().correct(hold.ticket, caller_requests, tokens);
        }
        if let Some(ticket) = hold.fleet_ticket {
            let mut corrections: SmallVec<[RateCorrection<'_>; 2]> = SmallVec::new();
            if let Some(limit) = model {
                corrections.push(RateCorrection {
                    name: &limit.shared_name,
                    requests,
                    tokens,
                });
            }
            if let Some(limit) = &caller_limit {
                corrections.push(RateCorrection {
                    name: &limit.shared_name,
                    requests: caller_requests,
                    tokens,
                });
            }
            self.fleet.settle_rate(ticket, &corrections);
        }
    }

    fn snapshot(&self) -> Vec<RateLimitSnapshot> {
        let now_ms = self.clock.unix_ms();
        let shared = self.is_shared();
        let mut out: Vec<RateLimitSnapshot> = self
            .models
            .iter()
            .flatten()
            .map(|l| l.snapshot(RateScope::Model, now_ms, shared))
            .collect();
        if let Some(callers) = &self.callers {
            let mut by_caller: Vec<RateLimitSnapshot> = callers
                .by_label
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .map(|l| l.snapshot(RateScope::Caller, now_ms, shared))
                .collect();
            by_caller.sort_by(|a, b| a.name.cmp(&b.name));
            out.extend(by_caller);
        }
        out
    }

    fn is_shared(&self) -> bool {
        self.fleet.shares_rate_limits()
    }

    fn acquire_shared<'a>(
        &'a self,
        call: RateCall<'a>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<RateHold, OverRateLimit>> + Send + 'a>> {
        Box::pin(self.take_shared(call))
    }
}

#[cfg(test)]
mod tests;
