//! Timeouts, retries, stream and content policy: `[strategies]` defaults,
//! overridden key by key by a scenario.

use std::time::Duration;

use backstop_core::RoutePolicy;

use super::Builder;
use crate::decode::Decoded;
use crate::problem::KeyPath;
use crate::schema::{PolicyKeys, StrategiesSection};

/// Which policy tables decoded without a dropped key.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clean {
    pub timeouts: bool,
    pub retries: bool,
}

impl Clean {
    pub fn of<T>(decoded: &Decoded<T>) -> Self {
        Self {
            timeouts: decoded.clean_under("timeouts"),
            retries: decoded.clean_under("retries"),
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Builder<'_> {
    /// The defaults: core's, overridden by `[strategies]`.
    pub(super) fn default_policy(&mut self, section: &Decoded<StrategiesSection>) -> RoutePolicy {
        let path = KeyPath::root().key("strategies");
        let keys = section.value.policy();
        self.policy(&path, &RoutePolicy::default(), &keys, Clean::of(section))
    }

    /// `base` overridden by the keys set at `path`, checked. `clean` says
    /// which tables decoded whole, so checks across their keys can trust
    /// them.
    pub(super) fn policy(
        &mut self,
        path: &KeyPath,
        base: &RoutePolicy,
        keys: &PolicyKeys,
        clean: Clean,
    ) -> RoutePolicy {
        let mut policy = *base;
        if let Some(t) = keys.timeouts {
            let at = path.key("timeouts");
            for (key, value) in [
                ("connect_ms", t.connect_ms),
                ("first_token_ms", t.first_token_ms),
                ("idle_ms", t.idle_ms),
                ("attempt_ms", t.attempt_ms),
                ("total_ms", t.total_ms),
            ] {
                if value == Some(0) {
                    self.problem(&at.key(key), "must be greater than 0");
                }
            }
            let timeouts = &mut policy.timeouts;
            timeouts.connect = t.connect_ms.map_or(timeouts.connect, ms);
            timeouts.first_token = t.first_token_ms.map_or(timeouts.first_token, ms);
            timeouts.idle = t.idle_ms.map_or(timeouts.idle, ms);
            timeouts.attempt = t.attempt_ms.map_or(timeouts.attempt, ms);
            timeouts.total = t.total_ms.map_or(timeouts.total, ms);
            let (first, attempt, total) = (timeouts.first_token, timeouts.attempt, timeouts.total);
            if clean.timeouts
                && (t.first_token_ms.is_some() || t.attempt_ms.is_some())
                && first > attempt
            {
                self.problem(
                    &at.key("first_token_ms"),
                    format!(
                        "{} ms exceeds attempt_ms ({} ms): every streamed attempt would time out before its first token was due",
                        first.as_millis(),
                        attempt.as_millis()
                    ),
                );
            }
            if clean.timeouts && t.attempt_ms.is_some() && t.total_ms.is_some() && attempt > total {
                self.problem(
                    &at.key("attempt_ms"),
                    format!(
                        "{} ms exceeds total_ms ({} ms): no attempt could use its time",
                        attempt.as_millis(),
                        total.as_millis()
                    ),
                );
            }
        }
        if let Some(r) = keys.retries {
            let at = path.key("retries");
            let retries = &mut policy.retries;
            retries.same_model = r.same_model.unwrap_or(retries.same_model);
            retries.retry_after_cap = r.retry_after_cap_ms.map_or(retries.retry_after_cap, ms);
            retries.backoff_base = r.backoff_base_ms.map_or(retries.backoff_base, ms);
            retries.backoff_max = r.backoff_max_ms.map_or(retries.backoff_max, ms);
            if clean.retries
                && (r.backoff_base_ms.is_some() || r.backoff_max_ms.is_some())
                && retries.backoff_base > retries.backoff_max
            {
                self.problem(
                    &at.key("backoff_base_ms"),
                    format!(
                        "{} ms exceeds backoff_max_ms ({} ms)",
                        retries.backoff_base.as_millis(),
                        retries.backoff_max.as_millis()
                    ),
                );
            }
        }
        if let Some(mid_stream) = keys.mid_stream {
            policy.mid_stream = mid_stream;
        }
        if let Some(hedge) = keys.hedge_after_ms {
            // 0 turns hedging off, so a scenario can undo a default.
            policy.hedge_after = (hedge > 0).then(|| ms(hedge));
        }
        if let Some(action) = keys.on_content_policy {
            policy.on_content_policy = action;
        }
        policy
    }
}
