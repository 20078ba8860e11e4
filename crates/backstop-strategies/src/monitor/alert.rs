//! `alert`: raise an alert when fallbacks pile up, and when a model is
//! disabled.
//!
//! What it does:
//!
//! 1. Counts requests (every [`Event::RequestFinished`]) and fallbacks
//!    (every [`Event::Fallback`]) in a sliding window of `window_ms`, in
//!    `buckets` time buckets, so the fallback rate it reports is exact:
//!    fallbacks / requests in the window, not an estimate.
//! 2. When the window holds at least `max_fallbacks` fallbacks, it fires —
//!    once, and not again until `window_ms` has passed since it fired (and
//!    the window still holds that many): once per window, not once per
//!    event.
//! 3. When a model's circuit moves to disabled (an auth failure or an
//!    exhausted quota), it fires at once.
//! 4. Firing writes a `tracing` event at warn level and, when `webhook_url`
//!    is set, POSTs a JSON body there from a background task (the sender,
//!    in `backstop-http`, is attached by config), with a
//!    `webhook_timeout_ms` timeout: the request path never waits for it.
//! 5. Keeps the last `recent` fallback events for a status page
//!    ([`AlertSink::status`]).
//! 6. In a fleet whose state is shared (`[state] backend = "redis"`), the
//!    window is the fleet's: this replica's counts are added to the
//!    fleet's off the request path (every ~100 ms, by the store's task,
//!    through core's `SharedCounts`), the threshold and the rate read the
//!    fleet's sums, and a firing is claimed (`FleetState::claim`) so one
//!    replica sends it. While the store fails, the rule counts and alerts
//!    on this replica's own window, as without a fleet.
//!
//! When to pick it: in every deployment with someone to tell. The gateway
//! builds it from the config's `[alerts]` table.
//!
//! Knobs (defaults):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `max_fallbacks` | `10` | fallbacks in the window that fire the alert |
//! | `window_ms` | `3600000` (one hour) | the window |
//! | `buckets` | `60` | time buckets the window is split into |
//! | `webhook_url` | none | http(s) URL that receives alerts as JSON POSTs |
//! | `webhook_timeout_ms` | `5000` | timeout of one webhook POST |
//! | `recent` | `50` | fallback events kept for the status page |
//!
//! The webhook's JSON bodies are described on [`AlertSink`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use backstop_core::{
    CircuitState, Claim, CountsListener, Event, EventSink, FailureKind, FallbackEvent, FleetState,
    SharedClock, SharedCounts, StrategyContext,
};
use serde::{Deserialize, Serialize};

use crate::error::{StrategyError, check_non_zero};
use crate::sliding_window::SlidingWindow;

/// The config name.
pub const NAME: &str = "alert";

/// Knobs of the alert rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Fallbacks in the window that fire the alert. Default 10.
    pub max_fallbacks: u32,
    /// The window. Default 3600000 (one hour).
    pub window_ms: u64,
    /// Time buckets the window is split into. Default 60.
    pub buckets: u32,
    /// URL that receives alerts as JSON POSTs. Default none.
    pub webhook_url: Option<String>,
    /// Timeout of one webhook POST. Default 5000.
    pub webhook_timeout_ms: u64,
    /// Fallback events kept for the status page. Default 50.
    pub recent: usize,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            max_fallbacks: 10,
            window_ms: 3_600_000,
            buckets: 60,
            webhook_url: None,
            webhook_timeout_ms: 5_000,
            recent: 50,
        }
    }
}

impl AlertConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), StrategyError> {
        check_non_zero("max_fallbacks", u64::from(self.max_fallbacks))?;
        check_non_zero("window_ms", self.window_ms)?;
        check_non_zero("buckets", u64::from(self.buckets))?;
        if u64::from(self.buckets) > self.window_ms {
            return Err(StrategyError::invalid(
                "buckets",
                format!("must not exceed window_ms ({})", self.window_ms),
            ));
        }
        check_non_zero("webhook_timeout_ms", self.webhook_timeout_ms)
    }
}

/// The alert rule's state, for a status page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertStatus {
    /// The window.
    pub window_ms: u64,
    /// Requests that ended in the window.
    pub requests: u64,
    /// Fallbacks in the window.
    pub fallbacks: u64,
    /// fallbacks / requests in the window (0 without requests).
    pub fallback_rate: f64,
    /// `fleet` when the counts are the fleet's (`[state] backend =
    /// "redis"` and its store answers), `replica` when they are this
    /// replica's own.
    pub counted_by: &'static str,
    /// The threshold.
    pub max_fallbacks: u32,
    /// Fallback alerts this replica sent since start (in a fleet, the
    /// replica that claims a firing sends it for all).
    pub alerts_fired: u64,
    /// Wall clock (Unix ms) of the last fallback alert.
    pub last_alert_unix_ms: Option<u64>,
    /// The last fallback events, oldest first.
    pub recent: Vec<FallbackEvent>,
}

/// Requests and fallbacks counters of the window.
const REQUESTS: usize = 0;
const FALLBACKS: usize = 1;

const NEVER: u64 = u64::MAX;

/// The name of the window the fleet sums.
const WINDOW_NAME: &str = "alerts";
/// The claim of a fallback alert (held for `window_ms`).
const FALLBACKS_CLAIM: &str = "alert:fallbacks";
/// How long a disabled model's alert is claimed: replicas that see the
/// same model disabled within this time send one alert.
const DISABLED_CLAIM: Duration = Duration::from_secs(60);

/// `counted_by` of a window summed across the fleet.
const COUNTED_BY_FLEET: &str = "fleet";
/// `counted_by` of a window counted by this replica alone.
const COUNTED_BY_REPLICA: &str = "replica";

/// Where a fired alert's JSON body goes. Strategies send no HTTP: the
/// webhook sender lives in `backstop-http` and config attaches it with
/// [`AlertSink::with_delivery`] when `webhook_url` is set. Called on the
/// request path, so it hands the body to a background task and returns.
pub trait AlertDelivery: Send + Sync + std::fmt::Debug {
    /// Sends one alert body.
    fn deliver(&self, body: serde_json::Value);
}

fn _alert_delivery_is_object_safe(_: &dyn AlertDelivery) {}

/// Checks `webhook_url`: an http(s) URL.
fn check_webhook_url(url: &str) -> Result<(), StrategyError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| StrategyError::invalid("webhook_url", format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(StrategyError::invalid(
            "webhook_url",
            format!("must be http or https (got {})", parsed.scheme()),
        ));
    }
    Ok(())
}

/// The alert rule, as an event sink.
///
/// Webhook bodies:
///
/// - fallbacks: `{"alert": "fallbacks", "fallbacks": 12, "requests": 80,
///   "fallback_rate": 0.15, "max_fallbacks": 10, "window_ms": 3600000,
///   "counted_by": "fleet", "timestamp_ms": ..., "recent": [FallbackEvent...]}`
///   (the last ten this replica saw)
/// - a disabled model: `{"alert": "model_disabled", "model": "gpt-4o",
///   "cause": "auth", "timestamp_ms": ...}`
#[derive(Debug)]
pub struct AlertSink {
    rule: Arc<Rule>,
}

/// The rule's state, shared with the fleet's store (which tells it when
/// the fleet's counts were read anew).
#[derive(Debug)]
struct Rule {
    /// Itself, for the claims' callbacks.
    me: Weak<Rule>,
    clock: SharedClock,
    max_fallbacks: u32,
    window_ms: u64,
    /// This replica's own counts: the whole truth without a fleet, the
    /// fallback when the fleet's store fails.
    window: SlidingWindow<2>,
    /// The fleet's counts, when the fleet sums them.
    shared: Option<Arc<SharedCounts>>,
    fleet: Arc<dyn FleetState>,
    /// Clock milliseconds of the last fallback alert, or `NEVER`.
    last_fired_ms: AtomicU64,
    last_fired_unix_ms: AtomicU64,
    fired: AtomicU64,
    recent: Mutex<VecDeque<FallbackEvent>>,
    recent_cap: usize,
    webhook: OnceLock<Arc<dyn AlertDelivery>>,
}

impl AlertSink {
    /// The rule, reading `ctx`'s clock. When `ctx`'s fleet sums counts
    /// (`[state] backend = "redis"`), the window counts across the fleet.
    pub fn new(config: AlertConfig, ctx: &StrategyContext) -> Result<Self, StrategyError> {
        config.validate()?;
        if let Some(url) = &config.webhook_url {
            check_webhook_url(url)?;
        }
        let shared = ctx.fleet.shares_counts().then(|| {
            Arc::new(SharedCounts::new(
                WINDOW_NAME,
                config.window_ms,
                config.buckets,
            ))
        });
        let rule = Arc::new_cyclic(|me| Rule {
            me: me.clone(),
            clock: ctx.clock.clone(),
            max_fallbacks: config.max_fallbacks,
            window_ms: config.window_ms,
            window: SlidingWindow::new(Duration::from_millis(config.window_ms), config.buckets),
            shared: shared.clone(),
            fleet: ctx.fleet.clone(),
            last_fired_ms: AtomicU64::new(NEVER),
            last_fired_unix_ms: AtomicU64::new(NEVER),
            fired: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(config.recent.min(1024))),
            recent_cap: config.recent,
            webhook: OnceLock::new(),
        });
        if let Some(shared) = shared {
            let listener: Weak<dyn CountsListener> = Arc::downgrade(&rule) as Weak<Rule>;
            shared.listen(listener);
            ctx.fleet.share_counts(shared);
        }
        Ok(Self { rule })
    }

    /// Sends every alert's JSON body to `delivery` (the `webhook_url`
    /// sender, which config builds where HTTP lives).
    #[must_use]
    pub fn with_delivery(self, delivery: Arc<dyn AlertDelivery>) -> Self {
        // Set once, right after `new`: a second delivery is ignored.
        let _ = self.rule.webhook.set(delivery);
        self
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }

    /// The window's counts (the fleet's, when it shares them and its store
    /// answers), the rate and the last fallbacks this replica saw.
    pub fn status(&self) -> AlertStatus {
        let rule = &self.rule;
        let (sums, counted_by) = rule.sums(rule.clock.now());
        let last = rule.last_fired_unix_ms.load(Ordering::Acquire);
        AlertStatus {
            window_ms: rule.window_ms,
            requests: sums[REQUESTS],
            fallbacks: sums[FALLBACKS],
            fallback_rate: rate(sums[FALLBACKS], sums[REQUESTS]),
            counted_by,
            max_fallbacks: rule.max_fallbacks,
            alerts_fired: rule.fired.load(Ordering::Acquire),
            last_alert_unix_ms: (last != NEVER).then_some(last),
            recent: rule
                .recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect(),
        }
    }

    /// fallbacks / requests in the window ending now (the fleet's, when it
    /// shares them and its store answers).
    pub fn fallback_rate(&self) -> f64 {
        let (sums, _) = self.rule.sums(self.rule.clock.now());
        rate(sums[FALLBACKS], sums[REQUESTS])
    }
}

impl Rule {
    /// The window's sums, and who counted them: the fleet's when it shares
    /// them and they are known, else this replica's own.
    fn sums(&self, now: Duration) -> ([u64; 2], &'static str) {
        if let Some(sums) = self
            .shared
            .as_ref()
            .and_then(|shared| shared.fleet_sums(self.clock.unix_ms()))
        {
            return (sums, COUNTED_BY_FLEET);
        }
        (self.window.sums(now), COUNTED_BY_REPLICA)
    }

    fn count(&self, now: Duration, counts: [u64; 2]) {
        self.window.add(now, counts);
        if let Some(shared) = &self.shared {
            shared.add(self.clock.unix_ms(), counts);
        }
    }

    fn on_fallback(&self, event: &FallbackEvent) {
        self.count(self.clock.now(), [0, 1]);
        if self.recent_cap > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() >= self.recent_cap {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        self.check();
    }

    /// Fires when the window holds `max_fallbacks` and no alert went out
    /// in the last `window_ms`; in a fleet, only the replica that claims
    /// the firing sends it.
    fn check(&self) {
        let now = self.clock.now();
        let (sums, counted_by) = self.sums(now);
        if sums[FALLBACKS] < u64::from(self.max_fallbacks) {
            return;
        }
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_fired_ms.load(Ordering::Acquire);
        if last != NEVER && now_ms.saturating_sub(last) < self.window_ms {
            return;
        }
        // Only the thread that claims this window goes on.
        if self
            .last_fired_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        if counted_by == COUNTED_BY_REPLICA {
            // A fleet of one, or a fleet whose store fails: this replica
            // counted alone, so it alerts alone.
            self.fire(sums, counted_by);
            return;
        }
        let Some(rule) = self.me.upgrade() else {
            return;
        };
        let window_ms = self.window_ms;
        self.fleet.claim(
            FALLBACKS_CLAIM,
            Duration::from_millis(window_ms),
            Box::new(move |claim| match claim {
                Claim::Won | Claim::Unknown => rule.fire(sums, counted_by),
                Claim::Lost { remaining } => {
                    // Another replica sent the fleet's alert; this one
                    // looks again when that claim lapses.
                    let remaining = u64::try_from(remaining.as_millis())
                        .unwrap_or(u64::MAX)
                        .min(window_ms);
                    rule.last_fired_ms.store(
                        now_ms.saturating_sub(window_ms - remaining),
                        Ordering::Release,
                    );
                    tracing::debug!(
                        fallbacks = sums[FALLBACKS],
                        "fallback alert already sent by another replica of the fleet"
                    );
                }
            }),
        );
    }

    /// Logs the fallback alert and sends it to the webhook.
    fn fire(&self, sums: [u64; 2], counted_by: &'static str) {
        let unix_ms = self.clock.unix_ms();
        self.last_fired_unix_ms.store(unix_ms, Ordering::Release);
        self.fired.fetch_add(1, Ordering::AcqRel);
        let fallback_rate = rate(sums[FALLBACKS], sums[REQUESTS]);
        let recent: Vec<FallbackEvent> = {
            let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.iter().rev().take(10).rev().cloned().collect()
        };
        let last = recent.last();
        tracing::warn!(
            fallbacks = sums[FALLBACKS],
            requests = sums[REQUESTS],
            fallback_rate,
            max_fallbacks = self.max_fallbacks,
            window_ms = self.window_ms,
            counted_by,
            last_scenario = last.map(|e| &*e.scenario),
            last_primary = last.map(|e| &*e.primary),
            last_reason = last.map(|e| e.reason),
            "alert: too many fallbacks"
        );
        if let Some(webhook) = self.webhook.get() {
            webhook.deliver(serde_json::json!({
                "alert": "fallbacks",
                "fallbacks": sums[FALLBACKS],
                "requests": sums[REQUESTS],
                "fallback_rate": fallback_rate,
                "max_fallbacks": self.max_fallbacks,
                "window_ms": self.window_ms,
                "counted_by": counted_by,
                "timestamp_ms": unix_ms,
                "recent": recent,
            }));
        }
    }

    /// A disabled model alerts at once; in a fleet, the replica that claims
    /// it does (replicas that disable the same model within
    /// [`DISABLED_CLAIM`] send one alert).
    fn on_disabled(&self, model: &str, cause: Option<FailureKind>) {
        let Some(rule) = self.me.upgrade() else {
            return;
        };
        let owned = model.to_owned();
        self.fleet.claim(
            &format!("alert:model_disabled:{model}"),
            DISABLED_CLAIM,
            Box::new(move |claim| {
                let model = owned.as_str();
                let cause = cause.map(FailureKind::as_str);
                if let Claim::Lost { .. } = claim {
                    tracing::info!(
                        model,
                        cause,
                        "model disabled; another replica of the fleet sent the alert"
                    );
                    return;
                }
                tracing::warn!(model, cause, "alert: model disabled until a probe succeeds");
                if let Some(webhook) = rule.webhook.get() {
                    webhook.deliver(serde_json::json!({
                        "alert": "model_disabled",
                        "model": model,
                        "cause": cause,
                        "timestamp_ms": rule.clock.unix_ms(),
                    }));
                }
            }),
        );
    }
}

impl CountsListener for Rule {
    fn refreshed(&self, _counts: &SharedCounts) {
        // The fleet's sums may have crossed the threshold with no fallback
        // on this replica.
        self.check();
    }
}

fn rate(fallbacks: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        fallbacks as f64 / requests as f64
    }
}

impl EventSink for AlertSink {
    fn record(&self, event: &Event<'_>) {
        let rule = &self.rule;
        match event {
            Event::RequestFinished(_) => rule.count(rule.clock.now(), [1, 0]),
            Event::Fallback(fallback) => rule.on_fallback(fallback),
            Event::Health { model, transition }
                if transition.to == CircuitState::Disabled
                    && transition.from != CircuitState::Disabled =>
            {
                rule.on_disabled(model, transition.cause);
            }
            Event::Health { .. } | Event::Attempt { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests;
