//! A tiny HTTP/1.1 server on 127.0.0.1 for what wiremock cannot do, since it
//! sends whole bodies: stream an event body in pieces and then finish it,
//! cut it, or stall it; or hang up before any response.
//!
//! Shared by the provider crates' tests (`#[path]`-included), so each crate
//! need not carry its own copy.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the body ends after its pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The chunked body's terminator: a clean end.
    Finish,
    /// The connection closes without the terminator: a cut.
    Cut,
    /// Nothing more is sent and the connection stays open.
    Stall,
}

/// What the server does with every request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Close the connection before sending any byte.
    Hangup,
    /// `200 text/event-stream`, chunked: each piece, then `end`.
    Events {
        /// Body pieces, each sent and flushed on its own.
        pieces: Vec<String>,
        /// How the body ends.
        end: End,
    },
}

/// A running server; it serves until the test's runtime ends.
pub struct RawServer {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl RawServer {
    /// Starts serving `reply` to every connection.
    pub async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, reply.clone(), seen.clone()));
            }
        });
        Self { addr, bodies }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request bodies received so far (empty for `Hangup`).
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("lock").clone()
    }
}

async fn serve(mut socket: TcpStream, reply: Reply, bodies: Arc<Mutex<Vec<String>>>) {
    let (pieces, end) = match reply {
        Reply::Hangup => return,
        Reply::Events { pieces, end } => (pieces, end),
    };
    let Some(body) = read_request(&mut socket).await else {
        return;
    };
    bodies.lock().expect("lock").push(body);
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for piece in pieces {
        let frame = format!("{:x}\r\n{piece}\r\n", piece.len());
        if socket.write_all(frame.as_bytes()).await.is_err() || socket.flush().await.is_err() {
            return;
        }
    }
    match end {
        End::Finish => {
            let _ = socket.write_all(b"0\r\n\r\n").await;
            let _ = socket.flush().await;
        }
        End::Cut => {}
        End::Stall => std::future::pending::<()>().await,
    }
}

/// Reads one request and returns its body.
async fn read_request(socket: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf[header_end..header_end + length]).into_owned())
}
