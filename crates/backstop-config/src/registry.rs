//! The Registry: every `type` name a configuration may use, and the factory
//! that builds it.
//!
//! A table such as `selector = { type = "latency_aware", max_latency_ms =
//! 5000 }` names its factory with `type`; the factory gets the rest of the
//! table as JSON and returns the strategy behind its core trait. Compiled-in
//! providers and strategies (see [`Registry::builtin`]) and the types a
//! dynamic plugin declares are registered the same way, so a configuration
//! cannot tell them apart.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::problem::KeyPath;
use backstop_core::{
    BudgetPolicy, HealthPolicy, Provider, ResultHandler, Selector, StrategyContext,
};

/// Builds a provider from its table (without `type`).
pub type ProviderFactory =
    Arc<dyn Fn(&serde_json::Value) -> Result<Arc<dyn Provider>, FactoryError> + Send + Sync>;

/// Builds a strategy of one seam from its table (without `type`).
pub type StrategyFactory<T> =
    Arc<dyn Fn(&serde_json::Value, &StrategyContext) -> Result<Arc<T>, FactoryError> + Send + Sync>;

/// Builds a selector.
pub type SelectorFactory = StrategyFactory<dyn Selector>;
/// Builds a health policy.
pub type HealthFactory = StrategyFactory<dyn HealthPolicy>;
/// Builds a budget policy.
pub type BudgetFactory = StrategyFactory<dyn BudgetPolicy>;
/// Builds a result handler.
pub type ResultFactory = StrategyFactory<dyn ResultHandler>;

/// Why a factory could not build from its table: one issue per bad key
/// where the factory can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.issues))]
pub struct FactoryError {
    /// What is wrong, never empty.
    pub issues: Vec<FactoryIssue>,
}

/// One thing wrong with a factory's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactoryIssue {
    /// The key at fault, relative to the table (the root: the table as a
    /// whole).
    pub key: KeyPath,
    /// What is wrong.
    pub message: String,
}

fn render(issues: &[FactoryIssue]) -> String {
    issues
        .iter()
        .map(|i| {
            if i.key.is_root() {
                i.message.clone()
            } else {
                format!("{}: {}", i.key, i.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl FactoryError {
    /// An error about the table as a whole, or whose message names its key
    /// the way serde does (`unknown field `x``): the key is then taken
    /// from the message.
    pub fn new(message: impl fmt::Display) -> Self {
        let message = message.to_string();
        let key = serde_unknown_field(&message)
            .map_or_else(KeyPath::root, |field| KeyPath::root().key(field));
        Self {
            issues: vec![FactoryIssue { key, message }],
        }
    }

    /// An error about one key of the table (`weights.gpt-4o` for a nested
    /// one).
    pub fn at(key: &str, message: impl fmt::Display) -> Self {
        let key = key.split('.').fold(KeyPath::root(), |p, k| p.key(k));
        Self {
            issues: vec![FactoryIssue {
                key,
                message: message.to_string(),
            }],
        }
    }

    /// Several issues at once. An empty list reads as one unexplained
    /// refusal.
    pub fn from_issues(issues: Vec<FactoryIssue>) -> Self {
        if issues.is_empty() {
            return Self::new("refused its table");
        }
        Self { issues }
    }
}

/// The field a serde "unknown field" message names.
fn serde_unknown_field(message: &str) -> Option<&str> {
    let rest = message.split_once("unknown field `")?.1;
    rest.split_once('`').map(|(field, _)| field)
}

/// A provider type.
#[derive(Clone)]
pub struct ProviderType {
    factory: ProviderFactory,
    stands_in: bool,
    origin: Origin,
}

/// Where a type comes from, for `backstop check`'s report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Compiled into this binary.
    Builtin,
    /// Declared by the dynamic plugin at this path.
    Plugin(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built in"),
            Origin::Plugin(path) => write!(f, "plugin {path}"),
        }
    }
}

/// A name registered twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{seam} type {name:?} is already registered ({origin})")]
pub struct DuplicateType {
    /// The seam (`provider`, `selector`...).
    pub seam: &'static str,
    /// The name.
    pub name: String,
    /// Who registered it first.
    pub origin: Origin,
}

/// One seam's factories by name.
#[derive(Clone)]
struct Seam<F> {
    name: &'static str,
    types: BTreeMap<String, (F, Origin)>,
}

impl<F: Clone> Seam<F> {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            types: BTreeMap::new(),
        }
    }

    fn insert(&mut self, name: &str, factory: F, origin: Origin) -> Result<(), DuplicateType> {
        if let Some((_, first)) = self.types.get(name) {
            return Err(DuplicateType {
                seam: self.name,
                name: name.to_owned(),
                origin: first.clone(),
            });
        }
        self.types.insert(name.to_owned(), (factory, origin));
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&F> {
        self.types.get(name).map(|(f, _)| f)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}

/// Every `type` name a configuration may use, by seam.
///
/// A clone knows the same types and shares the libraries already opened:
/// a reload starts from a clone of the registry the gateway started with
/// (so a plugin dropped from `[[plugins]]` no longer names types), and a
/// plugin it names again is registered from the library already open,
/// never opened twice.
#[derive(Clone)]
pub struct Registry {
    providers: BTreeMap<String, ProviderType>,
    selectors: Seam<SelectorFactory>,
    health: Seam<HealthFactory>,
    budgets: Seam<BudgetFactory>,
    results: Seam<ResultFactory>,
    /// Where new registrations come from (switched while a plugin loads).
    origin: Origin,
    /// Plugin libraries opened so far, by path; shared by every clone.
    libraries: crate::dynamic::Libraries,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("selectors", &self.selectors.names().collect::<Vec<_>>())
            .field("health", &self.health.names().collect::<Vec<_>>())
            .field("budgets", &self.budgets.names().collect::<Vec<_>>())
            .field("results", &self.results.names().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// The seams a `type` name can belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeamKind {
    /// `[providers.*]`
    Provider,
    /// `selector`
    Selector,
    /// `health`
    Health,
    /// `budget`
    Budget,
    /// `result`
    Result,
}

impl SeamKind {
    /// The config word for the seam.
    pub fn as_str(self) -> &'static str {
        match self {
            SeamKind::Provider => "provider",
            SeamKind::Selector => "selector",
            SeamKind::Health => "health",
            SeamKind::Budget => "budget",
            SeamKind::Result => "result",
        }
    }
}

impl fmt::Display for SeamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Registry {
    /// A registry that knows no type at all.
    pub fn new() -> Self {
        Self {
            providers: BTreeMap::new(),
            selectors: Seam::new("selector"),
            health: Seam::new("health"),
            budgets: Seam::new("budget"),
            results: Seam::new("result"),
            origin: Origin::Builtin,
            libraries: crate::dynamic::Libraries::default(),
        }
    }

    /// The plugin libraries opened so far (by this registry and its
    /// clones), by the path they were opened from.
    pub fn opened_plugins(&self) -> Vec<std::path::PathBuf> {
        self.libraries.paths()
    }

    pub(crate) fn libraries(&self) -> &crate::dynamic::Libraries {
        &self.libraries
    }

    /// Registers a provider type.
    pub fn provider(
        &mut self,
        name: &str,
        factory: impl Fn(&serde_json::Value) -> Result<Arc<dyn Provider>, FactoryError>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), DuplicateType> {
        self.insert_provider(name, Arc::new(factory), false)
    }

    /// Registers a provider type whose providers may stand in as a model of
    /// a chain under their own id (a rule-based template): the model is
    /// implicit, free, with a window no prompt exceeds, and streams.
    pub fn stand_in_provider(
        &mut self,
        name: &str,
        factory: impl Fn(&serde_json::Value) -> Result<Arc<dyn Provider>, FactoryError>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), DuplicateType> {
        self.insert_provider(name, Arc::new(factory), true)
    }

    fn insert_provider(
        &mut self,
        name: &str,
        factory: ProviderFactory,
        stands_in: bool,
    ) -> Result<(), DuplicateType> {
        if let Some(first) = self.providers.get(name) {
            return Err(DuplicateType {
                seam: "provider",
                name: name.to_owned(),
                origin: first.origin.clone(),
            });
        }
        let origin = self.origin.clone();
        self.providers.insert(
            name.to_owned(),
            ProviderType {
                factory,
                stands_in,
                origin,
            },
        );
        Ok(())
    }

    /// Registers a selector type.
    pub fn selector(
        &mut self,
        name: &str,
        factory: impl Fn(
            &serde_json::Value,
            &StrategyContext,
        ) -> Result<Arc<dyn Selector>, FactoryError>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), DuplicateType> {
        let origin = self.origin.clone();
        self.selectors.insert(name, Arc::new(factory), origin)
    }

    /// Registers a health policy type.
    pub fn health(
        &mut self,
        name: &str,
        factory: impl Fn(
            &serde_json::Value,
            &StrategyContext,
        ) -> Result<Arc<dyn HealthPolicy>, FactoryError>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), DuplicateType> {
        let origin = self.origin.clone();
        self.health.insert(name, Arc::new(factory), origin)
    }

    /// Registers a budget policy type.
    pub fn budget(
        &mut self,
        name: &str,
        factory: impl Fn(
            &serde_json::Value,
            &StrategyContext,
        ) -> Result<Arc<dyn BudgetPolicy>, FactoryError>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), DuplicateType> {
        let origin = self.origin.clone();
        self.budgets.insert(name, Arc::new(factory), origin)
    }

    /// Registers a result handler type.
    pub fn result(
        &mut self,
        name: &str,
        factory: impl Fn(
            &serde_json::Value,
            &StrategyContext,
        ) -> Result<Arc<dyn ResultHandler>, FactoryError>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), DuplicateType> {
        let origin = self.origin.clone();
        self.results.insert(name, Arc::new(factory), origin)
    }

    /// Runs `register` with every registration it makes attributed to the
    /// plugin at `path`.
    pub fn as_plugin<T>(&mut self, path: &str, register: impl FnOnce(&mut Self) -> T) -> T {
        let before = std::mem::replace(&mut self.origin, Origin::Plugin(path.to_owned()));
        let result = register(self);
        self.origin = before;
        result
    }

    /// Names known for a seam, sorted.
    pub fn names(&self, seam: SeamKind) -> Vec<&str> {
        match seam {
            SeamKind::Provider => self.providers.keys().map(String::as_str).collect(),
            SeamKind::Selector => self.selectors.names().collect(),
            SeamKind::Health => self.health.names().collect(),
            SeamKind::Budget => self.budgets.names().collect(),
            SeamKind::Result => self.results.names().collect(),
        }
    }

    /// Whether `name` is known for `seam`.
    pub fn knows(&self, seam: SeamKind, name: &str) -> bool {
        match seam {
            SeamKind::Provider => self.providers.contains_key(name),
            SeamKind::Selector => self.selectors.get(name).is_some(),
            SeamKind::Health => self.health.get(name).is_some(),
            SeamKind::Budget => self.budgets.get(name).is_some(),
            SeamKind::Result => self.results.get(name).is_some(),
        }
    }

    /// Where a type comes from.
    pub fn origin(&self, seam: SeamKind, name: &str) -> Option<&Origin> {
        match seam {
            SeamKind::Provider => self.providers.get(name).map(|p| &p.origin),
            SeamKind::Selector => self.selectors.types.get(name).map(|t| &t.1),
            SeamKind::Health => self.health.types.get(name).map(|t| &t.1),
            SeamKind::Budget => self.budgets.types.get(name).map(|t| &t.1),
            SeamKind::Result => self.results.types.get(name).map(|t| &t.1),
        }
    }

    /// Whether providers of this type stand in as a model of a chain.
    pub fn stands_in(&self, provider_type: &str) -> bool {
        self.providers
            .get(provider_type)
            .is_some_and(|p| p.stands_in)
    }

    pub(crate) fn provider_factory(&self, name: &str) -> Option<&ProviderFactory> {
        self.providers.get(name).map(|p| &p.factory)
    }

    pub(crate) fn selector_factory(&self, name: &str) -> Option<&SelectorFactory> {
        self.selectors.get(name)
    }

    pub(crate) fn health_factory(&self, name: &str) -> Option<&HealthFactory> {
        self.health.get(name)
    }

    pub(crate) fn budget_factory(&self, name: &str) -> Option<&BudgetFactory> {
        self.budgets.get(name)
    }

    pub(crate) fn result_factory(&self, name: &str) -> Option<&ResultFactory> {
        self.results.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_their_key() {
        let key = |e: FactoryError| e.issues[0].key.to_string();
        let e = FactoryError::new("unknown field `max_latncy_ms`, expected `max_latency_ms`");
        assert_eq!(key(e), "max_latncy_ms");
        // A missing key is reported at the table, where it should be added.
        assert_eq!(key(FactoryError::new("missing field `text`")), "");
        assert_eq!(key(FactoryError::new("no key here")), "");
        assert_eq!(
            key(FactoryError::at("weights.gpt-4o", "must be > 0")),
            "weights.gpt-4o"
        );
    }

    #[test]
    fn a_name_registers_once_per_seam() {
        let mut registry = Registry::new();
        let factory = |_: &serde_json::Value,
                       _: &StrategyContext|
         -> Result<Arc<dyn Selector>, FactoryError> {
            Err(FactoryError::new("unused"))
        };
        assert!(registry.selector("priority", factory).is_ok());
        let again = registry.as_plugin("libx.so", |r| r.selector("priority", factory));
        assert_eq!(
            again.err().map(|e| e.to_string()),
            Some("selector type \"priority\" is already registered (built in)".to_owned())
        );
        assert_eq!(registry.names(SeamKind::Selector), ["priority"]);
    }
}
