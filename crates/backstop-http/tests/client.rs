//! The upstream client over real loopback HTTP: how failures are
//! classified, that a 3xx is not followed, and proxies from the
//! environment's variables (an http target in absolute form through a
//! forward proxy, an https target through a `CONNECT` tunnel, `NO_PROXY`).

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_core::{FailureKind, ProviderError};
use backstop_http::body::{self, Endpoint, read_body};
use backstop_http::{Clients, Proxies, Url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A bound on every wait, so that a broken client fails the test instead
/// of hanging it.
const BOUND: Duration = Duration::from_secs(20);

/// What a test server saw on one connection: the request head, and for a
/// `CONNECT`, the first bytes sent through the tunnel.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    tunneled: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// How a test server answers a request.
#[derive(Clone, Copy)]
enum Reply {
    /// `200` with a small JSON body; a `CONNECT` gets `200` and its first
    /// tunneled bytes are recorded.
    Json,
    /// A `307` to elsewhere.
    Redirect,
    /// Closes the connection once the request is read.
    Hangup,
    /// Sends a head announcing 100 bytes, 10 of them, and closes.
    CutBody,
    /// Accepts and never answers (a TLS handshake that never ends).
    Silent,
}

const JSON: &str = r#"{"ok":true}"#;

/// A loopback server (an upstream, or a forward proxy) that records what it
/// saw; stopped when dropped.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, reply, record).await;
                });
            }
        });
        Self { port, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut socket: TcpStream,
    reply: Reply,
    record: Arc<Mutex<Vec<Seen>>>,
) -> std::io::Result<()> {
    if let Reply::Silent = reply {
        let mut sink = [0u8; 1024];
        while socket.read(&mut sink).await? > 0 {}
        return Ok(());
    }
    let (head, rest) = read_head(&mut socket).await?;
    if head.starts_with("CONNECT ") {
        socket
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        // What the client sends through the tunnel (a TLS ClientHello);
        // then the tunnel closes, so the handshake fails.
        let mut first = vec![0u8; 5];
        socket.read_exact(&mut first).await?;
        record.lock().unwrap().push(Seen {
            head,
            tunneled: first,
        });
        return Ok(());
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = rest;
    while body.len() < length {
        let mut buf = [0u8; 4096];
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    record.lock().unwrap().push(Seen {
        head,
        tunneled: Vec::new(),
    });
    let answer = match reply {
        Reply::Json => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{JSON}",
            JSON.len()
        ),
        Reply::Redirect => "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\n\r\n".to_owned(),
        Reply::Hangup | Reply::Silent => return Ok(()),
        Reply::CutBody => {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial\"".to_owned()
        }
    };
    socket.write_all(answer.as_bytes()).await?;
    socket.shutdown().await
}

/// Reads up to the end of a request head; returns it and what followed.
async fn read_head(socket: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&data).into_owned(), rest));
        }
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    }
}

fn endpoint(url: &str) -> Endpoint {
    Endpoint::new(Url::parse(url).unwrap()).unwrap()
}

fn env(pairs: &[(&'static str, String)]) -> impl Fn(&str) -> Option<String> {
    let pairs = pairs.to_vec();
    move |name| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }
}

/// POSTs `{}` to `url` through `clients` (with `timeout`), reads the body;
/// a non-success status becomes `BadRequest` naming it.
async fn call_with(
    clients: &Clients,
    url: &str,
    timeout: Duration,
) -> Result<(u16, bytes::Bytes), ProviderError> {
    let client = clients.get(timeout);
    let request = body::post(&endpoint(url), b"{}".to_vec(), "application/json");
    let attempt = async {
        let response = body::send(&client, request, timeout, "m", |status, _, _| {
            ProviderError::new(FailureKind::BadRequest, format!("status {status}"))
        })
        .await?;
        read_body(response).await
    };
    tokio::time::timeout(BOUND, attempt)
        .await
        .expect("the call ends")
}

async fn call(clients: &Clients, url: &str) -> Result<(u16, bytes::Bytes), ProviderError> {
    call_with(clients, url, CONNECT_TIMEOUT).await
}

fn direct() -> Clients {
    Clients::with_proxies(CONNECT_TIMEOUT, Proxies::none()).unwrap()
}

#[tokio::test]
async fn a_post_reaches_the_upstream_in_origin_form_with_its_headers() {
    let upstream = Server::start(Reply::Json).await;
    let url = format!("http://127.0.0.1:{}/v1/chat?x=1", upstream.port);
    let (status, body) = call(&direct(), &url).await.unwrap();
    assert_eq!((status, &body[..]), (200, JSON.as_bytes()));
    let seen = upstream.seen();
    assert!(
        seen[0].head.starts_with("POST /v1/chat?x=1 HTTP/1.1\r\n"),
        "{seen:?}"
    );
    let host = format!("127.0.0.1:{}", upstream.port);
    assert_eq!(seen[0].header("host"), Some(host.as_str()));
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!(seen[0].header("accept"), Some("application/json"));
    assert_eq!(seen[0].header("content-length"), Some("2"));
}

#[tokio::test]
async fn a_urls_userinfo_is_sent_as_basic_auth_not_in_the_request_line() {
    let upstream = Server::start(Reply::Json).await;
    let url = format!("http://us%20er:p%40ss@127.0.0.1:{}/v1", upstream.port);
    call(&direct(), &url).await.unwrap();
    let seen = upstream.seen();
    assert!(
        seen[0].head.starts_with("POST /v1 HTTP/1.1\r\n"),
        "{seen:?}"
    );
    // base64("us er:p@ss")
    assert_eq!(
        seen[0].header("authorization"),
        Some("Basic dXMgZXI6cEBzcw==")
    );
}

#[tokio::test]
async fn a_refused_connection_is_connect_without_the_url() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://user:hunter2@127.0.0.1:{port}/v1?api-key=s3cret");
    let e = call(&direct(), &url).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Connect, "{e}");
    assert!(e.message.starts_with("could not connect: "), "{e}");
    for secret in ["127.0.0.1", "hunter2", "s3cret"] {
        assert!(!e.message.contains(secret), "{e}");
    }
}

#[tokio::test]
async fn a_connect_that_does_not_finish_in_time_is_a_timeout() {
    // TCP connects, the TLS handshake never completes: the connect timeout
    // covers the whole connect, as reqwest's did.
    let upstream = Server::start(Reply::Silent).await;
    let url = format!("https://127.0.0.1:{}/v1", upstream.port);
    let e = call_with(&direct(), &url, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Timeout, "{e}");
    assert_eq!(e.message, "no connection within 300 ms");
}

#[tokio::test]
async fn a_connection_closed_before_the_response_is_connect() {
    let upstream = Server::start(Reply::Hangup).await;
    let url = format!("http://127.0.0.1:{}/v1", upstream.port);
    let e = call(&direct(), &url).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Connect, "{e}");
    assert!(
        e.message
            .starts_with("the connection failed before a response: "),
        "{e}"
    );
}

#[tokio::test]
async fn a_body_cut_short_is_stream_interrupted() {
    let upstream = Server::start(Reply::CutBody).await;
    let url = format!("http://127.0.0.1:{}/v1", upstream.port);
    let e = call(&direct(), &url).await.unwrap_err();
    assert_eq!(
        (e.kind, e.status),
        (FailureKind::StreamInterrupted, Some(200)),
        "{e}"
    );
    assert!(e.message.starts_with("the response body was cut: "), "{e}");
}

#[tokio::test]
async fn a_redirect_is_reported_not_followed() {
    let upstream = Server::start(Reply::Redirect).await;
    let url = format!("http://127.0.0.1:{}/v1", upstream.port);
    let e = call(&direct(), &url).await.unwrap_err();
    assert_eq!(e.message, "status 307");
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn an_http_target_goes_to_the_proxy_in_absolute_form_with_its_credentials() {
    let proxy = Server::start(Reply::Json).await;
    let proxies = Proxies::from_lookup(env(&[(
        "http_proxy",
        format!("http://user:pa%20ss@127.0.0.1:{}", proxy.port),
    )]));
    let clients = Clients::with_proxies(CONNECT_TIMEOUT, proxies).unwrap();
    // `.invalid` never resolves: only the proxy can answer.
    let (status, body) = call(&clients, "http://upstream.invalid:8080/v1/chat/completions")
        .await
        .unwrap();
    assert_eq!((status, &body[..]), (200, JSON.as_bytes()));
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0]
            .head
            .starts_with("POST http://upstream.invalid:8080/v1/chat/completions HTTP/1.1\r\n"),
        "{seen:?}"
    );
    assert_eq!(seen[0].header("host"), Some("upstream.invalid:8080"));
    // base64("user:pa ss")
    assert_eq!(
        seen[0].header("proxy-authorization"),
        Some("Basic dXNlcjpwYSBzcw==")
    );
}

#[tokio::test]
async fn an_https_target_goes_through_a_connect_tunnel_with_the_proxys_credentials() {
    let proxy = Server::start(Reply::Json).await;
    let proxies = Proxies::from_lookup(env(&[
        (
            "HTTPS_PROXY",
            format!("http://user:secret@127.0.0.1:{}", proxy.port),
        ),
        // The uppercase variable wins over the lowercase one.
        ("https_proxy", "http://127.0.0.1:9".to_owned()),
    ]));
    let clients = Clients::with_proxies(CONNECT_TIMEOUT, proxies).unwrap();
    let e = call(&clients, "https://api.upstream.invalid/v1/messages")
        .await
        .unwrap_err();
    // The test proxy closes the tunnel after the client's first bytes.
    assert_eq!(e.kind, FailureKind::Connect, "{e}");
    assert!(!e.message.contains("secret"), "{e}");
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0]
            .head
            .starts_with("CONNECT api.upstream.invalid:443 HTTP/1.1\r\n"),
        "{seen:?}"
    );
    // base64("user:secret")
    assert_eq!(
        seen[0].header("proxy-authorization"),
        Some("Basic dXNlcjpzZWNyZXQ=")
    );
    // A TLS handshake record (type 22) started inside the tunnel.
    assert_eq!(seen[0].tunneled[0], 0x16, "{seen:?}");
}

#[tokio::test]
async fn no_proxy_hosts_and_cgi_go_direct() {
    let proxy = Server::start(Reply::Json).await;
    let upstream = Server::start(Reply::Json).await;
    let url = format!("http://127.0.0.1:{}/v1", upstream.port);
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let bypassed = Proxies::from_lookup(env(&[
        ("ALL_PROXY", via.clone()),
        ("no_proxy", "localhost, 127.0.0.0/8".to_owned()),
    ]));
    let clients = Clients::with_proxies(CONNECT_TIMEOUT, bypassed).unwrap();
    call(&clients, &url).await.unwrap();
    // Under CGI, HTTP_PROXY may come from a request's `Proxy:` header.
    let cgi = Proxies::from_lookup(env(&[
        ("HTTP_PROXY", via.clone()),
        ("REQUEST_METHOD", "GET".to_owned()),
    ]));
    let clients = Clients::with_proxies(CONNECT_TIMEOUT, cgi).unwrap();
    call(&clients, &url).await.unwrap();
    assert_eq!(upstream.seen().len(), 2);
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    // Without NO_PROXY, the same target goes through the proxy.
    let clients = Clients::with_proxies(
        CONNECT_TIMEOUT,
        Proxies::from_lookup(env(&[("ALL_PROXY", via)])),
    )
    .unwrap();
    call(&clients, &url).await.unwrap();
    assert_eq!(proxy.seen().len(), 1);
    assert_eq!(upstream.seen().len(), 2);
}
