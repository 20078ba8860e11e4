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

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use backstop_core::{ChatChunk, ChunkStream, ModelSpec, ProviderError, RawJson};
use backstop_http::sse::SseEvent;
use serde_json::Value;

use crate::classify::DIALECT;
use backstop_http::ApiKey;
use backstop_http::body::{ChunkReader, SkipLog, SseBody, stream_chunks};

/// Turns a streaming response into chunks.
pub(crate) fn chunk_stream(
    response: backstop_http::Response,
    model: &ModelSpec,
    key: Option<ApiKey>,
    malformed: Arc<AtomicU64>,
) -> ChunkStream {
    let reader = Reader {
        body: SseBody::new(response),
        choices: Choices::default(),
        log: SkipLog::new(model.id.clone(), model.provider.clone(), key, malformed),
        done: false,
    };
    stream_chunks(reader)
}

struct Reader {
    body: SseBody,
    choices: Choices,
    log: SkipLog,
    done: bool,
}

impl ChunkReader for Reader {
    async fn next_chunk(&mut self) -> Option<Result<ChatChunk, ProviderError>> {
        loop {
            if self.done {
                return None;
            }
            match self.body.next_event().await {
                Ok(event) => {
                    if let Some(item) = self.on_event(event) {
                        return Some(item);
                    }
                }
                Err(cut) => {
                    self.done = true;
                    let ending = self.log.end(
                        self.choices.complete(),
                        cut.as_ref(),
                        "finish reason",
                        "the stream ended without [DONE] and without a finish reason",
                    );
                    return ending.map(Err);
                }
            }
        }
    }
}

impl Reader {
    /// Handles one event; `None` when it yields nothing.
    fn on_event(&mut self, event: SseEvent) -> Option<Result<ChatChunk, ProviderError>> {
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
        let mut chunk = match serde_json::from_str::<ChatChunk>(data) {
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
                self.log.skip(data, &error, "chunk");
                return None;
            }
        };
        if let Some(error) = chunk.extra.get("error") {
            return Some(Err(self.fail(error)));
        }
        self.choices.observe(&chunk);
        // The text as it came, for a door that writes it through with only
        // `model` changed: the event's own string, not a copy.
        let text = if data.len() == event.data.len() {
            event.data
        } else {
            data.to_owned()
        };
        chunk.raw = RawJson::new(text);
        Some(Ok(chunk))
    }

    /// Ends the stream with the error an in-stream error object reports:
    /// OpenAI's `{"error": {...}}`, or vLLM's bare `{"object": "error",
    /// "message", "type", "code"}`.
    fn fail(&mut self, error: &Value) -> ProviderError {
        self.done = true;
        let error = DIALECT.in_band_error(error, self.log.key());
        tracing::debug!(model = %self.log.model(), %error, "error inside the stream");
        error
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
