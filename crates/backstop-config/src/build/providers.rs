//! `[providers.<id>]`: who serves the models.

use std::sync::Arc;

use backstop_core::Provider;
use backstop_http::{ENV_VAR_NAME_RULE, is_env_var_name};
use figment::value::Value;

use super::Builder;
use crate::problem::KeyPath;
use crate::registry::{Registry, SeamKind};
use crate::report::ProviderEntry;

/// A provider table, built as far as it could be.
pub(crate) struct BuiltProvider {
    /// Its id.
    pub id: String,
    /// Whether its type stands in as a model of its own id.
    pub stands_in: bool,
    /// The provider, when it could be built.
    pub provider: Option<Arc<dyn Provider>>,
    /// Its table (`type` and the rest, as JSON): on a reload, a provider
    /// whose table did not change is handed over, connections and all.
    pub key: String,
    /// Whether it was handed over from the configuration being replaced.
    pub handed_over: bool,
    /// What the report shows, when its type is known.
    pub entry: Option<ProviderEntry>,
}

impl Builder<'_> {
    /// Every provider; on a reload, `previous` holds the running ones by
    /// table, handed over to a table that did not change.
    pub(super) fn providers(
        &mut self,
        registry: &Registry,
        previous: &[(String, Arc<dyn Provider>)],
    ) -> Vec<BuiltProvider> {
        let path = KeyPath::root().key("providers");
        let Some(value) = self.section("providers") else {
            return Vec::new();
        };
        let Some(dict) = self.table(&path, value, "a table of providers") else {
            return Vec::new();
        };
        let mut built = Vec::new();
        for id in self.src.ordered_keys("providers", dict) {
            let at = path.key(id);
            let mut provider = BuiltProvider {
                id: id.to_owned(),
                stands_in: false,
                provider: None,
                key: String::new(),
                handed_over: false,
                entry: None,
            };
            let Some(table) = dict.get(id).and_then(|v| self.table(&at, v, "a table")) else {
                built.push(provider);
                continue;
            };
            let Some(type_name) = self.type_of(registry, SeamKind::Provider, &at, table) else {
                built.push(provider);
                continue;
            };
            provider.stands_in = registry.stands_in(&type_name);
            let config = self.factory_config(table);
            let reported = self.secret_variables(&at, table);
            provider.key = format!("{type_name}\u{0}{config}");
            let running = previous.iter().find(|(key, _)| *key == provider.key);
            if let (Some((_, running)), true) = (running, reported.is_empty()) {
                provider.provider = Some(Arc::clone(running));
                provider.handed_over = true;
            } else if let Some(factory) = registry.provider_factory(&type_name) {
                match factory(&config) {
                    Ok(p) => provider.provider = Some(p),
                    Err(mut e) => {
                        // What was already reported at its key is not
                        // repeated in the factory's words.
                        e.issues
                            .retain(|issue| !reported.iter().any(|r| r.covers(issue)));
                        if !e.issues.is_empty() {
                            self.factory_problem(&at, &type_name, e);
                        }
                    }
                }
            }
            provider.entry = Some(ProviderEntry {
                id: id.to_owned(),
                origin: registry
                    .origin(SeamKind::Provider, &type_name)
                    .cloned()
                    .unwrap_or(crate::registry::Origin::Builtin),
                stands_in: provider.stands_in,
                type_name,
                config,
            });
            built.push(provider);
        }
        built
    }

    /// Reports every `*_env` key of the table that is not a variable name
    /// (the secret itself pasted in, most likely: it is not repeated) or
    /// names an unset (or empty) variable, and returns what it reported.
    /// The variables' values are secrets: only names are ever shown.
    fn secret_variables(
        &mut self,
        at: &KeyPath,
        table: &figment::value::Dict,
    ) -> Vec<ReportedVariable> {
        let mut reported = Vec::new();
        for (key, value) in table {
            let (true, Value::String(_, var)) = (key.ends_with("_env"), value) else {
                continue;
            };
            if var.is_empty() {
                continue;
            }
            if !is_env_var_name(var) {
                self.problem(
                    &at.key(key.as_str()),
                    format!(
                        "is not an environment variable name ({ENV_VAR_NAME_RULE}); it names the variable that holds the secret, never the secret itself (the value is not repeated here)"
                    ),
                );
                reported.push(ReportedVariable {
                    key: key.clone(),
                    name: None,
                });
            } else if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
                self.problem(
                    &at.key(key.as_str()),
                    format!("environment variable {var:?} is not set"),
                );
                reported.push(ReportedVariable {
                    key: key.clone(),
                    name: Some(var.clone()),
                });
            }
        }
        reported
    }
}

/// A `*_env` key already reported by [`Builder::secret_variables`].
struct ReportedVariable {
    /// The key in the provider's table.
    key: String,
    /// The variable it names, when it is a name (unset).
    name: Option<String>,
}

impl ReportedVariable {
    /// Whether a factory's issue is about the same thing.
    fn covers(&self, issue: &crate::registry::FactoryIssue) -> bool {
        let same_key = matches!(
            issue.key.segments().last(),
            Some(crate::problem::Segment::Key(key)) if *key == self.key
        );
        same_key
            || self
                .name
                .as_ref()
                .is_some_and(|name| issue.message.contains(name.as_str()))
    }
}
