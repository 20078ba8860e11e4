//! # backstop-provider-openai
//!
//! A Backstop [`Provider`](backstop_core::Provider) for OpenAI's chat
//! completions API and every server that speaks it: vLLM, Ollama, llama.cpp,
//! DeepSeek, Qwen (DashScope), Together, Groq, ...
//!
//! It sends the caller's request to `POST {base_url}/chat/completions` with
//! `model` set to the model's upstream name and the Router's output bound in
//! the field the caller used, passes every other field through untouched,
//! and maps the answer, the stream and every error body into the core types
//! and the [`FailureKind`](backstop_core::FailureKind) taxonomy:
//!
//! | upstream says | kind |
//! |---|---|
//! | code `context_length_exceeded`, "maximum context length" | `context_length` |
//! | code `content_policy_violation` / `content_filter` | `content_policy` |
//! | `insufficient_quota` (429), any 402 | `quota_exhausted` |
//! | other 429 (with `Retry-After` / `retry-after-ms`) | `rate_limited` |
//! | 401, 403 | `auth` |
//! | 529, 503 saying "overloaded" / "capacity" | `overloaded` |
//! | 408, other 5xx | `server` |
//! | 404 (`model_not_found`, Ollama's and vLLM's "not found") | `model_not_found` |
//! | other 4xx | `bad_request` |
//! | refused / reset before headers | `connect` |
//! | no connection within the connect timeout | `timeout` |
//! | 200 with an unparseable body or no choices | `invalid_response` |
//! | stream cut, or ended without `[DONE]` and without a finish reason | `stream_interrupted` |
//!
//! The stream reader is strict about what it trusts and lenient about what
//! it can skip: an unparseable `data:` line is skipped, logged and counted
//! ([`OpenAiProvider::malformed_chunks`]); an `error` object inside the
//! stream, or vLLM's bare `{"object": "error", ...}`, fails it with that
//! error's kind (a numeric `code` such as vLLM's `404` counts as the
//! status).
//!
//! The API key comes from the environment variable the config names; it is
//! sent only in the `Authorization` header and never appears in logs, in
//! `Debug` output or in error messages. Nor do the userinfo and query of
//! `base_url`: wherever the URL is shown it is `scheme://host[:port]/path`.

mod classify;
mod config;
mod error;
mod provider;
mod stream;
mod wire;

pub use config::{MaxTokensField, OpenAiConfig};
pub use error::OpenAiBuildError;
pub use provider::OpenAiProvider;
