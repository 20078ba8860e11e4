//! Outage scenarios as data: which fake providers run and how they fail,
//! the chain and policy the gateway serves them with, the request mix, the
//! load size, and what a passing run looks like.

mod catalog;
mod config;

use std::time::Duration;

use backstop_core::{ContentPolicyAction, MidStreamPolicy};
use serde::Serialize;

use crate::fake::FakeSpec;

pub use catalog::{SCENARIO_NAMES, catalog, scenario};
pub use config::{FAKE_KEY, FAKE_KEY_ENV, RenderOptions, render_config};

/// Full size (`cargo xtask chaos`, about a minute for the catalog) or
/// quick (`--quick`, CI, under 30 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Full size.
    Full,
    /// Reduced size.
    Quick,
}

/// How much load a scenario gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSize {
    /// Requests per second, open loop.
    pub rate_per_sec: f64,
    /// Requests to send.
    pub requests: u64,
}

impl LoadSize {
    /// How long sending takes at the rate.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.requests as f64 / self.rate_per_sec.max(f64::MIN_POSITIVE))
    }
}

/// The load sizes of both modes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    /// Full mode.
    pub full: LoadSize,
    /// Quick mode.
    pub quick: LoadSize,
}

impl Sizes {
    /// The size for `mode`.
    pub fn of(&self, mode: Mode) -> LoadSize {
        match mode {
            Mode::Full => self.full,
            Mode::Quick => self.quick,
        }
    }
}

/// What each request looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestMix {
    /// Share of requests that stream, 0..=1, spread evenly over the run.
    pub stream_share: f64,
    /// Approximate prompt size in tokens; 0 sends a short question.
    pub prompt_tokens: u32,
    /// Every n-th request carries [`FLAGGED_MARKER`](crate::answer::FLAGGED_MARKER).
    pub flagged_every: Option<u64>,
    /// `max_tokens` sent with each request.
    pub max_tokens: Option<u32>,
}

impl Default for RequestMix {
    /// Half streaming, short prompts, nothing flagged, max_tokens 256.
    fn default() -> Self {
        Self {
            stream_share: 0.5,
            prompt_tokens: 0,
            flagged_every: None,
            max_tokens: Some(256),
        }
    }
}

impl RequestMix {
    /// Whether request `index` streams: spread evenly, deterministic.
    pub fn streams(&self, index: u64) -> bool {
        let share = self.stream_share.clamp(0.0, 1.0);
        ((index + 1) as f64 * share).floor() > (index as f64 * share).floor()
    }

    /// Whether request `index` is flagged.
    pub fn flagged(&self, index: u64) -> bool {
        self.flagged_every
            .is_some_and(|n| n > 0 && index % n == n - 1)
    }
}

/// The gateway's per-scenario timeouts, in the config's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeoutsMs {
    /// `connect_ms`.
    pub connect_ms: u64,
    /// `first_token_ms`.
    pub first_token_ms: u64,
    /// `idle_ms`.
    pub idle_ms: u64,
    /// `attempt_ms`.
    pub attempt_ms: u64,
    /// `total_ms`.
    pub total_ms: u64,
}

/// Same-model retries, in the config's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetriesMs {
    /// `same_model`.
    pub same_model: u32,
    /// `retry_after_cap_ms`.
    pub retry_after_cap_ms: u64,
    /// `backoff_base_ms`.
    pub backoff_base_ms: u64,
    /// `backoff_max_ms`.
    pub backoff_max_ms: u64,
}

/// The circuit breaker's knobs (`strategies.health`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Breaker {
    /// Failure share that opens the circuit.
    pub failure_ratio: f64,
    /// Calls in the window before the ratio counts.
    pub min_calls: u32,
    /// The window.
    pub window_ms: u64,
    /// How long the circuit stays open before half-opening.
    pub break_ms: u64,
}

/// The background prober (`strategies.probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// Probe round period.
    pub interval_ms: u64,
    /// Idle time after which a model is probed.
    pub idle_ms: u64,
}

/// How the gateway runs the scenario's chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScenarioPolicy {
    /// Timeouts.
    pub timeouts: TimeoutsMs,
    /// Retries.
    pub retries: RetriesMs,
    /// Mid-stream failure handling.
    pub mid_stream: MidStreamPolicy,
    /// Hedging: start the next model after this long without output.
    pub hedge_after_ms: Option<u64>,
    /// Content-policy refusals.
    pub on_content_policy: ContentPolicyAction,
    /// Circuit breaker.
    pub breaker: Breaker,
    /// Prober.
    pub probe: Probe,
}

impl Default for ScenarioPolicy {
    /// Loopback-sized timeouts (connect 250 ms, first token 1 s, idle
    /// 500 ms, attempt 2 s, total 4 s), one same-model retry with a 1 s
    /// Retry-After cap, mid-stream `continue`, no hedging, content-policy
    /// refusals returned, a breaker opening at 50 % of at least 5 calls in
    /// 10 s for 1 s, probes every 500 ms.
    fn default() -> Self {
        Self {
            timeouts: TimeoutsMs {
                connect_ms: 250,
                first_token_ms: 1000,
                idle_ms: 500,
                attempt_ms: 2000,
                total_ms: 4000,
            },
            retries: RetriesMs {
                same_model: 1,
                retry_after_cap_ms: 1000,
                backoff_base_ms: 20,
                backoff_max_ms: 200,
            },
            mid_stream: MidStreamPolicy::Continue,
            hedge_after_ms: None,
            on_content_policy: ContentPolicyAction::Return,
            breaker: Breaker {
                failure_ratio: 0.5,
                min_calls: 5,
                window_ms: 10_000,
                break_ms: 1000,
            },
            probe: Probe {
                interval_ms: 500,
                idle_ms: 60_000,
            },
        }
    }
}

/// The template rung at the end of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRung {
    /// Its id in the chain (a template provider stands in as a model).
    pub model: String,
    /// What it answers.
    pub text: String,
}

/// A target on failover added latency (p99, against the baseline run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailoverTarget {
    /// Refused primary: at most `closed_ms` while the primary is still
    /// tried, at most `open_ms` once its circuit is open.
    Refused {
        /// Before the circuit opens.
        closed_ms: f64,
        /// Once it is open.
        open_ms: f64,
    },
    /// Failing primary: at most one upstream round trip (measured directly
    /// against the fake before the run) plus this.
    RoundTripPlus {
        /// Slack over the round trip.
        ms: f64,
    },
    /// Silent primary: at most the give-up time plus slack.
    Within {
        /// The limit (a timeout or hedge delay plus slack).
        ms: f64,
        /// What the limit is made of, for the report.
        basis: &'static str,
    },
}

/// What a passing run looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectations {
    /// Models allowed to answer a successful request.
    pub answered_by: Vec<String>,
    /// Every request not flagged must succeed (`success_rate` = 1.0).
    pub all_answer: bool,
    /// Flagged requests must fail cleanly, the others succeed.
    pub flagged_fail_clean: bool,
    /// Failover added latency target, if any.
    pub failover: Option<FailoverTarget>,
    /// Traffic back on the primary within this long of its recovery.
    pub recover_within_ms: Option<f64>,
    /// Upstream attempts per request during the outage, once the circuit
    /// is open.
    pub max_retry_amplification: Option<f64>,
}

/// One named outage scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioSpec {
    /// The name (also the scenario the requests' `model` field names).
    pub name: &'static str,
    /// One line: what breaks.
    pub summary: &'static str,
    /// The mode the timelines and sizes were built for.
    pub mode: Mode,
    /// The fake providers; the first is the primary.
    pub fakes: Vec<FakeSpec>,
    /// The template rung, when the chain ends with one.
    pub template: Option<TemplateRung>,
    /// Model ids in chain order (fakes, then the template rung).
    pub chain: Vec<String>,
    /// The gateway's policy.
    pub policy: ScenarioPolicy,
    /// The requests.
    pub mix: RequestMix,
    /// Load sizes of both modes.
    pub sizes: Sizes,
    /// What passing looks like.
    pub expect: Expectations,
}

impl ScenarioSpec {
    /// The load size of the spec's mode.
    pub fn load(&self) -> LoadSize {
        self.sizes.of(self.mode)
    }

    /// The primary's model id (the first of the chain).
    pub fn primary(&self) -> &str {
        self.chain.first().map_or("", String::as_str)
    }

    /// The fake standing for `model`.
    pub fn fake(&self, model: &str) -> Option<&FakeSpec> {
        self.fakes.iter().find(|f| f.model == model)
    }

    /// Each request's deadline, from its intended send time: the gateway's
    /// total timeout plus a second. A request still unanswered then is lost.
    pub fn request_deadline(&self) -> Duration {
        Duration::from_millis(self.policy.timeouts.total_ms + 1000)
    }

    /// The windows (since the epoch, within the load's duration) in which
    /// the primary's timeline is an outage.
    pub fn outage_windows(&self) -> Vec<(Duration, Duration)> {
        let until = self.load().duration();
        match self.fake(self.primary()).map(|f| &f.schedule) {
            Some(crate::timeline::Schedule::Timeline(t)) => t.outage_windows(until),
            _ => Vec::new(),
        }
    }

    /// The text each answering model gives (the template's own text, the
    /// known text for every fake).
    pub fn expected_texts(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .fakes
            .iter()
            .map(|f| (f.model.clone(), crate::answer::KNOWN_TEXT.to_owned()))
            .collect();
        if let Some(t) = &self.template {
            out.push((t.model.clone(), t.text.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_share_is_spread_evenly() {
        let mix = RequestMix {
            stream_share: 0.5,
            ..RequestMix::default()
        };
        let streamed: Vec<bool> = (0..6).map(|i| mix.streams(i)).collect();
        assert_eq!(streamed, [false, true, false, true, false, true]);
        let third = RequestMix {
            stream_share: 1.0 / 3.0,
            ..RequestMix::default()
        };
        assert_eq!((0..300).filter(|&i| third.streams(i)).count(), 100);
        let none = RequestMix {
            stream_share: 0.0,
            ..RequestMix::default()
        };
        assert!((0..10).all(|i| !none.streams(i)));
    }

    #[test]
    fn every_nth_request_is_flagged() {
        let mix = RequestMix {
            flagged_every: Some(4),
            ..RequestMix::default()
        };
        let flagged: Vec<u64> = (0..12).filter(|&i| mix.flagged(i)).collect();
        assert_eq!(flagged, [3, 7, 11]);
    }
}
