//! Builds the `backstop` binary in release with the cargo that runs us
//! (`$CARGO`), and finds it from cargo's own artifact messages, so a custom
//! target directory works too.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{TaskError, workspace_root};

/// `cargo build --release -p xtask -p backstop-gateway --bin backstop`;
/// returns the path of the `backstop` executable.
///
/// Naming `xtask` too keeps the feature resolution identical to the build
/// of this task itself (`cargo run --release -p xtask`, which depends on
/// the gateway), so only the binary is linked: nothing is compiled twice.
/// Cargo's progress goes to the terminal as it builds.
pub fn release_gateway() -> Result<PathBuf, TaskError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "building the gateway: cargo build --release -p xtask -p backstop-gateway --bin backstop"
    );
    let output = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "xtask",
            "-p",
            "backstop-gateway",
            "--bin",
            "backstop",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| TaskError::new(format!("cannot run {}", cargo.to_string_lossy()), e))?;
    if !output.status.success() {
        return Err(TaskError::msg(format!(
            "cargo build --release -p xtask -p backstop-gateway --bin backstop failed ({})",
            output.status
        )));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "backstop")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| {
            TaskError::msg("cargo built backstop-gateway but reported no `backstop` executable")
        })
}

/// `0.1.0 (abc1234)`: the workspace version and, when git can tell, the
/// commit (`+dirty` with uncommitted changes).
pub fn version() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(workspace_root())
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!("{version} ({commit}{})", if dirty { "+dirty" } else { "" })
        }
        None => version.to_owned(),
    }
}
