//! Builds plugin libraries with cargo, for tests and benches (feature
//! `test-util`).
//!
//! Runs `cargo build -p <package>...` in this workspace (or, for a crate
//! outside it such as the plugin guide's, `cargo build --manifest-path`)
//! and reads the library paths from cargo's JSON messages, so it finds them
//! wherever the target directory is (`CARGO_TARGET_DIR`, a config file, the
//! default).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which cargo profile to build with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `dev`: what tests use.
    Dev,
    /// `release`: what benches compare against.
    Release,
}

/// Why the plugins could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Cargo could not be started.
    #[error("cannot run `{cargo}`: {source}")]
    Spawn {
        /// The cargo command.
        cargo: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Cargo failed.
    #[error("`cargo build` of {packages:?} failed ({status}):\n{stderr}")]
    Failed {
        /// The packages.
        packages: Vec<String>,
        /// Cargo's exit status.
        status: std::process::ExitStatus,
        /// What cargo printed.
        stderr: String,
    },
    /// The workspace's `Cargo.lock` could not be copied next to an outside
    /// crate's manifest.
    #[error("cannot copy the workspace's Cargo.lock to `{}`: {source}", to.display())]
    Lockfile {
        /// Where it was to go.
        to: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Cargo built the package but reported no dynamic library for it.
    #[error("cargo built `{0}` but reported no cdylib for it (is its crate-type `cdylib`?)")]
    NoLibrary(String),
}

/// Builds `packages` (each a workspace package with a `cdylib` target) in
/// one cargo run, and returns their library paths in the same order.
pub fn build_plugins(packages: &[&str], profile: Profile) -> Result<Vec<PathBuf>, BuildError> {
    let mut command = cargo_build(profile);
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    for package in packages {
        command.args(["-p", package]);
    }
    run(command, packages)
}

/// Builds the crate of `manifest`, which lives outside this workspace the
/// way a plugin author's crate does, offline (every dependency it shares
/// with the workspace is already fetched), into `target_dir`; returns its
/// library path. Without a `Cargo.lock` next to the manifest the
/// workspace's is copied there first, so both resolve to the same versions
/// and the build reuses what the workspace compiled.
pub fn build_outside(
    manifest: &Path,
    package: &str,
    target_dir: &Path,
    profile: Profile,
) -> Result<PathBuf, BuildError> {
    let lock = manifest.with_file_name("Cargo.lock");
    if !lock.exists() {
        let workspace_lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
        std::fs::copy(&workspace_lock, &lock).map_err(|source| BuildError::Lockfile {
            to: lock.clone(),
            source,
        })?;
    }
    let mut command = cargo_build(profile);
    command
        .arg("--offline")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    let mut paths = run(command, &[package])?;
    paths
        .pop()
        .ok_or_else(|| BuildError::NoLibrary(package.to_owned()))
}

/// `cargo build` with JSON messages, in `profile`.
fn cargo_build(profile: Profile) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.args(["build", "--message-format=json-render-diagnostics"]);
    if profile == Profile::Release {
        command.arg("--release");
    }
    command
}

/// Runs a `cargo build` and finds the cdylib of each package.
fn run(mut command: Command, packages: &[&str]) -> Result<Vec<PathBuf>, BuildError> {
    let output = command.output().map_err(|source| BuildError::Spawn {
        cargo: format!("{:?}", command.get_program()),
        source,
    })?;
    if !output.status.success() {
        return Err(BuildError::Failed {
            packages: packages.iter().map(|p| (*p).to_owned()).collect(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    packages
        .iter()
        .map(|package| {
            cdylib_of(&stdout, package).ok_or_else(|| BuildError::NoLibrary((*package).to_owned()))
        })
        .collect()
}

/// The cdylib cargo reported for `package` in its JSON messages.
fn cdylib_of(messages: &str, package: &str) -> Option<PathBuf> {
    let crate_name = package.replace('-', "_");
    let file_name = format!(
        "{}{crate_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact" && m["target"]["name"] == crate_name.as_str()
        })
        .filter_map(|m| m["filenames"].as_array().cloned())
        .flatten()
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.file_name().is_some_and(|n| n == file_name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cdylib_among_cargo_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"other","kind":["cdylib"]},"filenames":["/t/debug/libother.so"]}"#,
            "not json",
            &format!(
                r#"{{"reason":"compiler-artifact","target":{{"name":"my_plugin","kind":["cdylib","rlib"]}},"filenames":["/t/debug/libmy_plugin.rlib","/t/debug/{}my_plugin{}"]}}"#,
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            ),
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        let found = cdylib_of(&messages, "my-plugin").unwrap();
        assert!(found.ends_with(format!(
            "{}my_plugin{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        )));
        assert_eq!(cdylib_of(&messages, "missing"), None);
    }
}
