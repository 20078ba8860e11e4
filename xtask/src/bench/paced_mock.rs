//! The streaming mock of the many-open-streams run, built to cost as
//! little as it can per chunk so that one core can pace thousands of
//! streams: the same answers as [`super::stream_mock`] (OpenAI's chunk
//! shape, `text=ts` timestamps taken when a chunk is handed to the
//! kernel), but
//!
//! - raw HTTP/1.1 on tokio sockets instead of hyper: a connection task
//!   reads a request (`content-length` bodies only), writes the response
//!   head with the role chunk and the first content chunk, then hands the
//!   socket to the wheel;
//! - one timer for every stream: a wheel of 1 ms slots spanning the gap
//!   between chunks (50 slots for 50 ms). A stream sits in one slot and
//!   gets its next chunk each time its slot comes round, so a tick costs
//!   one timer wake-up for all the streams due in it, not one per stream;
//! - one `write` per chunk from a reused buffer (chunked framing and
//!   event built in place, no allocation per chunk); after the last
//!   content chunk the finish, usage, `[DONE]` and the terminating
//!   zero-size chunk go in the same write.
//!
//! It runs on the harness thread's single-threaded runtime
//! ([`super::paced`]); nothing in it is `Send`.
//!
//! It counts how late paced chunks were against their slot's time (more
//! than [`LATE`], or not taken whole by the socket when due: late), which
//! says whether the harness's core kept up.

use std::cell::RefCell;
use std::io::Write as _;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::stream_mock::{Ask, Event, LATE, epoch, now_ns, read_ask, write_event};

/// The wheel's slot width.
pub const TICK: Duration = Duration::from_millis(1);

/// A request head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// A request body larger than this is refused.
const MAX_BODY: usize = 1024 * 1024;

/// What the mock counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pacing {
    /// Streams answered.
    pub streams: u64,
    /// Streams under way.
    pub open: u64,
    /// Paced chunks sent.
    pub paced: u64,
    /// Of which late.
    pub late: u64,
    /// Streams whose connection failed mid-answer.
    pub broken: u64,
}

/// One stream on the wheel.
struct Paced {
    tcp: Rc<TcpStream>,
    ask: Ask,
    /// The next content chunk.
    next: u32,
    /// The tick it is due at.
    due: u64,
    /// Bytes the socket did not take yet.
    pending: Vec<u8>,
    /// Told when the answer has ended, with what is left to write.
    ended: Option<oneshot::Sender<Vec<u8>>>,
}

/// Every paced stream, by slot.
struct Wheel {
    /// Tick 0.
    base: Instant,
    /// [`epoch`]-relative nanoseconds of tick 0.
    base_ns: u64,
    /// One slot per tick of the gap.
    slots: Vec<Vec<Paced>>,
    /// The first tick not processed yet.
    next_tick: u64,
    /// Where each chunk is built before its write.
    scratch: Vec<u8>,
    counts: Pacing,
}

impl Wheel {
    fn new(gap: Duration) -> Self {
        let slots = (gap.as_nanos() / TICK.as_nanos()).max(1) as usize;
        let base = Instant::now();
        Self {
            base,
            base_ns: u64::try_from(base.duration_since(epoch()).as_nanos()).unwrap_or(0),
            slots: (0..slots).map(|_| Vec::new()).collect(),
            next_tick: 0,
            scratch: Vec::with_capacity(1024),
            counts: Pacing::default(),
        }
    }

    fn tick_of(&self, at: Instant) -> u64 {
        (at.duration_since(self.base).as_nanos() / TICK.as_nanos()) as u64
    }

    fn span(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Writes the head, the role chunk and content chunk `first`, and puts
    /// the stream on the wheel (or ends it at once when that was all).
    fn start(&mut self, tcp: Rc<TcpStream>, ask: Ask, first: u32, ended: oneshot::Sender<Vec<u8>>) {
        self.counts.streams += 1;
        self.counts.open += 1;
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        chunk(&mut out, |b| write_event(b, Event::Role));
        let mut stream = Paced {
            tcp,
            ask,
            next: first.min(ask.chunks),
            due: self.tick_of(Instant::now()) + self.span(),
            pending: Vec::new(),
            ended: Some(ended),
        };
        if stream.next < ask.chunks {
            let i = stream.next;
            chunk(&mut out, |b| write_event(b, Event::Content(ask, i)));
            stream.next += 1;
        }
        if stream.next >= ask.chunks {
            close(&mut out, ask);
        }
        let Some(rest) = send(&stream.tcp, &out) else {
            self.broken(stream);
            return;
        };
        stream.pending.extend_from_slice(rest);
        if stream.next >= ask.chunks {
            self.end(stream);
        } else {
            let slot = (stream.due % self.span()) as usize;
            self.slots[slot].push(stream);
        }
    }

    fn end(&mut self, mut stream: Paced) {
        self.counts.open -= 1;
        if let Some(ended) = stream.ended.take() {
            let _ = ended.send(std::mem::take(&mut stream.pending));
        }
    }

    fn broken(&mut self, stream: Paced) {
        self.counts.open -= 1;
        self.counts.broken += 1;
        // Dropping `ended` tells the connection task to close.
        drop(stream);
    }

    /// Sends every chunk due at `tick`.
    fn process(&mut self, tick: u64) {
        let span = self.span();
        let slot_index = (tick % span) as usize;
        let due_ns = self.base_ns + tick * TICK.as_nanos() as u64;
        let mut slot = std::mem::take(&mut self.slots[slot_index]);
        let mut j = 0;
        while j < slot.len() {
            let stream = &mut slot[j];
            if stream.due > tick {
                j += 1;
                continue;
            }
            let ask = stream.ask;
            let i = stream.next;
            self.scratch.clear();
            chunk(&mut self.scratch, |b| {
                write_event(b, Event::Content(ask, i))
            });
            let sent_ns = now_ns();
            stream.next += 1;
            let last = stream.next >= ask.chunks;
            if last {
                close(&mut self.scratch, ask);
            }
            self.counts.paced += 1;
            let mut late = sent_ns.saturating_sub(due_ns) > LATE.as_nanos() as u64;
            let written = if stream.pending.is_empty() {
                send(&stream.tcp, &self.scratch).map(|rest| {
                    stream.pending.extend_from_slice(rest);
                })
            } else {
                stream.pending.extend_from_slice(&self.scratch);
                send(&stream.tcp, &stream.pending)
                    .map(|rest| rest.len())
                    .map(|left| {
                        let taken = stream.pending.len() - left;
                        stream.pending.drain(..taken);
                    })
            };
            if written.is_none() {
                let stream = slot.swap_remove(j);
                self.broken(stream);
                continue;
            }
            late |= !stream.pending.is_empty();
            if late {
                self.counts.late += 1;
            }
            if last {
                let stream = slot.swap_remove(j);
                self.end(stream);
                continue;
            }
            stream.due += span;
            j += 1;
        }
        // Streams started while this slot was out stay in the wheel.
        slot.append(&mut self.slots[slot_index]);
        self.slots[slot_index] = slot;
    }
}

/// Appends one HTTP/1.1 chunk holding what `body` writes.
fn chunk(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    // A fixed-width size line, patched once the body is written.
    let at = out.len();
    out.extend_from_slice(b"0000\r\n");
    body(out);
    let len = out.len() - at - 6;
    let mut size = [0u8; 4];
    let _ = write!(&mut size[..], "{len:04x}");
    out[at..at + 4].copy_from_slice(&size);
    out.extend_from_slice(b"\r\n");
}

/// Appends the events after the last content chunk and the end of the
/// chunked body.
fn close(out: &mut Vec<u8>, ask: Ask) {
    chunk(out, |b| {
        write_event(b, Event::Finish);
        write_event(b, Event::Usage(ask));
        write_event(b, Event::Done);
    });
    out.extend_from_slice(b"0\r\n\r\n");
}

/// Writes what the socket takes now; `None` when the connection failed,
/// otherwise what it did not take.
fn send<'a>(tcp: &TcpStream, mut bytes: &'a [u8]) -> Option<&'a [u8]> {
    while !bytes.is_empty() {
        match tcp.try_write(bytes) {
            Ok(0) => return None,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(bytes)
}

/// Writes all of `bytes` on a non-blocking socket (the client's request
/// too).
pub(super) async fn write_all(tcp: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The mock: a listener, the wheel, and the task that turns it.
pub struct PacedMock {
    wheel: Rc<RefCell<Wheel>>,
    wake: Rc<Notify>,
}

impl PacedMock {
    /// Starts serving `listener` on the current `LocalSet`: streams must ask
    /// for chunks `gap` apart (a whole number of milliseconds).
    pub fn start(listener: TcpListener, gap: Duration) -> Result<Self, String> {
        if gap < TICK || !gap.as_nanos().is_multiple_of(TICK.as_nanos()) {
            return Err(format!(
                "the paced mock needs a gap of whole milliseconds, not {gap:?}"
            ));
        }
        let mock = Self {
            wheel: Rc::new(RefCell::new(Wheel::new(gap))),
            wake: Rc::new(Notify::new()),
        };
        tokio::task::spawn_local(turn(mock.wheel.clone(), mock.wake.clone()));
        let (wheel, wake) = (mock.wheel.clone(), mock.wake.clone());
        tokio::task::spawn_local(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    // Out of file descriptors, most likely: the client
                    // sees its stream lost; try again shortly.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                tokio::task::spawn_local(connection(tcp, wheel.clone(), wake.clone(), gap));
            }
        });
        Ok(mock)
    }

    /// What it counted so far.
    pub fn pacing(&self) -> Pacing {
        self.wheel.borrow().counts
    }
}

/// Turns the wheel: one timer for every stream; asleep while none is open.
async fn turn(wheel: Rc<RefCell<Wheel>>, wake: Rc<Notify>) {
    loop {
        let idle = wheel.borrow().counts.open == 0;
        if idle {
            wake.notified().await;
            let mut w = wheel.borrow_mut();
            w.next_tick = w.tick_of(Instant::now());
        }
        let at = {
            let w = wheel.borrow();
            w.base + TICK * u32::try_from(w.next_tick).unwrap_or(u32::MAX)
        };
        tokio::time::sleep_until(at).await;
        let mut w = wheel.borrow_mut();
        let now = w.tick_of(Instant::now());
        // Bounded: the ticks elapsed since the last turn.
        while w.next_tick <= now {
            let tick = w.next_tick;
            w.process(tick);
            w.next_tick += 1;
        }
    }
}

/// A request as far as the mock cares.
struct Request {
    path_ok: bool,
    body: Vec<u8>,
}

/// Reads one request from `tcp` (`buffered` keeps what came after it);
/// `Ok(None)` when the peer closed between requests.
async fn read_request(tcp: &TcpStream, buffered: &mut Vec<u8>) -> Result<Option<Request>, String> {
    let head_end = loop {
        if let Some(at) = find(buffered, b"\r\n\r\n") {
            break at + 4;
        }
        if buffered.len() > MAX_HEAD {
            return Err("request head over 64 KiB".into());
        }
        if read_more(tcp, buffered).await? == 0 {
            return if buffered.is_empty() {
                Ok(None)
            } else {
                Err("the connection closed mid-request".into())
            };
        }
    };
    let head = std::str::from_utf8(&buffered[..head_end])
        .map_err(|_| "a request head that is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path_ok = method == "POST" && path.ends_with("/chat/completions");
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| format!("content-length {value:?}"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked request bodies are not supported".into());
        }
    }
    if length > MAX_BODY {
        return Err(format!("a body of {length} bytes"));
    }
    while buffered.len() < head_end + length {
        if read_more(tcp, buffered).await? == 0 {
            return Err("the connection closed mid-body".into());
        }
    }
    let body = buffered[head_end..head_end + length].to_vec();
    buffered.drain(..head_end + length);
    Ok(Some(Request { path_ok, body }))
}

async fn read_more(tcp: &TcpStream, buffered: &mut Vec<u8>) -> Result<usize, String> {
    loop {
        tcp.readable().await.map_err(|e| e.to_string())?;
        match tcp.try_read_buf(buffered) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn refuse(tcp: &TcpStream, status: &str, why: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}",
        why.len()
    );
    let _ = write_all(tcp, response.as_bytes()).await;
}

/// Serves one connection: requests one after another (keep-alive), each
/// answer paced by the wheel.
async fn connection(tcp: TcpStream, wheel: Rc<RefCell<Wheel>>, wake: Rc<Notify>, gap: Duration) {
    let tcp = Rc::new(tcp);
    let mut buffered = Vec::new();
    loop {
        let request = match read_request(&tcp, &mut buffered).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(why) => return refuse(&tcp, "400 Bad Request", &why).await,
        };
        if !request.path_ok {
            return refuse(&tcp, "404 Not Found", "POST /v1/chat/completions only").await;
        }
        let Some((ask, prefill)) = read_ask(&request.body) else {
            return refuse(
                &tcp,
                "400 Bad Request",
                "the first user message must read `chunks=N gap_us=G text=ts|words`",
            )
            .await;
        };
        if ask.gap != gap {
            let why = format!("this mock paces chunks {gap:?} apart, not {:?}", ask.gap);
            return refuse(&tcp, "400 Bad Request", &why).await;
        }
        let (ended, rest) = oneshot::channel();
        wheel.borrow_mut().start(tcp.clone(), ask, prefill, ended);
        wake.notify_one();
        match rest.await {
            Ok(rest) => {
                if write_all(&tcp, &rest).await.is_err() {
                    return;
                }
            }
            // The connection broke mid-answer.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_carries_its_size_in_hex() {
        let mut out = b"x".to_vec();
        chunk(&mut out, |b| b.extend_from_slice(&[b'a'; 300]));
        assert_eq!(&out[..7], b"x012c\r\n");
        assert_eq!(out.len(), 1 + 6 + 300 + 2);
        assert!(out.ends_with(b"a\r\n"));
    }

    #[test]
    fn the_close_ends_the_chunked_body_after_done() {
        let mut out = Vec::new();
        close(
            &mut out,
            Ask {
                chunks: 3,
                gap: Duration::from_millis(50),
                timestamps: true,
            },
        );
        let text = String::from_utf8(out).unwrap_or_default();
        assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
        assert!(text.contains("\"completion_tokens\":3"), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"), "{text}");
    }
}
