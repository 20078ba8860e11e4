//! `backstop`: the gateway binary.
//!
//! - `backstop serve --config FILE`: serve the OpenAI-compatible API;
//!   SIGHUP (or `POST /v1/backstop/reload`) reloads FILE without a restart.
//! - `backstop check --config FILE [--connect]`: load, validate and build
//!   everything `serve` would, print the resolved scenarios, exit 0; or
//!   print every problem with its file and key path and exit 1. With
//!   `--connect`, also ping the `[state]` store.
//! - `backstop plugin inspect PATH`: what a plugin library declares, or why
//!   it cannot be loaded.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use backstop_config::{ConfigFile, Registry, Resolved};
use backstop_gateway::auth::ApiKeys;
use backstop_gateway::reload::Reloader;
use backstop_gateway::server::{ServeOptions, serve, shutdown_signal};
use backstop_gateway::{Gateway, GatewayOptions};
use clap::{Parser, Subcommand, ValueEnum};

/// Keeps LLM-backed products answering when their models fail.
#[derive(Debug, Parser)]
#[command(name = "backstop", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible gateway.
    Serve {
        /// The configuration file (TOML, YAML or JSON).
        #[arg(long, short, env = "BACKSTOP_CONFIG")]
        config: PathBuf,
        /// Listen here instead of `[server] listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a configuration without serving.
    Check {
        /// The configuration file (TOML, YAML or JSON).
        #[arg(long, short, env = "BACKSTOP_CONFIG")]
        config: PathBuf,
        /// Also ping the `[state]` store (Redis), failing when it does not
        /// answer or refuses the credentials.
        #[arg(long)]
        connect: bool,
    },
    /// Dynamic plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Print a plugin's name, types, ABI and SDK version.
    Inspect {
        /// The plugin library (.so, .dylib, .dll).
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            log_format,
        } => {
            init_logs(log_format);
            serve_command(config, listen)
        }
        Command::Check { config, connect } => {
            init_logs(LogFormat::Text);
            check_command(config, connect)
        }
        Command::Plugin {
            command: PluginCommand::Inspect { path },
        } => inspect_command(path),
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether log lines carry ANSI colour: only on a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string (no-color.org).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Writes to stdout, ignoring a closed pipe (`backstop check | head`).
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

fn check_command(config: PathBuf, connect: bool) -> ExitCode {
    let resolved = match backstop_config::load(&config, Registry::builtin()) {
        Ok(resolved) => resolved,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::FAILURE;
        }
    };
    say(&resolved.report.to_string());
    if !connect {
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(resolved.fleet.ping()) {
        Ok(None) => {
            say("state store: none to connect to (backend = \"local\")");
            ExitCode::SUCCESS
        }
        Ok(Some(took)) => {
            say(&format!(
                "state store: answered PING in {:.1} ms",
                took.as_secs_f64() * 1000.0
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: state.url_env: {e}", config.display());
            ExitCode::FAILURE
        }
    }
}

fn inspect_command(path: PathBuf) -> ExitCode {
    match backstop_config::inspect_plugin(&path) {
        Ok(info) => {
            say(&info.to_string());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn serve_command(config: PathBuf, listen: Option<SocketAddr>) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let file = ConfigFile::new(
            config,
            Registry::builtin(),
            backstop_config::Options::default(),
        );
        let resolved = match file.load() {
            Ok(resolved) => resolved,
            Err(problems) => {
                eprintln!("{problems}");
                return ExitCode::FAILURE;
            }
        };
        for warning in &resolved.warnings {
            tracing::warn!("{warning}");
        }
        let address = listen.unwrap_or(resolved.server.listen);
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("cannot listen on {address}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let bound = listener.local_addr().unwrap_or(address);
        run(file, resolved, listener, bound).await
    })
}

/// The serving runtime, sized to the CPUs this process may use.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    runtime_for(std::thread::available_parallelism().map_or(0, |n| n.get()))
}

/// On one allowed CPU (`taskset -c 0`, a container limited to one CPU), a
/// current-thread runtime: the multi-thread one would run its one worker
/// beside the main thread's accept loop, two threads taking turns on the
/// one core. Otherwise tokio's multi-thread runtime, a worker per CPU.
fn runtime_for(cpus: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

async fn run(
    file: ConfigFile,
    resolved: Resolved,
    listener: tokio::net::TcpListener,
    bound: SocketAddr,
) -> ExitCode {
    // The fleet's store first: the prober's leases and the circuits'
    // publications go through it.
    let _fleet = match resolved.fleet.start().await {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("state.url_env: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Without keys the loader's warnings (logged by the caller) already
    // said so, naming the variable: one warning, not two.
    let keys = match &resolved.server.api_keys {
        Some(keys) => ApiKeys::from_list(&keys.keys().join(",")),
        None => ApiKeys::none(),
    };
    let serve_options = ServeOptions {
        header_read_timeout: resolved.server.header_read_timeout,
        shutdown_grace: resolved.server.shutdown_grace,
        max_connections: resolved.server.max_connections,
    };
    let telemetry = match backstop_gateway::telemetry::Telemetry::start(&resolved) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let summary = summary(&resolved);
    // The prober and the log summary run under the reloader, which
    // replaces them with the configuration.
    let (reloader, serving) = Reloader::start(file, &resolved);
    let gateway = Gateway::new(
        serving.router,
        GatewayOptions {
            keys,
            body_limit: resolved.server.body_limit_bytes,
            body_read_timeout: resolved.server.body_read_timeout,
            observers: serving.observers,
            simulated_models: serving.simulated_models,
            reloader: Some(reloader),
            telemetry: telemetry.clone(),
        },
    );
    #[cfg(unix)]
    let _hangups = AbortOnDrop(tokio::spawn(backstop_gateway::reload::reload_on_sighup(
        gateway.clone(),
    )));
    say(&format!("backstop listening on http://{bound}"));
    say(&summary);
    tracing::info!(%bound, "listening");
    let app = gateway.http();
    let draining = gateway.clone();
    serve(listener, app, serve_options, async move {
        shutdown_signal().await;
        draining.start_draining();
    })
    .await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    ExitCode::SUCCESS
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One line: every scenario and its chain.
fn summary(resolved: &Resolved) -> String {
    let router = &resolved.router;
    let scenarios: Vec<String> = router
        .scenario_names()
        .iter()
        .filter_map(|name| {
            let route = router.route(name)?;
            let chain: Vec<&str> = route
                .chain
                .iter()
                .map(|&i| router.models()[i].id.as_str())
                .collect();
            Some(format!("{name} ({})", chain.join(" -> ")))
        })
        .collect();
    format!(
        "{}: {}; {}",
        counted(scenarios.len(), "scenario"),
        scenarios.join(", "),
        counted(router.models().len(), "model")
    )
}

/// `1 scenario`, `3 scenarios`.
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::{colour, runtime_for};
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_cpu_gets_a_current_thread_runtime_more_get_workers() {
        let flavour = |cpus| {
            runtime_for(cpus)
                .expect("a runtime")
                .handle()
                .runtime_flavor()
        };
        assert_eq!(flavour(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavour(2), RuntimeFlavor::MultiThread);
        // available_parallelism failed: tokio's own default.
        assert_eq!(flavour(0), RuntimeFlavor::MultiThread);
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_under_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".into())));
        // NO_COLOR set to the empty string does not count (no-color.org).
        assert!(colour(true, Some("".into())));
        assert!(!colour(false, Some("".into())));
    }
}
