//! The upstream HTTP client of the providers: hyper-util's pooled HTTP/1.1
//! client used directly.
//!
//! reqwest wrapped the same pooled client in layers Backstop does not use
//! (a redirect policy that parsed the URL twice per call even when told to
//! follow none, a retry layer, its own body and URL types); on a short
//! request they cost about a third of the gateway's instructions. This
//! client keeps what reqwest gave the providers and nothing else:
//!
//! - a connection pool per connect timeout ([`Clients`](crate::Clients)),
//!   idle connections closed after 90 s, `TCP_NODELAY`, TCP keep-alive
//!   probes after 15 s (every 15 s, 3 of them), as reqwest's defaults were;
//! - the connect timeout over the whole connect (TCP, TLS, a proxy's
//!   tunnel), reported as a timeout; every other timeout is the Router's;
//! - HTTP/1.1 only; a 3xx is an answer like any other (no redirect is
//!   followed, since a redirected POST would be replayed as a GET); no retry
//!   beyond hyper-util's resend of a request that never left on a pooled
//!   connection the server had just closed;
//! - http and https, https with rustls (aws-lc-rs) verified by the
//!   platform's verifier, ALPN `http/1.1`;
//! - proxies from the environment, read once when the cache is built
//!   ([`Proxies::from_env`]): `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and
//!   `NO_PROXY` (or their lowercase forms). An https target is reached
//!   through a `CONNECT` tunnel; an http target is sent to the proxy in
//!   absolute form. A proxy URL's `user:password@` is sent as
//!   `Proxy-Authorization: Basic`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::PROXY_AUTHORIZATION;
use http::uri::Scheme;
use http::{Request, Uri};
use http_body_util::Full;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_platform_verifier::BuilderVerifierExt;
use tower_service::Service;

/// A response whose body is read as it arrives.
pub type Response = http::Response<hyper::body::Incoming>;

/// A request with its whole body.
pub type Outgoing = Request<Full<Bytes>>;

/// Why a request got no response (connect, TLS, proxy or send failure).
pub type SendError = hyper_util::client::legacy::Error;

/// The error of a response body cut in transit.
pub type BodyError = hyper::Error;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a pooled connection may stay idle.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// TCP keep-alive: first probe, interval, probes (reqwest's defaults).
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 3;

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// rustls or the platform verifier could not be set up.
    #[error("could not set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// The TLS configuration every client shares: rustls with the process's
/// crypto provider (aws-lc-rs unless one was installed), the platform's
/// certificate verifier, ALPN `http/1.1`.
pub(crate) fn tls_config() -> Result<Arc<ClientConfig>, ClientError> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Which proxy, if any, serves a destination: the environment's proxy
/// variables as curl reads them.
pub struct Proxies {
    matcher: Matcher,
    /// Whether any proxy is configured (else nothing is looked up).
    any: bool,
}

impl Proxies {
    /// The process environment's proxies.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The proxies named by the variables `env` returns: `ALL_PROXY`,
    /// `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, each also in lowercase (the
    /// uppercase one wins when both are set). Under CGI (`REQUEST_METHOD`
    /// set) none, as a request's `Proxy:` header arrives there as
    /// `HTTP_PROXY`.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Self {
        if env("REQUEST_METHOD").is_some() {
            return Self::none();
        }
        let first = |names: [&str; 2]| names.iter().find_map(|n| env(n)).unwrap_or_default();
        let all = first(["ALL_PROXY", "all_proxy"]);
        let http = first(["HTTP_PROXY", "http_proxy"]);
        let https = first(["HTTPS_PROXY", "https_proxy"]);
        let no = first(["NO_PROXY", "no_proxy"]);
        let any = [&all, &http, &https].iter().any(|v| !v.trim().is_empty());
        Self {
            matcher: Matcher::builder()
                .all(all)
                .http(http)
                .https(https)
                .no(no)
                .build(),
            any,
        }
    }

    /// No proxy for any destination.
    pub fn none() -> Self {
        Self {
            matcher: Matcher::builder().build(),
            any: false,
        }
    }

    fn intercept(&self, dst: &Uri) -> Option<Intercept> {
        if !self.any {
            return None;
        }
        self.matcher.intercept(dst)
    }
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The matcher's Debug would show a proxy URL's password.
        f.debug_struct("Proxies")
            .field("any", &self.any)
            .finish_non_exhaustive()
    }
}

/// A pooled client for one connect timeout.
pub struct Client {
    pool: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    proxies: Arc<Proxies>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(
        connect_timeout: Duration,
        tls: &Arc<ClientConfig>,
        proxies: &Arc<Proxies>,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(KEEPALIVE));
        http.set_keepalive_interval(Some(KEEPALIVE));
        http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
        let connector = Connector {
            https: HttpsConnector::from((http, tls.clone())),
            tls: tls.clone(),
            proxies: proxies.clone(),
            timeout: connect_timeout,
        };
        let pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Self {
            pool,
            proxies: proxies.clone(),
        }
    }

    /// Sends `request` and waits for the response's head. An http request
    /// that goes through a proxy carries the proxy's credentials.
    pub async fn send(&self, mut request: Outgoing) -> Result<Response, SendError> {
        if request.uri().scheme() == Some(&Scheme::HTTP)
            && let Some(proxy) = self.proxies.intercept(request.uri())
            && let Some(auth) = proxy.basic_auth()
        {
            request
                .headers_mut()
                .entry(PROXY_AUTHORIZATION)
                .or_insert_with(|| auth.clone());
        }
        self.pool.request(request).await
    }
}

/// Opens connections: directly, to a proxy for an http target, or through
/// a proxy's `CONNECT` tunnel for an https one; TLS where the target (or
/// the proxy) is https.
#[derive(Clone)]
struct Connector {
    https: HttpsConnector<HttpConnector>,
    tls: Arc<ClientConfig>,
    proxies: Arc<Proxies>,
    timeout: Duration,
}

impl Connector {
    async fn connect(mut self, dst: Uri) -> Result<Conn, BoxError> {
        let Some(proxy) = self.proxies.intercept(&dst) else {
            let io = self.https.call(dst).await?;
            return Ok(Conn::direct(io, false));
        };
        if dst.scheme() == Some(&Scheme::HTTPS) {
            let mut tunnel = Tunnel::new(proxy.uri().clone(), self.https.clone());
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            let mut tls = HttpsConnector::from((tunnel, self.tls.clone()));
            let io = tls.call(dst).await?;
            return Ok(Conn {
                io: Io::Tunneled(Box::new(io)),
                proxied: false,
            });
        }
        // An http target: the request goes to the proxy, in absolute form.
        let io = self.https.call(proxy.uri().clone()).await?;
        Ok(Conn::direct(io, true))
    }
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connector = self.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connector.connect(dst)).await {
                Ok(connected) => connected,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out").into()),
            }
        })
    }
}

type Tcp = TokioIo<tokio::net::TcpStream>;

/// A connection: to the target or an http proxy (TLS or not), or TLS
/// inside a proxy's tunnel.
// The direct connection, every request's, is kept inline; the tunneled one
// (TLS inside a proxy's TLS or TCP) is boxed, being twice the size.
#[allow(clippy::large_enum_variant)]
enum Io {
    Direct(MaybeHttpsStream<Tcp>),
    Tunneled(Box<MaybeHttpsStream<MaybeHttpsStream<Tcp>>>),
}

struct Conn {
    io: Io,
    /// Whether requests go to an http proxy (sent in absolute form).
    proxied: bool,
}

impl Conn {
    fn direct(io: MaybeHttpsStream<Tcp>, proxied: bool) -> Self {
        Self {
            io: Io::Direct(io),
            proxied,
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let connected = match &self.io {
            Io::Direct(io) => io.connected(),
            Io::Tunneled(io) => io.connected(),
        };
        connected.proxy(self.proxied)
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Direct(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tunneled(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Direct(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tunneled(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Direct(io) => Pin::new(io).poll_flush(cx),
            Io::Tunneled(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Direct(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tunneled(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Direct(io) => io.is_write_vectored(),
            Io::Tunneled(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Direct(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tunneled(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
}
