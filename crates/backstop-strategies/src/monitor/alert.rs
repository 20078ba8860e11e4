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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backstop_core::{
    CircuitState, Event, EventSink, FailureKind, FallbackEvent, SharedClock, StrategyContext,
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
    /// The threshold.
    pub max_fallbacks: u32,
    /// Fallback alerts fired since start.
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
///   "timestamp_ms": ..., "recent": [FallbackEvent...]}` (the last ten)
/// - a disabled model: `{"alert": "model_disabled", "model": "gpt-4o",
///   "cause": "auth", "timestamp_ms": ...}`
#[derive(Debug)]
pub struct AlertSink {
    clock: SharedClock,
    max_fallbacks: u32,
    window_ms: u64,
    window: SlidingWindow<2>,
    /// Clock milliseconds of the last fallback alert, or `NEVER`.
    last_fired_ms: AtomicU64,
    last_fired_unix_ms: AtomicU64,
    fired: AtomicU64,
    recent: Mutex<VecDeque<FallbackEvent>>,
    recent_cap: usize,
    webhook: Option<Arc<dyn AlertDelivery>>,
}

impl AlertSink {
    /// The rule, reading `ctx`'s clock.
    pub fn new(config: AlertConfig, ctx: &StrategyContext) -> Result<Self, StrategyError> {
        config.validate()?;
        if let Some(url) = &config.webhook_url {
            check_webhook_url(url)?;
        }
        Ok(Self {
            clock: ctx.clock.clone(),
            max_fallbacks: config.max_fallbacks,
            window_ms: config.window_ms,
            window: SlidingWindow::new(Duration::from_millis(config.window_ms), config.buckets),
            last_fired_ms: AtomicU64::new(NEVER),
            last_fired_unix_ms: AtomicU64::new(NEVER),
            fired: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(config.recent.min(1024))),
            recent_cap: config.recent,
            webhook: None,
        })
    }

    /// Sends every alert's JSON body to `delivery` (the `webhook_url`
    /// sender, which config builds where HTTP lives).
    #[must_use]
    pub fn with_delivery(mut self, delivery: Arc<dyn AlertDelivery>) -> Self {
        self.webhook = Some(delivery);
        self
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }

    /// The window's counts, the rate and the last fallbacks.
    pub fn status(&self) -> AlertStatus {
        let sums = self.window.sums(self.clock.now());
        let last = self.last_fired_unix_ms.load(Ordering::Acquire);
        AlertStatus {
            window_ms: self.window_ms,
            requests: sums[REQUESTS],
            fallbacks: sums[FALLBACKS],
            fallback_rate: rate(sums[FALLBACKS], sums[REQUESTS]),
            max_fallbacks: self.max_fallbacks,
            alerts_fired: self.fired.load(Ordering::Acquire),
            last_alert_unix_ms: (last != NEVER).then_some(last),
            recent: self
                .recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect(),
        }
    }

    /// fallbacks / requests in the window ending now.
    pub fn fallback_rate(&self) -> f64 {
        let sums = self.window.sums(self.clock.now());
        rate(sums[FALLBACKS], sums[REQUESTS])
    }

    fn on_fallback(&self, event: &FallbackEvent) {
        let now = self.clock.now();
        self.window.add(now, [0, 1]);
        if self.recent_cap > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() >= self.recent_cap {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let sums = self.window.sums(now);
        if sums[FALLBACKS] < u64::from(self.max_fallbacks) {
            return;
        }
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_fired_ms.load(Ordering::Acquire);
        if last != NEVER && now_ms.saturating_sub(last) < self.window_ms {
            return;
        }
        // Only the thread that claims this window fires.
        if self
            .last_fired_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let unix_ms = self.clock.unix_ms();
        self.last_fired_unix_ms.store(unix_ms, Ordering::Release);
        self.fired.fetch_add(1, Ordering::AcqRel);
        let fallback_rate = rate(sums[FALLBACKS], sums[REQUESTS]);
        tracing::warn!(
            fallbacks = sums[FALLBACKS],
            requests = sums[REQUESTS],
            fallback_rate,
            max_fallbacks = self.max_fallbacks,
            window_ms = self.window_ms,
            last_scenario = %event.scenario,
            last_primary = %event.primary,
            last_reason = event.reason,
            "alert: too many fallbacks"
        );
        if let Some(webhook) = &self.webhook {
            let recent: Vec<FallbackEvent> = {
                let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
                recent.iter().rev().take(10).rev().cloned().collect()
            };
            webhook.deliver(serde_json::json!({
                "alert": "fallbacks",
                "fallbacks": sums[FALLBACKS],
                "requests": sums[REQUESTS],
                "fallback_rate": fallback_rate,
                "max_fallbacks": self.max_fallbacks,
                "window_ms": self.window_ms,
                "timestamp_ms": unix_ms,
                "recent": recent,
            }));
        }
    }

    fn on_disabled(&self, model: &str, cause: Option<FailureKind>) {
        let cause = cause.map(FailureKind::as_str);
        tracing::warn!(model, cause, "alert: model disabled until a probe succeeds");
        if let Some(webhook) = &self.webhook {
            webhook.deliver(serde_json::json!({
                "alert": "model_disabled",
                "model": model,
                "cause": cause,
                "timestamp_ms": self.clock.unix_ms(),
            }));
        }
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
        match event {
            Event::RequestFinished(_) => self.window.add(self.clock.now(), [1, 0]),
            Event::Fallback(fallback) => self.on_fallback(fallback),
            Event::Health { model, transition }
                if transition.to == CircuitState::Disabled
                    && transition.from != CircuitState::Disabled =>
            {
                self.on_disabled(model, transition.cause);
            }
            Event::Health { .. } | Event::Attempt { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests;
