//! The streaming mock upstream of the stream benchmarks: an OpenAI chat
//! completions endpoint on hyper that streams what the request's first
//! user message asks for, `chunks=N gap_us=G text=ts|words`:
//!
//! - `N` content chunks (after a role chunk), then a finish chunk, a
//!   usage chunk and `data: [DONE]`, in OpenAI's real chunk shape;
//! - `gap_us=0`: every chunk at once (one body frame each; hyper writes
//!   what is ready together, so the gateway reads them in a few reads);
//!   otherwise chunk *i* is due `i * G` after the first (no drift);
//! - `text=ts`: chunk *i*'s content is `t<ns>|`, the nanoseconds since
//!   [`epoch`] when the mock handed it to hyper, so the client (same
//!   process, same clock) knows each chunk's transit time;
//!   `text=words`: `w<i> `, the same on every model, so a restarted or
//!   continued answer can be checked word for word. A request with an
//!   assistant prefill of `k` words continues at word `k`.
//!
//! [`StreamMock::cut`] ends every stream under way abruptly (the
//! connection is reset mid-body), for failover under many streams. The
//! many-open-streams run has its own, cheaper mock
//! ([`super::paced_mock`]) with the same answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::TaskError;

/// The clock every timestamp of the stream benchmarks counts from.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What a stream request asks the mock for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Content chunks.
    pub chunks: u32,
    /// Between content chunks; zero: all at once.
    pub gap: Duration,
    /// Timestamps (`true`) or numbered words.
    pub timestamps: bool,
}

impl Ask {
    /// The first user message that asks for this.
    pub fn message(&self) -> String {
        format!(
            "chunks={} gap_us={} text={}",
            self.chunks,
            self.gap.as_micros(),
            if self.timestamps { "ts" } else { "words" }
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let mut ask = Ask {
            chunks: 0,
            gap: Duration::ZERO,
            timestamps: true,
        };
        for part in text.split_whitespace() {
            match part.split_once('=')? {
                ("chunks", n) => ask.chunks = n.parse().ok()?,
                ("gap_us", n) => ask.gap = Duration::from_micros(n.parse().ok()?),
                ("text", t) => ask.timestamps = t == "ts",
                _ => return None,
            }
        }
        Some(ask)
    }
}

/// The whole text a `text=words` answer of `chunks` chunks carries.
pub fn words(chunks: u32) -> String {
    (0..chunks).map(|i| format!("w{i} ")).collect()
}

#[derive(Debug, Default)]
struct Counters {
    streams: AtomicU64,
    open: AtomicU64,
}

/// A paced chunk this late says the harness's core did not keep up.
pub const LATE: Duration = Duration::from_millis(5);

/// A running mock; stops when [`StreamMock::shutdown`] is called.
pub struct StreamMock {
    addr: SocketAddr,
    counters: Arc<Counters>,
    cut: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

impl StreamMock {
    /// Listens on 127.0.0.1 on a free port.
    pub async fn start() -> Result<Self, TaskError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| TaskError::new("binding the stream mock", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TaskError::new("the stream mock's address", e))?;
        let counters = Arc::new(Counters::default());
        let (cut, cut_rx) = watch::channel(0u64);
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel();
        let c = counters.clone();
        let task = tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.keep_alive(true);
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut stop_rx => break,
                };
                let Ok((tcp, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let c = c.clone();
                let cut_rx = cut_rx.clone();
                let service = hyper::service::service_fn(move |request| {
                    serve(request, c.clone(), cut_rx.clone())
                });
                let connection = http.serve_connection(TokioIo::new(tcp), service);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        });
        Ok(Self {
            addr,
            counters,
            cut,
            stop: Some(stop),
            task,
        })
    }

    /// The API root to configure as an `openai` provider's `base_url`.
    pub fn api_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Ends every stream under way abruptly.
    pub fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// Streams served so far.
    pub fn streams(&self) -> u64 {
        self.counters.streams.load(Ordering::Relaxed)
    }

    /// Streams under way now.
    pub fn open(&self) -> u64 {
        self.counters.open.load(Ordering::Relaxed)
    }

    /// Stops accepting; open connections end with their streams.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

/// The first user message's text and the number of words of an assistant
/// prefill (the last message, when it is the assistant's).
pub(super) fn read_ask(body: &[u8]) -> Option<(Ask, u32)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let messages = v.get("messages")?.as_array()?;
    let ask = messages
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .and_then(Ask::parse)?;
    let prefill = messages
        .last()
        .filter(|m| m["role"] == "assistant")
        .and_then(|m| m["content"].as_str())
        .map_or(0, |t| t.split_whitespace().count() as u32);
    Some((ask, prefill))
}

async fn serve(
    request: Request<Incoming>,
    counters: Arc<Counters>,
    cut: watch::Receiver<u64>,
) -> Result<Response<Body>, Infallible> {
    if !request.uri().path().ends_with("/chat/completions") {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    }
    let Ok(body) = request.into_body().collect().await else {
        return Ok(plain(StatusCode::BAD_REQUEST, "unreadable body"));
    };
    let Some((ask, prefill)) = read_ask(&body.to_bytes()) else {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "the first user message must read `chunks=N gap_us=G text=ts|words`",
        ));
    };
    counters.streams.fetch_add(1, Ordering::Relaxed);
    counters.open.fetch_add(1, Ordering::Relaxed);
    let generation = *cut.borrow();
    let state = Chunks {
        ask,
        next: prefill.min(ask.chunks),
        first: prefill,
        phase: Phase::Role,
        start: Instant::now(),
        counters,
        cut,
        generation,
    };
    let frames = futures::stream::unfold(state, |mut s| async move {
        let item = s.next_frame().await?;
        Some((item, s))
    })
    .boxed();
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    Ok(r)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Role,
    Content,
    Finish,
    Usage,
    Done,
    Over,
}

struct Chunks {
    ask: Ask,
    next: u32,
    first: u32,
    phase: Phase,
    start: Instant,
    counters: Arc<Counters>,
    cut: watch::Receiver<u64>,
    generation: u64,
}

impl Drop for Chunks {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One SSE event of an answer.
#[derive(Debug, Clone, Copy)]
pub(super) enum Event {
    /// The role chunk that opens an answer.
    Role,
    /// Content chunk *i* of an answer to this ask: `t<now_ns>|` or `w<i> `.
    Content(Ask, u32),
    /// The chunk with `finish_reason`.
    Finish,
    /// The usage chunk of an answer to this ask.
    Usage(Ask),
    /// `data: [DONE]`.
    Done,
}

/// Appends `event` (OpenAI's real chunk shape, `\n\n`-terminated) to
/// `out`; allocates nothing when `out` has room.
pub(super) fn write_event(out: &mut Vec<u8>, event: Event) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = match event {
        Event::Role => write!(
            out,
            "{HEAD}{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ),
        Event::Content(ask, i) => {
            let _ = write!(out, "{HEAD}{{\"content\":\"");
            let _ = if ask.timestamps {
                write!(out, "t{}|", now_ns())
            } else {
                write!(out, "w{i} ")
            };
            write!(
                out,
                "\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            )
        }
        Event::Finish => write!(
            out,
            "{HEAD}{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n"
        ),
        Event::Usage(ask) => write!(
            out,
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1767225600,\"model\":\"mock-upstream\",\"system_fingerprint\":\"fp_bench\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
            ask.chunks,
            ask.chunks + 12
        ),
        Event::Done => out.write_all(b"data: [DONE]\n\n"),
    };
}

const HEAD: &str = r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,"model":"mock-upstream","system_fingerprint":"fp_bench","choices":[{"index":0,"delta":"#;

impl Chunks {
    fn is_cut(&self) -> bool {
        *self.cut.borrow() != self.generation
    }

    async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, std::io::Error>> {
        let cut = || {
            Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "cut by the benchmark",
            )))
        };
        if self.is_cut() {
            self.phase = Phase::Over;
            return cut();
        }
        let mut text = Vec::with_capacity(256);
        match self.phase {
            Phase::Role => {
                self.phase = if self.ask.chunks > self.next {
                    Phase::Content
                } else {
                    Phase::Finish
                };
                write_event(&mut text, Event::Role);
            }
            Phase::Content => {
                let i = self.next;
                if !self.ask.gap.is_zero() && i > self.first {
                    let due = self.start + self.ask.gap * (i - self.first);
                    let mut cut = self.cut.clone();
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        _ = cut.changed() => {}
                    }
                    if self.is_cut() {
                        self.phase = Phase::Over;
                        return Some(Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "cut by the benchmark",
                        )));
                    }
                }
                self.next += 1;
                if self.next >= self.ask.chunks {
                    self.phase = Phase::Finish;
                }
                write_event(&mut text, Event::Content(self.ask, i));
            }
            Phase::Finish => {
                self.phase = Phase::Usage;
                write_event(&mut text, Event::Finish);
            }
            Phase::Usage => {
                self.phase = Phase::Done;
                write_event(&mut text, Event::Usage(self.ask));
            }
            Phase::Done => {
                self.phase = Phase::Over;
                write_event(&mut text, Event::Done);
            }
            Phase::Over => return None,
        }
        Some(Ok(Frame::data(Bytes::from(text))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ask_round_trips_through_its_message() {
        let ask = Ask {
            chunks: 200,
            gap: Duration::from_micros(1000),
            timestamps: false,
        };
        assert_eq!(Ask::parse(&ask.message()), Some(ask));
        assert_eq!(Ask::parse("hello"), None);
        assert_eq!(words(3), "w0 w1 w2 ");
    }
}
