//! The `backstop` binary as a child process: `backstop check` a config,
//! start `backstop serve` on an ephemeral loopback port, wait until it is
//! ready, and stop it.
//!
//! The chaos crate does not link the gateway: it runs whatever binary it is
//! given by path (the release build for `cargo xtask`, the debug build
//! `env!("CARGO_BIN_EXE_backstop")` for tests).
//!
//! Nothing outlives its driver: a [`GatewayProcess`] is stopped with
//! SIGTERM and, after a bounded grace, SIGKILL; dropped without being
//! stopped (an error, a panic), it is killed and reaped at once. The
//! gateway stays in the driver's process group, so a Ctrl-C at the
//! terminal or a test runner killing the group reaches it too.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::error::GatewayError;

/// The first line `backstop serve` prints on stdout, before the address.
pub const LISTENING_PREFIX: &str = "backstop listening on http://";

/// Longest `backstop check` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Between two `/readyz` polls.
const READY_POLL: Duration = Duration::from_millis(10);

/// Lines of the gateway's log quoted in an error.
const LOG_TAIL_LINES: usize = 30;

/// Inherited environment variables with this prefix are not passed on.
const ISOLATED_PREFIX: &str = "BACKSTOP_";

/// How to run the `backstop` binary. The child sees the driver's
/// environment minus every `BACKSTOP_*` variable (keys and config
/// overrides would change the config under test), plus what
/// [`GatewayCommand::env`] sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCommand {
    binary: PathBuf,
    env: Vec<(OsString, OsString)>,
    wrapper: Vec<OsString>,
}

impl GatewayCommand {
    /// Runs the binary at `binary`, with the driver's environment.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// The binary's path.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Sets an environment variable for every run.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs `serve` under a wrapper that execs its arguments (such as
    /// `taskset -c 0`), so the child's pid is still the gateway's.
    #[must_use]
    pub fn wrapper<I, S>(mut self, program_and_args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.wrapper = program_and_args.into_iter().map(Into::into).collect();
        self
    }

    fn command(&self, wrapped: bool) -> Command {
        let mut command = match (wrapped, self.wrapper.split_first()) {
            (true, Some((program, args))) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.binary);
                c
            }
            _ => Command::new(&self.binary),
        };
        // A caller's BACKSTOP_API_KEYS or BACKSTOP__* overrides would
        // change the config under test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with(ISOLATED_PREFIX) {
                command.env_remove(key);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    fn spawn_error(&self, source: std::io::Error) -> GatewayError {
        GatewayError::Spawn {
            binary: self.binary.clone(),
            source,
        }
    }

    /// Runs `backstop check --config CONFIG`. Returns its report (stdout)
    /// when the config is accepted; a rejection carries everything the
    /// checker printed.
    pub async fn check(&self, config: &Path) -> Result<String, GatewayError> {
        let mut command = self.command(false);
        command
            .arg("check")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().map_err(|e| self.spawn_error(e))?;
        let output = match tokio::time::timeout(CHECK_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(self.spawn_error(e)),
            // The child was moved into the timed-out future: dropping it
            // killed it (kill_on_drop).
            Err(_) => {
                return Err(GatewayError::CheckTimeout {
                    config: config.to_owned(),
                    after: CHECK_TIMEOUT,
                });
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(GatewayError::ConfigRejected {
                config: config.to_owned(),
                status: output.status,
                output: format!("{}{}", stderr.trim_end(), stdout.trim_end()),
            })
        }
    }

    /// Starts `backstop serve --config CONFIG --listen 127.0.0.1:0`, its
    /// stderr (the logs) appended to `log`, reads the address it prints
    /// and waits until `/readyz` answers 200, all within `ready_within`.
    pub async fn serve(
        &self,
        config: &Path,
        log: &Path,
        ready_within: Duration,
    ) -> Result<GatewayProcess, GatewayError> {
        let log_file = std::fs::File::create(log).map_err(|source| GatewayError::Log {
            path: log.to_owned(),
            source,
        })?;
        let mut command = self.command(true);
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = command.spawn().map_err(|e| self.spawn_error(e))?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take();
        // From here on the guard owns the child: any early return kills it.
        let mut process = GatewayProcess {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: log.to_owned(),
            stopped: false,
        };
        let deadline = Instant::now() + ready_within;
        let Some(stdout) = stdout else {
            return Err(process.not_ready("its stdout was not captured"));
        };
        let mut lines = BufReader::new(stdout).lines();
        let first = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => return Err(process.exited_early().await),
            Ok(Err(e)) => return Err(process.not_ready(&format!("reading its stdout: {e}"))),
            Err(_) => {
                return Err(process.not_ready(&format!(
                    "it printed nothing within {} ms",
                    ready_within.as_millis()
                )));
            }
        };
        let Some(addr) = first
            .strip_prefix(LISTENING_PREFIX)
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
        else {
            return Err(process.not_ready(&format!(
                "its first line is not `{LISTENING_PREFIX}ADDR`: {first:?}"
            )));
        };
        process.addr = addr;
        // The rest of stdout (the scenario summary) is read and dropped so
        // the pipe never fills; the task ends when the gateway does.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(%line, "gateway stdout");
            }
        });
        process.wait_ready(deadline, ready_within).await?;
        Ok(process)
    }
}

/// A running `backstop serve`. Stop it with [`GatewayProcess::stop`];
/// dropping it kills it.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: PathBuf,
    stopped: bool,
}

/// How a gateway ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited within the grace after SIGTERM, with this status.
    Graceful(ExitStatus),
    /// It did not; it was killed.
    Killed,
}

impl GatewayProcess {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id (0 if it could not be read).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://ADDR`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The OpenAI-compatible base URL, `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Where its logs go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its exit status, if it has exited.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    fn not_ready(&self, reason: &str) -> GatewayError {
        GatewayError::NotReady {
            reason: reason.to_owned(),
            log: self.log.clone(),
            log_tail: self.log_tail(),
        }
    }

    async fn exited_early(&mut self) -> GatewayError {
        // Stdout closed: the process is ending. Give it a moment to be
        // reaped so the status can be reported.
        let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        self.stopped = status.is_some();
        GatewayError::Exited {
            status,
            log: self.log.clone(),
            log_tail: self.log_tail(),
        }
    }

    async fn wait_ready(
        &mut self,
        deadline: Instant,
        ready_within: Duration,
    ) -> Result<(), GatewayError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .map_err(|e| self.not_ready(&format!("cannot build an HTTP client: {e}")))?;
        let url = format!("{}/readyz", self.origin());
        let mut last = String::from("no answer yet");
        // Bounded by the deadline; each poll by the client's timeout.
        while Instant::now() < deadline {
            if self.try_exited().is_some() {
                return Err(self.exited_early().await);
            }
            match client.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    last = format!("{status}: {}", body.trim());
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Err(self.not_ready(&format!(
            "/readyz not ready within {} ms (last: {last})",
            ready_within.as_millis()
        )))
    }

    /// Stops it: SIGTERM (the gateway drains), then SIGKILL if it is still
    /// running after `grace`.
    pub async fn stop(mut self, grace: Duration) -> Result<Stopped, GatewayError> {
        if let Some(status) = self.try_exited() {
            self.stopped = true;
            return Err(GatewayError::Exited {
                status: Some(status),
                log: self.log.clone(),
                log_tail: self.log_tail(),
            });
        }
        if let Err(e) = signal(self.pid, rustix::process::Signal::TERM) {
            tracing::warn!(pid = self.pid, error = %e, "cannot send SIGTERM; killing the gateway");
        }
        let stopped = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => Stopped::Graceful(status),
            Ok(Err(e)) => {
                tracing::warn!(pid = self.pid, error = %e, "cannot wait for the gateway; killing it");
                self.kill().await?;
                Stopped::Killed
            }
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    grace_ms = grace.as_millis() as u64,
                    "the gateway did not stop after SIGTERM; killing it"
                );
                self.kill().await?;
                Stopped::Killed
            }
        };
        self.stopped = true;
        Ok(stopped)
    }

    async fn kill(&mut self) -> Result<(), GatewayError> {
        self.child
            .kill()
            .await
            .map_err(|source| GatewayError::Kill {
                pid: self.pid,
                source,
            })
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // An error or a panic left it running: kill it now and reap it if
        // it is already gone (kill_on_drop and tokio's orphan reaping
        // cover the rest).
        if let Err(e) = self.child.start_kill() {
            tracing::debug!(pid = self.pid, error = %e, "kill on drop");
        }
        let _ = self.child.try_wait();
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("invalid pid {pid}")))?;
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

/// The last [`LOG_TAIL_LINES`] lines of the file at `path` (empty when it
/// cannot be read).
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[from..].join("\n")
}
