//! Errors of building the provider from its config. Upstream failures are
//! [`ProviderError`](backstop_core::ProviderError)s, classified in
//! `classify.rs`.

/// Why an [`AnthropicProvider`](crate::AnthropicProvider) could not be
/// built. No variant ever carries the key's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnthropicBuildError {
    /// The variable that should hold the API key is not set or is empty.
    #[error("the environment variable `{var}` is not set (it should hold the Anthropic API key)")]
    MissingKey {
        /// The variable's name.
        var: String,
    },
    /// The variable is set but its value cannot be sent in a header.
    #[error("the value of `{var}` is not a valid API key (not sendable in an HTTP header)")]
    InvalidKey {
        /// The variable's name.
        var: String,
    },
    /// `api_key_env` is the empty string.
    #[error("the variable name is empty; name the environment variable that holds the key")]
    EmptyKeyVar,
    /// `api_key_env` is not shaped like a variable name: most likely the key
    /// itself was pasted in. The value is not carried.
    #[error(
        "`api_key_env` is not an environment variable name ({}); it names the variable that holds the key, never the key itself (the value is not repeated here)",
        backstop_http::ENV_VAR_NAME_RULE
    )]
    KeyVarNotAName,
    /// `anthropic_version` is empty or not sendable in a header.
    #[error("`{0}` is not a valid header value")]
    InvalidVersion(String),
    /// `base_url` is not an absolute http(s) URL.
    #[error("`{url}` is not a valid http(s) URL: {reason}")]
    InvalidBaseUrl {
        /// The configured value without its userinfo and query (see
        /// [`backstop_http::redact_url`]), which may hold secrets.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS/HTTP stack could not be initialised.
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

impl AnthropicBuildError {
    /// The build error for a key that could not be read from `var`.
    pub(crate) fn key(problem: backstop_http::body::KeyProblem, var: &str) -> Self {
        use backstop_http::body::KeyProblem;
        match problem {
            KeyProblem::EmptyVarName => Self::EmptyKeyVar,
            KeyProblem::NotAVarName => Self::KeyVarNotAName,
            KeyProblem::Missing => Self::MissingKey {
                var: var.to_owned(),
            },
            KeyProblem::Invalid => Self::InvalidKey {
                var: var.to_owned(),
            },
        }
    }
}
