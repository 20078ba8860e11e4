//! `[scenarios.<name>]`: named chains, their strategies and policy.

use backstop_core::{MidStreamPolicy, RoutePolicy, Scenario, Strategies, StrategyContext};

use super::Builder;
use super::models::Models;
use super::policy::Clean;
use super::providers::BuiltProvider;
use super::strategies::{Chosen, Parts, Pools};
use crate::problem::{KeyPath, did_you_mean, list};
use crate::registry::{Registry, SeamKind};
use crate::report::ScenarioEntry;
use crate::schema::ScenarioSection;

/// A scenario ready for the Router.
pub(crate) struct BuiltScenario {
    pub scenario: Scenario,
    pub strategies: Strategies,
    pub entry: ScenarioEntry,
}

/// Every scenario, in file order.
pub(crate) struct Scenarios {
    pub routes: Vec<BuiltScenario>,
}

impl Builder<'_> {
    /// Every scenario; `None` when any of them could not be resolved (the
    /// problems say why).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scenarios(
        &mut self,
        registry: &Registry,
        ctx: &StrategyContext,
        pools: &mut Pools,
        models: &Models,
        providers: &[BuiltProvider],
        defaults: Option<&Chosen>,
        default_policy: &RoutePolicy,
    ) -> Option<Scenarios> {
        let path = KeyPath::root().key("scenarios");
        let mut routes = Vec::new();
        let mut complete = true;
        let Some(value) = self.section("scenarios") else {
            return Some(Scenarios { routes });
        };
        let dict = self.table(&path, value, "a table of scenarios")?;
        for name in self.src.ordered_keys("scenarios", dict) {
            let at = path.key(name);
            let Some(value) = dict.get(name) else {
                continue;
            };
            let Some(decoded) = self.decode::<ScenarioSection>(&at, value) else {
                complete = false;
                continue;
            };
            let section = &decoded.value;
            let chain = self.chain(&at, section, models, providers);
            let strategies = self.scenario_strategies(&at, section, registry, ctx, pools, defaults);
            let policy = self.policy(&at, default_policy, &section.policy(), Clean::of(&decoded));
            if models.specs.iter().any(|m| m.id == name) {
                self.warn(
                    &at,
                    format!(
                        "has the id of a model: requests for {name:?} run this scenario, not the model alone"
                    ),
                );
            }
            if let Some((chain, _)) = &chain {
                self.warn_continue_without_prefill(&at, section, chain, models);
            }
            let (Some((chain, chain_by_priority)), Some(chosen)) = (chain, strategies) else {
                complete = false;
                continue;
            };
            routes.push(BuiltScenario {
                scenario: Scenario {
                    name: name.to_owned(),
                    chain: chain.clone(),
                    policy,
                },
                strategies: chosen.strategies.clone(),
                entry: ScenarioEntry {
                    name: name.to_owned(),
                    chain,
                    chain_by_priority,
                    route: chosen.entry(policy),
                },
            });
        }
        complete.then_some(Scenarios { routes })
    }

    /// `mid_stream = "continue"` needs a model after the first that takes
    /// an assistant prefill; without one a cut stream is restarted instead.
    fn warn_continue_without_prefill(
        &mut self,
        at: &KeyPath,
        section: &ScenarioSection,
        chain: &[String],
        models: &Models,
    ) {
        if section.mid_stream != Some(MidStreamPolicy::Continue) {
            return;
        }
        let prefill = |id: &String| {
            models
                .specs
                .iter()
                .any(|m| m.id == *id && m.capabilities.assistant_prefill)
        };
        if chain.iter().skip(1).any(prefill) {
            return;
        }
        self.warn(
            &at.key("mid_stream"),
            "is \"continue\", but no model after the first of the chain sets supports_prefill = true: \
             a cut stream will be restarted instead (set supports_prefill on a backup that takes an \
             assistant prefill, or say mid_stream = \"restart\")",
        );
    }

    /// The chain, checked: every id names a model, none twice. Without a
    /// `chain` key: every model of `[models]` by priority.
    fn chain(
        &mut self,
        at: &KeyPath,
        section: &ScenarioSection,
        models: &Models,
        providers: &[BuiltProvider],
    ) -> Option<(Vec<String>, bool)> {
        let Some(chain) = &section.chain else {
            if models.by_priority.is_empty() {
                self.problem(
                    at,
                    "has no `chain`, and there is no model in [models] to derive one from",
                );
                return None;
            }
            return Some((models.by_priority.clone(), true));
        };
        let path = at.key("chain");
        if chain.is_empty() {
            self.problem(
                &path,
                "is empty: name at least one model, or remove the key to use every model by priority",
            );
            return None;
        }
        let mut ok = true;
        for (i, id) in chain.iter().enumerate() {
            if let Some(first) = chain[..i].iter().position(|c| c == id) {
                self.problem(
                    &path.index(i),
                    format!("model {id:?} is already in the chain at chain[{first}]"),
                );
                ok = false;
                continue;
            }
            if models.declared.contains(id) {
                continue;
            }
            ok = false;
            let message = if providers.iter().any(|p| p.id == *id) {
                let served: Vec<&str> = models
                    .specs
                    .iter()
                    .filter(|m| m.provider == *id)
                    .map(|m| m.id.as_str())
                    .collect();
                format!(
                    "{id:?} is a provider, not a model; a chain names models (models of {id:?}: {})",
                    list(served)
                )
            } else {
                format!(
                    "unknown model {id:?}{}; models: {}",
                    did_you_mean(id, models.declared.iter().map(String::as_str)),
                    list(models.declared.iter().map(String::as_str))
                )
            };
            self.problem(&path.index(i), message);
        }
        if ok {
            ok = self.same_dimensions(&path, chain, models);
        }
        ok.then(|| (chain.clone(), false))
    }

    /// Whether every model of the chain has the `dimensions` of its first:
    /// vectors of different lengths (or a chat model among embedding
    /// models) must not answer the same scenario.
    fn same_dimensions(&mut self, path: &KeyPath, chain: &[String], models: &Models) -> bool {
        let dimensions = |id: &String| {
            models
                .specs
                .iter()
                .find(|m| m.id == *id)
                .and_then(|m| m.dimensions)
        };
        let Some(first) = chain.first() else {
            return true;
        };
        let expected = dimensions(first);
        let describe = |d: Option<u32>| match d {
            Some(d) => format!("`dimensions = {d}`"),
            None => "no `dimensions` (a chat model)".to_owned(),
        };
        let mut ok = true;
        for (i, id) in chain.iter().enumerate().skip(1) {
            let found = dimensions(id);
            if found != expected {
                self.problem(
                    &path.index(i),
                    format!(
                        "model {id:?} has {} but chain[0] {first:?} has {}: a chain's models must all embed alike (the same dimensions) or all chat",
                        describe(found),
                        describe(expected)
                    ),
                );
                ok = false;
            }
        }
        ok
    }

    fn scenario_strategies(
        &mut self,
        at: &KeyPath,
        section: &ScenarioSection,
        registry: &Registry,
        ctx: &StrategyContext,
        pools: &mut Pools,
        defaults: Option<&Chosen>,
    ) -> Option<Chosen> {
        let default = |i: usize| defaults.map(|d| d.choices[i].clone());
        let parts = Parts {
            selector: match &section.selector {
                Some(v) => self.strategy(
                    SeamKind::Selector,
                    registry,
                    ctx,
                    &mut pools.selector,
                    |r, n| r.selector_factory(n),
                    &at.key("selector"),
                    v,
                ),
                None => defaults
                    .zip(default(0))
                    .map(|(d, c)| (d.strategies.selector.clone(), c)),
            },
            health: match &section.health {
                Some(v) => self.strategy(
                    SeamKind::Health,
                    registry,
                    ctx,
                    &mut pools.health,
                    |r, n| r.health_factory(n),
                    &at.key("health"),
                    v,
                ),
                None => defaults
                    .zip(default(1))
                    .map(|(d, c)| (d.strategies.health.clone(), c)),
            },
            budget: match &section.budget {
                Some(v) => self.strategy(
                    SeamKind::Budget,
                    registry,
                    ctx,
                    &mut pools.budget,
                    |r, n| r.budget_factory(n),
                    &at.key("budget"),
                    v,
                ),
                None => defaults
                    .zip(default(2))
                    .map(|(d, c)| (d.strategies.budget.clone(), c)),
            },
            result: match &section.result {
                Some(v) => self.strategy(
                    SeamKind::Result,
                    registry,
                    ctx,
                    &mut pools.result,
                    |r, n| r.result_factory(n),
                    &at.key("result"),
                    v,
                ),
                None => defaults
                    .zip(default(3))
                    .map(|(d, c)| (d.strategies.result.clone(), c)),
            },
        };
        parts.complete()
    }
}
