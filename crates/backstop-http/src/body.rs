//! What both HTTP providers do around a call the same way: the API key read
//! from the environment, the base URL checked, the request sent and a
//! non-success status classified, a complete body read, and a streamed body
//! read as SSE events with its skipped events counted and logged, and
//! each provider's reader of those events made the Router's chunk stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use backstop_core::{ChatChunk, ChunkStream, FailureKind, ProviderError};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::{Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use reqwest::Url;

use crate::client::{BodyError, Client, Outgoing, Response};
use crate::sse::{SseDecoder, SseEvent};
use crate::{
    ApiKey, error_body, error_chain, is_env_var_name, log_preview, retry_after, send_error,
};

/// Why an API key could not be read from the environment. Each provider
/// turns it into its own build error (whose messages name the provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// The variable's name is the empty string.
    EmptyVarName,
    /// The name is not shaped like a variable name (most likely the key
    /// itself was pasted in).
    NotAVarName,
    /// The variable is unset or blank.
    Missing,
    /// The value cannot be sent in a header.
    Invalid,
}

/// Reads the API key held by the variable `var` through `env`, trimmed,
/// and makes it a header with `make` ([`ApiKey::bearer`] or
/// [`ApiKey::raw`]).
pub fn key_from_env(
    var: &str,
    env: impl Fn(&str) -> Option<String>,
    make: fn(&str) -> Option<ApiKey>,
) -> Result<ApiKey, KeyProblem> {
    if var.is_empty() {
        return Err(KeyProblem::EmptyVarName);
    }
    if !is_env_var_name(var) {
        return Err(KeyProblem::NotAVarName);
    }
    let value = env(var)
        .filter(|v| !v.trim().is_empty())
        .ok_or(KeyProblem::Missing)?;
    make(value.trim()).ok_or(KeyProblem::Invalid)
}

/// Checks an API root: an absolute http(s) URL with a host and no query or
/// fragment. The error is the reason, for the provider's build error.
pub fn parse_base_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", parsed.scheme()));
    }
    if parsed.cannot_be_a_base() || parsed.host_str().is_none() {
        return Err("it has no host".to_owned());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("it must not have a query or fragment".to_owned());
    }
    Ok(parsed)
}

/// An endpoint parsed once, when its provider is built: the URL as
/// configured, for messages and logs (through [`redact_url`]), and the URI
/// requests go to with its `Host` header. A `user:password@` in the URL is
/// not sent in the URI but as `Authorization: Basic`, as reqwest did.
///
/// [`redact_url`]: crate::redact_url
#[derive(Clone)]
pub struct Endpoint {
    url: Url,
    uri: Uri,
    /// `host[:port]`, the port only when not the scheme's default, as
    /// hyper-util would write it for every request.
    host: HeaderValue,
    basic: Option<HeaderValue>,
}

impl Endpoint {
    /// The endpoint at `url` (an http(s) URL, as [`parse_base_url`]
    /// checks); the error is the reason it cannot be a request's URI.
    pub fn new(url: Url) -> Result<Self, String> {
        let mut bare = url.clone();
        let basic = if !url.username().is_empty() || url.password().is_some() {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let mut credentials = format!("{}:", decode(url.username()));
            if let Some(password) = url.password() {
                credentials.push_str(&decode(password));
            }
            let _ = bare.set_username("");
            let _ = bare.set_password(None);
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            let mut value =
                HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|e| e.to_string())?;
            value.set_sensitive(true);
            Some(value)
        } else {
            None
        };
        let uri = Uri::try_from(bare.as_str()).map_err(|e| e.to_string())?;
        let name = uri.host().ok_or("it has no host")?;
        let host = match url.port() {
            Some(port) => HeaderValue::from_str(&format!("{name}:{port}")),
            None => HeaderValue::from_str(name),
        }
        .map_err(|e| e.to_string())?;
        Ok(Self {
            url,
            uri,
            host,
            basic,
        })
    }

    /// The URL as configured (it may hold secrets: show it through
    /// [`redact_url`](crate::redact_url)).
    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::redact_url(self.url.as_str()))
    }
}

/// A JSON `POST` of `body` to `endpoint`, accepting `accept`; the caller
/// adds its own headers.
pub fn post(endpoint: &Endpoint, body: Vec<u8>, accept: &'static str) -> Outgoing {
    let mut request = http::Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = endpoint.uri.clone();
    let headers = request.headers_mut();
    headers.append(HOST, endpoint.host.clone());
    if let Some(basic) = &endpoint.basic {
        headers.append(AUTHORIZATION, basic.clone());
    }
    headers.append(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.append(ACCEPT, HeaderValue::from_static(accept));
    request
}

/// Encodes a request body as JSON; a failure is the caller's bad request.
pub fn encode_body<T: serde::Serialize>(body: &T) -> Result<Vec<u8>, ProviderError> {
    serde_json::to_vec(body).map_err(|e| {
        ProviderError::new(
            FailureKind::BadRequest,
            format!("could not encode the request: {e}"),
        )
    })
}

/// Adds the call's extra headers ([`Call::headers`]: a trace context,
/// say) to `request`; a name or value that is not a valid header is left
/// out.
///
/// [`Call::headers`]: backstop_core::Call::headers
pub fn with_headers(request: &mut Outgoing, headers: &[(String, String)]) {
    for (name, value) in headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                request.headers_mut().append(name, value);
            }
            _ => {
                tracing::debug!(header = %name, "an extra upstream header is not valid HTTP; left out")
            }
        }
    }
}

/// Sends a request with `client`. A success status returns the response;
/// any other is read (a bounded part of its body) and classified by
/// `classify` with the status, the body and the upstream's Retry-After.
pub async fn send(
    client: &Client,
    request: Outgoing,
    connect_timeout: Duration,
    model: &str,
    classify: impl FnOnce(u16, &[u8], Option<Duration>) -> ProviderError,
) -> Result<Response, ProviderError> {
    let response = client
        .send(request)
        .await
        .map_err(|e| send_error(e, connect_timeout))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let wait = retry_after(response.headers(), SystemTime::now());
    let body = error_body(response).await;
    let error = classify(status.as_u16(), &body, wait);
    tracing::debug!(model = %model, %error, "upstream error");
    Err(error)
}

/// Reads a complete response body with its status; a body cut in transit
/// is `StreamInterrupted`.
pub async fn read_body(response: Response) -> Result<(u16, Bytes), ProviderError> {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| {
        ProviderError::new(
            FailureKind::StreamInterrupted,
            format!("the response body was cut: {}", error_chain(&e)),
        )
        .with_status(status)
    })?;
    Ok((status, body.to_bytes()))
}

/// What reads a streamed answer one chunk at a time (each provider's
/// translation of its events); [`stream_chunks`] makes it the stream the
/// Router consumes.
pub trait ChunkReader: Send + 'static {
    /// The next chunk, the error that ends the stream, or `None` once it
    /// has ended.
    fn next_chunk(
        &mut self,
    ) -> impl Future<Output = Option<Result<ChatChunk, ProviderError>>> + Send;
}

/// The chunks `reader` reads, as a [`ChunkStream`].
pub fn stream_chunks(reader: impl ChunkReader) -> ChunkStream {
    futures::stream::unfold(reader, |mut reader| async move {
        let item = reader.next_chunk().await?;
        Some((item, reader))
    })
    .boxed()
}

/// A streamed response body, read as SSE events as its bytes arrive.
pub struct SseBody {
    body: Incoming,
    decoder: SseDecoder,
    scratch: Vec<SseEvent>,
    events: VecDeque<SseEvent>,
}

impl SseBody {
    /// Reads `response`'s body (its errors carry no URL, which may hold
    /// secrets).
    pub fn new(response: Response) -> Self {
        Self {
            body: response.into_body(),
            decoder: SseDecoder::new(),
            scratch: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// The next event; `Err` when the body ended: `None` cleanly, or the
    /// transport's error.
    pub async fn next_event(&mut self) -> Result<SseEvent, Option<BodyError>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    // Trailers carry no events.
                    if let Some(bytes) = frame.data_ref() {
                        self.decoder.feed(bytes, &mut self.scratch);
                        self.events.extend(self.scratch.drain(..));
                    }
                }
                Some(Err(error)) => return Err(Some(error)),
                None => return Err(None),
            }
        }
    }
}

/// Counts and logs the unparseable events of one stream, and of every
/// stream of its provider.
#[derive(Debug)]
pub struct SkipLog {
    model: String,
    provider: String,
    key: Option<ApiKey>,
    malformed: Arc<AtomicU64>,
    /// Unparseable events skipped in this stream.
    skipped: u64,
}

impl SkipLog {
    /// A log for one stream of `model` (by id) served by `provider`;
    /// `malformed` is the provider's running total.
    pub fn new(
        model: String,
        provider: String,
        key: Option<ApiKey>,
        malformed: Arc<AtomicU64>,
    ) -> Self {
        Self {
            model,
            provider,
            key,
            malformed,
            skipped: 0,
        }
    }

    /// The model's id, for logs.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The key to redact from messages.
    pub fn key(&self) -> Option<&ApiKey> {
        self.key.as_ref()
    }

    /// Counts and logs an unparseable event (`what`: "chunk", "event").
    /// The log names the model and provider and shows the counts, where the
    /// JSON broke, and at most 100 characters of the data with secrets
    /// removed; never the parser's message, which quotes the data's values
    /// at any length.
    pub fn skip(&mut self, data: &str, error: &serde_json::Error, what: &str) {
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
            "skipped an unparseable stream {what}"
        );
    }

    /// How a stream whose body ended (cleanly, or with `cut`) ends: nothing
    /// when the answer was `complete` (a lost tail is only logged, naming
    /// the `finish` it had), else `StreamInterrupted` with `unfinished` or
    /// the transport's error.
    pub fn end(
        &self,
        complete: bool,
        cut: Option<&BodyError>,
        finish: &str,
        unfinished: &str,
    ) -> Option<ProviderError> {
        if complete {
            if let Some(error) = cut {
                tracing::debug!(model = %self.model, error = %error_chain(error), "stream cut after its {finish}");
            }
            return None;
        }
        let message = match cut {
            Some(error) => format!("the stream was cut: {}", error_chain(error)),
            None => unfinished.to_owned(),
        };
        Some(ProviderError::new(FailureKind::StreamInterrupted, message))
    }
}

/// Whether a response says its body is JSON (a server asked for a stream
/// that answers with a complete body, or with an error, instead).
pub fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The error for a complete JSON answer (see [`is_json`]) to a request for
/// a stream, given what reading it as a complete answer gave: the error it
/// reports, else that a complete answer came instead of a stream.
pub fn not_a_stream<T>(answer: Result<T, ProviderError>) -> ProviderError {
    match answer {
        Ok(_) => ProviderError::new(
            FailureKind::InvalidResponse,
            "asked for a stream, got a complete JSON answer",
        ),
        Err(error) => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_carry_their_host_header_and_userinfo_as_basic_auth() {
        for (url, uri, host) in [
            ("http://h/v1/chat", "http://h/v1/chat", "h"),
            ("https://h:443/v1", "https://h/v1", "h"),
            ("http://h:80/", "http://h/", "h"),
            ("https://h:8443/v1", "https://h:8443/v1", "h:8443"),
            ("http://[::1]:8080/v1", "http://[::1]:8080/v1", "[::1]:8080"),
            ("http://u:p@h:8080/v1", "http://h:8080/v1", "h:8080"),
        ] {
            let e = Endpoint::new(Url::parse(url).unwrap()).unwrap();
            assert_eq!(
                (e.uri.to_string().as_str(), e.host.to_str().unwrap()),
                (uri, host),
                "{url}"
            );
            assert_eq!(e.url.as_str(), url.replace(":443", "").replace(":80/", "/"));
        }
        let e = Endpoint::new(Url::parse("http://u:p@h/").unwrap()).unwrap();
        let basic = e.basic.clone().unwrap();
        assert_eq!(basic, "Basic dTpw");
        assert!(basic.is_sensitive());
        assert_eq!(format!("{e:?}"), "http://h/");
        assert!(
            Endpoint::new(Url::parse("http://h/").unwrap())
                .unwrap()
                .basic
                .is_none()
        );
    }

    #[test]
    fn a_json_answer_to_a_stream_request_fails_with_its_own_error_else_invalid_response() {
        let e = not_a_stream(Ok(()));
        assert_eq!(e.kind, FailureKind::InvalidResponse);
        assert_eq!(e.message, "asked for a stream, got a complete JSON answer");
        let reported = ProviderError::new(FailureKind::RateLimited, "slow down");
        let e = not_a_stream::<()>(Err(reported.clone()));
        assert_eq!((e.kind, e.message), (reported.kind, reported.message));
    }
}
