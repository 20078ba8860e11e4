//! What the kernel knows about a process: CPU time (`/proc/PID/stat`
//! utime + stime), resident memory (`/proc/PID/status` VmRSS), the CPUs it
//! may run on, and the machine's load average.

use std::time::Duration;

use crate::TaskError;

/// User plus system CPU time the process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration, TaskError> {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).map_err(|e| TaskError::new(format!("reading {path}"), e))?;
    cpu_time_of_stat(&stat).ok_or_else(|| TaskError::msg(format!("{path}: unexpected format")))
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted from the
/// last `)`: state is field 3, utime field 14, stime field 15.
fn cpu_time_of_stat(stat: &str) -> Option<Duration> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// A line of `/proc/PID/status`, such as `VmRSS` or `Cpus_allowed_list`.
fn status_field(pid: u32, key: &str) -> Result<String, TaskError> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(|e| TaskError::new(format!("reading {path}"), e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| TaskError::msg(format!("{path}: no {key} line")))
}

/// Resident set size, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, TaskError> {
    let value = status_field(pid, "VmRSS")?;
    let kib: u64 = value
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|e| TaskError::new(format!("VmRSS of {pid}: {value:?}"), e))?;
    Ok(kib * 1024)
}

/// System calls a process made so far (`/proc/PID/io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoCounts {
    /// Read system calls (`syscr`).
    pub syscr: u64,
    /// Write system calls (`syscw`).
    pub syscw: u64,
}

/// The read and write system calls of `pid` so far.
pub fn io_counts(pid: u32) -> Result<IoCounts, TaskError> {
    let path = format!("/proc/{pid}/io");
    let io =
        std::fs::read_to_string(&path).map_err(|e| TaskError::new(format!("reading {path}"), e))?;
    io_counts_of(&io).ok_or_else(|| TaskError::msg(format!("{path}: no syscr/syscw lines")))
}

fn io_counts_of(io: &str) -> Option<IoCounts> {
    let field = |key: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(IoCounts {
        syscr: field("syscr")?,
        syscw: field("syscw")?,
    })
}

/// The CPUs the process may run on (`0`, `0-1`...).
pub fn cpus_allowed(pid: u32) -> Result<String, TaskError> {
    status_field(pid, "Cpus_allowed_list")
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_fields_after_the_command_name() {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        // A command name with a space and a parenthesis in it.
        let stat =
            "4242 (back stop) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 2 0 1 1 1";
        let cpu = cpu_time_of_stat(stat).unwrap();
        assert!((cpu.as_secs_f64() - 300.0 / ticks).abs() < 1e-9, "{cpu:?}");
        assert!(cpu_time_of_stat("4242 (x) S 1").is_none());
    }

    #[test]
    fn io_counts_read_the_syscall_lines() {
        let io = "rchar: 10\nwchar: 20\nsyscr: 3\nsyscw: 4\nread_bytes: 0\n";
        assert_eq!(io_counts_of(io), Some(IoCounts { syscr: 3, syscw: 4 }));
        assert_eq!(io_counts_of("rchar: 1\n"), None);
        assert!(io_counts(std::process::id()).is_ok());
    }

    #[test]
    fn own_process_has_rss_cpu_and_cpus() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_time(pid).is_ok());
        assert!(!cpus_allowed(pid).unwrap().is_empty());
    }
}
