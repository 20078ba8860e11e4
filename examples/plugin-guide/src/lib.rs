//! `type = "faq"`: answers questions from a table of keywords and answers,
//! at no cost and at once; a question it has no answer for is declined as
//! `unsupported`, so the Router moves on to the next model of the chain.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use backstop_plugin::core::{
    Call, ChatChunk, ChatResponse, ChunkStream, FailureKind, Provider, ProviderError, Role, Usage,
};
use backstop_plugin::{InitError, PluginProvider, async_trait};
use futures::StreamExt;
use serde::Deserialize;

/// The provider's table: `[providers.<id>]` without its `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)] // a typo in the config is an error, not a default
pub struct FaqConfig {
    /// A keyword (matched case-insensitively in the question) and its answer.
    pub answers: BTreeMap<String, String>,
}

/// Answers from the table.
#[derive(Debug)]
pub struct Faq {
    answers: Vec<(String, String)>,
}

impl PluginProvider for Faq {
    /// Called once per `[providers]` table of this type; an error here is a
    /// config problem `backstop check` reports with the table's key path.
    fn from_config(config: serde_json::Value) -> Result<Self, InitError> {
        let config: FaqConfig = serde_json::from_value(config)?;
        if config.answers.is_empty() {
            return Err("`answers` is empty: give at least one keyword = answer".into());
        }
        let answers = config
            .answers
            .into_iter()
            .map(|(keyword, answer)| (keyword.to_lowercase(), answer))
            .collect();
        Ok(Self { answers })
    }
}

impl Faq {
    /// The answer to the last user message, or the error that tells the
    /// Router what to do next: `unsupported` falls over to the next model
    /// and does not count against this one's health.
    fn answer(&self, call: &Call<'_>) -> Result<&str, ProviderError> {
        let question = call
            .request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.text_content().to_lowercase())
            .unwrap_or_default();
        self.answers
            .iter()
            .find(|(keyword, _)| question.contains(keyword.as_str()))
            .map(|(_, answer)| answer.as_str())
            .ok_or_else(|| ProviderError::new(FailureKind::Unsupported, "no FAQ entry matches"))
    }
}

#[async_trait]
impl Provider for Faq {
    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        let answer = self.answer(&call)?;
        let usage = usage(&call, answer);
        Ok(ChatResponse::assistant(
            "faq",
            call.model.upstream.as_str(),
            now(),
            answer,
            Some(usage),
        ))
    }

    /// Word by word, then a finish reason, then usage when the caller asked
    /// for it: a stream without a finish reason counts as cut.
    async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let answer = self.answer(&call)?;
        let (id, model, created) = ("faq", call.model.upstream.as_str(), now());
        let mut chunks: Vec<ChatChunk> = answer
            .split_inclusive(' ')
            .map(|word| ChatChunk::text(id, model, created, word))
            .collect();
        chunks.push(ChatChunk::finish(id, model, created, "stop"));
        if call.request.wants_stream_usage() {
            let usage = usage(&call, answer);
            chunks.push(ChatChunk::usage_only(id, model, created, usage));
        }
        Ok(futures::stream::iter(chunks.into_iter().map(Ok)).boxed())
    }
}

fn usage(call: &Call<'_>, answer: &str) -> Usage {
    let words = answer.split_whitespace().count();
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

#[cfg(feature = "dynamic")]
backstop_plugin::export_plugin! {
    name: "faq",
    provider "faq" => Faq,
}
