//! The floor of issue 18: a minimal hyper proxy, measured in the same run
//! and at the same loads as the gateway, so the gateway's cost per
//! non-streaming request can be stated as a ratio to what any Rust proxy
//! pays for the same work.
//!
//! What it does per request, and nothing more: reads the whole body,
//! parses it as JSON (and writes it back out, as a proxy that changes a
//! field must), forwards it to the upstream on the same path over a pooled
//! keep-alive hyper client with `TCP_NODELAY`, reads the whole answer and
//! relays its status, `content-type` and body. No routing, no retries, no
//! logging, no metrics. Both of its sockets set `TCP_NODELAY`, as the
//! gateway's do.
//!
//! It runs as its own process, `cargo xtask bench floor-proxy --upstream
//! URL` (a hidden subcommand), started under the same `taskset` wrapper as
//! the gateway and with the same runtime rule (the gateway's `runtime_for`:
//! tokio's current-thread runtime when one CPU is allowed, as under the
//! bench's `taskset -c 0`, the multi-thread one otherwise), so its
//! `/proc/PID/stat` CPU time compares with the gateway's. It prints
//! `listening on ADDR` on stdout once it accepts connections.

use std::convert::Infallible;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::TaskError;

/// `cargo xtask bench floor-proxy` options.
#[derive(Debug, Args)]
pub struct FloorArgs {
    /// The upstream's origin, `http://127.0.0.1:PORT` (request paths are
    /// kept as they come).
    #[arg(long, value_name = "URL")]
    upstream: String,
}

/// Idle upstream connections are kept this long.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// How long the parent waits for `listening on`.
const READY_WITHIN: Duration = Duration::from_secs(10);

type Upstream = Client<HttpConnector, Full<Bytes>>;

/// Serves the floor proxy until killed.
pub fn serve(args: &FloorArgs) -> Result<ExitCode, TaskError> {
    let upstream: Uri = args
        .upstream
        .parse()
        .map_err(|e| TaskError::new(format!("--upstream {}", args.upstream), e))?;
    let (Some(scheme), Some(authority)) =
        (upstream.scheme().cloned(), upstream.authority().cloned())
    else {
        return Err(TaskError::msg(format!(
            "--upstream {}: needs http://HOST:PORT",
            args.upstream
        )));
    };
    // The gateway's runtime rule (crates/backstop-gateway/src/main.rs,
    // `runtime_for`): current-thread on one allowed CPU, else multi-thread.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| TaskError::new("cannot start the async runtime", e))?;
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Upstream = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| TaskError::new("binding 127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TaskError::new("reading the bound address", e))?;
        println!("listening on {addr}");
        let origin = format!("{scheme}://{authority}");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("floor proxy: accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let origin = origin.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let client = client.clone();
                    let origin = origin.clone();
                    async move { Ok::<_, Infallible>(relay(&client, &origin, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Parse, forward, relay; a failure is a 502 naming what failed.
async fn relay(
    client: &Upstream,
    origin: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match try_relay(client, origin, request).await {
        Ok(response) => response,
        Err(message) => {
            let mut response = Response::new(Full::new(Bytes::from(message)));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

async fn try_relay(
    client: &Upstream,
    origin: &str,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, String> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the request body: {e}"))?
        .to_bytes();
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("request body: {e}"))?;
    let body = serde_json::to_vec(&json).map_err(|e| format!("request body: {e}"))?;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: Uri = format!("{origin}{path}")
        .parse()
        .map_err(|e| format!("upstream URI: {e}"))?;
    let upstream = Request::post(uri)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("upstream request: {e}"))?;
    let answer = client
        .request(upstream)
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    let (answer_parts, answer_body) = answer.into_parts();
    let answer_body = answer_body
        .collect()
        .await
        .map_err(|e| format!("reading the upstream body: {e}"))?
        .to_bytes();
    let mut response = Response::new(Full::new(answer_body));
    *response.status_mut() = answer_parts.status;
    if let Some(content_type) = answer_parts.headers.get(CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, content_type.clone());
    }
    Ok(response)
}

/// A running floor proxy, killed when dropped.
pub struct FloorProxy {
    child: Child,
    pid: u32,
    addr: String,
}

impl FloorProxy {
    /// Starts `xtask bench floor-proxy` (this executable) in front of
    /// `upstream_origin`, under `wrapper` (the gateway's `taskset`) when
    /// given, and waits for its address.
    pub async fn start(
        upstream_origin: &str,
        wrapper: Option<Vec<String>>,
        log: &Path,
    ) -> Result<Self, TaskError> {
        let exe = std::env::current_exe()
            .map_err(|e| TaskError::new("finding the xtask executable", e))?;
        let mut argv: Vec<String> = wrapper.unwrap_or_default();
        argv.push(exe.display().to_string());
        argv.extend(["bench", "floor-proxy", "--upstream", upstream_origin].map(String::from));
        let (program, rest) = argv
            .split_first()
            .ok_or_else(|| TaskError::msg("empty floor proxy command"))?;
        let stderr = std::fs::File::create(log)
            .map_err(|e| TaskError::new(format!("creating {}", log.display()), e))?;
        let mut child = Command::new(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TaskError::new(format!("starting {program}"), e))?;
        let pid = child
            .id()
            .ok_or_else(|| TaskError::msg("the floor proxy exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| TaskError::msg("the floor proxy has no stdout"))?;
        let mut line = String::new();
        let read = tokio::time::timeout(READY_WITHIN, BufReader::new(stdout).read_line(&mut line))
            .await
            .map_err(|_| {
                TaskError::msg(format!(
                    "the floor proxy did not start within {READY_WITHIN:?} (see {})",
                    log.display()
                ))
            })?
            .map_err(|e| TaskError::new("reading the floor proxy's address", e))?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .filter(|_| read > 0)
            .ok_or_else(|| {
                TaskError::msg(format!(
                    "the floor proxy said {line:?} instead of its address (see {})",
                    log.display()
                ))
            })?
            .to_owned();
        Ok(Self { child, pid, addr })
    }

    /// Its process id (the `taskset` wrapper execs it: the same pid).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The OpenAI-style base URL for the load generator.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Kills it and reaps it.
    pub async fn stop(mut self) -> Result<(), TaskError> {
        self.child
            .kill()
            .await
            .map_err(|e| TaskError::new("stopping the floor proxy", e))
    }
}
