//! The shape of the file: one struct per table, every key with its default,
//! unknown keys refused.
//!
//! Tables that name a factory with `type` (providers, strategies, alerts)
//! are not described here: their keys belong to the factory, which refuses
//! unknown ones itself. Only their `type` is read here.

use backstop_core::{ContentPolicyAction, MidStreamPolicy};
use figment::value::Value;
use serde::Deserialize;

/// The top-level tables.
pub(crate) const SECTIONS: [&str; 10] = [
    "server",
    "providers",
    "models",
    "scenarios",
    "strategies",
    "alerts",
    "plugins",
    "state",
    "limits",
    "telemetry",
];

/// `[server]`: what the gateway listens on and how it guards itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Environment variable holding comma-separated bearer keys.
    #[serde(default = "default_api_keys_env")]
    pub api_keys_env: String,
    /// Largest request body accepted.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: u64,
    /// Longest wait for a request's headers.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_ms: u64,
    /// Longest wait for a request's body once its headers arrived.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_ms: u64,
    /// How long a shutdown waits for requests in flight.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_ms: u64,
    /// Most client connections open at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    /// Time between two log summaries of the traffic; 0 turns them off.
    #[serde(default = "default_log_summary")]
    pub log_summary_ms: u64,
}

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub(crate) const DEFAULT_API_KEYS_ENV: &str = "BACKSTOP_API_KEYS";
pub(crate) const DEFAULT_BODY_LIMIT: u64 = 10 * 1024 * 1024;
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
pub(crate) const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;
pub(crate) const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
pub(crate) const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
pub(crate) const DEFAULT_LOG_SUMMARY_MS: u64 = 60_000;

fn default_listen() -> String {
    DEFAULT_LISTEN.to_owned()
}
fn default_api_keys_env() -> String {
    DEFAULT_API_KEYS_ENV.to_owned()
}
fn default_body_limit() -> u64 {
    DEFAULT_BODY_LIMIT
}
fn default_header_read_timeout() -> u64 {
    DEFAULT_HEADER_READ_TIMEOUT_MS
}
fn default_shutdown_grace() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_MS
}
fn default_body_read_timeout() -> u64 {
    DEFAULT_BODY_READ_TIMEOUT_MS
}
fn default_max_connections() -> u64 {
    DEFAULT_MAX_CONNECTIONS
}
fn default_log_summary() -> u64 {
    DEFAULT_LOG_SUMMARY_MS
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            api_keys_env: default_api_keys_env(),
            body_limit_bytes: DEFAULT_BODY_LIMIT,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            body_read_timeout_ms: DEFAULT_BODY_READ_TIMEOUT_MS,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            log_summary_ms: DEFAULT_LOG_SUMMARY_MS,
        }
    }
}

/// `[state]`: what the replicas of a fleet share, and where.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateSection {
    /// `local` (nothing shared) or `redis`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Environment variable holding the store's URL (a secret).
    #[serde(default = "default_url_env")]
    pub url_env: String,
    /// Prefix of every key and channel.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// A store call slower than this is a store failure.
    #[serde(default = "default_state_timeout")]
    pub timeout_ms: u64,
    /// What shared budgets do while the store fails: `local` or `closed`.
    #[serde(default = "default_on_store_failure")]
    pub on_store_failure: String,
}

pub(crate) const STATE_BACKENDS: [&str; 2] = ["local", "redis"];
pub(crate) const ON_STORE_FAILURE: [&str; 2] = ["local", "closed"];
pub(crate) const DEFAULT_URL_ENV: &str = "BACKSTOP_REDIS_URL";
pub(crate) const DEFAULT_KEY_PREFIX: &str = "backstop";
pub(crate) const DEFAULT_STATE_TIMEOUT_MS: u64 = 20;

fn default_backend() -> String {
    "local".to_owned()
}
fn default_url_env() -> String {
    DEFAULT_URL_ENV.to_owned()
}
fn default_key_prefix() -> String {
    DEFAULT_KEY_PREFIX.to_owned()
}
fn default_state_timeout() -> u64 {
    DEFAULT_STATE_TIMEOUT_MS
}
fn default_on_store_failure() -> String {
    "local".to_owned()
}

impl Default for StateSection {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            url_env: default_url_env(),
            key_prefix: default_key_prefix(),
            timeout_ms: DEFAULT_STATE_TIMEOUT_MS,
            on_store_failure: default_on_store_failure(),
        }
    }
}

/// `[telemetry]`: OpenTelemetry traces and metrics over OTLP. Unset keys
/// fall back to the standard `OTEL_*` environment variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetrySection {
    /// The collector's OTLP endpoint; unset (and no
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`): telemetry is off.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` or `grpc`; unset: `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else `http/protobuf`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// `service.name` of the resource; unset: `OTEL_SERVICE_NAME`, else
    /// `backstop`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Put prompts and completions on the CLIENT spans.
    #[serde(default)]
    pub capture_content: bool,
    /// Time between two metric exports.
    #[serde(default = "default_export_interval")]
    pub export_interval_ms: u64,
    /// Longest wait for one export.
    #[serde(default = "default_export_timeout")]
    pub export_timeout_ms: u64,
}

pub(crate) const OTLP_PROTOCOLS: [&str; 2] = ["http/protobuf", "grpc"];
pub(crate) const DEFAULT_SERVICE_NAME: &str = "backstop";
pub(crate) const DEFAULT_EXPORT_INTERVAL_MS: u64 = 60_000;
pub(crate) const DEFAULT_EXPORT_TIMEOUT_MS: u64 = 10_000;

fn default_export_interval() -> u64 {
    DEFAULT_EXPORT_INTERVAL_MS
}
fn default_export_timeout() -> u64 {
    DEFAULT_EXPORT_TIMEOUT_MS
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            protocol: None,
            service_name: None,
            capture_content: false,
            export_interval_ms: DEFAULT_EXPORT_INTERVAL_MS,
            export_timeout_ms: DEFAULT_EXPORT_TIMEOUT_MS,
        }
    }
}

/// `[models.<id>]`: one model of the fallback chains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelSection {
    /// Id of the provider that serves it.
    pub provider: String,
    /// Upstream model name; defaults to the id.
    pub model: Option<String>,
    /// Lower is preferred; ties keep file order.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Output-token ceiling per call.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// USD per 1k tokens, input and output alike.
    pub cost_per_1k: Option<f64>,
    /// USD per 1k prompt tokens (overrides `cost_per_1k`).
    pub input_cost_per_1k: Option<f64>,
    /// USD per 1k completion tokens (overrides `cost_per_1k`).
    pub output_cost_per_1k: Option<f64>,
    /// Prompt plus completion tokens the model accepts.
    #[serde(default = "default_context_window")]
    pub context_window: u32,
    /// Continues a trailing assistant message (mid-stream `continue`);
    /// unset, it follows the provider's type (Anthropic's Messages API
    /// does, OpenAI's chat completions do not).
    #[serde(default)]
    pub supports_prefill: Option<bool>,
    /// Can stream.
    #[serde(default = "yes")]
    pub streaming: bool,
    /// Accepts `tools`.
    #[serde(default = "yes")]
    pub tools: bool,
    /// Tried only after every other model of a chain (as a template is).
    #[serde(default)]
    pub last_resort: bool,
    /// For an embedding model: the length of its vectors. Unset: a chat
    /// model. A chain's models must all have the same value.
    #[serde(default)]
    pub dimensions: Option<u32>,
    /// The provider's requests-per-minute quota for this model.
    #[serde(default)]
    pub rpm: Option<i64>,
    /// The provider's tokens-per-minute quota for this model.
    #[serde(default)]
    pub tpm: Option<i64>,
}

/// `[limits]`: rate limits on callers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    /// Each caller's requests and tokens per minute.
    #[serde(default)]
    pub per_caller: Option<RateSection>,
}

/// `{ rpm = ..., tpm = ... }`: per-minute limits; unset keys are no limit.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateSection {
    /// Requests per minute.
    pub rpm: Option<i64>,
    /// Tokens per minute.
    pub tpm: Option<i64>,
}

pub(crate) const DEFAULT_PRIORITY: u32 = 1;
pub(crate) const DEFAULT_MAX_TOKENS: u32 = 4096;
pub(crate) const DEFAULT_COST_PER_1K: f64 = 0.01;
pub(crate) const DEFAULT_CONTEXT_WINDOW: u32 = 128_000;

fn default_priority() -> u32 {
    DEFAULT_PRIORITY
}
fn default_max_tokens() -> u32 {
    DEFAULT_MAX_TOKENS
}
fn default_context_window() -> u32 {
    DEFAULT_CONTEXT_WINDOW
}
fn yes() -> bool {
    true
}

/// `timeouts = { ... }`: every key optional; unset keys inherit.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsSection {
    pub connect_ms: Option<u64>,
    pub first_token_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    pub attempt_ms: Option<u64>,
    pub total_ms: Option<u64>,
}

/// `retries = { ... }`: every key optional; unset keys inherit.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetriesSection {
    pub same_model: Option<u32>,
    pub retry_after_cap_ms: Option<u64>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
}

/// The route-policy keys a scenario may set and `[strategies]` defaults.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PolicyKeys {
    pub timeouts: Option<TimeoutsSection>,
    pub retries: Option<RetriesSection>,
    pub mid_stream: Option<MidStreamPolicy>,
    pub hedge_after_ms: Option<u64>,
    pub on_content_policy: Option<ContentPolicyAction>,
}

/// `[scenarios.<name>]`: a named chain and how it runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScenarioSection {
    /// Model ids, most preferred first; unset = every model by priority.
    pub chain: Option<Vec<String>>,
    pub selector: Option<Value>,
    pub health: Option<Value>,
    pub budget: Option<Value>,
    pub result: Option<Value>,
    pub timeouts: Option<TimeoutsSection>,
    pub retries: Option<RetriesSection>,
    pub mid_stream: Option<MidStreamPolicy>,
    pub hedge_after_ms: Option<u64>,
    pub on_content_policy: Option<ContentPolicyAction>,
}

impl ScenarioSection {
    pub fn policy(&self) -> PolicyKeys {
        PolicyKeys {
            timeouts: self.timeouts,
            retries: self.retries,
            mid_stream: self.mid_stream,
            hedge_after_ms: self.hedge_after_ms,
            on_content_policy: self.on_content_policy,
        }
    }
}

/// `[strategies]`: the defaults of every scenario.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StrategiesSection {
    pub selector: Option<Value>,
    pub health: Option<Value>,
    pub budget: Option<Value>,
    pub result: Option<Value>,
    /// The prober's table (backstop-strategies' `ActiveProbeConfig`).
    pub probe: Option<Value>,
    pub timeouts: Option<TimeoutsSection>,
    pub retries: Option<RetriesSection>,
    pub mid_stream: Option<MidStreamPolicy>,
    pub hedge_after_ms: Option<u64>,
    pub on_content_policy: Option<ContentPolicyAction>,
}

impl StrategiesSection {
    pub fn policy(&self) -> PolicyKeys {
        PolicyKeys {
            timeouts: self.timeouts,
            retries: self.retries,
            mid_stream: self.mid_stream,
            hedge_after_ms: self.hedge_after_ms,
            on_content_policy: self.on_content_policy,
        }
    }
}

/// `[[plugins]]`: a dynamic plugin library.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PluginSection {
    /// Path of the library, relative to the working directory.
    pub path: String,
}
