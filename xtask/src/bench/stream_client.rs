//! The client side of the stream benchmarks: workers on raw hyper HTTP/1
//! connections (kept alive between streams) that ask for streamed chat
//! completions and time every chunk.
//!
//! Per chunk: its transit (arrival minus the mock's timestamp in it, one
//! clock) and the gap it added (the gap the client saw before it minus
//! the mock's gap between the same two chunks; earlier-than-paced arrivals
//! count as zero). Per stream: the time to its first content chunk from
//! the request, and how it ended: complete (`[DONE]`, every chunk, and in
//! `text=words` the exact text), cut (no `[DONE]`, an error event, or a
//! wrong text), or lost (no answer, a status other than 200, a transport
//! error). Every stream has a deadline; the workers stop with the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::stream_mock::{Ask, now_ns, words};

/// Where streams go and what they ask for.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// `host:port`.
    pub authority: String,
    /// The chat completions path (`/v1/chat/completions`).
    pub path: String,
    /// The `model` of each request, taken in turn.
    pub models: Vec<String>,
    /// What each stream asks the mock for.
    pub ask: Ask,
    /// Streams in all.
    pub streams: usize,
    /// Streams under way at once (one connection each).
    pub concurrency: usize,
    /// Worker *i* starts `i * ramp / concurrency` after the run's start.
    pub ramp: Duration,
    /// A stream not complete this long after its request is lost.
    pub deadline: Duration,
}

/// Histograms of one run (nanoseconds).
#[derive(Debug, Clone)]
pub struct Timings {
    /// Arrival minus the mock's timestamp, per content chunk.
    pub transit: Histogram<u64>,
    /// Client gap minus mock gap, per pair of consecutive chunks.
    pub gap_added: Histogram<u64>,
    /// Request to first content chunk.
    pub first_token: Histogram<u64>,
}

impl Timings {
    /// Empty histograms.
    pub fn new() -> Self {
        let h = || {
            Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)
                .expect("valid HdrHistogram bounds")
        };
        Self {
            transit: h(),
            gap_added: h(),
            first_token: h(),
        }
    }

    fn add(&mut self, other: &Timings) {
        let _ = self.transit.add(&other.transit);
        let _ = self.gap_added.add(&other.gap_added);
        let _ = self.first_token.add(&other.first_token);
    }
}

/// What a run gave.
#[derive(Debug, Clone)]
pub struct StreamRun {
    /// Per chunk and per stream timings of complete streams.
    pub timings: Timings,
    /// Streams that ended complete.
    pub complete: u64,
    /// Streams that ended without their whole answer.
    pub cut: u64,
    /// Streams that got no answer.
    pub lost: u64,
    /// Content chunks received.
    pub chunks: u64,
    /// From the start to the last stream's end.
    pub wall: Duration,
    /// One example of what went wrong, if anything did.
    pub first_problem: Option<String>,
}

impl Default for StreamRun {
    fn default() -> Self {
        Self {
            timings: Timings::new(),
            complete: 0,
            cut: 0,
            lost: 0,
            chunks: 0,
            wall: Duration::ZERO,
            first_problem: None,
        }
    }
}

/// Streams under way now (for RSS per open stream) and content chunks
/// received so far (for CPU per chunk while they are open).
#[derive(Debug, Default)]
pub struct Gauge {
    pub(super) open: AtomicU64,
    pub(super) chunks: AtomicU64,
}

impl Gauge {
    /// Streams whose request was sent and that have not ended.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Content chunks received so far.
    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }
}

enum Ending {
    Complete,
    Cut(String),
    Lost(String),
}

struct Worker {
    timings: Timings,
    complete: u64,
    cut: u64,
    lost: u64,
    chunks: u64,
    problem: Option<String>,
}

/// Runs `plan`; `gauge` counts open streams as it goes.
pub async fn run(plan: Arc<StreamPlan>, gauge: Arc<Gauge>) -> StreamRun {
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(plan.concurrency);
    for w in 0..plan.concurrency {
        let plan = plan.clone();
        let next = next.clone();
        let gauge = gauge.clone();
        let delay = plan.ramp.mul_f64(w as f64 / plan.concurrency.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + delay).await;
            worker(&plan, &next, &gauge).await
        }));
    }
    let mut out = StreamRun::default();
    for task in tasks {
        match task.await {
            Ok(w) => {
                out.timings.add(&w.timings);
                out.complete += w.complete;
                out.cut += w.cut;
                out.lost += w.lost;
                out.chunks += w.chunks;
                if out.first_problem.is_none() {
                    out.first_problem = w.problem;
                }
            }
            Err(e) => {
                out.lost += 1;
                out.first_problem
                    .get_or_insert_with(|| format!("a worker failed: {e}"));
            }
        }
    }
    out.wall = start.elapsed();
    out
}

async fn connect(authority: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake with {authority}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

async fn worker(plan: &StreamPlan, next: &AtomicUsize, gauge: &Gauge) -> Worker {
    let mut w = Worker {
        timings: Timings::new(),
        complete: 0,
        cut: 0,
        lost: 0,
        chunks: 0,
        problem: None,
    };
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.streams {
            break;
        }
        let model = &plan.models[i % plan.models.len().max(1)];
        gauge.open.fetch_add(1, Ordering::Relaxed);
        let ending = tokio::time::timeout(
            plan.deadline,
            one_stream(plan, model, &mut connection, &mut w),
        )
        .await
        .unwrap_or_else(|_| Ending::Lost(format!("no end within {:?}", plan.deadline)));
        gauge.open.fetch_sub(1, Ordering::Relaxed);
        match ending {
            Ending::Complete => w.complete += 1,
            Ending::Cut(why) => {
                w.cut += 1;
                w.problem.get_or_insert(why);
                connection = None;
            }
            Ending::Lost(why) => {
                w.lost += 1;
                w.problem.get_or_insert(why);
                connection = None;
            }
        }
    }
    w
}

async fn one_stream(
    plan: &StreamPlan,
    model: &str,
    connection: &mut Option<SendRequest<Full<Bytes>>>,
    w: &mut Worker,
) -> Ending {
    let body = serde_json::json!({
        "model": model,
        "stream": true,
        "messages": [{"role": "user", "content": plan.ask.message()}],
    });
    let request = hyper::Request::post(&plan.path)
        .header(hyper::header::HOST, &plan.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())));
    let Ok(request) = request else {
        return Ending::Lost("could not build the request".into());
    };
    let sent = Instant::now();
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        *connection = match connect(&plan.authority).await {
            Ok(c) => Some(c),
            Err(e) => return Ending::Lost(e),
        };
    }
    let Some(send) = connection.as_mut() else {
        return Ending::Lost("no connection".into());
    };
    if send.ready().await.is_err() {
        return Ending::Lost("the connection closed".into());
    }
    let response = match send.send_request(request).await {
        Ok(r) => r,
        Err(e) => return Ending::Lost(format!("sending: {e}")),
    };
    if response.status() != 200 {
        return Ending::Lost(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    let mut reader = Reader::new(plan.ask);
    let mut local = Timings::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let arrived = now_ns();
                buffer.extend_from_slice(&data);
                while let Some(end) = find(&buffer, b"\n\n") {
                    let event = buffer.split_to(end + 2);
                    if let Err(why) = reader.event(&event, arrived, sent, &mut local) {
                        return Ending::Cut(why);
                    }
                }
            }
            Some(Err(e)) => return Ending::Cut(format!("the body was cut: {e}")),
            None => break,
        }
    }
    w.chunks += u64::from(reader.chunks);
    if let Err(why) = reader.finish() {
        return Ending::Cut(why);
    }
    w.timings.add(&local);
    Ending::Complete
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A decimal number of 1 to 19 digits.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Reads one stream's events.
pub(super) struct Reader {
    ask: Ask,
    chunks: u32,
    done: bool,
    text: String,
    /// (arrival, mock timestamp) of the previous content chunk.
    previous: Option<(u64, u64)>,
}

impl Reader {
    pub(super) fn new(ask: Ask) -> Self {
        Self {
            ask,
            chunks: 0,
            done: false,
            text: String::new(),
            previous: None,
        }
    }

    /// Content chunks so far.
    pub(super) fn chunks(&self) -> u32 {
        self.chunks
    }

    /// Content chunks asked for.
    pub(super) fn asked(&self) -> u32 {
        self.ask.chunks
    }

    /// Takes one whole event (up to its blank line).
    pub(super) fn event(
        &mut self,
        event: &[u8],
        arrived: u64,
        sent: Instant,
        timings: &mut Timings,
    ) -> Result<(), String> {
        // Bytes, not text: only the data line's few markers matter.
        let Some(data) = event
            .split(|b| *b == b'\n')
            .find_map(|l| l.strip_prefix(b"data:"))
            .map(|d| d.strip_prefix(b" ").unwrap_or(d))
            .map(|d| d.strip_suffix(b"\r").unwrap_or(d))
        else {
            return Ok(());
        };
        if data == b"[DONE]" {
            self.done = true;
            return Ok(());
        }
        if data.starts_with(b"{\"error\"") {
            return Err(format!("an error event: {}", String::from_utf8_lossy(data)));
        }
        const CONTENT: &[u8] = b"\"content\":\"";
        let Some(at) = data.windows(CONTENT.len()).position(|w| w == CONTENT) else {
            return Ok(());
        };
        let rest = &data[at + CONTENT.len()..];
        let content = rest.split(|b| *b == b'"').next().unwrap_or_default();
        if content.is_empty() {
            return Ok(());
        }
        if self.chunks == 0 {
            let first = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = timings.first_token.record(first.max(1));
        }
        self.chunks += 1;
        if self.ask.timestamps {
            // One or more `t<ns>|` stamps (a chunk is never merged, but a
            // restarted text could be).
            for stamp in content.split(|b| *b == b'|').filter(|s| !s.is_empty()) {
                let stamped = stamp.strip_prefix(b"t").and_then(digits).ok_or_else(|| {
                    format!(
                        "a chunk without a timestamp: {}",
                        String::from_utf8_lossy(content)
                    )
                })?;
                let _ = timings
                    .transit
                    .record(arrived.saturating_sub(stamped).max(1));
                if let Some((prev_arrived, prev_stamped)) = self.previous {
                    let client_gap = arrived.saturating_sub(prev_arrived);
                    let mock_gap = stamped.saturating_sub(prev_stamped);
                    let _ = timings
                        .gap_added
                        .record(client_gap.saturating_sub(mock_gap).max(1));
                }
                self.previous = Some((arrived, stamped));
            }
        } else {
            let text = std::str::from_utf8(content)
                .map_err(|_| "a chunk's text is not UTF-8".to_owned())?;
            self.text.push_str(text);
        }
        Ok(())
    }

    /// Whether the stream had all it should.
    pub(super) fn finish(&self) -> Result<(), String> {
        if !self.done {
            return Err(format!(
                "no [DONE] after {} of {} chunks",
                self.chunks, self.ask.chunks
            ));
        }
        if self.ask.timestamps {
            if self.chunks != self.ask.chunks {
                return Err(format!(
                    "{} chunks of {} arrived",
                    self.chunks, self.ask.chunks
                ));
            }
        } else if self.text != words(self.ask.chunks) {
            return Err(format!(
                "the text differs from the answer asked for ({} bytes of {})",
                self.text.len(),
                words(self.ask.chunks).len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_whole_decimal_numbers() {
        assert_eq!(digits(b"1234567"), Some(1_234_567));
        assert_eq!(digits(b""), None);
        assert_eq!(digits(b"12a"), None);
        assert_eq!(digits(b"12345678901234567890"), None);
    }

    #[test]
    fn the_reader_takes_data_lines_with_or_without_the_space() {
        let ask = Ask {
            chunks: 2,
            gap: Duration::ZERO,
            timestamps: false,
        };
        let mut reader = Reader::new(ask);
        let mut timings = Timings::new();
        let sent = Instant::now();
        for event in [
            &b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"[..],
            b"data:{\"choices\":[{\"delta\":{\"content\":\"w0 \"}}]}\n\n",
            b": a comment\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"w1 \"}}]}\r\n\r\n",
            b"data:[DONE]\n\n",
        ] {
            assert_eq!(reader.event(event, 0, sent, &mut timings), Ok(()));
        }
        assert_eq!(reader.chunks(), 2);
        assert_eq!(reader.finish(), Ok(()));
        let mut reader = Reader::new(ask);
        assert!(
            reader
                .event(b"data: {\"error\":{}}\n\n", 0, sent, &mut timings)
                .is_err()
        );
        assert!(reader.finish().is_err());
    }
}
