//! Scenarios: a named chain and the policy it runs under.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Timeouts of one scenario. Every attempt runs under all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Establishing a connection (enforced by the provider's transport).
    pub connect: Duration,
    /// From sending a streaming request to its first output chunk.
    pub first_token: Duration,
    /// Longest silence between two chunks of a stream.
    pub idle: Duration,
    /// One attempt, start to end (streams included).
    pub attempt: Duration,
    /// The whole request, every attempt and wait included.
    pub total: Duration,
}

impl Default for Timeouts {
    /// connect 5 s, first token 30 s, idle 30 s, attempt 300 s, total 600 s.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_token: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            attempt: Duration::from_secs(300),
            total: Duration::from_secs(600),
        }
    }
}

/// Same-model retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries of the same model after a retryable failure (connect,
    /// server, overloaded, rate limited with a short Retry-After).
    pub same_model: u32,
    /// The longest Retry-After the Router waits for; a longer one falls
    /// over at once.
    pub retry_after_cap: Duration,
    /// First backoff after a server error; doubles per retry, with jitter.
    pub backoff_base: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    /// 1 retry, Retry-After cap 3 s, backoff 50 ms doubling to at most 2 s.
    fn default() -> Self {
        Self {
            same_model: 1,
            retry_after_cap: Duration::from_secs(3),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// What to do when a stream fails after output reached the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MidStreamPolicy {
    /// End the stream with a clean in-band error event.
    Error,
    /// Ask the next prefill-capable model to continue the partial answer;
    /// a model without prefill support is treated as `restart`.
    #[default]
    Continue,
    /// Ask the next model for the whole answer and stream what the caller
    /// does not have yet, if the new answer begins with it word for word.
    Restart,
}

/// What to do when a provider refuses the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentPolicyAction {
    /// Return the provider's reason to the caller.
    #[default]
    Return,
    /// Try the next model.
    FallOver,
}

/// How a scenario runs its chain.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RoutePolicy {
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Same-model retries.
    pub retries: RetryPolicy,
    /// Mid-stream failure handling.
    pub mid_stream: MidStreamPolicy,
    /// Start the next model in parallel when the current one has produced
    /// nothing after this long. Off when `None`.
    pub hedge_after: Option<Duration>,
    /// Content-policy refusals.
    pub on_content_policy: ContentPolicyAction,
}

/// A named fallback chain and its policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The name requests use in their `model` field.
    pub name: String,
    /// Model ids in configured order.
    pub chain: Vec<String>,
    /// How the chain runs.
    pub policy: RoutePolicy,
}
