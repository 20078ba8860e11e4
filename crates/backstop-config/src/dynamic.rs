//! Loading dynamic plugins into the Registry, through backstop-plugin's
//! host API: every provider and selector type a library exports becomes
//! usable by name, exactly like a compiled-in one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use backstop_plugin::host::{self, LoadedPlugin, PluginError};

use crate::registry::{FactoryError, Registry};

/// The plugin's refusal of a config, as a factory error (a serde message
/// names its key); any other failure as a whole-table error.
fn factory_error(e: PluginError) -> FactoryError {
    match e {
        PluginError::New { message, .. } => FactoryError::new(message),
        other => FactoryError::new(other),
    }
}

/// The plugin libraries a registry (and its clones) opened, by path, so
/// that a reload naming one again registers its types from the library
/// already open: a library is opened once and never unloaded.
#[derive(Clone, Default)]
pub(crate) struct Libraries(Arc<Mutex<BTreeMap<PathBuf, LoadedPlugin>>>);

impl Libraries {
    /// The paths opened so far.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The plugin at `path`: the one already open, or opened now. Two
    /// spellings of one file are one library.
    fn open(&self, path: &Path) -> Result<LoadedPlugin, PluginError> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plugin) = open.get(&key) {
            tracing::debug!(plugin = plugin.name(), path = %path.display(), "plugin already loaded");
            return Ok(plugin.clone());
        }
        let plugin = host::load(path)?;
        tracing::info!(plugin = plugin.name(), path = %path.display(), "plugin loaded");
        open.insert(key, plugin.clone());
        Ok(plugin)
    }
}

/// Registers the types the plugin library at `path` declares, attributed
/// to it, opening the library unless it is open already. Returns what went
/// wrong: the library cannot be used, or some of its type names are taken
/// (the others are registered).
pub(crate) fn load(registry: &mut Registry, path: &Path) -> Vec<String> {
    let plugin = match registry.libraries().open(path) {
        Ok(plugin) => plugin,
        Err(e) => return vec![e.to_string()],
    };
    let label = path.display().to_string();
    let mut problems = Vec::new();
    registry.as_plugin(&label, |registry| {
        for factory in plugin.provider_factories() {
            let name = factory.type_name().to_owned();
            let registered = registry.provider(&name, move |config| {
                factory.create(config).map_err(factory_error)
            });
            if let Err(e) = registered {
                problems.push(format!("plugin {:?} declares a {e}", plugin.name()));
            }
        }
        for factory in plugin.selector_factories() {
            let name = factory.type_name().to_owned();
            let registered = registry.selector(&name, move |config, ctx| {
                factory.create(config, &ctx.models).map_err(factory_error)
            });
            if let Err(e) = registered {
                problems.push(format!("plugin {:?} declares a {e}", plugin.name()));
            }
        }
    });
    problems
}
