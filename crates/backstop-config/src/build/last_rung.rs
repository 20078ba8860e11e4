//! Stand-ins stay the last rung.
//!
//! A template answers instantly and costs nothing, so a selector that
//! orders by latency or cost would put it first and serve every request a
//! canned answer. Every selector is therefore wrapped: it orders the chain
//! as it likes, then models served by a stand-in provider move behind all
//! the others, keeping their relative order.

use std::fmt;
use std::sync::Arc;

use backstop_core::{Candidate, RequestFacts, Selector};

/// A selector whose order keeps stand-in models last.
pub(crate) struct StandInsLast {
    inner: Arc<dyn Selector>,
    /// By model index: whether a stand-in provider serves the model.
    stand_in: Box<[bool]>,
}

impl StandInsLast {
    /// Wraps `inner`, unless no model is a stand-in.
    pub fn wrap(inner: Arc<dyn Selector>, stand_in: &[bool]) -> Arc<dyn Selector> {
        if stand_in.iter().any(|&s| s) {
            Arc::new(Self {
                inner,
                stand_in: stand_in.into(),
            })
        } else {
            inner
        }
    }
}

impl fmt::Debug for StandInsLast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandInsLast")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Selector for StandInsLast {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn order(&self, facts: &RequestFacts<'_>, candidates: &mut [Candidate<'_>]) {
        self.inner.order(facts, candidates);
        // Stable: the selector's order holds within each group. Chains are
        // short, so this sorts in place without allocating.
        candidates.sort_by_key(|c| self.stand_in.get(c.index).copied().unwrap_or(false));
    }
}

#[cfg(test)]
mod tests {
    use backstop_core::ModelSpec;

    use super::*;

    /// Orders by ascending model id, like a selector that happens to
    /// prefer the template.
    #[derive(Debug)]
    struct ById;

    impl Selector for ById {
        fn name(&self) -> &str {
            "by_id"
        }
        fn order(&self, _: &RequestFacts<'_>, candidates: &mut [Candidate<'_>]) {
            candidates.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        }
    }

    #[test]
    fn stand_ins_go_last_and_the_rest_keeps_the_selectors_order() {
        let specs = [
            ModelSpec::new("b", "p"),
            ModelSpec::new("a-template", "rules"),
            ModelSpec::new("c", "p"),
            ModelSpec::new("a", "p"),
        ];
        let selector = StandInsLast::wrap(Arc::new(ById), &[false, true, false, false]);
        let mut candidates: Vec<Candidate<'_>> = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| Candidate {
                index,
                spec,
                position: index,
            })
            .collect();
        let facts = RequestFacts {
            scenario: "s",
            caller: None,
            prompt_tokens: 1,
            max_tokens: None,
            stream: false,
            tools: false,
        };
        selector.order(&facts, &mut candidates);
        let order: Vec<&str> = candidates.iter().map(|c| c.spec.id.as_str()).collect();
        assert_eq!(order, ["a", "b", "c", "a-template"]);
        assert_eq!(selector.name(), "by_id");
    }
}
