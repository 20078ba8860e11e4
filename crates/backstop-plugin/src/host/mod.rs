//! The host side: loads plugin libraries and wraps their types in the core
//! traits.
//!
//! [`load`] opens a library, reads its ABI version before touching anything
//! else, then its declaration. The [`LoadedPlugin`] it returns hands out a
//! [`ProviderFactory`] or [`SelectorFactory`] per exported type; what they
//! create implements [`Provider`](backstop_core::Provider) or
//! [`Selector`](backstop_core::Selector), so a Router cannot tell a
//! dynamic plugin from a compiled-in one. A config registry registers each
//! factory under its type name:
//!
//! ```ignore
//! let plugin = backstop_plugin::host::load(&entry.path)?;
//! for factory in plugin.provider_factories() {
//!     registry.provider(factory.type_name(), move |config| factory.create(config));
//! }
//! ```
//!
//! Libraries are never unloaded: what a plugin created may point into it
//! for the life of the process.

mod error;
mod provider;
mod selector;

use std::ffi::c_void;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libloading::Library;
use serde::de::DeserializeOwned;

pub use error::PluginError;

use crate::abi::{
    ABI_VERSION, ABI_VERSION_SYMBOL, DECLARATION_SYMBOL, FfiBytes, FfiNew, FfiStr,
    PluginDeclaration, PluginKind, ProviderVTable, STATUS_ERROR, STATUS_OK, STATUS_PANIC,
    SelectorVTable,
};
use crate::wire::WireFailure;

/// What a plugin library declares: what `backstop plugin inspect` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The library, as an absolute path.
    pub path: PathBuf,
    /// The plugin's name.
    pub name: String,
    /// The plugin ABI version it speaks.
    pub abi_version: u32,
    /// The version of `backstop-plugin` it was built with.
    pub sdk_version: String,
    /// Its exported types, in declaration order.
    pub types: Vec<PluginType>,
}

/// One exported type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginType {
    /// Its kind.
    pub kind: PluginKind,
    /// The name configs use in `type = "..."`.
    pub name: String,
}

impl fmt::Display for PluginInfo {
    /// ```text
    /// plugin  example
    /// path    /srv/plugins/libbackstop_plugin_example.so
    /// abi     1
    /// sdk     0.1.0
    /// type    provider echo
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plugin  {}", self.name)?;
        writeln!(f, "path    {}", self.path.display())?;
        writeln!(f, "abi     {}", self.abi_version)?;
        write!(f, "sdk     {}", self.sdk_version)?;
        for t in &self.types {
            write!(f, "\ntype    {} {}", t.kind, t.name)?;
        }
        Ok(())
    }
}

/// Loads the plugin at `path` and returns what it declares, or the exact
/// reason it cannot be loaded (what `backstop plugin inspect PATH` prints).
/// The library stays loaded.
pub fn inspect(path: impl AsRef<Path>) -> Result<PluginInfo, PluginError> {
    load(path).map(|plugin| plugin.info().clone())
}

/// Loads the plugin library at `path`.
///
/// Checks, in order: the file exists and is a loadable library; it exports
/// the ABI-version function, which returns this host's [`ABI_VERSION`]; only
/// then its declaration, which must be well formed. Loading runs the
/// library's initialisers: load only plugins you trust as much as the
/// gateway itself. Loading the same library twice returns the same types.
pub fn load(path: impl AsRef<Path>) -> Result<LoadedPlugin, PluginError> {
    let path = path.as_ref();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let resolved = path
                .is_relative()
                .then(|| std::path::absolute(path).ok())
                .flatten();
            return Err(PluginError::NotFound {
                path: path.into(),
                resolved,
            });
        }
        Err(source) => {
            return Err(PluginError::Unreadable {
                path: path.into(),
                source,
            });
        }
        Ok(meta) if !meta.is_file() => {
            return Err(PluginError::NotALibrary {
                path: path.into(),
                reason: "it is not a regular file".to_owned(),
            });
        }
        Ok(_) => {}
    }
    // A bare file name would make the loader search the library path
    // instead of opening this file.
    let absolute = std::path::absolute(path).map_err(|source| PluginError::Unreadable {
        path: path.into(),
        source,
    })?;

    // SAFETY: opening a library runs its initialisers, which no check can
    // make safe; a plugin is code the operator chose to run, like the
    // gateway binary itself.
    let library = unsafe { Library::new(&absolute) }.map_err(|e| PluginError::NotALibrary {
        path: path.into(),
        reason: with_sources(&e),
    })?;
    // Never unloaded: providers, streams and futures the plugin creates
    // point into its code for as long as anyone holds them.
    let library: &'static Library = Box::leak(Box::new(library));

    let missing = |symbol| PluginError::MissingSymbol {
        path: path.into(),
        symbol,
    };
    // SAFETY: every ABI version defines this symbol as `extern "C" fn() ->
    // u32`; that is why it is read first.
    let abi_version = *unsafe { library.get::<extern "C" fn() -> u32>(ABI_VERSION_SYMBOL) }
        .map_err(|_| missing(ABI_VERSION_SYMBOL))?;
    let found = abi_version();
    if found != ABI_VERSION {
        return Err(PluginError::AbiMismatch {
            path: path.into(),
            found,
            expected: ABI_VERSION,
        });
    }

    // SAFETY: the library speaks this host's ABI version, which defines the
    // declaration symbol as this function type.
    let declare =
        *unsafe { library.get::<extern "C" fn() -> *const PluginDeclaration>(DECLARATION_SYMBOL) }
            .map_err(|_| missing(DECLARATION_SYMBOL))?;
    let bad = |reason: String| PluginError::BadDeclaration {
        path: path.into(),
        reason,
    };
    // SAFETY: under this ABI version a non-null pointer from the
    // declaration function points at a declaration that lives as long as
    // the library, which is never unloaded.
    let declaration: &'static PluginDeclaration = unsafe { declare().as_ref() }
        .ok_or_else(|| bad("the declaration function returned null (it panicked?)".to_owned()))?;
    read_declaration(declaration, absolute).map_err(bad)
}

fn read_declaration(
    declaration: &'static PluginDeclaration,
    path: PathBuf,
) -> Result<LoadedPlugin, String> {
    // SAFETY: the declaration's strings are `'static` in the library.
    let name = unsafe { static_text(declaration.name) }.map_err(|e| format!("its name {e}"))?;
    // SAFETY: as above.
    let sdk_version = unsafe { static_text(declaration.sdk_version) }
        .map_err(|e| format!("its SDK version {e}"))?;
    if name.is_empty() {
        return Err("its name is empty".to_owned());
    }
    let exports = if declaration.exports_len == 0 {
        &[][..]
    } else if declaration.exports.is_null() {
        return Err("its export list is null".to_owned());
    } else {
        // SAFETY: a well-formed declaration points at `exports_len` exports
        // that live as long as the library.
        unsafe { std::slice::from_raw_parts(declaration.exports, declaration.exports_len) }
    };

    let mut types = Vec::with_capacity(exports.len());
    let mut vtables = Vec::with_capacity(exports.len());
    for export in exports {
        let kind = PluginKind::from_code(export.kind);
        // SAFETY: as for the name.
        let type_name = unsafe { static_text(export.type_name) }
            .map_err(|e| format!("the name of a {kind} type {e}"))?;
        if type_name.is_empty() {
            return Err(format!("a {kind} type has an empty name"));
        }
        if types
            .iter()
            .any(|t: &PluginType| t.kind == kind && t.name == type_name)
        {
            return Err(format!("{kind} type `{type_name}` is exported twice"));
        }
        if export.vtable.is_null() {
            return Err(format!("{kind} type `{type_name}` has a null vtable"));
        }
        let vtable = match kind {
            // SAFETY: under this ABI version a provider export's vtable
            // points at a `'static` `ProviderVTable`.
            PluginKind::Provider => {
                VTable::Provider(unsafe { &*export.vtable.cast::<ProviderVTable>() })
            }
            // SAFETY: likewise for selectors.
            PluginKind::Selector => {
                VTable::Selector(unsafe { &*export.vtable.cast::<SelectorVTable>() })
            }
            PluginKind::Unknown(_) => {
                tracing::warn!(
                    plugin = name,
                    type_name,
                    %kind,
                    "the plugin exports a kind this host does not know; skipped"
                );
                VTable::Unknown
            }
        };
        types.push(PluginType {
            kind,
            name: type_name.to_owned(),
        });
        vtables.push(vtable);
    }

    let info = PluginInfo {
        path,
        name: name.to_owned(),
        abi_version: ABI_VERSION,
        sdk_version: sdk_version.to_owned(),
        types,
    };
    tracing::debug!(
        plugin = info.name,
        path = %info.path.display(),
        sdk = info.sdk_version,
        types = info.types.len(),
        "plugin loaded"
    );
    Ok(LoadedPlugin {
        inner: Arc::new(Loaded {
            plugin: info.name.as_str().into(),
            info,
            vtables,
        }),
    })
}

/// # Safety
///
/// `text` must point at bytes that live as long as the process.
unsafe fn static_text(text: FfiStr<'static>) -> Result<&'static str, String> {
    // SAFETY: per this function's contract.
    let bytes = unsafe { text.as_bytes() };
    std::str::from_utf8(bytes).map_err(|e| format!("is not UTF-8: {e}"))
}

#[derive(Clone, Copy)]
enum VTable {
    Provider(&'static ProviderVTable),
    Selector(&'static SelectorVTable),
    Unknown,
}

struct Loaded {
    info: PluginInfo,
    plugin: Arc<str>,
    vtables: Vec<VTable>,
}

/// A loaded plugin library. Cheap to clone.
#[derive(Clone)]
pub struct LoadedPlugin {
    inner: Arc<Loaded>,
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("info", &self.inner.info)
            .finish()
    }
}

impl LoadedPlugin {
    /// What the library declares.
    pub fn info(&self) -> &PluginInfo {
        &self.inner.info
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    /// A factory for every provider type the plugin exports.
    pub fn provider_factories(&self) -> impl Iterator<Item = ProviderFactory> + '_ {
        self.exports().filter_map(|(t, vtable)| match vtable {
            VTable::Provider(vtable) => Some(ProviderFactory {
                plugin: self.inner.plugin.clone(),
                type_name: t.name.as_str().into(),
                vtable,
            }),
            _ => None,
        })
    }

    /// A factory for every selector type the plugin exports.
    pub fn selector_factories(&self) -> impl Iterator<Item = SelectorFactory> + '_ {
        self.exports().filter_map(|(t, vtable)| match vtable {
            VTable::Selector(vtable) => Some(SelectorFactory {
                plugin: self.inner.plugin.clone(),
                type_name: t.name.as_str().into(),
                vtable,
            }),
            _ => None,
        })
    }

    /// The factory of provider type `type_name`.
    pub fn provider_factory(&self, type_name: &str) -> Result<ProviderFactory, PluginError> {
        self.provider_factories()
            .find(|f| f.type_name() == type_name)
            .ok_or_else(|| self.unknown(PluginKind::Provider, type_name))
    }

    /// The factory of selector type `type_name`.
    pub fn selector_factory(&self, type_name: &str) -> Result<SelectorFactory, PluginError> {
        self.selector_factories()
            .find(|f| f.type_name() == type_name)
            .ok_or_else(|| self.unknown(PluginKind::Selector, type_name))
    }

    fn exports(&self) -> impl Iterator<Item = (&PluginType, VTable)> + '_ {
        self.inner
            .info
            .types
            .iter()
            .zip(self.inner.vtables.iter().copied())
    }

    fn unknown(&self, kind: PluginKind, type_name: &str) -> PluginError {
        let available = self
            .inner
            .info
            .types
            .iter()
            .map(|t| format!("{} `{}`", t.kind, t.name))
            .collect::<Vec<_>>();
        PluginError::UnknownType {
            plugin: self.name().to_owned(),
            kind,
            type_name: type_name.to_owned(),
            available: if available.is_empty() {
                "nothing".to_owned()
            } else {
                available.join(", ")
            },
        }
    }
}

pub use provider::ProviderFactory;
pub use selector::SelectorFactory;

/// The instance a constructor made, or why it made none.
fn created(
    made: FfiNew,
    plugin: &str,
    kind: PluginKind,
    type_name: &str,
) -> Result<*mut c_void, PluginError> {
    let message = || failure_message(&made.bytes);
    match made.status {
        STATUS_OK if !made.instance.is_null() => Ok(made.instance),
        STATUS_OK => Err(PluginError::New {
            plugin: plugin.to_owned(),
            kind,
            type_name: type_name.to_owned(),
            message: "the constructor reported success but returned no instance".to_owned(),
        }),
        STATUS_PANIC => Err(PluginError::NewPanicked {
            plugin: plugin.to_owned(),
            kind,
            type_name: type_name.to_owned(),
            message: message(),
        }),
        status => Err(PluginError::New {
            plugin: plugin.to_owned(),
            kind,
            type_name: type_name.to_owned(),
            message: if status == STATUS_ERROR {
                message()
            } else {
                format!("the constructor returned unknown status {status}")
            },
        }),
    }
}

/// The message of a JSON failure (a refused config, a panic), or the raw
/// bytes when they are not one.
fn failure_message(bytes: &FfiBytes) -> String {
    decode::<WireFailure>(bytes)
        .map(|m| m.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes.as_slice()).into_owned())
}

fn decode<T: DeserializeOwned>(bytes: &FfiBytes) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes.as_slice())
}

fn _factories_are_shareable(p: ProviderFactory, s: SelectorFactory) -> impl Send + Sync + 'static {
    (p, s)
}

/// An error and its sources, `: `-joined: libloading's own message is only
/// "dlopen failed", and the loader's reason (`invalid ELF header`, `wrong
/// architecture`) is its source.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
