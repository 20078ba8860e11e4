//! `[providers.<id>]`: who serves the models.

use std::sync::Arc;

use backstop_core::Provider;
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
    /// What the report shows, when its type is known.
    pub entry: Option<ProviderEntry>,
}

impl Builder<'_> {
    pub(super) fn providers(&mut self, registry: &Registry) -> Vec<BuiltProvider> {
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
            let unset = self.unset_secrets(&at, table);
            if let Some(factory) = registry.provider_factory(&type_name) {
                match factory(&config) {
                    Ok(p) => provider.provider = Some(p),
                    Err(e) if unset.iter().any(|var| e.to_string().contains(var.as_str())) => {
                        // Already reported at its key, by name.
                    }
                    Err(e) => self.factory_problem(&at, &type_name, e),
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

    /// Reports every `*_env` key of the table that names an unset (or
    /// empty) environment variable, and returns their names. Their values
    /// are secrets: only the names are ever shown.
    fn unset_secrets(&mut self, at: &KeyPath, table: &figment::value::Dict) -> Vec<String> {
        let mut unset = Vec::new();
        for (key, value) in table {
            let (true, Value::String(_, var)) = (key.ends_with("_env"), value) else {
                continue;
            };
            let set = std::env::var_os(var).is_some_and(|v| !v.is_empty());
            if !var.is_empty() && !set {
                self.problem(
                    &at.key(key.as_str()),
                    format!("environment variable {var:?} is not set"),
                );
                unset.push(var.clone());
            }
        }
        unset
    }
}
