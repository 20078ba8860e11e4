//! The plugin's own tokio runtime, and how plugin futures and streams run
//! on it.
//!
//! A cdylib links its own copy of tokio, which cannot see the host's
//! runtime: a `tokio::time::sleep` polled under the host's runtime would
//! find no timer. So every plugin future and stream is polled inside the
//! plugin runtime's context, and does its waiting on that runtime:
//!
//! 1. The first poll happens on the host's thread with the plugin runtime
//!    entered. A call that can answer at once (a template, a cache hit)
//!    answers without a thread hop.
//! 2. The moment it has to wait, it moves onto a task of the plugin
//!    runtime, and the host's waker is woken through the FFI waker when the
//!    task finishes (a stream: a pump task feeding a bounded channel). From
//!    then on the provider's code runs only on the plugin runtime, so a
//!    slow plugin never holds a host thread.
//! 3. Dropping the host-side future or stream aborts that task: the plugin's
//!    future is dropped on its runtime, which is how cancellation reaches
//!    it.
//!
//! Panics are caught at every poll and come back as messages.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use backstop_core::{ChatChunk, ChunkStream, ProviderError};
use futures::{FutureExt, StreamExt};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::guard::{guard, panic_message};
use crate::wire::{ChunkHeader, encode_chunks};

/// Chunks a pump may run ahead of the host.
const PUMP_CAPACITY: usize = 16;

/// The plugin runtime, built on first use and never dropped (the library
/// is never unloaded).
pub(crate) fn runtime() -> Result<&'static Handle, String> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("backstop-plugin")
                .enable_all()
                .build()
                .map_err(|e| format!("the plugin could not start its tokio runtime: {e}"))
        })
        .as_ref()
        .map(Runtime::handle)
        .map_err(Clone::clone)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A plugin future: polled inline first, then on the plugin runtime.
/// Resolves to the future's output, or the message of its panic.
pub(crate) struct PluginTask<T: Send + 'static> {
    handle: &'static Handle,
    state: TaskState<T>,
}

enum TaskState<T> {
    Inline(BoxFuture<T>),
    Spawned(JoinHandle<T>),
    Done,
}

impl<T: Send + 'static> PluginTask<T> {
    /// A task for `future`, not started yet.
    pub(crate) fn new(
        handle: &'static Handle,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Self {
        Self {
            handle,
            state: TaskState::Inline(Box::pin(future)),
        }
    }
}

impl<T: Send + 'static> Future for PluginTask<T> {
    type Output = Result<T, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `PluginTask` holds nothing pinned in place: its future is boxed.
        let this = self.get_mut();
        if let TaskState::Inline(future) = &mut this.state {
            let _runtime = this.handle.enter();
            match guard(|| future.as_mut().poll(cx)) {
                Ok(Poll::Ready(value)) => {
                    this.state = TaskState::Done;
                    return Poll::Ready(Ok(value));
                }
                Err(panic) => {
                    this.drop_state();
                    return Poll::Ready(Err(panic));
                }
                Ok(Poll::Pending) => {
                    if let TaskState::Inline(future) =
                        std::mem::replace(&mut this.state, TaskState::Done)
                    {
                        this.state = TaskState::Spawned(this.handle.spawn(future));
                    }
                }
            }
        }
        match &mut this.state {
            TaskState::Spawned(join) => match Pin::new(join).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(result) => {
                    this.state = TaskState::Done;
                    Poll::Ready(result.map_err(|e| {
                        if e.is_panic() {
                            panic_message(e.into_panic())
                        } else {
                            "the plugin task was cancelled".to_owned()
                        }
                    }))
                }
            },
            TaskState::Inline(_) | TaskState::Done => Poll::Ready(Err(
                "the plugin task was polled after it finished".to_owned(),
            )),
        }
    }
}

impl<T: Send + 'static> PluginTask<T> {
    /// Drops the future or aborts its task, without letting a panic in a
    /// destructor escape.
    fn drop_state(&mut self) {
        match std::mem::replace(&mut self.state, TaskState::Done) {
            TaskState::Inline(future) => {
                let _runtime = self.handle.enter();
                // A panicking destructor has nowhere to report to; the
                // future is gone either way.
                let _ = guard(move || drop(future));
            }
            TaskState::Spawned(join) => join.abort(),
            TaskState::Done => {}
        }
    }
}

impl<T: Send + 'static> Drop for PluginTask<T> {
    fn drop(&mut self) {
        self.drop_state();
    }
}

/// What a pump forwards.
enum Pumped {
    Item(Result<ChatChunk, ProviderError>),
    Panicked(String),
}

/// Chunks one poll may return together.
const MAX_BATCH: usize = 32;

/// One poll of a plugin stream.
#[derive(Debug)]
pub(crate) enum StreamPoll {
    /// Nothing ready; the waker will be called.
    Pending,
    /// One or more chunks wait in the batch ([`PluginStream::take_batch`]).
    Chunks,
    /// The stream yielded an error.
    Error(ProviderError),
    /// The stream ended.
    End,
    /// The stream panicked.
    Panicked(String),
}

/// One item of the stream, or why there is none.
enum One {
    Chunk(ChatChunk),
    Not(StreamPoll),
}

/// A plugin stream: polled inline while it has items ready, pumped by a
/// task on the plugin runtime once it has to wait. Each poll returns every
/// chunk that is ready, up to a batch, so a fast stream crosses the
/// boundary in few calls.
pub(crate) struct PluginStream {
    handle: &'static Handle,
    state: StreamState,
    /// The chunks of the current poll.
    batch: Vec<ChatChunk>,
    /// What ended the last batch, for the next poll.
    held: Option<StreamPoll>,
    /// The per-stream fields of the last chunk sent.
    header: ChunkHeader,
}

enum StreamState {
    Inline(ChunkStream),
    Pumped {
        items: mpsc::Receiver<Pumped>,
        pump: JoinHandle<()>,
    },
    Finished,
}

impl PluginStream {
    pub(crate) fn new(handle: &'static Handle, stream: ChunkStream) -> Self {
        Self {
            handle,
            state: StreamState::Inline(stream),
            batch: Vec::new(),
            held: None,
            header: ChunkHeader::default(),
        }
    }

    /// Encodes and empties the batch a [`StreamPoll::Chunks`] collected.
    pub(crate) fn take_batch(&mut self) -> serde_json::Result<Vec<u8>> {
        let encoded = encode_chunks(&self.batch, &mut self.header);
        self.batch.clear();
        encoded
    }

    /// Collects the chunks that are ready, up to a batch. An error, the end
    /// or a panic that follows some chunks is held for the next poll.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> StreamPoll {
        if let Some(held) = self.held.take() {
            return held;
        }
        loop {
            let stop = match self.poll_one(cx) {
                One::Chunk(chunk) => {
                    self.batch.push(chunk);
                    if self.batch.len() < MAX_BATCH {
                        continue;
                    }
                    return StreamPoll::Chunks;
                }
                One::Not(stop) => stop,
            };
            if self.batch.is_empty() {
                return stop;
            }
            if !matches!(stop, StreamPoll::Pending) {
                self.held = Some(stop);
            }
            return StreamPoll::Chunks;
        }
    }

    fn poll_one(&mut self, cx: &mut Context<'_>) -> One {
        if let StreamState::Inline(stream) = &mut self.state {
            let _runtime = self.handle.enter();
            match guard(|| stream.poll_next_unpin(cx)) {
                Ok(Poll::Ready(Some(Ok(chunk)))) => return One::Chunk(chunk),
                Ok(Poll::Ready(Some(Err(error)))) => return One::Not(StreamPoll::Error(error)),
                Ok(Poll::Ready(None)) => {
                    self.finish();
                    return One::Not(StreamPoll::End);
                }
                Err(panic) => {
                    self.finish();
                    return One::Not(StreamPoll::Panicked(panic));
                }
                Ok(Poll::Pending) => {
                    if let StreamState::Inline(stream) =
                        std::mem::replace(&mut self.state, StreamState::Finished)
                    {
                        let (sender, items) = mpsc::channel(PUMP_CAPACITY);
                        let pump = self.handle.spawn(pump(stream, sender));
                        self.state = StreamState::Pumped { items, pump };
                    }
                }
            }
        }
        match &mut self.state {
            StreamState::Pumped { items, .. } => match items.poll_recv(cx) {
                Poll::Pending => One::Not(StreamPoll::Pending),
                Poll::Ready(Some(Pumped::Item(Ok(chunk)))) => One::Chunk(chunk),
                Poll::Ready(Some(Pumped::Item(Err(error)))) => One::Not(StreamPoll::Error(error)),
                Poll::Ready(Some(Pumped::Panicked(panic))) => {
                    self.finish();
                    One::Not(StreamPoll::Panicked(panic))
                }
                Poll::Ready(None) => {
                    self.finish();
                    One::Not(StreamPoll::End)
                }
            },
            StreamState::Inline(_) | StreamState::Finished => One::Not(StreamPoll::End),
        }
    }

    /// Drops the stream or aborts its pump, without letting a panic in a
    /// destructor escape.
    fn finish(&mut self) {
        match std::mem::replace(&mut self.state, StreamState::Finished) {
            StreamState::Inline(stream) => {
                let _runtime = self.handle.enter();
                // As for `PluginTask`: nowhere to report a destructor's panic.
                let _ = guard(move || drop(stream));
            }
            StreamState::Pumped { pump, .. } => pump.abort(),
            StreamState::Finished => {}
        }
    }
}

impl Drop for PluginStream {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Moves a stream's items into the channel until it ends, panics, or the
/// host stops listening.
async fn pump(mut stream: ChunkStream, sender: mpsc::Sender<Pumped>) {
    loop {
        match AssertUnwindSafe(stream.next()).catch_unwind().await {
            Ok(Some(item)) => {
                if sender.send(Pumped::Item(item)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(payload) => {
                let message = panic_message(payload);
                // The host may be gone already; then nobody needs to know.
                let _ = sender.send(Pumped::Panicked(message)).await;
                return;
            }
        }
    }
}
