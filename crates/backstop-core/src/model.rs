//! What Backstop knows about a model: who serves it, what it costs, what it can do.

use serde::{Deserialize, Serialize};

use crate::facts::RequestFacts;
use crate::rate_limit::RateQuota;

/// Dense index of a model in the Router's model table.
///
/// Strategies keep per-model state in arrays indexed by it, so the hot path
/// never hashes a model name.
pub type ModelIndex = usize;

/// What a model can do. The Router never sends a request to a model that
/// cannot serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Can stream (server-sent events).
    pub streaming: bool,
    /// Accepts `tools` / function calling.
    pub tools: bool,
    /// Continues a trailing assistant message instead of answering anew
    /// (Anthropic's Messages API does). The mid-stream `continue` policy
    /// relies on it.
    pub assistant_prefill: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            streaming: true,
            tools: true,
            assistant_prefill: false,
        }
    }
}

/// One model of the fallback chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The id requests and chains use (`gpt-4o`, `qwen-7b`).
    pub id: String,
    /// Id of the provider that serves it (`openai`, `rules`).
    pub provider: String,
    /// The model name the upstream API expects; often the same as `id`.
    pub upstream: String,
    /// Lower is preferred. Ties keep configuration order.
    pub priority: u32,
    /// Upper bound on output tokens per call; a caller's smaller
    /// `max_tokens` wins.
    pub max_tokens: u32,
    /// USD per 1,000 prompt tokens.
    pub input_cost_per_1k: f64,
    /// USD per 1,000 completion tokens.
    pub output_cost_per_1k: f64,
    /// Tokens of prompt plus completion the model accepts.
    pub context_window: u32,
    /// What the model can do.
    pub capabilities: Capabilities,
    /// A last resort (a canned template): whatever order a selector
    /// chooses, the Router tries it only after every other model of the
    /// chain. Without this a latency- or cost-ordered chain would put an
    /// instant, free template first and answer every request with it.
    #[serde(default)]
    pub last_resort: bool,
    /// The length of the model's vectors, for an embedding model (`None`:
    /// a chat model). Only models of equal `dimensions` may share a chain.
    #[serde(default)]
    pub dimensions: Option<u32>,
    /// The provider's quota for this model (`rpm`, `tpm`): the Router skips
    /// the model when a call would exceed it (see [`crate::RateLimiter`]).
    #[serde(default, skip_serializing_if = "RateQuota::is_unlimited")]
    pub quota: RateQuota,
}

impl ModelSpec {
    /// A model with the seed's defaults: priority 1, 4096 max tokens,
    /// 0.01 USD per 1k tokens in and out, a 128k window, streaming and tools.
    pub fn new(id: impl Into<String>, provider: impl Into<String>) -> Self {
        let id = id.into();
        Self {
            upstream: id.clone(),
            id,
            provider: provider.into(),
            priority: 1,
            max_tokens: 4096,
            input_cost_per_1k: 0.01,
            output_cost_per_1k: 0.01,
            context_window: 128_000,
            capabilities: Capabilities::default(),
            last_resort: false,
            dimensions: None,
            quota: RateQuota::default(),
        }
    }

    /// Estimated USD cost of a call with this many prompt tokens and at most
    /// this many completion tokens. Input and output are priced separately.
    pub fn estimated_cost(&self, prompt_tokens: u32, completion_tokens: u32) -> f64 {
        (f64::from(prompt_tokens) * self.input_cost_per_1k
            + f64::from(completion_tokens) * self.output_cost_per_1k)
            / 1000.0
    }

    /// What the request `facts` describe would cost on this model at most,
    /// in USD: its estimated prompt and its output bound (see
    /// [`Self::effective_max_tokens`]). Budgets reserve it; the cost-aware
    /// selector ranks by it.
    pub fn estimated_request_cost(&self, facts: &RequestFacts<'_>) -> f64 {
        self.estimated_cost(
            facts.prompt_tokens,
            self.effective_max_tokens(facts.max_tokens),
        )
    }

    /// The output-token bound of a call: the caller's, capped by the model's.
    pub fn effective_max_tokens(&self, requested: Option<u32>) -> u32 {
        requested.map_or(self.max_tokens, |r| r.min(self.max_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_prices_input_and_output_separately() {
        let mut m = ModelSpec::new("gpt-4o", "openai");
        m.input_cost_per_1k = 0.0025;
        m.output_cost_per_1k = 0.01;
        let cost = m.estimated_cost(1000, 500);
        assert!((cost - (0.0025 + 0.005)).abs() < 1e-12);
    }

    #[test]
    fn caller_max_tokens_is_capped_by_the_model() {
        let m = ModelSpec::new("m", "p");
        assert_eq!(m.effective_max_tokens(None), 4096);
        assert_eq!(m.effective_max_tokens(Some(100)), 100);
        assert_eq!(m.effective_max_tokens(Some(100_000)), 4096);
    }

    #[test]
    fn a_request_costs_its_prompt_and_its_output_bound() {
        let mut m = ModelSpec::new("gpt-4o", "openai");
        m.input_cost_per_1k = 0.002;
        m.output_cost_per_1k = 0.01;
        m.max_tokens = 500;
        let facts = RequestFacts {
            scenario: "chat",
            caller: None,
            prompt_tokens: 1000,
            max_tokens: Some(10_000),
            stream: false,
            tools: false,
        };
        // 1000 prompt tokens, output capped at the model's 500.
        assert!((m.estimated_request_cost(&facts) - 0.007).abs() < 1e-12);
    }
}
