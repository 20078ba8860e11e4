//! The SSE reader of a streamed chat completion.
//!
//! Strict about what it trusts, lenient about what it can skip:
//!
//! 1. Each `data:` event is a JSON chunk, passed on as it came.
//! 2. An unparseable `data:` event is skipped, counted, and logged at
//!    `warn` (provider, model, counts, and at most 100 characters of the
//!    line with secrets removed); it does not fail the answer.
//! 3. An `error` object in the stream, vLLM's bare `{"object": "error",
//!    "message", "type", "code"}`, or an `event: error` fails it with that
//!    error's kind.
//! 4. `[DONE]` ends the stream.
//! 5. A stream that ends without `[DONE]` is complete only if every choice
//!    it started has a finish reason; otherwise, or if the transport cut
//!    it, it fails with `StreamInterrupted`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_core::sse::{SseDecoder, SseEvent};
use backstop_core::{ChatChunk, ChunkStream, FailureKind, ModelSpec, ProviderError};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::classify::inband_error;
use backstop_http::{ApiKey, error_chain, log_preview};

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// Turns a streaming response into chunks.
pub(crate) fn chunk_stream(
    response: reqwest::Response,
    model: &ModelSpec,
    key: Option<ApiKey>,
    malformed: Arc<AtomicU64>,
) -> ChunkStream {
    let reader = Reader {
        body: Box::pin(
            response
                .bytes_stream()
                .map(|r| r.map_err(reqwest::Error::without_url)),
        ),
        decoder: SseDecoder::new(),
        scratch: Vec::new(),
        events: VecDeque::new(),
        choices: Choices::default(),
        model: model.id.clone(),
        provider: model.provider.clone(),
        key,
        malformed,
        skipped: 0,
        done: false,
    };
    futures::stream::unfold(reader, |mut reader| async move {
        let item = reader.next().await?;
        Some((item, reader))
    })
    .boxed()
}

struct Reader {
    body: Body,
    decoder: SseDecoder,
    scratch: Vec<SseEvent>,
    events: VecDeque<SseEvent>,
    choices: Choices,
    model: String,
    /// The provider's id, for logs.
    provider: String,
    key: Option<ApiKey>,
    malformed: Arc<AtomicU64>,
    /// Unparseable events skipped in this stream.
    skipped: u64,
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<ChatChunk, ProviderError>> {
        loop {
            while !self.done {
                let Some(event) = self.events.pop_front() else {
                    break;
                };
                if let Some(item) = self.on_event(&event) {
                    return Some(item);
                }
            }
            if self.done {
                return None;
            }
            match self.body.next().await {
                Some(Ok(bytes)) => {
                    self.decoder.feed(&bytes, &mut self.scratch);
                    self.events.extend(self.scratch.drain(..));
                }
                Some(Err(error)) => return self.end(Some(&error)),
                None => return self.end(None),
            }
        }
    }

    /// Handles one event; `None` when it yields nothing.
    fn on_event(&mut self, event: &SseEvent) -> Option<Result<ChatChunk, ProviderError>> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return None;
        }
        if data.is_empty() {
            return None;
        }
        if event.event.as_deref() == Some("error") {
            // Some compatible servers name the event instead of nesting
            // an `error` object in a chunk.
            if let Ok(value) = serde_json::from_str::<Value>(data) {
                return Some(Err(self.fail(&value)));
            }
        }
        let chunk = match serde_json::from_str::<ChatChunk>(data) {
            Ok(chunk) if chunk.object == "error" => {
                // vLLM's error object, which parses as a chunk with no
                // choices; classified from its own fields.
                let value = serde_json::from_str::<Value>(data).unwrap_or_default();
                return Some(Err(self.fail(&value)));
            }
            Ok(chunk) => chunk,
            Err(error) => {
                if let Ok(value) = serde_json::from_str::<Value>(data)
                    && is_error_object(&value)
                {
                    return Some(Err(self.fail(&value)));
                }
                self.skip(data, &error);
                return None;
            }
        };
        if let Some(error) = chunk.extra.get("error") {
            return Some(Err(self.fail(error)));
        }
        self.choices.observe(&chunk);
        Some(Ok(chunk))
    }

    /// Counts and logs an unparseable `data:` line. The log names the
    /// model and provider and shows the counts, where the JSON broke, and
    /// at most 100 characters of the line with secrets removed; never the
    /// parser's message, which quotes the line's values at any length.
    fn skip(&mut self, data: &str, error: &serde_json::Error) {
        self.skipped += 1;
        let total = self.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            provider = %self.provider,
            model = %self.model,
            skipped = self.skipped,
            total,
            reason = ?error.classify(),
            column = error.column(),
            line = %log_preview(data, self.key.as_ref()),
            "skipped an unparseable stream chunk"
        );
    }

    /// Ends the stream with the error an in-stream error object reports:
    /// OpenAI's `{"error": {...}}`, or vLLM's bare `{"object": "error",
    /// "message", "type", "code"}`.
    fn fail(&mut self, error: &Value) -> ProviderError {
        self.done = true;
        let error = inband_error(error, self.key.as_ref());
        tracing::debug!(model = %self.model, %error, "error inside the stream");
        error
    }

    /// The transport ended, cleanly (`None`) or not.
    fn end(&mut self, error: Option<&reqwest::Error>) -> Option<Result<ChatChunk, ProviderError>> {
        self.done = true;
        if self.choices.complete() {
            if let Some(error) = error {
                tracing::debug!(model = %self.model, error = %error_chain(error), "stream cut after its finish reason");
            }
            return None;
        }
        let message = match error {
            Some(error) => format!("the stream was cut: {}", error_chain(error)),
            None => "the stream ended without [DONE] and without a finish reason".to_owned(),
        };
        Some(Err(ProviderError::new(
            FailureKind::StreamInterrupted,
            message,
        )))
    }
}

/// An error object that does not parse as a chunk: `{"error": ...}` or
/// `{"object": "error", ...}` with fields of unexpected types.
fn is_error_object(value: &Value) -> bool {
    value.get("error").is_some_and(|e| !e.is_null())
        || value.get("object").and_then(Value::as_str) == Some("error")
}

/// Which choices started and which finished.
#[derive(Debug, Default)]
struct Choices {
    started: Vec<u32>,
    finished: Vec<u32>,
}

impl Choices {
    fn observe(&mut self, chunk: &ChatChunk) {
        for choice in &chunk.choices {
            let list = if choice.finish_reason.is_some() {
                &mut self.finished
            } else {
                &mut self.started
            };
            if !list.contains(&choice.index) {
                list.push(choice.index);
            }
        }
    }

    /// Some choice finished and every choice that started did.
    fn complete(&self) -> bool {
        !self.finished.is_empty() && self.started.iter().all(|i| self.finished.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: u32, finish: Option<&str>) -> ChatChunk {
        let mut c = ChatChunk::text("c", "m", 0, "x");
        c.choices[0].index = index;
        c.choices[0].finish_reason = finish.map(str::to_owned);
        c
    }

    #[test]
    fn a_stream_is_complete_when_every_started_choice_finished() {
        let mut choices = Choices::default();
        assert!(!choices.complete());
        choices.observe(&chunk(0, None));
        choices.observe(&chunk(1, None));
        choices.observe(&chunk(0, Some("stop")));
        assert!(!choices.complete(), "choice 1 is still open");
        choices.observe(&chunk(1, Some("length")));
        assert!(choices.complete());
    }
}
