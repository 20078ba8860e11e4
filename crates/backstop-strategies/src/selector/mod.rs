//! Selectors: in which order to try the models of a chain.
//!
//! - [`priority`]: configured priority, ties in chain order.
//! - [`latency_aware`]: fastest first by the Router's peak-EWMA estimates.
//! - [`cost_aware`]: cheapest first by the estimated cost of this request.
//! - [`weighted`]: weighted random within each priority tier.
//!
//! A selector only orders: it never drops a model.

pub mod cost_aware;
pub mod latency_aware;
pub mod priority;
pub mod weighted;

pub use cost_aware::{CostAware, CostAwareConfig};
pub use latency_aware::{LatencyAware, LatencyAwareConfig};
pub use priority::{Priority, PriorityConfig};
pub use weighted::{Weighted, WeightedConfig};

#[cfg(test)]
pub(crate) mod test_chain {
    //! A chain of candidates for selector tests.

    use backstop_core::{Candidate, ManualClock, ModelSpec, RequestFacts, StrategyContext};

    /// A context over models `(id, priority, input cost, output cost)`.
    pub fn ctx(models: &[(&str, u32, f64, f64)]) -> StrategyContext {
        clocked(models).0
    }

    /// [`ctx`] with a handle on its clock.
    pub fn clocked(
        models: &[(&str, u32, f64, f64)],
    ) -> (StrategyContext, std::sync::Arc<ManualClock>) {
        let specs = models
            .iter()
            .map(|&(id, priority, input, output)| {
                let mut m = ModelSpec::new(id, "p");
                m.priority = priority;
                m.input_cost_per_1k = input;
                m.output_cost_per_1k = output;
                m
            })
            .collect();
        let clock = std::sync::Arc::new(ManualClock::new());
        (StrategyContext::new(specs, clock.clone()), clock)
    }

    /// Every model of `ctx`, in table order, as candidates.
    pub fn candidates(ctx: &StrategyContext) -> Vec<Candidate<'_>> {
        ctx.models
            .iter()
            .enumerate()
            .map(|(index, spec)| Candidate {
                index,
                spec,
                position: index,
            })
            .collect()
    }

    /// The ids in the order the candidates are in.
    pub fn ids(candidates: &[Candidate<'_>]) -> Vec<String> {
        candidates.iter().map(|c| c.spec.id.clone()).collect()
    }

    /// A request of `prompt` tokens, asking for `max_tokens` at most.
    pub fn facts(prompt: u32, max_tokens: Option<u32>, stream: bool) -> RequestFacts<'static> {
        RequestFacts {
            scenario: "chat",
            caller: None,
            prompt_tokens: prompt,
            max_tokens,
            stream,
            tools: false,
        }
    }
}
