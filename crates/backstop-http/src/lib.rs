//! # backstop-http
//!
//! HTTP plumbing shared by Backstop's provider plugins (`openai`,
//! `anthropic`, and any team's own): pooled clients keyed by connect
//! timeout, the API key as a sensitive header that never shows in `Debug`
//! or in a message, secret redaction of upstream messages and of endpoint
//! URLs, classification
//! of transport errors, `Retry-After` in its three forms, and bounded reads
//! of error bodies. A provider crate built as a dynamic plugin links it in
//! like any other library.
//!
//! The upstream client ([`client`]) sets the connect timeout per pool,
//! while the Router passes one per call; scenarios use only a few distinct
//! values, so a handful of pooled clients, one per value, serves them all.
//! Every other timeout is the Router's.
//!
//! It also holds the wire formats every HTTP side of Backstop shares:
//! [`sse`], server-sent events framing (the providers read it, the gateway
//! and the chaos fakes write it). [`body`] holds what the two HTTP providers
//! do alike around a call; [`upstream_error`] reads what an upstream's error
//! body says; [`webhook`] sends the alert rule's webhooks.

pub mod body;
pub mod client;
pub mod sse;
pub mod upstream_error;
pub mod webhook;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use backstop_core::{FailureKind, ProviderError};
use http::header::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;

pub use client::{Client, ClientError, Proxies, Response};
/// The header types the providers build requests with.
pub use http::header;
/// A parsed URL (what [`body::parse_base_url`] returns).
pub use reqwest::Url;

use rustls::ClientConfig;

/// Clients kept at most; more distinct connect timeouts than this evict the
/// oldest.
const MAX_CLIENTS: usize = 8;

/// How much of an error body is read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Pooled HTTP clients, one per connect timeout, sharing one TLS
/// configuration and the proxies read from the environment when the cache
/// was built.
pub struct Clients {
    tls: Arc<ClientConfig>,
    proxies: Arc<Proxies>,
    cache: Mutex<Vec<(Duration, Arc<Client>)>>,
}

impl Clients {
    /// A cache holding a client for `connect_timeout`, its TLS set up now so
    /// that a broken TLS stack shows up when the provider is built, and the
    /// process environment's proxies ([`Proxies::from_env`]).
    pub fn new(connect_timeout: Duration) -> Result<Self, ClientError> {
        Self::with_proxies(connect_timeout, Proxies::from_env())
    }

    /// As [`Clients::new`], with these proxies.
    pub fn with_proxies(connect_timeout: Duration, proxies: Proxies) -> Result<Self, ClientError> {
        let tls = client::tls_config()?;
        let proxies = Arc::new(proxies);
        let client = Arc::new(Client::new(connect_timeout, &tls, &proxies));
        Ok(Self {
            tls,
            proxies,
            cache: Mutex::new(vec![(connect_timeout, client)]),
        })
    }

    /// The client for this connect timeout.
    pub fn get(&self, connect_timeout: Duration) -> Arc<Client> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, client)) = cache.iter().find(|(t, _)| *t == connect_timeout) {
            return client.clone();
        }
        let client = Arc::new(Client::new(connect_timeout, &self.tls, &self.proxies));
        if cache.len() >= MAX_CLIENTS {
            cache.remove(0);
        }
        cache.push((connect_timeout, client.clone()));
        client
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// An API key: the header value to send and the text to scrub from upstream
/// messages. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ApiKey {
    secret: Arc<str>,
    header: HeaderValue,
}

impl ApiKey {
    /// A key sent as `Authorization: Bearer <key>`; `None` when the key
    /// cannot be sent in a header.
    pub fn bearer(secret: &str) -> Option<Self> {
        let mut header = HeaderValue::from_str(&format!("Bearer {secret}")).ok()?;
        header.set_sensitive(true);
        Some(Self {
            secret: secret.into(),
            header,
        })
    }

    /// A key sent as is (for example as `x-api-key: <key>`); `None` when
    /// the key cannot be sent in a header.
    pub fn raw(secret: &str) -> Option<Self> {
        let mut header = HeaderValue::from_str(secret).ok()?;
        header.set_sensitive(true);
        Some(Self {
            secret: secret.into(),
            header,
        })
    }

    /// The header value to send (marked sensitive).
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Removes secrets from an upstream message: the configured key itself,
/// should a server echo it, and every run shaped like an API key wherever
/// it appears (after a space, a quote, `=`, `(`, or glued to other text):
/// `sk-` and the key characters that follow it (ASCII letters, digits,
/// `-`, `_`, and the `*` of a masked key, as OpenAI's 401 quotes a masked
/// prefix and suffix of the key it received). The run ends at the first
/// other character, which is kept.
pub fn redact(message: &str, key: Option<&ApiKey>) -> String {
    let message = match key {
        Some(key) if !key.secret.is_empty() => message.replace(&*key.secret, "<redacted>"),
        _ => message.to_owned(),
    };
    const PREFIX: &str = "sk-";
    if !message.contains(PREFIX) {
        return message;
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(start) = rest.find(PREFIX) {
        out.push_str(&rest[..start]);
        out.push_str("sk-<redacted>");
        let after = &rest[start + PREFIX.len()..];
        // Key characters are ASCII, so the first other byte is a char
        // boundary.
        let end = after
            .bytes()
            .position(|b| !is_key_byte(b))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// An endpoint URL as it may be shown in `Debug` output, a log or an error
/// message: `scheme://host[:port]/path`. The userinfo (`user:password@`),
/// the query (`?api-key=...`, as Azure-style proxies take the key) and the
/// fragment are removed, since any of them can carry a secret.
///
/// A string that does not parse as a URL with a host is cut by its text:
/// everything from the first `?` or `#` goes, and so does everything up to
/// the last `@` (after `://`, when there is one), so that a malformed URL in
/// a config error does not show its password either.
pub fn redact_url(url: &str) -> String {
    if let Ok(parsed) = reqwest::Url::parse(url)
        && let Some(host) = parsed.host_str()
    {
        let mut out = format!("{}://{host}", parsed.scheme());
        if let Some(port) = parsed.port() {
            out.push_str(&format!(":{port}"));
        }
        out.push_str(parsed.path());
        return out;
    }
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + "://".len()),
        None => ("", url),
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    format!("{scheme}{rest}")
}

/// How many characters of upstream data [`log_preview`] keeps.
const PREVIEW_CHARS: usize = 100;

/// The start of a piece of upstream data (an unparseable stream line),
/// fit for a log: secrets removed as by [`redact`] first, so a cut never
/// leaves part of a key, then cut to 100 characters, `…` marking the cut.
pub fn log_preview(text: &str, key: Option<&ApiKey>) -> String {
    let text = redact(text, key);
    match text.char_indices().nth(PREVIEW_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// What [`is_env_var_name`] accepts, for error messages.
pub const ENV_VAR_NAME_RULE: &str = "ASCII letters, digits and `_`, not starting with a digit";

/// Whether `name` can be an environment variable name as configs write
/// them: ASCII letters, digits and `_`, not starting with a digit. A value
/// that is not (say, the key itself pasted into `api_key_env`) must be
/// refused without being repeated.
pub fn is_env_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A byte that can be part of an API key or of its masked form.
fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*')
}

/// Classifies an error from sending a request (before any response). The
/// message names no URL (the client's errors carry none).
pub fn send_error(error: client::SendError, connect_timeout: Duration) -> ProviderError {
    // No other timeout is set on the client, so a timeout is the connect's.
    if is_timeout(&error) {
        return ProviderError::new(
            FailureKind::Timeout,
            format!("no connection within {} ms", connect_timeout.as_millis()),
        );
    }
    let what = if error.is_connect() {
        "could not connect"
    } else {
        "the connection failed before a response"
    };
    // The client's own error only names its kind ("client error
    // (Connect)"); the cause says what happened.
    let cause = match std::error::Error::source(&error) {
        Some(cause) => error_chain(cause),
        None => error.to_string(),
    };
    ProviderError::new(FailureKind::Connect, format!("{what}: {cause}"))
}

/// Whether an error or one of its causes is a timeout.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// An error and its sources, `: `-separated, without repeats.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// How long the upstream asked us to wait: `retry-after-ms` (milliseconds),
/// else `Retry-After` as seconds or an HTTP date (a date in the past means
/// now).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && let Ok(wait) = Duration::try_from_secs_f64(ms / 1000.0)
    {
        return Some(wait);
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads at most 64 KiB of an error response's body; a body cut short
/// yields what arrived.
pub async fn error_body(response: Response) -> Vec<u8> {
    let mut incoming = response.into_body();
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match incoming.frame().await {
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    body.extend_from_slice(chunk);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    body
}

/// A message for a body that is not a known error shape: its start, if it
/// is short text, else the status.
pub fn fallback_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.starts_with('<') {
        return format!("HTTP {status} with no error message");
    }
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "7"), ("retry-after-ms", "1500")]),
                now
            ),
            Some(Duration::from_millis(1500)),
            "the precise header wins"
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-3")]), now), None);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1e300")]), now),
            None
        );
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn redaction_removes_the_key_and_key_shaped_words() {
        let key = ApiKey::bearer("sk-proj-abcdef123456").unwrap();
        let msg =
            "Incorrect API key provided: sk-proj-********3456. You can find your API key at x.";
        assert_eq!(
            redact(msg, Some(&key)),
            "Incorrect API key provided: sk-<redacted>. You can find your API key at x."
        );
        let local = ApiKey::bearer("local-secret").unwrap();
        assert_eq!(
            redact("bad key local-secret!", Some(&local)),
            "bad key <redacted>!"
        );
        assert_eq!(format!("{local:?}"), "ApiKey(<redacted>)");
        assert!(local.header().is_sensitive());
    }

    #[test]
    fn redacted_urls_keep_scheme_host_port_and_path_only() {
        for (url, expected) in [
            (
                "https://user:hunter2@proxy.example:8443/openai/v1/chat/completions?api-key=s3cret#frag",
                "https://proxy.example:8443/openai/v1/chat/completions",
            ),
            (
                "https://res.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-06-01&api-key=s3cret",
                "https://res.openai.azure.com/openai/deployments/gpt/chat/completions",
            ),
            ("http://token@127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
            ("https://api.openai.com:443/v1", "https://api.openai.com/v1"),
            (
                "http://[::1]:9000/v1/messages",
                "http://[::1]:9000/v1/messages",
            ),
            ("https://api.anthropic.com", "https://api.anthropic.com/"),
            ("http://host/a@b/c", "http://host/a@b/c"),
            // Unparseable: cut by the text.
            ("http://user:pa/ss@host/v1?key=s3cret", "http://host/v1"),
            ("http://user:hunter2@host:99999/v1", "http://host:99999/v1"),
            ("user:hunter2@host/v1?api-key=s3cret", "host/v1"),
            ("api.anthropic.com", "api.anthropic.com"),
            ("not a url", "not a url"),
            ("", ""),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, expected, "{url}");
            assert!(!redacted.contains("s3cret") && !redacted.contains("hunter2"));
        }
    }

    #[test]
    fn log_previews_are_redacted_then_cut_to_100_characters() {
        assert_eq!(log_preview("{\"id\": 1", None), "{\"id\": 1");
        let long = format!("{{\"text\": \"{}\"}}", "é".repeat(300));
        let preview = log_preview(&long, None);
        assert_eq!(preview.chars().count(), 101);
        assert!(preview.ends_with("é…"), "{preview}");
        // A key that straddles the cut is removed, not cut in half.
        let key = ApiKey::raw("plain-secret-0123456789").unwrap();
        let line = format!("{}plain-secret-0123456789 sk-live-abcdef", "x".repeat(90));
        let preview = log_preview(&line, Some(&key));
        assert!(!preview.contains("plain-secret"), "{preview}");
        assert!(preview.starts_with(&format!("{}<redacted>", "x".repeat(90))));
        assert!(!log_preview("data sk-live-abcdef", None).contains("abcdef"));
    }

    #[test]
    fn clients_are_cached_per_connect_timeout_and_bounded() {
        let clients = Clients::new(Duration::from_secs(5)).unwrap();
        clients.get(Duration::from_secs(5));
        let two = clients.get(Duration::from_secs(2));
        assert!(Arc::ptr_eq(&two, &clients.get(Duration::from_secs(2))));
        assert_eq!(clients.len(), 2);
        for ms in 0..20 {
            clients.get(Duration::from_millis(ms));
        }
        assert_eq!(clients.len(), MAX_CLIENTS);
    }

    #[test]
    fn redaction_of_a_raw_key_and_masked_key_words() {
        let key = ApiKey::raw("sk-ant-api03-abcdef123456").unwrap();
        let msg = "invalid x-api-key sk-ant-api03-abcdef123456 given";
        assert_eq!(
            redact(msg, Some(&key)),
            "invalid x-api-key <redacted> given"
        );
        assert_eq!(
            redact("key sk-ant-***456 is bad", None),
            "key sk-<redacted> is bad"
        );
        let local = ApiKey::raw("local-secret").unwrap();
        assert_eq!(
            redact("bad key local-secret!", Some(&local)),
            "bad key <redacted>!"
        );
        assert_eq!(format!("{local:?}"), "ApiKey(<redacted>)");
        assert!(local.header().is_sensitive());
    }

    #[test]
    fn env_var_names_are_letters_digits_and_underscores() {
        for name in ["OPENAI_API_KEY", "_X", "key2", "a"] {
            assert!(is_env_var_name(name), "{name}");
        }
        for name in [
            "",
            "2KEY",
            "sk-proj-abc123",
            "MY KEY",
            "KEY=1",
            "$KEY",
            "K\u{e9}Y",
        ] {
            assert!(!is_env_var_name(name), "{name}");
        }
    }

    #[test]
    fn redaction_finds_key_shaped_runs_after_any_character() {
        for (message, expected) in [
            (
                "Incorrect API key provided: 'sk-proj-ab********************3456'.",
                "Incorrect API key provided: 'sk-<redacted>'.",
            ),
            (
                "header was key=sk-live-0123456789abcdef",
                "header was key=sk-<redacted>",
            ),
            (
                r#"{"x-api-key": "sk-ant-api03-AbC_dEf-123"}"#,
                r#"{"x-api-key": "sk-<redacted>"}"#,
            ),
            (
                "bad key (sk-abc***xyz), try again",
                "bad key (sk-<redacted>), try again",
            ),
            ("key:sk-abc\nnext", "key:sk-<redacted>\nnext"),
            (
                "Bearersk-abc123 and sk-def456",
                "Bearersk-<redacted> and sk-<redacted>",
            ),
            ("ends with sk-", "ends with sk-<redacted>"),
            (
                "sk-\u{e9}t\u{e9} sk-1\u{2026}9",
                "sk-<redacted>\u{e9}t\u{e9} sk-<redacted>\u{2026}9",
            ),
            ("nothing to hide", "nothing to hide"),
        ] {
            assert_eq!(redact(message, None), expected, "{message}");
        }
        let key = ApiKey::raw("plain-secret-42").unwrap();
        assert_eq!(
            redact("got 'plain-secret-42' and \"sk-other-1\"", Some(&key)),
            "got '<redacted>' and \"sk-<redacted>\""
        );
    }
}
