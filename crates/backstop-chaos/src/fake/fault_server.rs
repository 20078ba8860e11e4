//! Our own fault server: hyper 1 over tokio TCP, for what wiremock cannot
//! do.
//!
//! - Answers are played step by step ([`Step`]): tokens at a set interval,
//!   a slow first token, a cut (the body ends without its terminator and
//!   the connection closes), a stall (nothing more, connection open).
//! - A reset is a real RST: the connection's socket gets SO_LINGER 0 just
//!   before it is dropped, and no byte of a response is written.
//! - `Refused` closes the listening socket; the port stays bound (not
//!   listening) so nothing else takes it, and connecting to it is refused
//!   by the kernel. When the timeline says the fake is back, the same port
//!   listens again.
//!
//! Every wait is bounded: by its step, by the fake's `hold_max`, and by
//! shutdown.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::FakeState;
use super::reply::{self, Answer, ErrorReply, ReplyPlan, Step};

/// Request bodies larger than this are refused (the context-length
/// scenario sends about 50 KB).
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

type Body = BoxBody<Bytes, io::Error>;

/// A pause before a cut so the tokens sent before it leave hyper's buffer.
const FLUSH_PAUSE: Duration = Duration::from_millis(1);

/// A running fault server.
pub(crate) struct FaultServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl FaultServer {
    /// Binds an ephemeral loopback port and starts serving (or refusing,
    /// if the schedule starts refused).
    pub(crate) async fn start(state: Arc<FakeState>) -> io::Result<Self> {
        let socket = bound_socket(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = socket.local_addr()?;
        let port = if state.refuses_at(state.elapsed()) {
            Port::Closed(socket)
        } else {
            Port::Listening(socket.listen(1024)?)
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(state, addr, port, cancel.clone()));
        Ok(Self { addr, cancel, task })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and ends every connection.
    pub(crate) async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Err(e) = (&mut self.task).await {
            tracing::warn!(addr = %self.addr, error = %e, "fault server task ended badly");
        }
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn bound_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    // Accepted connections (and their TIME_WAIT) keep the port in use;
    // re-binding it after a refused phase needs SO_REUSEADDR.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

enum Port {
    Listening(TcpListener),
    /// Bound, not listening: connections are refused and the port stays ours.
    Closed(TcpSocket),
}

async fn accept_loop(
    state: Arc<FakeState>,
    addr: SocketAddr,
    mut port: Port,
    cancel: CancellationToken,
) {
    loop {
        let now = state.elapsed();
        let refused = state.refuses_at(now);
        port = match (port, refused) {
            (Port::Listening(listener), true) => {
                drop(listener);
                match bound_socket(addr) {
                    Ok(socket) => {
                        tracing::debug!(%addr, model = %state.spec.model, "port closed: refusing connections");
                        Port::Closed(socket)
                    }
                    Err(e) => {
                        tracing::error!(%addr, error = %e, "cannot hold the closed port; fault server stops");
                        return;
                    }
                }
            }
            (Port::Closed(socket), false) => match socket.listen(1024) {
                Ok(listener) => {
                    tracing::debug!(%addr, model = %state.spec.model, "port open again");
                    Port::Listening(listener)
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot listen again; fault server stops");
                    return;
                }
            },
            (same, _) => same,
        };
        let wake = state.next_change_after(now).map(|t| state.epoch() + t);
        let change = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        match &port {
            Port::Closed(_) => tokio::select! {
                () = cancel.cancelled() => return,
                () = state.changed.notified() => {}
                () = change => {}
            },
            Port::Listening(listener) => tokio::select! {
                () = cancel.cancelled() => return,
                () = state.changed.notified() => {}
                () = change => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tracing::trace!(%addr, %peer, "connection accepted");
                        tokio::spawn(serve_connection(stream, state.clone(), cancel.clone()));
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off briefly
                        // instead of spinning.
                        tracing::warn!(%addr, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                },
            },
        }
    }
}

/// A connection that can be reset: once `reset` is set, reads and writes
/// fail, shutdown sends no FIN, and dropping it sends an RST (SO_LINGER 0).
struct ConnIo {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "scripted reset")
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reset.load(Ordering::Acquire) {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.reset.load(Ordering::Acquire) {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reset.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reset.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Acquire)
            && let Err(e) = self.stream.set_zero_linger()
        {
            tracing::warn!(error = %e, "cannot set SO_LINGER 0; the close will be a FIN");
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<FakeState>, cancel: CancellationToken) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ConnIo {
        stream,
        reset: reset.clone(),
    });
    let service = {
        let cancel = cancel.clone();
        service_fn(move |req| handle(state.clone(), reset.clone(), cancel.clone(), req))
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(io, service);
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error (often scripted)");
            }
        }
        () = cancel.cancelled() => {}
    }
}

async fn handle(
    state: Arc<FakeState>,
    reset: Arc<AtomicBool>,
    cancel: CancellationToken,
    req: Request<Incoming>,
) -> Result<Response<Body>, io::Error> {
    let path = req.uri().path().to_owned();
    let body = Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    match reply::serve(&state, &path, &body) {
        ReplyPlan::Reset => {
            reset.store(true, Ordering::Release);
            Err(reset_error())
        }
        ReplyPlan::Hang => {
            tokio::select! {
                () = tokio::time::sleep(state.spec.hold_max) => {}
                () = cancel.cancelled() => {}
            }
            reset.store(true, Ordering::Release);
            Err(reset_error())
        }
        ReplyPlan::Error(error) => Ok(error_response(error)),
        ReplyPlan::Answer(answer) => {
            if !answer.delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(answer.delay) => {}
                    () = cancel.cancelled() => return Err(reset_error()),
                }
            }
            Ok(answer_response(answer, state.spec.hold_max, cancel))
        }
    }
}

fn error_response(error: ErrorReply) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(error.body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() =
        StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in error.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    response
}

fn answer_response(
    answer: Answer,
    hold_max: Duration,
    cancel: CancellationToken,
) -> Response<Body> {
    let steps = answer.steps.into_iter();
    let frames = futures::stream::unfold(Some(steps), move |steps| {
        let cancel = cancel.clone();
        async move {
            let mut steps = steps?;
            loop {
                match steps.next()? {
                    Step::Wait(d) => tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = cancel.cancelled() => return Some((Err(reset_error()), None)),
                    },
                    Step::Send(bytes) => return Some((Ok(Frame::data(bytes)), Some(steps))),
                    Step::Abort => {
                        // Let hyper flush what was sent before the cut: it
                        // writes out its buffer while the body is pending.
                        tokio::time::sleep(FLUSH_PAUSE).await;
                        return Some((Err(io::Error::other("scripted cut")), None));
                    }
                    Step::Stall => {
                        tokio::select! {
                            () = tokio::time::sleep(hold_max) => {}
                            () = cancel.cancelled() => {}
                        }
                        return Some((Err(io::Error::other("stall held past hold_max")), None));
                    }
                }
            }
        }
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    if let Some(length) = answer.content_length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    } else {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}
