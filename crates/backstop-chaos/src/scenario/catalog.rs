//! The nineteen named scenarios of the chaos benchmark.
//!
//! Every scenario runs the same cast: `primary` (an OpenAI-compatible fake,
//! no prefill), `secondary` (an Anthropic fake that continues a prefill),
//! sometimes `tertiary`, and the template rung `rules`. What differs is how
//! the fakes fail, the policy, and what passing means. Outage times are
//! fractions of the run, so full and quick mode script the same story.

use std::time::Duration;

use super::{
    Expectations, FailoverTarget, LoadSize, Mode, RequestMix, ScenarioPolicy, ScenarioSpec, Sizes,
    TemplateRung,
};
use crate::answer::TEMPLATE_TEXT;
use crate::behaviour::{Api, Behaviour, ErrorKind, Prefill};
use crate::error::ChaosError;
use crate::fake::{Backend, FakeSpec};
use crate::timeline::Timeline;

/// Every scenario name, in the order they run.
pub const SCENARIO_NAMES: [&str; 19] = [
    "baseline",
    "primary_down",
    "primary_5xx",
    "primary_429",
    "primary_429_storm",
    "primary_reset",
    "primary_hang",
    "slow_first_token",
    "stream_cut",
    "stream_cut_no_prefill",
    "stream_stall",
    "malformed_chunk",
    "no_done",
    "context_length",
    "content_policy",
    "flapping",
    "recovery",
    "cascade",
    "total_outage",
];

const RULES: &str = "rules";

/// Most scenarios: 250 rps for 3 s full, 100 rps for 1 s quick.
const STANDARD: Sizes = Sizes {
    full: LoadSize {
        rate_per_sec: 250.0,
        requests: 750,
    },
    quick: LoadSize {
        rate_per_sec: 100.0,
        requests: 100,
    },
};

/// Scenarios that need time to see a recovery: 5 s full, 3 s quick.
const LONG: Sizes = Sizes {
    full: LoadSize {
        rate_per_sec: 250.0,
        requests: 1250,
    },
    quick: LoadSize {
        rate_per_sec: 100.0,
        requests: 300,
    },
};

/// The longest a fake holds a hung or stalled connection.
const HOLD_MAX: Duration = Duration::from_secs(10);

fn primary() -> FakeSpec {
    FakeSpec::new("primary", Api::OpenAi).hold_max(HOLD_MAX)
}

fn secondary() -> FakeSpec {
    FakeSpec::new("secondary", Api::Anthropic)
        .prefill(Prefill::Continue)
        .context_window(200_000, None)
        .hold_max(HOLD_MAX)
}

fn steady(b: Behaviour) -> Timeline {
    Timeline::steady(b)
}

fn names(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// A scenario with the standard cast (primary, secondary, rules), default
/// policy and mix, where only `secondary` should answer and every request
/// should succeed.
fn base(name: &'static str, summary: &'static str, mode: Mode, primary: FakeSpec) -> ScenarioSpec {
    ScenarioSpec {
        name,
        summary,
        mode,
        fakes: vec![primary, secondary()],
        template: Some(TemplateRung {
            model: RULES.to_owned(),
            text: TEMPLATE_TEXT.to_owned(),
        }),
        chain: names(&["primary", "secondary", RULES]),
        policy: ScenarioPolicy::default(),
        mix: RequestMix::default(),
        sizes: STANDARD,
        expect: Expectations {
            answered_by: names(&["secondary"]),
            all_answer: true,
            flagged_fail_clean: false,
            failover: None,
            recover_within_ms: None,
            max_retry_amplification: None,
        },
    }
}

const PERSISTENT_AMPLIFICATION: Option<f64> = Some(1.2);

fn build(name: &str, mode: Mode) -> Option<ScenarioSpec> {
    let run = |sizes: Sizes| sizes.of(mode).duration();
    let spec = match name {
        "baseline" => {
            let mut s = base("baseline", "every model healthy", mode, primary());
            s.expect.answered_by = names(&["primary"]);
            s
        }
        "primary_down" => {
            let mut s = base(
                "primary_down",
                "the primary's port refuses connections",
                mode,
                primary().schedule(steady(Behaviour::Refused)),
            );
            s.expect.failover = Some(FailoverTarget::Refused {
                closed_ms: 2.0,
                open_ms: 0.3,
            });
            s.expect.max_retry_amplification = PERSISTENT_AMPLIFICATION;
            s
        }
        "primary_5xx" => {
            let mut s = base(
                "primary_5xx",
                "the primary answers 500 server_error to everything (wiremock); default retries",
                mode,
                primary()
                    .backend(Backend::Wiremock)
                    .schedule(steady(Behaviour::Error(ErrorKind::Server))),
            );
            // Default policy, one same-model retry included: the retry (a
            // second round trip after a backoff) only happens while the
            // circuit is still closed, and our defaults are what must hold.
            s.expect.failover = Some(FailoverTarget::RoundTripPlus { ms: 1.0 });
            s.expect.max_retry_amplification = PERSISTENT_AMPLIFICATION;
            s
        }
        "primary_429" => {
            let mut s = base(
                "primary_429",
                "the primary answers 429 with Retry-After: 2 (over the 1 s cap) (wiremock)",
                mode,
                primary()
                    .backend(Backend::Wiremock)
                    .schedule(steady(Behaviour::Error(ErrorKind::RateLimited {
                        retry_after: Some(Duration::from_secs(2)),
                    }))),
            );
            s.expect.max_retry_amplification = PERSISTENT_AMPLIFICATION;
            s
        }
        "primary_429_storm" => {
            let mut s = base(
                "primary_429_storm",
                "the primary answers 429 without Retry-After, persistently (wiremock)",
                mode,
                primary()
                    .backend(Backend::Wiremock)
                    .schedule(steady(Behaviour::Error(ErrorKind::RateLimited {
                        retry_after: None,
                    }))),
            );
            s.expect.max_retry_amplification = PERSISTENT_AMPLIFICATION;
            s
        }
        "primary_reset" => {
            let mut s = base(
                "primary_reset",
                "the primary resets every connection before headers (RST)",
                mode,
                primary().schedule(steady(Behaviour::ResetBeforeHeaders)),
            );
            s.expect.max_retry_amplification = PERSISTENT_AMPLIFICATION;
            s
        }
        "primary_hang" => {
            let mut s = base(
                "primary_hang",
                "the primary accepts and never answers; hedging after 100 ms",
                mode,
                primary().schedule(steady(Behaviour::NeverAnswer)),
            );
            s.policy.hedge_after_ms = Some(100);
            s.expect.failover = Some(FailoverTarget::Within {
                ms: 100.0 + 5.0,
                basis: "hedge_after_ms + 5",
            });
            s.expect.max_retry_amplification = PERSISTENT_AMPLIFICATION;
            s
        }
        "slow_first_token" => {
            let mut s = base(
                "slow_first_token",
                "the primary's first token takes 2 s; first-token (and attempt) timeout 250 ms",
                mode,
                primary().schedule(steady(Behaviour::SlowFirstToken(Duration::from_secs(2)))),
            );
            s.policy.timeouts.first_token_ms = 250;
            // Non-streaming calls have no first token: the attempt timeout
            // is their silent-primary limit, so both are 250 ms.
            s.policy.timeouts.attempt_ms = 250;
            s.expect.failover = Some(FailoverTarget::Within {
                ms: 250.0 + 5.0,
                basis: "first_token_ms + 5",
            });
            s
        }
        "stream_cut" => base(
            "stream_cut",
            "the primary cuts every answer after 6 tokens; the secondary continues the prefill",
            mode,
            primary().schedule(steady(Behaviour::StreamCut { after_tokens: 6 })),
        ),
        "stream_cut_no_prefill" => {
            let mut s = base(
                "stream_cut_no_prefill",
                "the primary cuts after 6 tokens; the secondary cannot take a prefill (restart)",
                mode,
                primary().schedule(steady(Behaviour::StreamCut { after_tokens: 6 })),
            );
            s.fakes[1] = FakeSpec::new("secondary", Api::OpenAi)
                .prefill(Prefill::Ignore)
                .hold_max(HOLD_MAX);
            s
        }
        "stream_stall" => {
            let mut s = base(
                "stream_stall",
                "the primary stalls after 6 tokens with the connection open; idle timeout 200 ms, attempt 400 ms",
                mode,
                primary().schedule(steady(Behaviour::StreamStall { after_tokens: 6 })),
            );
            s.policy.timeouts.idle_ms = 200;
            // A stalled non-streaming body is only noticed by the attempt
            // timeout, which cannot be shorter than the first-token one.
            s.policy.timeouts.first_token_ms = 400;
            s.policy.timeouts.attempt_ms = 400;
            s
        }
        "malformed_chunk" => {
            let mut s = base(
                "malformed_chunk",
                "the primary inserts one unparseable chunk after 6 tokens (non-streaming: an unparseable body)",
                mode,
                primary().schedule(steady(Behaviour::MalformedChunk { after_tokens: 6 })),
            );
            // A lenient gateway keeps the primary's stream; a strict one
            // falls over. Either is a success.
            s.expect.answered_by = names(&["primary", "secondary"]);
            s
        }
        "no_done" => {
            let mut s = base(
                "no_done",
                "the primary's streams end with a finish reason but no [DONE]",
                mode,
                primary().schedule(steady(Behaviour::NoDone)),
            );
            s.expect.answered_by = names(&["primary"]);
            s
        }
        "context_length" => {
            let mut s = base(
                "context_length",
                "12k-token prompts; the primary really takes 8k (declared 16k), the secondary 200k",
                mode,
                primary()
                    .backend(Backend::Wiremock)
                    .context_window(8192, Some(16_384)),
            );
            s.mix.prompt_tokens = 12_000;
            s
        }
        "content_policy" => {
            let mut s = base(
                "content_policy",
                "the primary refuses every 4th prompt (flagged) with content_policy_violation",
                mode,
                primary().flags_content(),
            );
            s.mix.flagged_every = Some(4);
            s.expect.answered_by = names(&["primary"]);
            s.expect.all_answer = false;
            s.expect.flagged_fail_clean = true;
            s
        }
        "flapping" => {
            let d = run(LONG);
            let mut s = base(
                "flapping",
                "the primary flaps: 503 for half of every fifth of the run",
                mode,
                primary().schedule(Timeline::healthy().flapping_at(
                    d.mul_f64(0.1),
                    d.mul_f64(0.2),
                    0.5,
                    Behaviour::Error(ErrorKind::Unavailable),
                )),
            );
            s.sizes = LONG;
            s.expect.answered_by = names(&["primary", "secondary"]);
            s
        }
        "recovery" => {
            let d = run(LONG);
            let mut s = base(
                "recovery",
                "the primary refuses connections from 15 % to 40 % of the run, then recovers",
                mode,
                primary().schedule(Timeline::outage(
                    d.mul_f64(0.15),
                    d.mul_f64(0.40),
                    Behaviour::Refused,
                )),
            );
            s.sizes = LONG;
            s.expect.answered_by = names(&["primary", "secondary"]);
            s.expect.recover_within_ms = Some(s.policy.probe.interval_ms as f64 + 1000.0);
            s
        }
        "cascade" => {
            let mut s = base(
                "cascade",
                "primary refused, secondary overloaded (529); the tertiary answers",
                mode,
                primary().schedule(steady(Behaviour::Refused)),
            );
            s.fakes[1] = secondary().schedule(steady(Behaviour::Error(ErrorKind::Overloaded)));
            s.fakes
                .push(FakeSpec::new("tertiary", Api::OpenAi).hold_max(HOLD_MAX));
            s.chain = names(&["primary", "secondary", "tertiary", RULES]);
            s.expect.answered_by = names(&["tertiary"]);
            s.expect.max_retry_amplification = PERSISTENT_AMPLIFICATION;
            s
        }
        "total_outage" => {
            let mut s = base(
                "total_outage",
                "every LLM down (refused, 529); the template rung answers",
                mode,
                primary().schedule(steady(Behaviour::Refused)),
            );
            s.fakes[1] = secondary().schedule(steady(Behaviour::Error(ErrorKind::Overloaded)));
            s.expect.answered_by = names(&[RULES]);
            s.expect.max_retry_amplification = PERSISTENT_AMPLIFICATION;
            s
        }
        _ => return None,
    };
    Some(spec)
}

/// Every scenario, built for `mode`, in [`SCENARIO_NAMES`] order.
pub fn catalog(mode: Mode) -> Vec<ScenarioSpec> {
    SCENARIO_NAMES
        .iter()
        .filter_map(|name| build(name, mode))
        .collect()
}

/// The scenario named `name`, built for `mode`.
pub fn scenario(name: &str, mode: Mode) -> Result<ScenarioSpec, ChaosError> {
    build(name, mode).ok_or_else(|| ChaosError::UnknownScenario {
        name: name.to_owned(),
        known: SCENARIO_NAMES.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_in_both_modes() {
        for mode in [Mode::Full, Mode::Quick] {
            let all = catalog(mode);
            assert_eq!(all.len(), SCENARIO_NAMES.len());
            for (spec, name) in all.iter().zip(SCENARIO_NAMES) {
                assert_eq!(spec.name, name);
                assert_eq!(spec.mode, mode);
                assert_eq!(spec.primary(), "primary");
                for model in &spec.expect.answered_by {
                    assert!(spec.chain.contains(model), "{name}: {model} not in chain");
                }
                for fake in &spec.fakes {
                    assert!(
                        spec.chain.contains(&fake.model),
                        "{name}: {} unused",
                        fake.model
                    );
                    fake.schedule.validate().expect("valid schedule");
                }
            }
        }
        assert!(scenario("nope", Mode::Full).is_err());
    }

    #[test]
    fn catalog_fits_the_time_budget() {
        let total = |mode| -> f64 {
            catalog(mode)
                .iter()
                .map(|s| s.load().duration().as_secs_f64())
                .sum()
        };
        assert!(total(Mode::Full) <= 70.0, "full: {} s", total(Mode::Full));
        assert!(
            total(Mode::Quick) <= 25.0,
            "quick: {} s",
            total(Mode::Quick)
        );
    }

    #[test]
    fn recovery_leaves_time_to_recover_within_the_target() {
        for mode in [Mode::Full, Mode::Quick] {
            let s = scenario("recovery", mode).unwrap();
            let windows = s.outage_windows();
            assert_eq!(windows.len(), 1);
            let after = s.load().duration() - windows[0].1;
            let target = Duration::from_millis(s.expect.recover_within_ms.unwrap() as u64);
            assert!(
                after > target,
                "{mode:?}: {after:?} left, target {target:?}"
            );
        }
    }

    #[test]
    fn flapping_has_several_down_windows() {
        let s = scenario("flapping", Mode::Quick).unwrap();
        assert!(s.outage_windows().len() >= 4, "{:?}", s.outage_windows());
    }

    #[test]
    fn timeouts_are_consistent() {
        for s in catalog(Mode::Full) {
            let t = s.policy.timeouts;
            assert!(t.first_token_ms <= t.attempt_ms, "{}", s.name);
            assert!(t.attempt_ms <= t.total_ms, "{}", s.name);
        }
    }
}
