//! # backstop-provider-anthropic
//!
//! A Backstop [`Provider`](backstop_core::Provider) for Anthropic's Messages
//! API. Callers speak OpenAI-shaped chat completions; this crate translates
//! each request to `POST {base_url}/v1/messages` and each answer, stream and
//! error back:
//!
//! - **Requests**: `system` / `developer` messages become `system`; user,
//!   assistant and tool messages become turns of content blocks (text,
//!   images, `tool_use`, `tool_result`); `max_tokens` is always sent (the
//!   Router's bound); `stop` becomes `stop_sequences`; `temperature` (capped
//!   at Anthropic's 1.0), `top_p`, `tools`, `tool_choice`,
//!   `parallel_tool_calls` and `user` are mapped; OpenAI-only fields are
//!   dropped.
//! - **Answers**: text blocks become the message content, `tool_use`
//!   blocks become `tool_calls`, `stop_reason` becomes `finish_reason`
//!   (`end_turn` / `stop_sequence` -> `stop`, `max_tokens` -> `length`,
//!   `tool_use` -> `tool_calls`, `refusal` -> `content_filter`), and usage
//!   input / output tokens become prompt / completion tokens.
//! - **Streams**: `message_start`, `content_block_*`, `message_delta`,
//!   `message_stop`, `ping` and `error` events become OpenAI-shaped chunks,
//!   ending with a finish chunk and a usage chunk.
//! - **Errors**: 529 `overloaded_error` -> `overloaded`; 429
//!   `rate_limit_error` -> `rate_limited` with `retry-after`; "prompt is too
//!   long" -> `context_length`; 401 / 403 -> `auth`; 402 `billing_error` and
//!   spend limits -> `quota_exhausted`; 404 `not_found_error` ->
//!   `model_not_found`; other 4xx -> `bad_request`; 5xx
//!   `api_error` -> `server`; in-stream `error` events the same way.
//!
//! **Assistant prefill.** The Messages API continues a trailing assistant
//! message instead of answering anew, which the Router's mid-stream
//! `continue` policy relies on: models served by this provider should be
//! configured with `capabilities.assistant_prefill = true`. Anthropic
//! rejects a final assistant turn that ends in whitespace, so that
//! whitespace is trimmed before sending and removed again from the start of
//! the continuation, so the caller's text joins up exactly.
//!
//! The API key comes from the environment variable the config names
//! (`ANTHROPIC_API_KEY` by default); it is sent only in the `x-api-key`
//! header and never appears in logs, in `Debug` output or in error messages.
//! Nor do the userinfo and query of `base_url`: wherever the URL is shown it
//! is `scheme://host[:port]/path`.

mod classify;
mod config;
mod error;
mod prefill;
mod provider;
mod request;
mod response;
mod stream;

pub use config::AnthropicConfig;
pub use error::AnthropicBuildError;
pub use provider::AnthropicProvider;
