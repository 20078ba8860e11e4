//! `type = "echo"`: answers with a canned text, or echoes the caller's last
//! message, after a configurable latency; complete and streaming.
//!
//! Choose it to try a gateway config without keys or network, to stand in
//! for a model in a demo, or as the starting point of a real plugin: it does
//! everything a provider must (honours `max_tokens`, reports usage, streams
//! word by word and ends the stream with a finish reason and, when asked,
//! a usage chunk).
//!
//! Knobs (all optional):
//! - `reply` (string, default: none): the answer. Without it the provider
//!   echoes the text of the last user message.
//! - `latency_ms` (integer, default 0): wait before the answer, or before the
//!   first chunk of a stream.
//! - `chunk_delay_ms` (integer, default 0): wait between streamed chunks.
//!
//! The answer is cut to the call's `max_tokens` words (one word counts as
//! one token), with finish reason `length` when cut.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop_plugin::core::{
    Call, ChatChunk, ChatResponse, ChunkStream, Provider, ProviderError, Role, Usage,
};
use backstop_plugin::{InitError, PluginProvider, async_trait};
use futures::StreamExt;
use serde::Deserialize;

/// The `echo` provider's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    /// The answer; `None` echoes the last user message.
    #[serde(default)]
    pub reply: Option<String>,
    /// Milliseconds before the answer (or the first chunk).
    #[serde(default)]
    pub latency_ms: u64,
    /// Milliseconds between streamed chunks.
    #[serde(default)]
    pub chunk_delay_ms: u64,
}

/// Answers with canned or echoed text.
#[derive(Debug)]
pub struct Echo {
    config: EchoConfig,
    answered: AtomicU64,
}

impl Echo {
    /// An echo provider with this config.
    pub fn new(config: EchoConfig) -> Self {
        Self {
            config,
            answered: AtomicU64::new(0),
        }
    }

    /// The words of the answer to `call` (each keeps its leading space) and
    /// whether they were cut to `max_tokens`.
    fn answer(&self, call: &Call<'_>) -> (Vec<String>, bool) {
        let text = match &self.config.reply {
            Some(reply) => reply.clone(),
            None => call
                .request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.text_content())
                .unwrap_or_default(),
        };
        let mut words = words(&text);
        let limit = usize::try_from(call.max_tokens).unwrap_or(usize::MAX);
        let cut = words.len() > limit;
        words.truncate(limit);
        (words, cut)
    }

    fn next_id(&self) -> String {
        format!("echo-{}", self.answered.fetch_add(1, Ordering::Relaxed))
    }

    async fn wait(ms: u64) {
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

impl PluginProvider for Echo {
    fn from_config(config: serde_json::Value) -> Result<Self, InitError> {
        Ok(Self::new(serde_json::from_value(config)?))
    }
}

#[async_trait]
impl Provider for Echo {
    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        Self::wait(self.config.latency_ms).await;
        let (words, cut) = self.answer(&call);
        let usage = usage(&call, words.len());
        let mut response = ChatResponse::assistant(
            self.next_id(),
            &call.model.upstream,
            now(),
            words.concat(),
            Some(usage),
        );
        if cut {
            for choice in &mut response.choices {
                choice.finish_reason = Some("length".to_owned());
            }
        }
        Ok(response)
    }

    async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let (words, cut) = self.answer(&call);
        let id = self.next_id();
        let model = call.model.upstream.clone();
        let created = now();
        let usage = call
            .request
            .wants_stream_usage()
            .then(|| usage(&call, words.len()));

        let mut chunks = Vec::with_capacity(words.len() + 2);
        for (i, word) in words.into_iter().enumerate() {
            let mut chunk = ChatChunk::text(&id, &model, created, word);
            if i == 0
                && let Some(choice) = chunk.choices.first_mut()
            {
                choice.delta.role = Some(Role::Assistant);
            }
            chunks.push(chunk);
        }
        chunks.push(ChatChunk::finish(
            &id,
            &model,
            created,
            if cut { "length" } else { "stop" },
        ));
        if let Some(usage) = usage {
            chunks.push(ChatChunk::usage_only(&id, &model, created, usage));
        }

        let (latency, gap) = (self.config.latency_ms, self.config.chunk_delay_ms);
        let stream = futures::stream::iter(chunks.into_iter().enumerate()).then(
            move |(i, chunk)| async move {
                Self::wait(if i == 0 { latency } else { gap }).await;
                Ok(chunk)
            },
        );
        Ok(stream.boxed())
    }
}

/// Splits text into words that keep their leading space, so they
/// concatenate back to the text.
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c.is_whitespace() && !current.trim().is_empty() {
            words.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

fn usage(call: &Call<'_>, words: usize) -> Usage {
    Usage::new(
        call.request.estimated_prompt_tokens(),
        u32::try_from(words).unwrap_or(u32::MAX),
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use backstop_plugin::core::{ChatRequest, ModelSpec};

    use super::*;

    fn call<'a>(model: &'a ModelSpec, request: &'a ChatRequest, max_tokens: u32) -> Call<'a> {
        Call {
            scenario: "test",
            model,
            request,
            max_tokens,
            connect_timeout: Duration::from_secs(1),
            request_id: None,
            headers: &[],
        }
    }

    #[test]
    fn words_concatenate_back_to_the_text() {
        assert_eq!(words("hello  big world"), ["hello", "  big", " world"]);
        assert_eq!(words("").len(), 0);
    }

    #[tokio::test]
    async fn echoes_the_last_user_message() {
        let echo = Echo::new(EchoConfig::default());
        let model = ModelSpec::new("m", "p");
        let request = ChatRequest::user("m", "say this back");
        let response = echo.complete(call(&model, &request, 100)).await.unwrap();
        assert_eq!(response.text(), "say this back");
        assert_eq!(response.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(response.usage.unwrap().completion_tokens, 3);
        assert_eq!(response.model, "m");
    }

    #[tokio::test]
    async fn reply_is_cut_to_max_tokens() {
        let echo = Echo::from_config(serde_json::json!({"reply": "one two three four"})).unwrap();
        let model = ModelSpec::new("m", "p");
        let request = ChatRequest::user("m", "ignored");
        let response = echo.complete(call(&model, &request, 2)).await.unwrap();
        assert_eq!(response.text(), "one two");
        assert_eq!(response.choices[0].finish_reason.as_deref(), Some("length"));
    }

    #[tokio::test]
    async fn streams_words_then_finish_then_usage() {
        let echo = Echo::from_config(serde_json::json!({"reply": "a b c"})).unwrap();
        let model = ModelSpec::new("m", "p");
        let mut request = ChatRequest::user("m", "x");
        request.stream_options = Some(backstop_plugin::core::StreamOptions {
            include_usage: true,
            extra: Default::default(),
        });
        let chunks: Vec<_> = echo
            .stream(call(&model, &request, 100))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let text: String = chunks.iter().filter_map(ChatChunk::content).collect();
        assert_eq!(text, "a b c");
        assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
        assert_eq!(chunks[3].finish_reason(), Some("stop"));
        assert_eq!(chunks[4].usage.as_ref().unwrap().completion_tokens, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_the_configured_latency() {
        let echo = Echo::from_config(serde_json::json!({"latency_ms": 250})).unwrap();
        let model = ModelSpec::new("m", "p");
        let request = ChatRequest::user("m", "x");
        let started = tokio::time::Instant::now();
        echo.complete(call(&model, &request, 100)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }

    #[test]
    fn unknown_knobs_are_refused() {
        let error = Echo::from_config(serde_json::json!({"latency": 5})).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `latency`"),
            "{error}"
        );
    }
}
