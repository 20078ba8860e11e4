//! The plugin side: what [`export_plugin!`](crate::export_plugin) expands
//! to.
//!
//! A plugin author implements a core trait ([`Provider`](backstop_core::Provider)
//! or [`Selector`](backstop_core::Selector)) plus [`PluginProvider`] or
//! [`PluginSelector`] (how to build it from its config), and lists the type
//! in `export_plugin!`. The SDK writes every export: `catch_unwind` around
//! each, the plugin's own tokio runtime for async work (a call is polled
//! inline first, and moves onto a task of that runtime once it has to
//! wait), JSON on the wire, and buffers freed by the side that allocated
//! them.

mod guard;
pub(crate) mod provider;
mod runtime;
pub(crate) mod selector;

use std::ffi::c_void;
use std::sync::OnceLock;

pub use provider::PluginProvider;
pub use selector::PluginSelector;

use crate::abi::{FfiBytes, FfiStr, PluginDeclaration, PluginKind, TypeExport};
use crate::wire::WireFailure;

/// Why a plugin type could not be built from its config; the host reports
/// its text.
pub type InitError = Box<dyn std::error::Error + Send + Sync>;

/// A failure message as JSON bytes.
pub(crate) fn failure_bytes(message: String) -> FfiBytes {
    FfiBytes::from_vec(serde_json::to_vec(&WireFailure { message }).unwrap_or_default())
}

/// The declaration a plugin library hands the host, built once.
#[doc(hidden)]
pub struct Declaration {
    declaration: PluginDeclaration,
    // Owns the array `declaration.exports` points into.
    _exports: Box<[TypeExport]>,
}

/// Collects a plugin's exported types (used by [`export_plugin!`](crate::export_plugin)).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct DeclarationBuilder {
    exports: Vec<TypeExport>,
}

impl DeclarationBuilder {
    /// Exports provider type `P` as `type_name`.
    pub fn provider<P: PluginProvider>(&mut self, type_name: &'static str) {
        let vtable: &'static crate::abi::ProviderVTable = &provider::Exports::<P>::VTABLE;
        self.push(
            PluginKind::Provider,
            type_name,
            std::ptr::from_ref(vtable).cast(),
        );
    }

    /// Exports selector type `S` as `type_name`.
    pub fn selector<S: PluginSelector>(&mut self, type_name: &'static str) {
        let vtable: &'static crate::abi::SelectorVTable = &selector::Exports::<S>::VTABLE;
        self.push(
            PluginKind::Selector,
            type_name,
            std::ptr::from_ref(vtable).cast(),
        );
    }

    fn push(&mut self, kind: PluginKind, type_name: &'static str, vtable: *const c_void) {
        self.exports.push(TypeExport {
            kind: kind.code(),
            type_name: FfiStr::from_str(type_name),
            vtable,
        });
    }
}

/// Builds the declaration on first call and returns a pointer to it; null
/// if building it panicked. Used by [`export_plugin!`](crate::export_plugin).
#[doc(hidden)]
pub fn declare(
    cell: &'static OnceLock<Declaration>,
    name: &'static str,
    build: impl FnOnce(&mut DeclarationBuilder),
) -> *const PluginDeclaration {
    guard::guard(|| {
        let built = cell.get_or_init(|| {
            let mut builder = DeclarationBuilder::default();
            build(&mut builder);
            let exports = builder.exports.into_boxed_slice();
            Declaration {
                declaration: PluginDeclaration {
                    name: FfiStr::from_str(name),
                    sdk_version: FfiStr::from_str(crate::SDK_VERSION),
                    exports: exports.as_ptr(),
                    exports_len: exports.len(),
                },
                _exports: exports,
            }
        });
        std::ptr::from_ref(&built.declaration)
    })
    .unwrap_or(std::ptr::null())
}
