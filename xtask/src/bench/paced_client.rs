//! The client of the many-open-streams run, built to cost as little as it
//! can per chunk: raw HTTP/1.1 on tokio sockets, one connection and one
//! task per stream, every read into one 64 KiB buffer shared by all the
//! streams of the thread (single-threaded runtime: a read never waits
//! while it holds it), the chunked framing decoded in place and the
//! events scanned, not parsed, by [`Reader`] for what the figures need:
//! each content chunk's timestamp and the `[DONE]` marker. Every chunk's
//! timings go straight into the run's histograms (no per-stream ones).
//!
//! A stream ends complete when `[DONE]` and the end of the chunked body
//! arrived with every chunk; cut on a close before that or an error
//! event; lost on a refused connection, a status other than 200 or no
//! end by the run's deadline (the plan's `deadline` after the last
//! stream's start: one timer for the run, not one per stream). The same
//! endings as [`super::stream_client`].

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::paced_mock::write_all;
use super::stream_client::{Gauge, Reader, StreamRun, Timings};
use super::stream_mock::{Ask, now_ns};

/// What the run asks for.
#[derive(Debug, Clone)]
pub struct PacedPlan {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The chat completions path.
    pub path: String,
    /// The request's `model`.
    pub model: String,
    /// What each stream asks the mock for.
    pub ask: Ask,
    /// Streams, all open at once once ramped.
    pub streams: usize,
    /// Stream *i* starts `i * ramp / streams` after the run's start.
    pub ramp: Duration,
    /// A stream not complete this long after its request is lost.
    pub deadline: Duration,
}

impl PacedPlan {
    fn request(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "model": self.model,
            "stream": true,
            "messages": [{"role": "user", "content": self.ask.message()}],
        })
        .to_string();
        format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.path,
            self.addr,
            body.len()
        )
        .into_bytes()
    }
}

enum Ending {
    Complete,
    Cut(String),
    Lost(String),
}

/// Counts a stream open while it lives (aborted ones included).
struct Open(Arc<Gauge>);

impl Open {
    fn new(gauge: &Arc<Gauge>) -> Self {
        gauge.open.fetch_add(1, Ordering::Relaxed);
        Self(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every stream of the run shares.
struct Shared {
    buffer: RefCell<Vec<u8>>,
    timings: RefCell<Timings>,
    run: RefCell<StreamRun>,
    gauge: Arc<Gauge>,
}

/// Runs `plan` on the current `LocalSet`; `gauge` counts open streams and
/// content chunks as they come.
pub async fn run(plan: PacedPlan, gauge: Arc<Gauge>) -> StreamRun {
    let start = Instant::now();
    let request: Rc<[u8]> = plan.request().into();
    let shared = Rc::new(Shared {
        buffer: RefCell::new(vec![0; 64 * 1024]),
        timings: RefCell::new(Timings::new()),
        run: RefCell::new(StreamRun::default()),
        gauge,
    });
    let plan = Rc::new(plan);
    // One deadline for the run, not a timer per stream: the last stream
    // starts after the ramp and has `deadline` from there.
    let deadline = start + plan.ramp + plan.deadline;
    let mut tasks = Vec::with_capacity(plan.streams);
    for i in 0..plan.streams {
        let delay = plan.ramp.mul_f64(i as f64 / plan.streams.max(1) as f64);
        let (plan, shared, request) = (plan.clone(), shared.clone(), request.clone());
        tasks.push(tokio::task::spawn_local(async move {
            tokio::time::sleep_until(start + delay).await;
            let _open = Open::new(&shared.gauge);
            let ending = one(&plan, &request, &shared).await;
            let mut run = shared.run.borrow_mut();
            match ending {
                Ending::Complete => run.complete += 1,
                Ending::Cut(why) => {
                    run.cut += 1;
                    run.first_problem.get_or_insert(why);
                }
                Ending::Lost(why) => {
                    run.lost += 1;
                    run.first_problem.get_or_insert(why);
                }
            }
        }));
    }
    let all = async {
        for task in &mut tasks {
            if let Err(e) = task.await {
                let mut run = shared.run.borrow_mut();
                run.lost += 1;
                run.first_problem
                    .get_or_insert_with(|| format!("a stream task failed: {e}"));
            }
        }
    };
    if tokio::time::timeout_at(deadline, all).await.is_err() {
        let mut unfinished = 0;
        for task in &tasks {
            if !task.is_finished() {
                task.abort();
                unfinished += 1;
            }
        }
        let mut run = shared.run.borrow_mut();
        run.lost += unfinished;
        run.first_problem.get_or_insert_with(|| {
            format!(
                "{unfinished} streams had no end within {:?} of the last start",
                plan.deadline
            )
        });
    }
    let mut run = shared.run.replace(StreamRun::default());
    run.timings = shared.timings.replace(Timings::new());
    run.wall = start.elapsed();
    run
}

async fn one(plan: &PacedPlan, request: &[u8], shared: &Shared) -> Ending {
    let sent = Instant::now();
    let tcp = match TcpStream::connect(plan.addr).await {
        Ok(tcp) => tcp,
        Err(e) => return Ending::Lost(format!("connecting to {}: {e}", plan.addr)),
    };
    let _ = tcp.set_nodelay(true);
    if let Err(e) = write_all(&tcp, request).await {
        return Ending::Lost(format!("sending: {e}"));
    }
    let mut tcp = tcp;
    let mut response = Response::new(plan.ask);
    loop {
        // Through `poll_read`, which takes a short read as the end of what
        // is there: one `read` per arrival, no second one to learn that.
        // The shared buffer is borrowed only inside one poll.
        let step = std::future::poll_fn(|cx| {
            let mut buffer = shared.buffer.borrow_mut();
            let mut read = ReadBuf::new(&mut buffer);
            let n = match Pin::new(&mut tcp).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Step::Closed(e.to_string())),
                Poll::Ready(Ok(())) => read.filled().len(),
            };
            if n == 0 {
                return Poll::Ready(Step::Closed("the connection closed".to_owned()));
            }
            let arrived = now_ns();
            let mut timings = shared.timings.borrow_mut();
            let before = response.reader.chunks();
            let step = response.feed(&buffer[..n], arrived, sent, &mut timings);
            let chunks = u64::from(response.reader.chunks() - before);
            shared.gauge.chunks.fetch_add(chunks, Ordering::Relaxed);
            shared.run.borrow_mut().chunks += chunks;
            Poll::Ready(step)
        })
        .await;
        match step {
            Step::More => {}
            Step::Ended(ending) => return ending,
            Step::Closed(why) => return response.closed(&why),
        }
    }
}

enum Step {
    More,
    Ended(Ending),
    Closed(String),
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// In a size line: the size so far, and whether an extension began.
    Size(usize, bool),
    /// In a chunk's data: bytes left.
    Data(usize),
    /// After a chunk's data: the CRLF, `n` of its bytes seen.
    DataEnd(u8),
    /// After the zero-size chunk: trailer lines; bytes in this line.
    Trailer(usize),
    /// The body has ended.
    Done,
}

/// One response as it arrives: the head, then the chunked body, decoded
/// into `events` and handed to the [`Reader`] one event at a time.
struct Response {
    head_done: bool,
    /// The head until it is whole; then decoded body bytes not yet
    /// ending in an event boundary.
    events: Vec<u8>,
    chunked: Chunked,
    reader: Reader,
}

impl Response {
    fn new(ask: Ask) -> Self {
        Self {
            head_done: false,
            events: Vec::new(),
            chunked: Chunked::Size(0, false),
            reader: Reader::new(ask),
        }
    }

    /// Why a stream that closed now ended as it did.
    fn closed(&self, why: &str) -> Ending {
        if self.head_done {
            Ending::Cut(format!(
                "{why} after {} of {} chunks",
                self.reader.chunks(),
                self.reader.asked()
            ))
        } else {
            Ending::Lost(format!("{why} before an answer"))
        }
    }

    fn feed(&mut self, bytes: &[u8], arrived: u64, sent: Instant, timings: &mut Timings) -> Step {
        if !self.head_done {
            self.events.extend_from_slice(bytes);
            let Some(end) = find(&self.events, b"\r\n\r\n") else {
                if self.events.len() > 64 * 1024 {
                    return Step::Ended(Ending::Lost("a response head over 64 KiB".into()));
                }
                return Step::More;
            };
            if let Err(why) = check_head(&self.events[..end + 4]) {
                return Step::Ended(Ending::Lost(why));
            }
            self.head_done = true;
            let body = self.events.split_off(end + 4);
            self.events.clear();
            return self.decode(&body, arrived, sent, timings);
        }
        self.decode(bytes, arrived, sent, timings)
    }

    fn decode(&mut self, bytes: &[u8], arrived: u64, sent: Instant, timings: &mut Timings) -> Step {
        let mut i = 0;
        while i < bytes.len() {
            match self.chunked {
                Chunked::Size(size, ext) => {
                    let b = bytes[i];
                    i += 1;
                    self.chunked = match b {
                        b'\n' if size == 0 => Chunked::Trailer(0),
                        b'\n' => Chunked::Data(size),
                        b'\r' => Chunked::Size(size, ext),
                        _ if ext => Chunked::Size(size, true),
                        b';' => Chunked::Size(size, true),
                        _ => match (b as char).to_digit(16) {
                            Some(d) if size < usize::MAX >> 8 => {
                                Chunked::Size(size * 16 + d as usize, false)
                            }
                            _ => {
                                return Step::Ended(Ending::Cut(format!(
                                    "a bad chunk size byte {b:#04x}"
                                )));
                            }
                        },
                    };
                }
                Chunked::Data(left) => {
                    let take = left.min(bytes.len() - i);
                    self.events.extend_from_slice(&bytes[i..i + take]);
                    i += take;
                    self.chunked = if take == left {
                        Chunked::DataEnd(0)
                    } else {
                        Chunked::Data(left - take)
                    };
                }
                Chunked::DataEnd(seen) => {
                    let b = bytes[i];
                    i += 1;
                    self.chunked = match (seen, b) {
                        (0, b'\r') => Chunked::DataEnd(1),
                        (_, b'\n') => Chunked::Size(0, false),
                        _ => return Step::Ended(Ending::Cut("a chunk without its CRLF".into())),
                    };
                }
                Chunked::Trailer(len) => {
                    let b = bytes[i];
                    i += 1;
                    self.chunked = match b {
                        b'\n' if len == 0 => Chunked::Done,
                        b'\n' => Chunked::Trailer(0),
                        b'\r' => Chunked::Trailer(len),
                        _ => Chunked::Trailer(len + 1),
                    };
                }
                Chunked::Done => break,
            }
        }
        if let Err(why) = self.events(arrived, sent, timings) {
            return Step::Ended(Ending::Cut(why));
        }
        if self.chunked == Chunked::Done {
            return Step::Ended(match self.reader.finish() {
                Ok(()) => Ending::Complete,
                Err(why) => Ending::Cut(why),
            });
        }
        Step::More
    }

    /// Hands every whole event to the reader; keeps the rest.
    fn events(&mut self, arrived: u64, sent: Instant, timings: &mut Timings) -> Result<(), String> {
        let mut from = 0;
        while let Some(end) = find(&self.events[from..], b"\n\n") {
            let event = &self.events[from..from + end + 2];
            self.reader.event(event, arrived, sent, timings)?;
            from += end + 2;
        }
        self.events.drain(..from);
        Ok(())
    }
}

/// A `200` with a chunked body, or why not.
fn check_head(head: &[u8]) -> Result<(), String> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {status:?}"));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if chunked {
        Ok(())
    } else {
        Err("a 200 without a chunked body".into())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::super::stream_mock::{Event, write_event};
    use super::*;

    const ASK: Ask = Ask {
        chunks: 3,
        gap: Duration::from_millis(50),
        timestamps: true,
    };

    fn chunk(out: &mut Vec<u8>, body: &[u8]) {
        out.extend_from_slice(format!("{:x};ext=1\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }

    /// A whole answer as the gateway writes it: several events per chunk
    /// and one event split across two chunks.
    fn answer() -> Vec<u8> {
        let mut events = Vec::new();
        write_event(&mut events, Event::Role);
        for i in 0..ASK.chunks {
            write_event(&mut events, Event::Content(ASK, i));
        }
        write_event(&mut events, Event::Finish);
        write_event(&mut events, Event::Usage(ASK));
        write_event(&mut events, Event::Done);
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let third = events.len() / 3;
        chunk(&mut out, &events[..third]);
        chunk(&mut out, &events[third..2 * third]);
        chunk(&mut out, &events[2 * third..]);
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn feed_all(pieces: &[&[u8]]) -> (Option<Ending>, u32, Timings) {
        let mut response = Response::new(ASK);
        let mut timings = Timings::new();
        let sent = Instant::now();
        for piece in pieces {
            match response.feed(piece, now_ns(), sent, &mut timings) {
                Step::More => {}
                Step::Ended(e) => return (Some(e), response.reader.chunks(), timings),
                Step::Closed(_) => unreachable!("feed never reports a close"),
            }
        }
        (None, response.reader.chunks(), timings)
    }

    #[test]
    fn an_answer_split_at_any_byte_ends_complete_with_every_chunk_timed() {
        let bytes = answer();
        for at in 0..bytes.len() {
            let (ending, chunks, timings) = feed_all(&[&bytes[..at], &bytes[at..]]);
            assert!(
                matches!(ending, Some(Ending::Complete)),
                "split at {at}: {}",
                match ending {
                    Some(Ending::Cut(w) | Ending::Lost(w)) => w,
                    _ => "no end".into(),
                }
            );
            assert_eq!(chunks, 3);
            assert_eq!(timings.transit.len(), 3);
            assert_eq!(timings.gap_added.len(), 2);
            assert_eq!(timings.first_token.len(), 1);
        }
    }

    #[test]
    fn an_answer_without_its_end_is_not_complete() {
        let bytes = answer();
        // Everything but the zero-size chunk: [DONE] came, the body did not end.
        let (ending, chunks, _) = feed_all(&[&bytes[..bytes.len() - 5]]);
        assert!(ending.is_none());
        assert_eq!(chunks, 3);
        let mut response = Response::new(ASK);
        let _ = response.feed(
            &bytes[..bytes.len() - 5],
            0,
            Instant::now(),
            &mut Timings::new(),
        );
        assert!(matches!(response.closed("eof"), Ending::Cut(w) if w.contains("3 of 3")));
        // A close before the head is a lost stream.
        assert!(matches!(Response::new(ASK).closed("eof"), Ending::Lost(_)));
    }

    #[test]
    fn a_short_answer_or_an_error_event_is_cut() {
        let mut events = Vec::new();
        write_event(&mut events, Event::Content(ASK, 0));
        write_event(&mut events, Event::Done);
        let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        chunk(&mut out, &events);
        out.extend_from_slice(b"0\r\n\r\n");
        let (ending, _, _) = feed_all(&[&out]);
        assert!(matches!(ending, Some(Ending::Cut(w)) if w.contains("1 chunks of 3")));

        let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        chunk(
            &mut out,
            b"data: {\"error\":{\"message\":\"upstream gone\"}}\n\n",
        );
        let (ending, _, _) = feed_all(&[&out]);
        assert!(matches!(ending, Some(Ending::Cut(w)) if w.contains("an error event")));
    }

    #[test]
    fn a_refusal_or_a_body_that_is_not_chunked_is_lost() {
        let (ending, _, _) =
            feed_all(&[b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"]);
        assert!(matches!(ending, Some(Ending::Lost(w)) if w.contains("503")));
        let (ending, _, _) = feed_all(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]);
        assert!(matches!(ending, Some(Ending::Lost(w)) if w.contains("chunked")));
    }
}
