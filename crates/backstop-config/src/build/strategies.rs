//! Tables that name a factory with `type`: strategies (`[strategies]` and
//! scenario overrides) and providers. Strategy instances are shared where
//! their tables are identical, so one circuit breaker watches a model for
//! every scenario that uses the same health table.

use std::sync::Arc;

use backstop_core::{
    BudgetPolicy, HealthPolicy, ResultHandler, Selector, Strategies, StrategyContext,
};
use figment::value::{Dict, Value};

use super::Builder;
use crate::decode::Decoded;
use crate::problem::{KeyPath, did_you_mean, list};
use crate::registry::{FactoryError, Registry, SeamKind, StrategyFactory};
use crate::report::{RouteEntry, StrategyChoice};
use crate::schema::StrategiesSection;
/// Built strategies of one seam, by their table (its `type` and the rest
/// of it, as JSON).
pub(crate) struct Pool<T: ?Sized> {
    entries: Vec<PoolEntry<T>>,
    /// On a reload: the instances of the configuration being replaced, by
    /// table. A table asking for the same is handed the running instance,
    /// state and all, instead of a new one.
    previous: Vec<(String, Arc<T>)>,
}

struct PoolEntry<T: ?Sized> {
    key: String,
    instance: Arc<T>,
    /// Whether it was handed over from the configuration being replaced.
    handed_over: bool,
}

impl<T: ?Sized> Default for Pool<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            previous: Vec::new(),
        }
    }
}

impl<T: ?Sized> Pool<T> {
    /// An empty pool that hands over `previous`'s instances to the tables
    /// that ask for them again.
    pub fn handing_over(previous: &Pool<T>) -> Self {
        Self {
            entries: Vec::new(),
            previous: previous
                .entries
                .iter()
                .map(|e| (e.key.clone(), Arc::clone(&e.instance)))
                .collect(),
        }
    }

    /// The instance built from this table: the one already built (or
    /// handed over), else a new one. Instances are numbered from 1 in the
    /// order they were first asked for.
    fn get_or_build(
        &mut self,
        key: String,
        build: impl FnOnce() -> Result<Arc<T>, FactoryError>,
    ) -> Result<(Arc<T>, usize), FactoryError> {
        if let Some(i) = self.entries.iter().position(|e| e.key == key) {
            return Ok((Arc::clone(&self.entries[i].instance), i + 1));
        }
        let (instance, handed_over) = match self.previous.iter().find(|(k, _)| *k == key) {
            Some((_, running)) => (Arc::clone(running), true),
            None => (build()?, false),
        };
        self.entries.push(PoolEntry {
            key,
            instance: Arc::clone(&instance),
            handed_over,
        });
        Ok((instance, self.entries.len()))
    }

    /// Every distinct instance.
    pub fn instances(&self) -> Vec<Arc<T>> {
        self.entries
            .iter()
            .map(|e| Arc::clone(&e.instance))
            .collect()
    }

    /// Each instance's type, number and whether it was handed over.
    pub fn handovers(&self) -> impl Iterator<Item = (&str, usize, bool)> {
        self.entries.iter().enumerate().map(|(i, e)| {
            let type_name = e.key.split('\u{0}').next().unwrap_or_default();
            (type_name, i + 1, e.handed_over)
        })
    }
}

/// One pool per strategy seam.
pub(crate) struct Pools {
    pub selector: Pool<dyn Selector>,
    pub health: Pool<dyn HealthPolicy>,
    pub budget: Pool<dyn BudgetPolicy>,
    pub result: Pool<dyn ResultHandler>,
}

impl Pools {
    /// Empty pools.
    pub fn new() -> Self {
        Self {
            selector: Pool::default(),
            health: Pool::default(),
            budget: Pool::default(),
            result: Pool::default(),
        }
    }

    /// Empty pools that hand over `previous`'s instances (a reload whose
    /// model table did not change).
    pub fn handing_over(previous: &Pools) -> Self {
        Self {
            selector: Pool::handing_over(&previous.selector),
            health: Pool::handing_over(&previous.health),
            budget: Pool::handing_over(&previous.budget),
            result: Pool::handing_over(&previous.result),
        }
    }

    /// What each seam's instances are and whether they were handed over.
    pub fn handovers(&self) -> Vec<(SeamKind, &str, usize, bool)> {
        let seam = |kind: SeamKind| move |(t, n, kept)| (kind, t, n, kept);
        self.selector
            .handovers()
            .map(seam(SeamKind::Selector))
            .chain(self.health.handovers().map(seam(SeamKind::Health)))
            .chain(self.budget.handovers().map(seam(SeamKind::Budget)))
            .chain(self.result.handovers().map(seam(SeamKind::Result)))
            .collect()
    }
}

/// A strategy table: its type and the rest of it.
pub(crate) struct Table {
    pub type_name: String,
    pub config: serde_json::Value,
    pub path: KeyPath,
}

/// One built strategy and what the report says of it.
pub(crate) type Built<T> = (Arc<T>, StrategyChoice);

/// The four strategies of a route.
#[derive(Clone)]
pub(crate) struct Chosen {
    pub strategies: Strategies,
    pub choices: [StrategyChoice; 4],
}

impl Chosen {
    pub fn entry(&self, policy: backstop_core::RoutePolicy) -> RouteEntry {
        let [selector, health, budget, result] = self.choices.clone();
        RouteEntry {
            selector,
            health,
            budget,
            result,
            policy,
        }
    }
}

/// The per-seam parts of a route's strategies, any of which may be missing
/// after a problem.
pub(crate) struct Parts {
    pub selector: Option<Built<dyn Selector>>,
    pub health: Option<Built<dyn HealthPolicy>>,
    pub budget: Option<Built<dyn BudgetPolicy>>,
    pub result: Option<Built<dyn ResultHandler>>,
}

impl Parts {
    pub fn complete(self) -> Option<Chosen> {
        let (selector, health, budget, result) =
            (self.selector?, self.health?, self.budget?, self.result?);
        Some(Chosen {
            strategies: Strategies {
                selector: selector.0,
                health: health.0,
                budget: budget.0,
                result: result.0,
            },
            choices: [selector.1, health.1, budget.1, result.1],
        })
    }
}

/// The strategy a seam uses when `[strategies]` names none.
const DEFAULT_TYPES: [(&str, &str); 4] = [
    ("selector", backstop_strategies::catalog::DEFAULT_SELECTOR),
    ("health", backstop_strategies::catalog::DEFAULT_HEALTH),
    ("budget", backstop_strategies::catalog::DEFAULT_BUDGET),
    ("result", backstop_strategies::catalog::DEFAULT_RESULT),
];

fn default_table(seam: &str) -> Value {
    let type_name = DEFAULT_TYPES
        .iter()
        .find(|(s, _)| *s == seam)
        .map_or("", |(_, t)| *t);
    let mut dict = Dict::new();
    dict.insert("type".to_owned(), Value::from(type_name));
    Value::from(dict)
}

/// Rewrites serde's messages about keys into ours (quoted names, the
/// nearest valid name suggested).
pub(crate) fn rewrite_serde_message(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return if names.is_empty() {
            format!("unknown key {field:?}; this table takes no other keys")
        } else {
            format!(
                "unknown key {field:?}{}; expected one of {}",
                did_you_mean(field, names.iter().copied()),
                list(names.iter().copied())
            )
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        return format!("missing required key {field:?}");
    }
    message.to_owned()
}

impl Builder<'_> {
    /// `[strategies]`, decoded (its defaults when absent or unreadable).
    pub(super) fn strategies_section(&mut self) -> Decoded<StrategiesSection> {
        let path = KeyPath::root().key("strategies");
        let decoded = match self.section("strategies") {
            Some(value) => self.decode::<StrategiesSection>(&path, value),
            None => None,
        };
        decoded.unwrap_or(Decoded {
            value: StrategiesSection::default(),
            dropped: Vec::new(),
        })
    }

    /// The default strategies, built from `[strategies]` (or the default
    /// type of each seam).
    pub(super) fn default_strategies(
        &mut self,
        section: &Decoded<StrategiesSection>,
        registry: &Registry,
        ctx: &StrategyContext,
        pools: &mut Pools,
    ) -> Option<Chosen> {
        let path = KeyPath::root().key("strategies");
        let s = &section.value;
        let or_default =
            |v: &Option<Value>, seam: &str| v.clone().unwrap_or_else(|| default_table(seam));
        let parts = Parts {
            selector: self.strategy(
                SeamKind::Selector,
                registry,
                ctx,
                &mut pools.selector,
                |r, n| r.selector_factory(n),
                &path.key("selector"),
                &or_default(&s.selector, "selector"),
            ),
            health: self.strategy(
                SeamKind::Health,
                registry,
                ctx,
                &mut pools.health,
                |r, n| r.health_factory(n),
                &path.key("health"),
                &or_default(&s.health, "health"),
            ),
            budget: self.strategy(
                SeamKind::Budget,
                registry,
                ctx,
                &mut pools.budget,
                |r, n| r.budget_factory(n),
                &path.key("budget"),
                &or_default(&s.budget, "budget"),
            ),
            result: self.strategy(
                SeamKind::Result,
                registry,
                ctx,
                &mut pools.result,
                |r, n| r.result_factory(n),
                &path.key("result"),
                &or_default(&s.result, "result"),
            ),
        };
        parts.complete()
    }

    /// Builds (or shares) the strategy the table at `path` names.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn strategy<T: ?Sized>(
        &mut self,
        seam: SeamKind,
        registry: &Registry,
        ctx: &StrategyContext,
        pool: &mut Pool<T>,
        factory_of: impl for<'r> Fn(&'r Registry, &str) -> Option<&'r StrategyFactory<T>>,
        path: &KeyPath,
        value: &Value,
    ) -> Option<Built<T>> {
        let table = self.strategy_table(seam, registry, path, value)?;
        let factory = factory_of(registry, &table.type_name)?;
        let key = format!("{}\u{0}{}", table.type_name, table.config);
        match pool.get_or_build(key, || factory(&table.config, ctx)) {
            Ok((built, instance)) => Some((
                built,
                StrategyChoice {
                    type_name: table.type_name,
                    config: table.config,
                    instance,
                },
            )),
            Err(e) => {
                self.factory_problem(&table.path, &table.type_name, e);
                None
            }
        }
    }

    /// A strategy table: `{ type = "name", knobs... }`, or just `"name"`.
    fn strategy_table(
        &mut self,
        seam: SeamKind,
        registry: &Registry,
        path: &KeyPath,
        value: &Value,
    ) -> Option<Table> {
        match value {
            Value::String(_, name) => {
                let type_name = self.known_type(registry, seam, &path.key("type"), name)?;
                Some(Table {
                    type_name,
                    config: serde_json::Value::Object(serde_json::Map::new()),
                    path: path.clone(),
                })
            }
            Value::Dict(_, dict) => {
                let type_name = self.type_of(registry, seam, path, dict)?;
                Some(Table {
                    type_name,
                    config: self.factory_config(dict),
                    path: path.clone(),
                })
            }
            other => {
                self.problem(
                    path,
                    format!(
                        "expected a table such as {{ type = \"{}\" }}, found {}",
                        registry.names(seam).first().copied().unwrap_or("..."),
                        other.to_actual()
                    ),
                );
                None
            }
        }
    }

    /// The `type` of a table: present, a string, and known for the seam.
    pub(super) fn type_of(
        &mut self,
        registry: &Registry,
        seam: SeamKind,
        path: &KeyPath,
        dict: &Dict,
    ) -> Option<String> {
        match dict.get("type") {
            None => {
                self.problem(
                    path,
                    format!(
                        "missing required key \"type\"; known {seam} types: {}",
                        list(registry.names(seam))
                    ),
                );
                None
            }
            Some(Value::String(_, name)) => {
                self.known_type(registry, seam, &path.key("type"), name)
            }
            Some(other) => {
                self.problem(
                    &path.key("type"),
                    format!("expected a string, found {}", other.to_actual()),
                );
                None
            }
        }
    }

    fn known_type(
        &mut self,
        registry: &Registry,
        seam: SeamKind,
        path: &KeyPath,
        name: &str,
    ) -> Option<String> {
        if registry.knows(seam, name) {
            return Some(name.to_owned());
        }
        let known = registry.names(seam);
        self.problem(
            path,
            format!(
                "unknown {seam} type {name:?}{}; known {seam} types: {}",
                did_you_mean(name, known.iter().copied()),
                list(known.iter().copied())
            ),
        );
        None
    }

    /// The table a factory gets: everything but `type`, as JSON.
    pub(super) fn factory_config(&self, dict: &Dict) -> serde_json::Value {
        let rest: Dict = dict
            .iter()
            .filter(|(k, _)| k.as_str() != "type")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_json::to_value(Value::from(rest))
            .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()))
    }

    /// Reports each issue of a factory's refusal at the key it names,
    /// prefixed with the type when the table names one (`type_name` is
    /// empty for fixed tables such as `[alerts]`).
    pub(super) fn factory_problem(&mut self, table: &KeyPath, type_name: &str, e: FactoryError) {
        for issue in e.issues {
            let mut message = rewrite_serde_message(&issue.message);
            if let Some(crate::problem::Segment::Key(key)) = issue.key.segments().last() {
                for prefix in [
                    format!("{}: ", issue.key),
                    format!("`{key}` "),
                    format!("{key}: "),
                ] {
                    if let Some(rest) = message.strip_prefix(&prefix) {
                        message = rest.to_owned();
                    }
                }
            }
            if !type_name.is_empty() {
                message = format!("{type_name}: {message}");
            }
            self.problem(&table.join(&issue.key), message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_become_ours() {
        assert_eq!(
            rewrite_serde_message(
                "unknown field `max_latncy_ms`, expected one of `max_latency_ms`, `decay_ms`"
            ),
            "unknown key \"max_latncy_ms\" (did you mean \"max_latency_ms\"?); expected one of \"max_latency_ms\", \"decay_ms\""
        );
        assert_eq!(
            rewrite_serde_message("unknown field `x`, there are no fields"),
            "unknown key \"x\"; this table takes no other keys"
        );
        assert_eq!(
            rewrite_serde_message("missing field `text`"),
            "missing required key \"text\""
        );
        assert_eq!(rewrite_serde_message("other"), "other");
    }

    #[test]
    fn identical_tables_share_one_instance() {
        let mut pool: Pool<str> = Pool::default();
        let mut builds = 0;
        let mut build = |key: &str| {
            pool.get_or_build(key.to_owned(), || {
                builds += 1;
                Ok(Arc::from(key))
            })
            .map(|(_, n)| n)
        };
        assert_eq!(build("a"), Ok(1));
        assert_eq!(build("b"), Ok(2));
        assert_eq!(build("a"), Ok(1));
        assert_eq!(builds, 2);
    }
}
