//! The provider's configuration (a `[providers.<id>]` table without its
//! `type` key, which the config crate strips).
//!
//! ```toml
//! [providers.openai]
//! type = "openai"
//! base_url = "https://api.openai.com/v1"   # the default
//! api_key_env = "OPENAI_API_KEY"           # the default for api.openai.com
//!
//! [providers.local]
//! type = "openai"
//! base_url = "http://127.0.0.1:8000/v1"    # vLLM, Ollama, ...: no key needed
//! ```

use std::fmt;

use backstop_http::redact_url;
use serde::Deserialize;

/// OpenAI's own API, the default `base_url`.
pub(crate) const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// The variable read for OpenAI's own API when `api_key_env` is not given.
pub(crate) const OPENAI_KEY_VAR: &str = "OPENAI_API_KEY";

/// Configuration of an OpenAI-compatible provider. Its `Debug` shows
/// `base_url` without userinfo or query.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API root; requests go to `{base_url}/chat/completions`.
    /// Default: `https://api.openai.com/v1`.
    #[serde(default = "default_base_url")]
    pub base_url: String,

    /// The environment variable that holds the API key, sent as
    /// `Authorization: Bearer <key>`. When it is named it must be set.
    ///
    /// Default: `OPENAI_API_KEY` (required) when `base_url` is OpenAI's own
    /// API; otherwise no key at all, which suits local servers (vLLM,
    /// Ollama). A key is never sent to another host unless named here, so
    /// an OpenAI key cannot leak to a third-party endpoint by default.
    #[serde(default)]
    pub api_key_env: Option<String>,

    /// Which request field carries the output-token bound. Default: the
    /// field the caller used (`max_tokens` when the caller used neither).
    /// Set `max_completion_tokens` for models that reject `max_tokens`
    /// (OpenAI's reasoning models).
    #[serde(default)]
    pub max_tokens_field: Option<MaxTokensField>,
}

/// The request field that carries the output-token bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens`, understood by every compatible server.
    MaxTokens,
    /// `max_completion_tokens`, OpenAI's current name.
    MaxCompletionTokens,
}

fn default_base_url() -> String {
    OPENAI_BASE_URL.to_owned()
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &redact_url(&self.base_url))
            .field("api_key_env", &self.api_key_env)
            .field("max_tokens_field", &self.max_tokens_field)
            .finish()
    }
}

impl Default for OpenAiConfig {
    /// OpenAI's own API with the key in `OPENAI_API_KEY`.
    fn default() -> Self {
        Self {
            base_url: default_base_url(),
            api_key_env: None,
            max_tokens_field: None,
        }
    }
}

impl OpenAiConfig {
    /// A config for an OpenAI-compatible server at `base_url` (no key
    /// unless [`OpenAiConfig::api_key_env`] is set).
    pub fn with_base_url(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_means_openai_with_defaults() {
        let c: OpenAiConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, OpenAiConfig::default());
        assert_eq!(c.base_url, "https://api.openai.com/v1");
    }

    #[test]
    fn unknown_keys_and_the_type_key_are_rejected() {
        let e =
            serde_json::from_str::<OpenAiConfig>(r#"{"base_url": "http://x", "api_key": "sk"}"#)
                .unwrap_err();
        assert!(e.to_string().contains("unknown field `api_key`"), "{e}");
        assert!(serde_json::from_str::<OpenAiConfig>(r#"{"type": "openai"}"#).is_err());
    }

    #[test]
    fn debug_hides_credentials_and_query_of_the_base_url() {
        let c = OpenAiConfig::with_base_url("https://user:hunter2@h.example/v1?api-key=s3cret");
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("s3cret"),
            "{debug}"
        );
        assert!(debug.contains("\"https://h.example/v1\""), "{debug}");
    }

    #[test]
    fn max_tokens_field_is_snake_case() {
        let c: OpenAiConfig =
            serde_json::from_str(r#"{"max_tokens_field": "max_completion_tokens"}"#).unwrap();
        assert_eq!(
            c.max_tokens_field,
            Some(MaxTokensField::MaxCompletionTokens)
        );
    }
}
