//! The provider's configuration (a `[providers.<id>]` table without its
//! `type` key, which the config crate strips).
//!
//! ```toml
//! [providers.anthropic]
//! type = "anthropic"
//! base_url = "https://api.anthropic.com"   # the default
//! api_key_env = "ANTHROPIC_API_KEY"        # the default
//! anthropic_version = "2023-06-01"         # the default
//! ```

use std::fmt;

use backstop_http::redact_url;
use serde::Deserialize;

/// Configuration of an Anthropic Messages API provider. Its `Debug` shows
/// `base_url` without userinfo or query.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicConfig {
    /// The API root; requests go to `{base_url}/v1/messages` (a root that
    /// already ends in `/v1` is accepted too). Default:
    /// `https://api.anthropic.com`.
    #[serde(default = "default_base_url")]
    pub base_url: String,

    /// The environment variable that holds the API key, sent as
    /// `x-api-key`. It must be set. Default: `ANTHROPIC_API_KEY`.
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,

    /// The `anthropic-version` header. Default: `2023-06-01`.
    #[serde(default = "default_version")]
    pub anthropic_version: String,
}

fn default_base_url() -> String {
    "https://api.anthropic.com".to_owned()
}

fn default_api_key_env() -> String {
    "ANTHROPIC_API_KEY".to_owned()
}

fn default_version() -> String {
    "2023-06-01".to_owned()
}

impl fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicConfig")
            .field("base_url", &redact_url(&self.base_url))
            .field("api_key_env", &self.api_key_env)
            .field("anthropic_version", &self.anthropic_version)
            .finish()
    }
}

impl Default for AnthropicConfig {
    /// Anthropic's API, key in `ANTHROPIC_API_KEY`, version 2023-06-01.
    fn default() -> Self {
        Self {
            base_url: default_base_url(),
            api_key_env: default_api_key_env(),
            anthropic_version: default_version(),
        }
    }
}

impl AnthropicConfig {
    /// The defaults with another API root (a proxy, a test server).
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
    fn empty_table_means_the_defaults() {
        let c: AnthropicConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, AnthropicConfig::default());
        assert_eq!(c.api_key_env, "ANTHROPIC_API_KEY");
        assert_eq!(c.anthropic_version, "2023-06-01");
    }

    #[test]
    fn debug_hides_credentials_and_query_of_the_base_url() {
        let c = AnthropicConfig::with_base_url("https://user:hunter2@h.example/?api-key=s3cret");
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("s3cret"),
            "{debug}"
        );
        assert!(debug.contains("\"https://h.example/\""), "{debug}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = serde_json::from_str::<AnthropicConfig>(r#"{"api_key": "sk-ant"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `api_key`"), "{e}");
    }
}
