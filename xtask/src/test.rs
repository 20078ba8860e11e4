//! `cargo xtask test [--no-install] [NEXTEST ARGS]...`: the README's test
//! command and what CI runs.
//!
//! 1. Looks for every system program the suite needs (see [`SYSTEM_NEEDS`])
//!    on `PATH`; the Debian packages of the missing ones are installed with
//!    `apt-get update && apt-get install -y ...` (as root, or through `sudo`),
//!    printing what is installed and why. Nothing is installed when every
//!    program is already there, so a warm machine never touches apt.
//! 2. Installs `cargo-nextest` with `cargo install --locked cargo-nextest`
//!    when `cargo nextest` is not available.
//! 3. Runs `cargo nextest run --workspace` followed by the extra arguments
//!    (`cargo xtask test --profile ci`, `cargo xtask test -E 'test(fleet)'`),
//!    and exits with nextest's own exit code. Arguments that pick packages
//!    themselves (`-p backstop-fleet`, `--package`, `--workspace`) replace
//!    `--workspace`, which would otherwise override them.
//!
//! `--no-install` only checks: a missing program fails the task with the
//! command that would install it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::Args;

use crate::{TaskError, workspace_root};

/// A system program the test suite runs, and the Debian packages that
/// provide it.
struct SystemNeed {
    /// Executables looked up on `PATH`; any one missing installs `packages`.
    binaries: &'static [&'static str],
    /// Debian packages installed with `apt-get install -y`.
    packages: &'static [&'static str],
    /// Which tests need it, printed when it is installed.
    used_by: &'static str,
}

/// Everything outside cargo that the test suite needs. One line per need.
#[rustfmt::skip]
const SYSTEM_NEEDS: &[SystemNeed] = &[
    SystemNeed { binaries: &["redis-server"], packages: &["redis-server"], used_by: "backstop-fleet's tests against a real Redis" },
    SystemNeed { binaries: &["chromium", "chromedriver", "kill"], packages: &["chromium", "chromium-driver", "procps"], used_by: "the gateway's dashboard tests in headless Chromium (kill stops its process group)" },
];

/// Arguments of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Do not install anything: fail, naming the install command, when a
    /// program the suite needs is missing.
    #[arg(long)]
    no_install: bool,
    /// Passed on to `cargo nextest run --workspace` (for example `-p
    /// backstop-fleet`, `--profile ci`, a test name filter).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "NEXTEST ARGS"
    )]
    nextest_args: Vec<OsString>,
}

/// Installs what is missing, then runs the suite; the exit code is nextest's.
pub fn run(args: &TestArgs) -> Result<ExitCode, TaskError> {
    install_system_needs(args.no_install)?;
    install_nextest(args.no_install)?;
    run_nextest(&args.nextest_args)
}

/// The cargo that runs us, so a toolchain override applies to the suite too.
fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Finds `name` as an executable file in one of `PATH`'s directories.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The Debian packages whose programs are missing, in [`SYSTEM_NEEDS`] order.
fn missing_packages() -> Vec<&'static SystemNeed> {
    SYSTEM_NEEDS
        .iter()
        .filter(|need| need.binaries.iter().any(|b| find_on_path(b).is_none()))
        .collect()
}

fn install_system_needs(no_install: bool) -> Result<(), TaskError> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing
        .iter()
        .flat_map(|need| need.packages.iter().copied())
        .collect();
    let install_line = format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    );
    for need in &missing {
        let absent: Vec<&str> = need
            .binaries
            .iter()
            .copied()
            .filter(|b| find_on_path(b).is_none())
            .collect();
        eprintln!(
            "test: {} not found on PATH (needed by {}); Debian package(s): {}",
            absent.join(", "),
            need.used_by,
            need.packages.join(" ")
        );
    }
    if no_install {
        return Err(TaskError::msg(format!(
            "missing programs for the test suite and --no-install was given; install them with: {install_line}"
        )));
    }
    if find_on_path("apt-get").is_none() {
        return Err(TaskError::msg(format!(
            "apt-get is not available on this machine; install the packages providing the missing programs yourself ({})",
            packages.join(" ")
        )));
    }
    // As root we call apt-get directly; otherwise through sudo if there is one.
    let sudo = if rustix::process::geteuid().is_root() {
        None
    } else if find_on_path("sudo").is_some() {
        Some("sudo")
    } else {
        return Err(TaskError::msg(format!(
            "installing {} needs root and sudo is not available; run as root: {install_line}",
            packages.join(" ")
        )));
    };
    eprintln!("test: installing Debian packages: {}", packages.join(" "));
    apt(sudo, &["update"])?;
    let mut install = vec!["install", "-y"];
    install.extend(packages.iter().copied());
    apt(sudo, &install)?;
    let still_missing: Vec<&str> = missing
        .iter()
        .flat_map(|need| need.binaries.iter().copied())
        .filter(|b| find_on_path(b).is_none())
        .collect();
    if !still_missing.is_empty() {
        return Err(TaskError::msg(format!(
            "apt-get installed {} but {} is still not on PATH",
            packages.join(" "),
            still_missing.join(", ")
        )));
    }
    eprintln!("test: installed {}", packages.join(" "));
    Ok(())
}

/// `[sudo] apt-get ARGS...`, non-interactive, output shown to the user.
fn apt(sudo: Option<&str>, args: &[&str]) -> Result<(), TaskError> {
    let mut command = match sudo {
        Some(sudo) => {
            let mut c = Command::new(sudo);
            c.arg("apt-get");
            c
        }
        None => Command::new("apt-get"),
    };
    command
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    let shown = format!(
        "{}apt-get {}",
        sudo.map_or(String::new(), |s| format!("{s} ")),
        args.join(" ")
    );
    eprintln!("test: {shown}");
    let status = command
        .status()
        .map_err(|e| TaskError::new(format!("cannot run {shown}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(TaskError::msg(format!("{shown} failed ({status})")))
    }
}

/// Whether `cargo nextest` runs.
fn nextest_available() -> bool {
    Command::new(cargo())
        .args(["nextest", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn install_nextest(no_install: bool) -> Result<(), TaskError> {
    if nextest_available() {
        return Ok(());
    }
    let line = "cargo install --locked cargo-nextest";
    if no_install {
        return Err(TaskError::msg(format!(
            "cargo-nextest is not installed and --no-install was given; install it with: {line}"
        )));
    }
    eprintln!("test: cargo-nextest not found; installing it: {line}");
    let status = Command::new(cargo())
        .args(["install", "--locked", "cargo-nextest"])
        .stdin(Stdio::null())
        .status()
        .map_err(|e| TaskError::new(format!("cannot run {line}"), e))?;
    if !status.success() {
        return Err(TaskError::msg(format!("{line} failed ({status})")));
    }
    if !nextest_available() {
        return Err(TaskError::msg(format!(
            "{line} succeeded but `cargo nextest` still does not run (is ~/.cargo/bin on PATH?)"
        )));
    }
    Ok(())
}

/// Whether the extra arguments choose packages themselves.
fn selects_packages(extra: &[OsString]) -> bool {
    extra.iter().any(|arg| {
        let arg = arg.to_string_lossy();
        arg == "-p"
            || arg.starts_with("-p") && !arg.starts_with("--")
            || arg == "--package"
            || arg.starts_with("--package=")
            || arg == "--workspace"
            || arg == "--all"
    })
}

/// `cargo nextest run --workspace ARGS...`; its exit code becomes ours.
fn run_nextest(extra: &[OsString]) -> Result<ExitCode, TaskError> {
    let mut base = vec!["nextest", "run"];
    if !selects_packages(extra) {
        base.push("--workspace");
    }
    let mut shown = format!("cargo {}", base.join(" "));
    for arg in extra {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    eprintln!("test: {shown}");
    let status = Command::new(cargo())
        .current_dir(workspace_root())
        .args(&base)
        .args(extra)
        .status()
        .map_err(|e| TaskError::new(format!("cannot run {shown}"), e))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        // Exit codes are 0..=255 on unix; anything else (or a signal) is a plain failure.
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1).max(1)),
        None => {
            eprintln!("test: {shown} was ended by a signal ({status})");
            ExitCode::FAILURE
        }
    })
}
