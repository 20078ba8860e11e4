//! The floor of issue 18: a minimal hyper proxy, measured in the same run
//! and at the same loads as the gateway, so the gateway's cost per
//! non-streaming request can be stated as a ratio to what any Rust proxy
//! pays for the same work.
//!
//! What it does per request, and nothing more: reads the whole body,
//! parses it as JSON (and writes it back out, as a proxy that changes a
//! field must), forwards it to the upstream on the same path over a pooled
//! keep-alive hyper client with `TCP_NODELAY`, and relays the answer's
//! status, `content-type` and body. No routing, no retries, no logging, no
//! metrics. Both of its sockets set `TCP_NODELAY`, as the gateway's do.
//!
//! The body: a non-streaming answer is read whole and relayed as one
//! `Full` body (the non-streaming floor). A `text/event-stream` answer is
//! streamed through as it comes: hyper's upstream `Incoming` body is the
//! response body, each frame the upstream connection yields written to the
//! caller as it arrives, nothing collected or held back. That is the
//! floor for streams: a proxy that only relays bytes. It does not parse
//! or rewrite a chunk (the gateway parses each event, renames the model,
//! checks it and encodes it for its door), so the gateway's cost over it
//! per chunk and per open stream is what its own work costs; what the
//! floor pays is what any proxy on hyper's defaults pays (hyper's
//! per-connection buffers, one socket read and one write per paced
//! chunk).
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
use http_body_util::{BodyExt, Either, Full};
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

/// A relayed answer's body: read whole, or streamed through.
type Relayed = Either<Full<Bytes>, Incoming>;

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
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| TaskError::new("binding 127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TaskError::new("reading the bound address", e))?;
        println!("listening on {addr}");
        match proxy(listener, format!("{scheme}://{authority}")).await {}
    })
}

/// Accepts on `listener` and relays every request to `origin`
/// (`http://HOST:PORT`) until the task is dropped.
pub(super) async fn proxy(listener: TcpListener, origin: String) -> Infallible {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("floor proxy: accept: {e}");
                // Out of file descriptors, say: not a busy loop.
                tokio::time::sleep(Duration::from_millis(5)).await;
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
}

/// Parse, forward, relay; a failure is a 502 naming what failed.
async fn relay(client: &Upstream, origin: &str, request: Request<Incoming>) -> Response<Relayed> {
    match try_relay(client, origin, request).await {
        Ok(response) => response,
        Err(message) => {
            let mut response = Response::new(Either::Left(Full::new(Bytes::from(message))));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

async fn try_relay(
    client: &Upstream,
    origin: &str,
    request: Request<Incoming>,
) -> Result<Response<Relayed>, String> {
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
    let body = if is_event_stream(answer_parts.headers.get(CONTENT_TYPE)) {
        // Streamed through, frame by frame.
        Either::Right(answer_body)
    } else {
        Either::Left(Full::new(
            answer_body
                .collect()
                .await
                .map_err(|e| format!("reading the upstream body: {e}"))?
                .to_bytes(),
        ))
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer_parts.status;
    if let Some(content_type) = answer_parts.headers.get(CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, content_type.clone());
    }
    Ok(response)
}

/// Whether an answer's `content-type` is `text/event-stream` (any
/// parameters, any case).
pub(super) fn is_event_stream(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"))
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

    /// Its listening address.
    pub fn addr(&self) -> Result<std::net::SocketAddr, TaskError> {
        self.addr
            .parse()
            .map_err(|e| TaskError::new(format!("the floor proxy's address {}", self.addr), e))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::super::stream_client::{self, Gauge, StreamPlan};
    use super::super::stream_mock::{Ask, StreamMock};
    use super::*;

    /// The proxy in this process, in front of `origin`; it ends with the
    /// test's runtime (also when the test fails).
    async fn start_proxy(origin: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        tokio::spawn(proxy(listener, origin));
        addr
    }

    /// A hyper HTTP/1 connection to `addr`, its task spawned.
    async fn connect(addr: &str) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(connection);
        send
    }

    #[test]
    fn only_an_event_stream_is_streamed_through() {
        let is = |v: &'static str| is_event_stream(Some(&HeaderValue::from_static(v)));
        assert!(is("text/event-stream"));
        assert!(is("Text/Event-Stream; charset=utf-8"));
        assert!(!is("application/json"));
        assert!(!is("text/event-streams"));
        assert!(!is_event_stream(None));
    }

    #[tokio::test]
    async fn the_floor_proxy_relays_every_streamed_answer_complete_and_in_order() {
        let mock = StreamMock::start().await.unwrap_or_else(|e| panic!("{e}"));
        let origin = mock.api_base_url().trim_end_matches("/v1").to_owned();
        let addr = start_proxy(origin).await;
        for gap in [Duration::ZERO, Duration::from_millis(1)] {
            // `text=words`: the client checks the exact text, in order.
            let plan = Arc::new(StreamPlan {
                authority: addr.clone(),
                path: "/v1/chat/completions".into(),
                models: vec!["mock-upstream".into()],
                ask: Ask {
                    chunks: 40,
                    gap,
                    timestamps: false,
                },
                streams: 24,
                concurrency: 4,
                ramp: Duration::ZERO,
                deadline: Duration::from_secs(20),
            });
            let run = stream_client::run(plan, Arc::new(Gauge::default())).await;
            assert_eq!(
                (run.complete, run.cut, run.lost),
                (24, 0, 0),
                "gap {gap:?}: {:?}",
                run.first_problem
            );
            assert_eq!(run.chunks, 24 * 40, "gap {gap:?}");
        }
        mock.shutdown().await;
    }

    /// Reads one request (head and `content-length` body) from `tcp`.
    async fn read_request(tcp: &mut TcpStream) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap_or_else(|e| panic!("{e}"));
            assert!(n > 0, "the proxy closed before its request ended");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return buf[end + 4..end + 4 + length].to_vec();
                }
            }
        }
    }

    /// An upstream on one connection: answers with the head and `first`,
    /// waits for `go`, then sends `rest` and the end of the body.
    async fn lockstep_upstream(
        first: &'static str,
        rest: &'static str,
        go: oneshot::Receiver<()>,
    ) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let origin = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let body = read_request(&mut tcp).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
                first.len()
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            let _ = go.await;
            let tail = format!("{:x}\r\n{rest}\r\n0\r\n\r\n", rest.len());
            let _ = tcp.write_all(tail.as_bytes()).await;
            body
        });
        (origin, task)
    }

    /// Bounds a wait that a broken proxy would make endless.
    const WITHIN: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn the_floor_proxy_relays_a_chunk_before_the_upstream_sends_the_next() {
        const FIRST: &str = "data: {\"n\":1}\n\n";
        const REST: &str = "data: {\"n\":2}\n\ndata: [DONE]\n\n";
        let (go, go_rx) = oneshot::channel();
        let (origin, upstream) = lockstep_upstream(FIRST, REST, go_rx).await;
        let addr = start_proxy(origin).await;
        let mut send = connect(&addr).await;
        let request = Request::post("/v1/chat/completions")
            .header("host", addr.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{ "model": "m", "stream": true }"#,
            )))
            .unwrap_or_else(|e| panic!("{e}"));
        // The upstream holds its second chunk until the first has arrived:
        // a proxy that collected the answer would never answer (the bounds
        // only keep a failing test from hanging).
        let response = tokio::time::timeout(WITHIN, send.send_request(request))
            .await
            .unwrap_or_else(|_| panic!("no answer while the upstream's answer is open"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get(CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            Some(&b"text/event-stream"[..])
        );
        let mut body = response.into_body();
        let mut got = Vec::new();
        while got.len() < FIRST.len() {
            let frame = tokio::time::timeout(WITHIN, body.frame())
                .await
                .unwrap_or_else(|_| panic!("chunk 1 was held back: {got:?}"))
                .unwrap_or_else(|| panic!("the body ended after {got:?}"))
                .unwrap_or_else(|e| panic!("{e}"));
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(got, FIRST.as_bytes());
        let _ = go.send(());
        let rest = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes();
        got.extend_from_slice(&rest);
        assert_eq!(String::from_utf8_lossy(&got), format!("{FIRST}{REST}"));
        // The request went on re-serialised, the same JSON.
        let forwarded = upstream.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(forwarded, br#"{"model":"m","stream":true}"#);
    }

    #[tokio::test]
    async fn the_floor_proxy_relays_a_non_streaming_answer_whole() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let origin = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let _ = read_request(&mut tcp).await;
            let body = r#"{"id":"x","choices":[]}"#;
            let answer = format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(answer.as_bytes()).await;
        });
        let addr = start_proxy(origin).await;
        let mut send = connect(&addr).await;
        let request = Request::post("/v1/chat/completions")
            .header("host", addr.as_str())
            .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
            .unwrap_or_else(|e| panic!("{e}"));
        let response = send
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), StatusCode::CREATED);
        // Read whole: relayed with its length, not chunked.
        assert_eq!(
            response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .map(HeaderValue::as_bytes),
            Some(&b"23"[..])
        );
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes();
        assert_eq!(&body[..], br#"{"id":"x","choices":[]}"#);
    }
}
