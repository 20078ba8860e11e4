//! Why a plugin could not be loaded, or one of its types not created.
//!
//! Failures of calls into a loaded plugin are not here: they are
//! [`ProviderError`](backstop_core::ProviderError)s (a panic is
//! `invalid_response`), so the Router classifies them, falls over, and the
//! model's circuit records them like any upstream failure.

use std::path::PathBuf;

use crate::abi::PluginKind;

/// A plugin library that cannot be used, or a type it could not create.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Nothing exists at the path.
    #[error(
        "plugin library `{}` does not exist{}",
        path.display(),
        resolved.as_ref().map(|r| format!(" (relative to the working directory: `{}`)", r.display())).unwrap_or_default()
    )]
    NotFound {
        /// The path as configured.
        path: PathBuf,
        /// Where a relative path led, from the working directory; `None`
        /// for an absolute path.
        resolved: Option<PathBuf>,
    },
    /// The path exists but cannot be read.
    #[error("plugin library `{}` cannot be read: {source}", path.display())]
    Unreadable {
        /// The path as configured.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a shared library this platform can load.
    #[error("`{}` is not a loadable shared library: {reason}", path.display())]
    NotALibrary {
        /// The path as configured.
        path: PathBuf,
        /// What the dynamic loader said.
        reason: String,
    },
    /// The library is not a Backstop plugin: a required symbol is missing.
    #[error(
        "`{}` is not a Backstop plugin: it does not export `{symbol}` \
         (plugins export it with `backstop_plugin::export_plugin!`)",
        path.display()
    )]
    MissingSymbol {
        /// The path as configured.
        path: PathBuf,
        /// The missing symbol.
        symbol: &'static str,
    },
    /// The plugin was built against another version of the boundary.
    #[error(
        "`{}` speaks plugin ABI version {found}, but this host speaks version {expected}; \
         rebuild the plugin against backstop-plugin {host_sdk}",
        path.display(),
        host_sdk = crate::SDK_VERSION
    )]
    AbiMismatch {
        /// The path as configured.
        path: PathBuf,
        /// The plugin's ABI version.
        found: u32,
        /// The host's ABI version.
        expected: u32,
    },
    /// The plugin's declaration is malformed.
    #[error("`{}` has a malformed plugin declaration: {reason}", path.display())]
    BadDeclaration {
        /// The path as configured.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The plugin does not export a type of that kind and name.
    #[error("plugin `{plugin}` has no {kind} type `{type_name}`; it exports: {available}")]
    UnknownType {
        /// The plugin's name.
        plugin: String,
        /// The kind asked for.
        kind: PluginKind,
        /// The name asked for.
        type_name: String,
        /// What it exports, as `kind name` pairs.
        available: String,
    },
    /// The plugin's constructor refused the config.
    #[error("plugin `{plugin}` could not create {kind} `{type_name}`: {message}")]
    New {
        /// The plugin's name.
        plugin: String,
        /// The kind.
        kind: PluginKind,
        /// The type.
        type_name: String,
        /// The plugin's reason.
        message: String,
    },
    /// The plugin's constructor panicked.
    #[error("plugin `{plugin}` panicked while creating {kind} `{type_name}`: {message}")]
    NewPanicked {
        /// The plugin's name.
        plugin: String,
        /// The kind.
        kind: PluginKind,
        /// The type.
        type_name: String,
        /// The panic message.
        message: String,
    },
    /// The config or model table could not be encoded as JSON.
    #[error("cannot encode the {what} for plugin `{plugin}`: {source}")]
    Encode {
        /// The plugin's name.
        plugin: String,
        /// `config` or `model table`.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
}
