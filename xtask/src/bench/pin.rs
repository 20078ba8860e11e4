//! CPU pinning with `taskset`: the gateway on one core, the load generator
//! and the mock upstreams (this process) on another, so they do not take
//! each other's CPU time and the gateway's CPU figures are its own.

use std::process::{Command, Stdio};

use super::procfs;

/// The core the gateway runs on.
pub const GATEWAY_CPU: usize = 0;
/// The core this process (load generator and mocks) runs on.
pub const LOAD_CPU: usize = 1;

/// Whether pinning happened, and why not when it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinning {
    /// This process is on [`LOAD_CPU`]; the gateway runs under
    /// `taskset -c GATEWAY_CPU`.
    Pinned,
    /// Nothing pinned, for this reason.
    Off(String),
}

impl Pinning {
    /// The wrapper that starts the gateway on its core.
    pub fn gateway_wrapper(&self) -> Option<Vec<String>> {
        match self {
            Pinning::Pinned => Some(vec![
                "taskset".to_owned(),
                "-c".to_owned(),
                GATEWAY_CPU.to_string(),
            ]),
            Pinning::Off(_) => None,
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        match self {
            Pinning::Pinned => format!(
                "pinned: gateway on CPU {GATEWAY_CPU} (taskset -c {GATEWAY_CPU}), load generator and mocks on CPU {LOAD_CPU}"
            ),
            Pinning::Off(why) => format!("not pinned: {why}"),
        }
    }
}

/// Moves this process to [`LOAD_CPU`] with `taskset -p`, when `taskset`
/// exists and the machine has two CPUs. Call it before any thread starts:
/// threads inherit the affinity of the thread that creates them.
pub fn pin_self() -> Pinning {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        return Pinning::Off(format!("{cpus} CPU available, 2 needed"));
    }
    let pid = std::process::id();
    let output = Command::new("taskset")
        .args(["-p", "-c", &LOAD_CPU.to_string(), &pid.to_string()])
        .stdin(Stdio::null())
        .output();
    match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Pinning::Off("taskset not found".to_owned())
        }
        Err(e) => Pinning::Off(format!("cannot run taskset: {e}")),
        Ok(o) if !o.status.success() => Pinning::Off(format!(
            "taskset -p failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => match procfs::cpus_allowed(pid) {
            Ok(list) if list == LOAD_CPU.to_string() => Pinning::Pinned,
            Ok(list) => Pinning::Off(format!("taskset left this process on CPUs {list}")),
            Err(e) => Pinning::Off(e.to_string()),
        },
    }
}
