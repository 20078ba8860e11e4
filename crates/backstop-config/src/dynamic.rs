//! Loading dynamic plugins into the Registry, through backstop-plugin's
//! host API.

use std::path::Path;

use crate::registry::{FactoryError, Registry};

/// Opens the plugin library at `path` and registers the types it declares,
/// attributed to it.
pub(crate) fn load(registry: &mut Registry, path: &Path) -> Result<(), FactoryError> {
    let _ = registry;
    Err(FactoryError::new(format!(
        "cannot load {}: this build of backstop has no dynamic-plugin loader",
        path.display()
    )))
}
