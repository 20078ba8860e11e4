//! Loading dynamic plugins into the Registry, through backstop-plugin's
//! host API: every provider and selector type a library exports becomes
//! usable by name, exactly like a compiled-in one.

use std::path::Path;

use backstop_plugin::host::{self, PluginError};

use crate::registry::{FactoryError, Registry};

/// The plugin's refusal of a config, as a factory error (a serde message
/// names its key); any other failure as a whole-table error.
fn factory_error(e: PluginError) -> FactoryError {
    match e {
        PluginError::New { message, .. } => FactoryError::new(message),
        other => FactoryError::new(other),
    }
}

/// Opens the plugin library at `path` and registers the types it declares,
/// attributed to it. Returns what went wrong: the library cannot be used,
/// or some of its type names are taken (the others are registered).
pub(crate) fn load(registry: &mut Registry, path: &Path) -> Vec<String> {
    let plugin = match host::load(path) {
        Ok(plugin) => plugin,
        Err(e) => return vec![e.to_string()],
    };
    tracing::info!(plugin = plugin.name(), path = %path.display(), "plugin loaded");
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
