//! The provider: builds requests, sends them, and turns responses into core
//! types.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backstop_core::{
    Call, ChatResponse, ChunkStream, EmbedCall, EmbeddingsResponse, FailureKind, Provider,
    ProviderError, RawJson, Timeouts,
};
use backstop_http::Url;
use backstop_http::header::{AUTHORIZATION, HeaderName, HeaderValue};

use crate::classify::DIALECT;
use crate::config::{MaxTokensField, OPENAI_BASE_URL, OPENAI_KEY_VAR, OpenAiConfig};
use crate::error::OpenAiBuildError;
use crate::stream::chunk_stream;
use crate::wire::WireRequest;
use backstop_http::body::{
    self, Endpoint, encode_body, is_json, key_from_env, not_a_stream, read_body,
};
use backstop_http::{ApiKey, Clients, Response, error_chain, redact_url};

/// The request-id header OpenAI echoes in its logs.
const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");

/// A provider for an OpenAI-compatible chat completions API (and its
/// embeddings endpoint, for models that declare `dimensions`).
pub struct OpenAiProvider {
    endpoint: Endpoint,
    /// `{base_url}/embeddings`.
    embeddings: Endpoint,
    key: Option<ApiKey>,
    max_tokens_field: Option<MaxTokensField>,
    clients: Clients,
    malformed: Arc<AtomicU64>,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("endpoint", &redact_url(self.endpoint.url().as_str()))
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("max_tokens_field", &self.max_tokens_field)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// Builds the provider, reading the API key from the process
    /// environment.
    pub fn new(config: OpenAiConfig) -> Result<Self, OpenAiBuildError> {
        Self::new_with_env(config, |name| std::env::var(name).ok())
    }

    /// Builds the provider, reading environment variables through `env`
    /// (for tests and for `backstop check`, which resolve variables without
    /// touching the process environment).
    pub fn new_with_env(
        config: OpenAiConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, OpenAiBuildError> {
        let base = parse_base_url(&config.base_url)?;
        let join = |path: &str| {
            base.join(path)
                .map_err(|e| e.to_string())
                .and_then(Endpoint::new)
                .map_err(|reason| OpenAiBuildError::InvalidBaseUrl {
                    url: redact_url(&config.base_url),
                    reason,
                })
        };
        let endpoint = join("chat/completions")?;
        let embeddings = join("embeddings")?;
        let key_var = match config.api_key_env.as_deref() {
            Some(var) => Some(var),
            None if config.base_url.trim_end_matches('/') == OPENAI_BASE_URL => {
                Some(OPENAI_KEY_VAR)
            }
            None => None,
        };
        let key = match key_var {
            Some(var) => Some(
                key_from_env(var, env, ApiKey::bearer)
                    .map_err(|problem| OpenAiBuildError::key(problem, var))?,
            ),
            None => None,
        };
        let clients = Clients::new(Timeouts::default().connect)
            .map_err(|e| OpenAiBuildError::Client(error_chain(&e)))?;
        Ok(Self {
            endpoint,
            embeddings,
            key,
            max_tokens_field: config.max_tokens_field,
            clients,
            malformed: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Unparseable stream chunks skipped so far, over every stream of this
    /// provider.
    pub fn malformed_chunks(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Sends the request; any non-success status comes back classified.
    async fn send(&self, call: &Call<'_>, stream: bool) -> Result<Response, ProviderError> {
        let body = WireRequest::new(call, stream, self.max_tokens_field);
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        self.post(
            &self.endpoint,
            &body,
            accept,
            call.connect_timeout,
            call.request_id,
            call.headers,
            &call.model.id,
        )
        .await
    }

    /// Posts `body` as JSON to `endpoint`; any non-success status comes back
    /// classified.
    #[allow(clippy::too_many_arguments)]
    async fn post<B: serde::Serialize>(
        &self,
        endpoint: &Endpoint,
        body: &B,
        accept: &'static str,
        connect_timeout: Duration,
        request_id: Option<&str>,
        headers: &[(String, String)],
        model: &str,
    ) -> Result<Response, ProviderError> {
        let mut request = body::post(endpoint, encode_body(body)?, accept);
        if let Some(key) = &self.key {
            request
                .headers_mut()
                .append(AUTHORIZATION, key.header().clone());
        }
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            request.headers_mut().append(CLIENT_REQUEST_ID, id);
        }
        body::with_headers(&mut request, headers);
        let client = self.clients.get(connect_timeout);
        body::send(
            &client,
            request,
            connect_timeout,
            model,
            |status, body, wait| DIALECT.status_error(status, body, wait, self.key.as_ref()),
        )
        .await
    }

    /// Reads and checks a complete answer.
    async fn read_completion(&self, response: Response) -> Result<ChatResponse, ProviderError> {
        let (status, body) = read_body(response).await?;
        parse_completion(&body, self.key.as_ref()).map_err(|e| e.with_status(status))
    }
}

/// Parses a 200 body: a completion with at least one choice, or an error
/// object some servers send with a 200.
fn parse_completion(body: &[u8], key: Option<&ApiKey>) -> Result<ChatResponse, ProviderError> {
    match serde_json::from_slice::<ChatResponse>(body) {
        Ok(response) if response.choices.is_empty() => Err(ProviderError::new(
            FailureKind::InvalidResponse,
            "the response has no choices",
        )),
        Ok(mut response) => {
            // The text as it came, for the door to write through with only
            // `model` changed (JSON that parsed is UTF-8).
            response.raw = std::str::from_utf8(body)
                .ok()
                .and_then(|text| RawJson::of_body(text.to_owned()));
            Ok(response)
        }
        Err(parse) => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(value) if value.get("error").is_some_and(|e| !e.is_null()) => {
                Err(DIALECT.in_band_error(&value, key))
            }
            _ => Err(ProviderError::new(
                FailureKind::InvalidResponse,
                format!("unparseable response body: {parse}"),
            )),
        },
    }
}

fn parse_base_url(url: &str) -> Result<Url, OpenAiBuildError> {
    let mut parsed =
        body::parse_base_url(url).map_err(|reason| OpenAiBuildError::InvalidBaseUrl {
            url: redact_url(url),
            reason,
        })?;
    // A trailing slash makes `join` append rather than replace the last
    // path segment.
    if !parsed.path().ends_with('/') {
        let path = format!("{}/", parsed.path());
        parsed.set_path(&path);
    }
    Ok(parsed)
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn prepare(&self, connect_timeout: Duration) {
        self.clients.get(connect_timeout);
    }

    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        let response = self.send(&call, false).await?;
        self.read_completion(response).await
    }

    async fn embed(&self, call: EmbedCall<'_>) -> Result<EmbeddingsResponse, ProviderError> {
        let mut request = call.request.clone();
        request.model.clone_from(&call.model.upstream);
        // Vectors travel as floats inside Backstop; the door encodes.
        request
            .extra
            .insert("encoding_format".into(), serde_json::Value::from("float"));
        let response = self
            .post(
                &self.embeddings,
                &request,
                "application/json",
                call.connect_timeout,
                call.request_id,
                call.headers,
                &call.model.id,
            )
            .await?;
        let (status, body) = read_body(response).await?;
        serde_json::from_slice::<EmbeddingsResponse>(&body).map_err(|parse| {
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(value) if value.get("error").is_some_and(|e| !e.is_null()) => {
                    DIALECT.in_band_error(&value, self.key.as_ref())
                }
                _ => ProviderError::new(
                    FailureKind::InvalidResponse,
                    format!("unparseable embeddings body: {parse}"),
                ),
            }
            .with_status(status)
        })
    }

    async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let response = self.send(&call, true).await?;
        if is_json(&response) {
            // A server that ignores `stream` (or reports an error with a
            // 200) answers with JSON instead of events.
            return Err(not_a_stream(self.read_completion(response).await));
        }
        Ok(chunk_stream(
            response,
            call.model,
            self.key.clone(),
            self.malformed.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_joined() {
        let p = OpenAiProvider::new_with_env(
            OpenAiConfig::with_base_url("http://127.0.0.1:8000/v1"),
            |_| None,
        )
        .unwrap();
        assert_eq!(
            p.endpoint.url().as_str(),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        let p =
            OpenAiProvider::new_with_env(OpenAiConfig::with_base_url("http://h/api/v1/"), |_| None)
                .unwrap();
        assert_eq!(
            p.endpoint.url().as_str(),
            "http://h/api/v1/chat/completions"
        );
        for bad in ["ftp://h/v1", "not a url", "http://h/v1?x=1"] {
            let e = OpenAiProvider::new_with_env(OpenAiConfig::with_base_url(bad), |_| None)
                .unwrap_err();
            assert!(
                matches!(e, OpenAiBuildError::InvalidBaseUrl { .. }),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn openai_itself_needs_its_key_and_local_servers_need_none() {
        let e = OpenAiProvider::new_with_env(OpenAiConfig::default(), |_| None).unwrap_err();
        assert_eq!(
            e,
            OpenAiBuildError::MissingKey {
                var: "OPENAI_API_KEY".into()
            }
        );
        assert!(e.to_string().contains("`OPENAI_API_KEY` is not set"), "{e}");

        let p = OpenAiProvider::new_with_env(OpenAiConfig::default(), |v| {
            (v == "OPENAI_API_KEY").then(|| "sk-test".to_owned())
        })
        .unwrap();
        assert!(p.key.is_some());

        // A local server does not get the OpenAI key even when it is set.
        let p = OpenAiProvider::new_with_env(
            OpenAiConfig::with_base_url("http://127.0.0.1:11434/v1"),
            |_| Some("sk-should-not-be-read".to_owned()),
        )
        .unwrap();
        assert!(p.key.is_none());
    }

    #[test]
    fn a_named_key_variable_must_be_set_and_sendable() {
        let config = OpenAiConfig {
            api_key_env: Some("DEEPSEEK_API_KEY".into()),
            ..OpenAiConfig::with_base_url("https://api.deepseek.com")
        };
        let e = OpenAiProvider::new_with_env(config.clone(), |_| Some("  ".into())).unwrap_err();
        assert_eq!(
            e,
            OpenAiBuildError::MissingKey {
                var: "DEEPSEEK_API_KEY".into()
            }
        );
        let e = OpenAiProvider::new_with_env(config.clone(), |_| Some("bad\nkey-value".into()))
            .unwrap_err();
        assert_eq!(
            e,
            OpenAiBuildError::InvalidKey {
                var: "DEEPSEEK_API_KEY".into()
            }
        );
        assert!(!e.to_string().contains("key-value"));
        let empty = OpenAiConfig {
            api_key_env: Some(String::new()),
            ..config
        };
        assert_eq!(
            OpenAiProvider::new_with_env(empty, |_| None).unwrap_err(),
            OpenAiBuildError::EmptyKeyVar
        );
    }

    #[test]
    fn a_key_pasted_into_api_key_env_is_refused_without_being_repeated() {
        let config = OpenAiConfig {
            base_url: "https://api.deepseek.com/v1".into(),
            api_key_env: Some("sk-live-0123456789abcdef".into()),
            ..OpenAiConfig::default()
        };
        let e = OpenAiProvider::new_with_env(config, |_| None).unwrap_err();
        assert_eq!(e, OpenAiBuildError::KeyVarNotAName);
        assert!(!e.to_string().contains("0123456789"), "{e}");
    }

    #[test]
    fn new_reads_the_process_environment() {
        let config = OpenAiConfig {
            api_key_env: Some("BACKSTOP_TEST_UNSET_OPENAI_KEY_VAR".into()),
            ..OpenAiConfig::default()
        };
        let e = OpenAiProvider::new(config).unwrap_err();
        assert!(
            e.to_string().contains("BACKSTOP_TEST_UNSET_OPENAI_KEY_VAR"),
            "{e}"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let p = OpenAiProvider::new_with_env(OpenAiConfig::default(), |_| {
            Some("sk-secret-value".into())
        })
        .unwrap();
        let debug = format!("{p:?}");
        assert!(!debug.contains("secret-value"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn debug_and_build_errors_never_show_url_credentials_or_query() {
        let p = OpenAiProvider::new_with_env(
            OpenAiConfig::with_base_url("https://user:hunter2@proxy.example:8443/v1"),
            |_| None,
        )
        .unwrap();
        let debug = format!("{p:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("user"),
            "{debug}"
        );
        assert!(
            debug.contains("https://proxy.example:8443/v1/chat/completions"),
            "{debug}"
        );

        for url in [
            "https://res.openai.azure.com/openai/v1?api-key=s3cret",
            "https://user:hunter2@res.openai.azure.com/openai/v1?api-version=1&api-key=s3cret",
            "ftp://user:hunter2@host/v1",
        ] {
            let e = OpenAiProvider::new_with_env(OpenAiConfig::with_base_url(url), |_| None)
                .unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(
                matches!(e, OpenAiBuildError::InvalidBaseUrl { .. }),
                "{shown}"
            );
            assert!(
                !shown.contains("s3cret") && !shown.contains("hunter2"),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_200_body_must_parse_and_have_choices() {
        let e = parse_completion(b"not json", None).unwrap_err();
        assert_eq!(e.kind, FailureKind::InvalidResponse);
        let e = parse_completion(
            br#"{"id":"x","object":"chat.completion","choices":[]}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (FailureKind::InvalidResponse, "the response has no choices")
        );
        let e = parse_completion(
            br#"{"error":{"message":"Overloaded","type":"server_error"}}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(e.kind, FailureKind::Overloaded);
    }

    #[test]
    fn a_parsed_answer_keeps_its_text_for_write_through() {
        let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
        let response = parse_completion(body, None).unwrap();
        let raw = response.raw.expect("kept");
        assert_eq!(raw.as_str().as_bytes(), body);
        // Without the header keys the typed fields are written instead.
        let body = br#"{"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}"#;
        assert!(parse_completion(body, None).unwrap().raw.is_none());
    }
}
