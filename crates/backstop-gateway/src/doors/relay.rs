//! Relaying a stream in batches: everything that is already at hand when
//! the caller's connection is written goes out as one body frame, so one
//! write, instead of one write per event.
//!
//! Why it is needed: the HTTP client hands an upstream body over one
//! decoded piece at a time (hyper's body channel holds a single frame), so
//! an upstream read that brought 100 events reaches a door as 100 separate
//! wake-ups, and hyper's server flushes whenever the body has nothing
//! ready: one `writev` per event, most of the gateway's CPU per chunk.
//!
//! What [`Batched`] does: when the Router's stream has nothing ready but
//! events were encoded, it gives the runtime one turn before writing: it
//! hands its waker to `tokio::task::yield_now`, which wakes it only after
//! the runtime has run every other ready task and polled for I/O. The
//! task that reads the upstream connection runs in that turn and hands
//! over the next piece of what it already read, without a system call.
//! Once a whole turn brings nothing new, the upstream read is used up and
//! the batch is written. Nothing waits for data that has not arrived and
//! no timer is involved: a lone token costs one turn of the scheduler. A
//! batch is also written once it reaches [`MAX_BATCH`] bytes, and the end
//! of the stream is written at once.
//!
//! A turn is detected, not assumed: hyper polls a body again at once
//! after it goes pending, before any other task ran, so the body keeps
//! its own flag that only the deferred wake-up sets.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use axum::body::Bytes;
use backstop_core::StreamItem;
use futures::Stream;

/// A batch is written once it holds this many bytes, whatever is still
/// arriving.
pub(crate) const MAX_BATCH: usize = 64 * 1024;

/// First capacity of a batch's buffer: a handful of typical events.
const START_CAPACITY: usize = 1024;

/// One turn of the runtime given away: set when the deferred wake-up
/// comes, which then wakes the body's task.
struct Turn {
    came: AtomicBool,
    task: Waker,
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.came.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl Turn {
    /// Gives the runtime a turn: the task is woken once it has run
    /// everything else that is ready (at once outside a Tokio runtime).
    fn give(cx: &Context<'_>) -> Arc<Self> {
        let turn = Arc::new(Self {
            came: AtomicBool::new(false),
            task: cx.waker().clone(),
        });
        let waker = Waker::from(turn.clone());
        let mut turn_cx = Context::from_waker(&waker);
        let yielded = std::pin::pin!(tokio::task::yield_now());
        // The first poll only hands the waker to the scheduler.
        let _ = yielded.poll(&mut turn_cx);
        turn
    }

    fn came(&self) -> bool {
        self.came.load(Ordering::Acquire)
    }
}

/// The SSE body of a door: `items` encoded by `encode` (which appends an
/// item's events to the buffer), `head` written before the first item,
/// everything at hand written as one frame.
pub(crate) struct Batched<S, F> {
    items: S,
    encode: F,
    buffer: Vec<u8>,
    /// The capacity the next batch's buffer gets, allocated when its first
    /// event comes: an open stream waiting for its next chunk holds none.
    /// It follows the size of the last batch, so one burst (a stream that
    /// fell behind) does not make every later batch as large.
    capacity: usize,
    /// Events were encoded since the last turn began: the upstream reader
    /// may have more of its last read to hand over.
    progressed: bool,
    /// The turn given away, while one is.
    turn: Option<Arc<Turn>>,
    /// The stream's last item was encoded.
    ended: bool,
}

impl<S, F> Batched<S, F>
where
    S: Stream<Item = StreamItem> + Unpin,
    F: FnMut(StreamItem, &mut Vec<u8>) + Unpin,
{
    /// A body that starts with `head` (may be empty).
    pub(crate) fn new(head: Vec<u8>, items: S, encode: F) -> Self {
        let mut buffer = head;
        buffer.reserve(START_CAPACITY);
        Self {
            items,
            encode,
            buffer,
            capacity: START_CAPACITY,
            progressed: false,
            turn: None,
            ended: false,
        }
    }

    fn take(&mut self) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.capacity = self
            .buffer
            .len()
            .next_power_of_two()
            .clamp(START_CAPACITY, MAX_BATCH);
        let frame = std::mem::take(&mut self.buffer);
        self.progressed = false;
        self.turn = None;
        Poll::Ready(Some(Ok(Bytes::from(frame))))
    }
}

impl<S, F> Stream for Batched<S, F>
where
    S: Stream<Item = StreamItem> + Unpin,
    F: FnMut(StreamItem, &mut Vec<u8>) + Unpin,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return if this.buffer.is_empty() {
                Poll::Ready(None)
            } else {
                this.take()
            };
        }
        loop {
            match Pin::new(&mut this.items).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    let terminal = !matches!(item, StreamItem::Chunk(_));
                    if this.buffer.capacity() == 0 {
                        this.buffer.reserve(this.capacity);
                    }
                    (this.encode)(item, &mut this.buffer);
                    this.progressed = true;
                    if terminal {
                        this.ended = true;
                        return this.take();
                    }
                    if this.buffer.len() >= MAX_BATCH {
                        return this.take();
                    }
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    return if this.buffer.is_empty() {
                        Poll::Ready(None)
                    } else {
                        this.take()
                    };
                }
                Poll::Pending if this.buffer.is_empty() => {
                    this.turn = None;
                    return Poll::Pending;
                }
                Poll::Pending => {
                    // Still waiting for the turn: its wake-up will come.
                    if this.turn.as_ref().is_some_and(|t| !t.came()) {
                        return Poll::Pending;
                    }
                    // New events since the turn began (or no turn yet):
                    // the upstream reader may hold more. Give it a turn.
                    if this.progressed || this.turn.is_none() {
                        this.progressed = false;
                        this.turn = Some(Turn::give(cx));
                        return Poll::Pending;
                    }
                    // A whole turn brought nothing: the read is used up.
                    return this.take();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_core::ChatChunk;
    use futures::StreamExt;
    use futures::channel::mpsc;

    fn encode(item: StreamItem, out: &mut Vec<u8>) {
        match item {
            StreamItem::Chunk(c) => out.extend_from_slice(
                c.choices[0]
                    .delta
                    .content
                    .as_deref()
                    .unwrap_or("")
                    .as_bytes(),
            ),
            StreamItem::Done(_) => out.extend_from_slice(b"."),
            StreamItem::Failed(_) => out.extend_from_slice(b"!"),
        }
    }

    fn chunk(text: &str) -> StreamItem {
        StreamItem::Chunk(ChatChunk::text("c", "m", 0, text))
    }

    /// Polls once with a waker that counts wake-ups.
    fn poll<S: Stream + Unpin>(s: &mut S) -> (Poll<Option<S::Item>>, usize) {
        let woken = std::sync::Arc::new(Counter::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let p = s.poll_next_unpin(&mut cx);
        (p, woken.0.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn text(p: Poll<Option<Result<Bytes, Infallible>>>) -> Option<String> {
        match p {
            Poll::Ready(Some(Ok(b))) => Some(String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        }
    }

    #[test]
    fn what_is_at_hand_goes_out_as_one_frame_after_one_turn() {
        let (tx, rx) = mpsc::unbounded();
        let mut body = Batched::new(b"head|".to_vec(), rx, encode);
        tx.unbounded_send(chunk("a")).unwrap();
        tx.unbounded_send(chunk("b")).unwrap();
        // Two events, then nothing: one turn for the runtime first.
        let (p, woken) = poll(&mut body);
        assert!(p.is_pending());
        assert_eq!(woken, 1, "it wakes itself: it never sleeps on a batch");
        // The turn brought another event: one more turn.
        tx.unbounded_send(chunk("c")).unwrap();
        let (p, woken) = poll(&mut body);
        assert!(p.is_pending());
        assert_eq!(woken, 1);
        // A turn with nothing new: the batch goes out.
        let (p, _) = poll(&mut body);
        assert_eq!(text(p).as_deref(), Some("head|abc"));
        // Nothing at hand: plain pending, no self wake-up.
        let (p, woken) = poll(&mut body);
        assert!(p.is_pending());
        assert_eq!(woken, 0);
    }

    #[test]
    fn a_poll_before_the_turn_came_writes_nothing() {
        // In a runtime the turn's wake-up is deferred until every other
        // ready task ran; a poll before that (hyper polls again at once)
        // must not take it for a turn that brought nothing.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (tx, rx) = mpsc::unbounded();
            let mut body = Batched::new(Vec::new(), rx, encode);
            tx.unbounded_send(chunk("a")).unwrap();
            let (p, woken) = poll(&mut body);
            assert!(p.is_pending());
            assert_eq!(woken, 0, "the wake-up is deferred, not immediate");
            let (p, _) = poll(&mut body);
            assert!(p.is_pending(), "polled again before the turn: still held");
            // The runtime's turn: the reader hands over another event.
            tx.unbounded_send(chunk("b")).unwrap();
            tokio::task::yield_now().await;
            let (p, _) = poll(&mut body);
            assert!(p.is_pending(), "the turn brought more: another turn");
            tokio::task::yield_now().await;
            let (p, _) = poll(&mut body);
            assert_eq!(text(p).as_deref(), Some("ab"));
        });
    }

    #[test]
    fn the_end_is_written_at_once_and_closes_the_body() {
        let (tx, rx) = mpsc::unbounded();
        let mut body = Batched::new(Vec::new(), rx, encode);
        tx.unbounded_send(chunk("a")).unwrap();
        tx.unbounded_send(StreamItem::Failed(backstop_core::RouteError::UnknownRoute(
            "x".into(),
        )))
        .unwrap();
        let (p, _) = poll(&mut body);
        assert_eq!(text(p).as_deref(), Some("a!"));
        let (p, _) = poll(&mut body);
        assert!(matches!(p, Poll::Ready(None)));
    }

    #[test]
    fn a_full_batch_is_written_without_waiting_for_the_rest() {
        let (tx, rx) = mpsc::unbounded();
        let mut body = Batched::new(Vec::new(), rx, encode);
        let big = "x".repeat(MAX_BATCH / 2 + 1);
        for _ in 0..3 {
            tx.unbounded_send(chunk(&big)).unwrap();
        }
        let (p, _) = poll(&mut body);
        assert_eq!(text(p).map(|t| t.len()), Some(2 * big.len()));
    }

    #[test]
    fn a_stream_waiting_between_batches_holds_no_buffer_and_later_events_pass_whole() {
        let (tx, rx) = mpsc::unbounded();
        let mut body = Batched::new(Vec::new(), rx, encode);
        tx.unbounded_send(chunk("first")).unwrap();
        let _ = poll(&mut body);
        let (p, _) = poll(&mut body);
        assert_eq!(text(p).as_deref(), Some("first"));
        // Waiting for the next chunk: the batch went out with its buffer.
        let (p, _) = poll(&mut body);
        assert!(p.is_pending());
        assert_eq!(body.buffer.capacity(), 0);
        // An event larger than the first capacity, then a small one: each
        // batch holds its events whole.
        let big = "y".repeat(START_CAPACITY * 5 + 3);
        tx.unbounded_send(chunk(&big)).unwrap();
        let _ = poll(&mut body);
        let (p, _) = poll(&mut body);
        assert_eq!(text(p).as_deref(), Some(big.as_str()));
        assert_eq!(body.capacity, START_CAPACITY * 8);
        tx.unbounded_send(chunk("last")).unwrap();
        let _ = poll(&mut body);
        let (p, _) = poll(&mut body);
        assert_eq!(text(p).as_deref(), Some("last"));
        // A small batch after the big one: the next is small again.
        assert_eq!(body.capacity, START_CAPACITY);
    }
}
