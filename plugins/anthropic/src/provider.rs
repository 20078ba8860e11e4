//! The provider: translates, sends, and translates back.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backstop_core::{Call, ChatResponse, ChunkStream, Provider, ProviderError, Timeouts};
use backstop_http::header::{HeaderName, HeaderValue};

use crate::classify::DIALECT;
use crate::config::AnthropicConfig;
use crate::error::AnthropicBuildError;
use crate::prefill::Join;
use crate::request::translate;
use crate::response::completion;
use crate::stream::chunk_stream;
use backstop_http::body::{
    self, Endpoint, encode_body, is_json, key_from_env, not_a_stream, read_body,
};
use backstop_http::{ApiKey, Clients, Response, error_chain, redact_url};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// A provider for Anthropic's Messages API.
pub struct AnthropicProvider {
    endpoint: Endpoint,
    key: ApiKey,
    version: HeaderValue,
    clients: Clients,
    malformed: Arc<AtomicU64>,
}

impl fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("endpoint", &redact_url(self.endpoint.url().as_str()))
            .field("key", &"<redacted>")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// Builds the provider, reading the API key from the process
    /// environment.
    pub fn new(config: AnthropicConfig) -> Result<Self, AnthropicBuildError> {
        Self::new_with_env(config, |name| std::env::var(name).ok())
    }

    /// Builds the provider, reading environment variables through `env`
    /// (for tests and for `backstop check`, which resolve variables without
    /// touching the process environment).
    pub fn new_with_env(
        config: AnthropicConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, AnthropicBuildError> {
        let endpoint = endpoint(&config.base_url)?;
        let version = HeaderValue::from_str(&config.anthropic_version)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AnthropicBuildError::InvalidVersion(config.anthropic_version.clone()))?;
        let var = config.api_key_env.as_str();
        let key = key_from_env(var, env, ApiKey::raw)
            .map_err(|problem| AnthropicBuildError::key(problem, var))?;
        let clients = Clients::new(Timeouts::default().connect)
            .map_err(|e| AnthropicBuildError::Client(error_chain(&e)))?;
        Ok(Self {
            endpoint,
            key,
            version,
            clients,
            malformed: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Unparseable stream events skipped so far, over every stream of this
    /// provider.
    pub fn malformed_chunks(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Translates and sends the request; returns the response and the
    /// join for a prefill continuation. Non-success statuses come back
    /// classified.
    async fn send(&self, call: &Call<'_>, stream: bool) -> Result<(Response, Join), ProviderError> {
        let translated = translate(call, stream)?;
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut request = body::post(&self.endpoint, encode_body(&translated.body)?, accept);
        let headers = request.headers_mut();
        headers.append(X_API_KEY, self.key.header().clone());
        headers.append(ANTHROPIC_VERSION, self.version.clone());
        body::with_headers(&mut request, call.headers);
        let client = self.clients.get(call.connect_timeout);
        let response = body::send(
            &client,
            request,
            call.connect_timeout,
            &call.model.id,
            |status, body, wait| DIALECT.status_error(status, body, wait, Some(&self.key)),
        )
        .await?;
        Ok((response, Join::new(translated.trimmed)))
    }

    async fn read_completion(
        &self,
        response: Response,
        mut join: Join,
    ) -> Result<ChatResponse, ProviderError> {
        let (status, body) = read_body(response).await?;
        completion(&body, &mut join, Some(&self.key)).map_err(|e| e.with_status(status))
    }
}

/// `{base_url}/v1/messages`; a root that already ends in `/v1` is not
/// doubled.
fn endpoint(base_url: &str) -> Result<Endpoint, AnthropicBuildError> {
    let invalid = |reason| AnthropicBuildError::InvalidBaseUrl {
        url: redact_url(base_url),
        reason,
    };
    let mut url = body::parse_base_url(base_url).map_err(invalid)?;
    let root = url.path().trim_end_matches('/');
    let path = if root.ends_with("/v1") {
        format!("{root}/messages")
    } else {
        format!("{root}/v1/messages")
    };
    url.set_path(&path);
    Endpoint::new(url).map_err(invalid)
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn prepare(&self, connect_timeout: Duration) {
        self.clients.get(connect_timeout);
    }

    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        let (response, join) = self.send(&call, false).await?;
        self.read_completion(response, join).await
    }

    async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let (response, join) = self.send(&call, true).await?;
        if is_json(&response) {
            return Err(not_a_stream(self.read_completion(response, join).await));
        }
        Ok(chunk_stream(
            response,
            call.model,
            join,
            Some(self.key.clone()),
            self.malformed.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(config: AnthropicConfig) -> Result<AnthropicProvider, AnthropicBuildError> {
        AnthropicProvider::new_with_env(config, |v| {
            (v == "ANTHROPIC_API_KEY").then(|| "sk-ant-secret".to_owned())
        })
    }

    #[test]
    fn endpoints_are_built_from_the_root() {
        for (base, expected) in [
            (
                "https://api.anthropic.com",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "https://api.anthropic.com/",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                "https://proxy.example/anthropic/v1/",
                "https://proxy.example/anthropic/v1/messages",
            ),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000/v1/messages"),
        ] {
            let p = with_key(AnthropicConfig::with_base_url(base)).unwrap();
            assert_eq!(p.endpoint.url().as_str(), expected);
        }
        let e = with_key(AnthropicConfig::with_base_url("api.anthropic.com")).unwrap_err();
        assert!(
            matches!(e, AnthropicBuildError::InvalidBaseUrl { .. }),
            "{e}"
        );
    }

    #[test]
    fn debug_and_build_errors_never_show_url_credentials_or_query() {
        let p = with_key(AnthropicConfig::with_base_url(
            "https://user:hunter2@proxy.example:8443/anthropic",
        ))
        .unwrap();
        let debug = format!("{p:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("user"),
            "{debug}"
        );
        assert!(
            debug.contains("https://proxy.example:8443/anthropic/v1/messages"),
            "{debug}"
        );

        for url in [
            "https://proxy.example/anthropic?api-key=s3cret",
            "https://user:hunter2@proxy.example/anthropic#s3cret",
            "ftp://user:hunter2@proxy.example/anthropic",
        ] {
            let e = with_key(AnthropicConfig::with_base_url(url)).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(
                matches!(e, AnthropicBuildError::InvalidBaseUrl { .. }),
                "{shown}"
            );
            assert!(
                !shown.contains("s3cret") && !shown.contains("hunter2"),
                "{shown}"
            );
        }
    }

    #[test]
    fn the_key_variable_must_be_set_and_is_named_in_the_error() {
        let e = AnthropicProvider::new_with_env(AnthropicConfig::default(), |_| None).unwrap_err();
        assert_eq!(
            e,
            AnthropicBuildError::MissingKey {
                var: "ANTHROPIC_API_KEY".into()
            }
        );
        assert!(
            e.to_string().contains("`ANTHROPIC_API_KEY` is not set"),
            "{e}"
        );
        let config = AnthropicConfig {
            api_key_env: "BACKSTOP_TEST_UNSET_ANTHROPIC_KEY_VAR".into(),
            ..AnthropicConfig::default()
        };
        let e = AnthropicProvider::new(config).unwrap_err();
        assert!(
            e.to_string()
                .contains("BACKSTOP_TEST_UNSET_ANTHROPIC_KEY_VAR"),
            "{e}"
        );
        let e = AnthropicProvider::new_with_env(AnthropicConfig::default(), |_| {
            Some("bad\u{7f}secret".into())
        })
        .unwrap_err();
        assert_eq!(
            e,
            AnthropicBuildError::InvalidKey {
                var: "ANTHROPIC_API_KEY".into()
            }
        );
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn a_key_pasted_into_api_key_env_is_refused_without_being_repeated() {
        let config = AnthropicConfig {
            api_key_env: "sk-ant-api03-0123456789abcdef".into(),
            ..AnthropicConfig::default()
        };
        let e = AnthropicProvider::new_with_env(config, |_| None).unwrap_err();
        assert_eq!(e, AnthropicBuildError::KeyVarNotAName);
        assert!(!e.to_string().contains("0123456789"), "{e}");
    }

    #[test]
    fn a_bad_version_is_refused() {
        let config = AnthropicConfig {
            anthropic_version: String::new(),
            ..AnthropicConfig::default()
        };
        assert_eq!(
            with_key(config).unwrap_err(),
            AnthropicBuildError::InvalidVersion(String::new())
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let debug = format!("{:?}", with_key(AnthropicConfig::default()).unwrap());
        assert!(!debug.contains("sk-ant-secret"), "{debug}");
        assert!(debug.contains("2023-06-01"), "{debug}");
    }
}
