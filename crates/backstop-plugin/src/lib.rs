//! # backstop-plugin
//!
//! Backstop's dynamic-plugin boundary. A provider or a strategy is the same
//! Rust code whether compiled into the gateway or loaded at run time from a
//! shared library; this crate is what lets the second work without the
//! gateway noticing.
//!
//! - [`abi`]: the boundary. Only C types and byte buffers cross it: an ABI
//!   version the host reads first, a declaration with a `#[repr(C)]` vtable
//!   per exported type, JSON bytes for configs, calls, responses and errors,
//!   FFI-safe futures ([`async_ffi`]) and a poll-next entry for streams.
//! - The plugin side (always built): implement a core trait plus
//!   [`PluginProvider`] or [`PluginSelector`], and export the type with
//!   [`export_plugin!`]. Async work runs on the plugin's own tokio runtime,
//!   every export catches panics, and dropping a call on the host cancels
//!   the plugin's task.
//! - The host side (feature `host`): [`host::load`] a library (its ABI
//!   version is checked before anything else is touched), then build its
//!   types through [`host::ProviderFactory`] and [`host::SelectorFactory`]
//!   into `Arc<dyn Provider>` / `Arc<dyn Selector>` the Router cannot tell
//!   from compiled-in ones. Libraries are never unloaded.
//!
//! ```ignore
//! use backstop_plugin::{PluginProvider, InitError};
//!
//! impl PluginProvider for Echo {
//!     fn from_config(config: serde_json::Value) -> Result<Self, InitError> {
//!         Ok(serde_json::from_value(config)?)
//!     }
//! }
//!
//! backstop_plugin::export_plugin! {
//!     name: "example",
//!     provider "echo" => Echo,
//! }
//! ```
//!
//! The unsafe code of the boundary lives in this crate, each block with its
//! safety argument; plugin crates write none.
#![allow(unsafe_code)]

pub mod abi;
#[cfg(feature = "host")]
pub mod host;
pub mod sdk;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod wire;

pub use abi::{ABI_VERSION, PluginKind};
pub use sdk::{InitError, PluginProvider, PluginSelector};

/// The `#[async_trait]` attribute core's `Provider` is written with.
pub use async_trait::async_trait;
/// Core, re-exported so a plugin can depend on this crate alone.
pub use backstop_core as core;

/// The version of this SDK, recorded in every plugin's declaration.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Exports a plugin's types from a `cdylib`.
///
/// Each entry names a kind (`provider` or `selector`), the name configs use
/// in `type = "..."`, and the Rust type, which must implement
/// [`PluginProvider`] or [`PluginSelector`]:
///
/// ```ignore
/// backstop_plugin::export_plugin! {
///     name: "acme",
///     provider "acme_llm" => AcmeProvider,
///     selector "acme_sticky" => StickySelector,
/// }
/// ```
///
/// Use it once per library. It defines the two `#[no_mangle]` symbols the
/// host looks for, so a crate that is also linked into other binaries as an
/// `rlib` should put it behind a cargo feature (the example plugin uses a
/// default feature `dynamic`), or two plugins linked into one binary would
/// define the same symbols.
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:literal,
        $( $kind:ident $type_name:literal => $ty:ty ),+ $(,)?
    ) => {
        /// The plugin ABI version this library speaks; the host reads it first.
        #[unsafe(no_mangle)]
        pub extern "C" fn backstop_plugin_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }

        /// This library's plugin declaration; null if building it failed.
        #[unsafe(no_mangle)]
        pub extern "C" fn backstop_plugin_declaration() -> *const $crate::abi::PluginDeclaration {
            static DECLARATION: ::std::sync::OnceLock<$crate::sdk::Declaration> =
                ::std::sync::OnceLock::new();
            $crate::sdk::declare(&DECLARATION, $name, |builder| {
                $( builder.$kind::<$ty>($type_name); )+
            })
        }
    };
}
