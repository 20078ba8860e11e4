//! Loading: every way a library can be unusable gives its own clear error,
//! and `inspect` reports what a good one declares.

use backstop_plugin::host::{self, PluginError, PluginType};
use backstop_plugin::{ABI_VERSION, PluginKind, SDK_VERSION};
use serde_json::json;

use super::libraries;

#[test]
fn a_missing_file_is_not_found() {
    let error = host::load("/nonexistent/libnothing.so").unwrap_err();
    assert!(matches!(error, PluginError::NotFound { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "plugin library `/nonexistent/libnothing.so` does not exist"
    );
}

#[test]
fn a_text_file_is_not_a_library() {
    let path =
        std::env::temp_dir().join(format!("backstop-not-a-library-{}.so", std::process::id()));
    std::fs::write(&path, "this is not ELF").unwrap();
    let error = host::load(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(
        matches!(error, PluginError::NotALibrary { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("is not a loadable shared library"),
        "{error}"
    );
    // The loader's own reason, not only libloading's "dlopen failed".
    #[cfg(target_os = "linux")]
    assert!(error.to_string().contains("dlopen failed: "), "{error}");
}

#[test]
fn a_directory_is_not_a_library() {
    let error = host::load(std::env::temp_dir()).unwrap_err();
    assert!(
        matches!(error, PluginError::NotALibrary { .. }),
        "{error:?}"
    );
}

#[test]
fn a_library_without_the_abi_symbol_is_not_a_plugin() {
    let error = host::load(&libraries().not_a_plugin).unwrap_err();
    match &error {
        PluginError::MissingSymbol { symbol, .. } => {
            assert_eq!(*symbol, "backstop_plugin_abi_version");
        }
        other => panic!("expected MissingSymbol, got {other:?}"),
    }
    assert!(
        error.to_string().contains("is not a Backstop plugin"),
        "{error}"
    );
}

#[test]
fn a_wrong_abi_version_is_refused_before_anything_else_is_touched() {
    // The fixture's declaration function aborts the process: reaching the
    // assertion proves the host stopped at the version.
    let error = host::load(&libraries().wrong_abi).unwrap_err();
    match &error {
        PluginError::AbiMismatch {
            found, expected, ..
        } => {
            assert_eq!((*found, *expected), (ABI_VERSION + 1, ABI_VERSION));
        }
        other => panic!("expected AbiMismatch, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&format!("speaks plugin ABI version {}", ABI_VERSION + 1))
            && message.contains(&format!("this host speaks version {ABI_VERSION}")),
        "{message}"
    );
}

#[test]
fn inspect_reports_name_kinds_abi_and_sdk_version() {
    let info = host::inspect(&libraries().example).unwrap();
    assert_eq!(info.name, "example");
    assert_eq!(info.abi_version, ABI_VERSION);
    assert_eq!(info.sdk_version, SDK_VERSION);
    assert_eq!(
        info.types,
        [PluginType {
            kind: PluginKind::Provider,
            name: "echo".into()
        }]
    );
    assert!(info.path.is_absolute());
    let shown = info.to_string();
    assert!(shown.starts_with("plugin  example\n"), "{shown}");
    assert!(shown.ends_with("type    provider echo"), "{shown}");

    let info = host::inspect(&libraries().round_robin).unwrap();
    assert_eq!(info.name, "round-robin");
    assert_eq!(
        info.types,
        [PluginType {
            kind: PluginKind::Selector,
            name: "round_robin".into()
        }]
    );
}

#[test]
fn inspect_gives_the_exact_reason_a_library_cannot_load() {
    let error = host::inspect(&libraries().wrong_abi).unwrap_err();
    assert!(
        matches!(error, PluginError::AbiMismatch { .. }),
        "{error:?}"
    );
}

#[test]
fn a_type_the_plugin_does_not_export_names_what_it_does() {
    let plugin = host::load(&libraries().panics).unwrap();
    let error = plugin.provider_factory("openai").unwrap_err();
    assert_eq!(
        error.to_string(),
        "plugin `fixture-panics` has no provider type `openai`; \
         it exports: provider `panics`, selector `panics`"
    );
    assert!(plugin.selector_factory("round_robin").is_err());
}

#[test]
fn loading_a_library_twice_gives_working_types_both_times() {
    let first = host::load(&libraries().example).unwrap();
    let second = host::load(&libraries().example).unwrap();
    assert_eq!(first.info(), second.info());
    drop(first);
    let provider = second
        .provider_factory("echo")
        .unwrap()
        .create(&json!({}))
        .unwrap();
    drop(provider);
}
