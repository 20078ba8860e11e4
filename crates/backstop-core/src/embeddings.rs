//! Embeddings requests and responses, shaped like OpenAI's `/v1/embeddings`.
//!
//! Vectors of different models do not mix: a scenario that serves
//! embeddings chains deployments of the *same* model, each declaring its
//! `dimensions` ([`ModelSpec::dimensions`](crate::ModelSpec::dimensions)),
//! and the Router refuses an answer whose vectors have another length.
//! Vectors travel as floats inside Backstop; base64 is the door's business.

use serde::{Deserialize, Serialize};

use crate::chat::{Extra, estimate_tokens};

/// What to embed: one text, several, or token arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// A batch of texts.
    Texts(Vec<String>),
    /// One text as token ids.
    Tokens(Vec<u32>),
    /// A batch of texts as token ids.
    TokenBatches(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// How many vectors the answer must hold.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Texts(texts) => texts.len(),
            EmbeddingInput::TokenBatches(batches) => batches.len(),
        }
    }

    /// Whether there is nothing to embed.
    pub fn is_empty(&self) -> bool {
        match self {
            EmbeddingInput::Text(_) => false,
            EmbeddingInput::Tokens(tokens) => tokens.is_empty(),
            EmbeddingInput::Texts(texts) => texts.is_empty(),
            EmbeddingInput::TokenBatches(batches) => {
                batches.is_empty() || batches.iter().any(Vec::is_empty)
            }
        }
    }

    /// A cheap estimate of the input's tokens (exact for token arrays).
    pub fn estimated_tokens(&self) -> u32 {
        let sum = |it: &mut dyn Iterator<Item = u32>| it.fold(0u32, u32::saturating_add);
        match self {
            EmbeddingInput::Text(text) => estimate_tokens(text),
            EmbeddingInput::Texts(texts) => sum(&mut texts.iter().map(|t| estimate_tokens(t))),
            EmbeddingInput::Tokens(tokens) => u32::try_from(tokens.len()).unwrap_or(u32::MAX),
            EmbeddingInput::TokenBatches(batches) => sum(&mut batches
                .iter()
                .map(|b| u32::try_from(b.len()).unwrap_or(u32::MAX))),
        }
    }
}

/// An embeddings request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    /// A scenario name or a model id.
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// The vector length asked for (models that can shorten their vectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// The end user, for the upstream's abuse monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Anything else the caller sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One vector of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// The position of its input.
    pub index: u32,
    /// The vector.
    pub embedding: Vec<f32>,
}

/// Token counts of an embeddings call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingsUsage {
    /// Tokens of input.
    pub prompt_tokens: u32,
    /// The same, as OpenAI reports it.
    pub total_tokens: u32,
}

/// An embeddings answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// One vector per input, in input order.
    pub data: Vec<Embedding>,
    /// Token counts, when the upstream reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<EmbeddingsUsage>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_input_shape_parses_and_counts_its_vectors() {
        for (input, len) in [
            (json!("one"), 1),
            (json!(["a", "b", "c"]), 3),
            (json!([1, 2, 3]), 1),
            (json!([[1, 2], [3]]), 2),
        ] {
            let req: EmbeddingsRequest =
                serde_json::from_value(json!({"model": "m", "input": input})).unwrap();
            assert_eq!(req.input.len(), len, "{input}");
            assert!(!req.input.is_empty());
        }
        let empty: EmbeddingsRequest =
            serde_json::from_value(json!({"model": "m", "input": []})).unwrap();
        assert!(empty.input.is_empty());
    }
}
