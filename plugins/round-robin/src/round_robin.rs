//! `type = "round_robin"`: spreads requests over a chain's models, each
//! leading in turn, in proportion to its weight.
//!
//! Choose it when the models of a chain are peers (replicas of one model,
//! or equivalent models on different accounts) and load should be shared
//! rather than always hitting the first one. The model that leads is tried
//! first; the others follow in chain order after it (wrapping around), so
//! every model stays a fallback for every request.
//!
//! 1. Each request takes the next turn of a shared counter.
//! 2. The turn, modulo the sum of the candidates' weights, falls in one
//!    model's share: over every *sum-of-weights* consecutive requests each
//!    model leads exactly *weight* times.
//! 3. The chain is rotated so that model comes first.
//!
//! Knobs:
//! - `weights` (table of model id to integer, default: every model 1): a
//!   model's share of the lead. A weight of 0 never leads but still serves
//!   as a fallback. Naming a model that is not in the model table is an
//!   error.
//!
//! One instance keeps one counter; a scenario with its own selector config
//! gets its own rotation. Ordering takes one atomic increment and a pass
//! over the candidates, with no allocation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_plugin::core::{Candidate, ModelSpec, RequestFacts, Selector};
use backstop_plugin::{InitError, PluginSelector};
use serde::Deserialize;

/// The `round_robin` selector's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRobinConfig {
    /// Share of the lead per model id; unlisted models weigh 1.
    #[serde(default)]
    pub weights: HashMap<String, u32>,
}

/// Weighted round robin over the candidates.
#[derive(Debug)]
pub struct RoundRobin {
    /// Weight per model index.
    weights: Box<[u32]>,
    next: AtomicU64,
}

impl RoundRobin {
    /// A selector over `models` (the Router's model table) with this config.
    pub fn new(config: &RoundRobinConfig, models: &[ModelSpec]) -> Result<Self, String> {
        if let Some(unknown) = config
            .weights
            .keys()
            .find(|id| !models.iter().any(|m| &m.id == *id))
        {
            let known: Vec<_> = models.iter().map(|m| m.id.as_str()).collect();
            return Err(format!(
                "weights names model `{unknown}`, which is not in the model table ({})",
                known.join(", ")
            ));
        }
        let weights = models
            .iter()
            .map(|m| config.weights.get(&m.id).copied().unwrap_or(1))
            .collect();
        Ok(Self {
            weights,
            next: AtomicU64::new(0),
        })
    }

    fn weight(&self, candidate: &Candidate<'_>) -> u64 {
        u64::from(self.weights.get(candidate.index).copied().unwrap_or(1))
    }
}

impl PluginSelector for RoundRobin {
    fn from_config(config: serde_json::Value, models: Arc<[ModelSpec]>) -> Result<Self, InitError> {
        let config: RoundRobinConfig = serde_json::from_value(config)?;
        Ok(Self::new(&config, &models)?)
    }
}

impl Selector for RoundRobin {
    fn name(&self) -> &str {
        "round_robin"
    }

    fn order(&self, _: &RequestFacts<'_>, candidates: &mut [Candidate<'_>]) {
        if candidates.len() < 2 {
            return;
        }
        let total: u64 = candidates.iter().map(|c| self.weight(c)).sum();
        if total == 0 {
            return;
        }
        let mut turn = self.next.fetch_add(1, Ordering::Relaxed) % total;
        let mut lead = 0;
        for (i, candidate) in candidates.iter().enumerate() {
            let weight = self.weight(candidate);
            if turn < weight {
                lead = i;
                break;
            }
            turn -= weight;
        }
        candidates.rotate_left(lead);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(ids: &[&str]) -> Vec<ModelSpec> {
        ids.iter().map(|id| ModelSpec::new(*id, "p")).collect()
    }

    fn order(selector: &RoundRobin, models: &[ModelSpec]) -> Vec<String> {
        let facts = RequestFacts {
            scenario: "s",
            caller: None,
            prompt_tokens: 1,
            max_tokens: None,
            stream: false,
            tools: false,
        };
        let mut candidates: Vec<_> = models
            .iter()
            .enumerate()
            .map(|(i, spec)| Candidate {
                index: i,
                spec,
                position: i,
            })
            .collect();
        selector.order(&facts, &mut candidates);
        candidates.iter().map(|c| c.spec.id.clone()).collect()
    }

    #[test]
    fn each_model_leads_in_turn_and_the_rest_follow_in_chain_order() {
        let models = models(&["a", "b", "c"]);
        let rr = RoundRobin::new(&RoundRobinConfig::default(), &models).unwrap();
        assert_eq!(order(&rr, &models), ["a", "b", "c"]);
        assert_eq!(order(&rr, &models), ["b", "c", "a"]);
        assert_eq!(order(&rr, &models), ["c", "a", "b"]);
        assert_eq!(order(&rr, &models), ["a", "b", "c"]);
    }

    #[test]
    fn weights_set_each_models_share_of_the_lead() {
        let models = models(&["a", "b", "c"]);
        let config: RoundRobinConfig =
            serde_json::from_value(serde_json::json!({"weights": {"a": 3, "c": 0}})).unwrap();
        let rr = RoundRobin::new(&config, &models).unwrap();
        let leads: Vec<String> = (0..8).map(|_| order(&rr, &models)[0].clone()).collect();
        assert_eq!(leads, ["a", "a", "a", "b", "a", "a", "a", "b"]);
        assert_eq!(
            order(&rr, &models).len(),
            3,
            "a zero weight still serves as a fallback"
        );
    }

    #[test]
    fn weights_of_unknown_models_are_refused() {
        let error = RoundRobin::from_config(
            serde_json::json!({"weights": {"gpt-5": 2}}),
            models(&["a", "b"]).into(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "weights names model `gpt-5`, which is not in the model table (a, b)"
        );
    }
}
