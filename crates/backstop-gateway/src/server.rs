//! The accept loop: hyper's HTTP/1 server with a header read timeout and a
//! cap on open connections, and a graceful shutdown that stops accepting,
//! lets in-flight requests and streams finish within a grace period, then
//! closes what is left.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How the accept loop guards itself.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish after a shutdown
    /// signal.
    pub shutdown_grace: Duration,
    /// Most connections open at once. When they are all taken the loop
    /// stops accepting, so new clients wait in the kernel's listen backlog
    /// instead of exhausting file descriptors and memory.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    /// Headers within 10 s; 30 s of grace at shutdown; 10,000 connections.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// How often the "connection limit reached" warning may repeat.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut last_limit_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let next = async {
            // A permit first: at the limit, nothing is accepted until a
            // connection closes.
            let permit = connections.clone().acquire_owned().await;
            (permit, listener.accept().await)
        };
        tokio::select! {
            (permit, accepted) = next => {
                let Ok(permit) = permit else {
                    // The semaphore is never closed; should it be, stop.
                    break;
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if connections.available_permits() == 0
                    && last_limit_warning.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_EVERY)
                {
                    last_limit_warning = Some(Instant::now());
                    tracing::warn!(
                        max_connections = options.max_connections,
                        "connection limit reached: new clients wait until a connection closes"
                    );
                }
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let connection = http.serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        grace_ms = options.shutdown_grace.as_millis() as u64,
        "shutting down: finishing in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!("grace period over: closing the remaining connections");
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
