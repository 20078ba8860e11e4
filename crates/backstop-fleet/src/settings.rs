//! How to reach the store: the resolved `[state]` section of a
//! `backend = "redis"` config.

use std::fmt;
use std::time::Duration;

use backstop_core::OnStoreFailure;

/// Where the store is and how long a call to it may take.
#[derive(Clone)]
pub struct RedisSettings {
    url: String,
    /// The environment variable the URL was read from, named in errors.
    pub url_env: String,
    /// Prefix of every key and channel, so several fleets can share one Redis.
    pub key_prefix: String,
    /// A store call slower than this counts as a store failure.
    pub timeout: Duration,
    /// What shared budgets do while the store fails.
    pub on_store_failure: OnStoreFailure,
}

/// A `[state]` setting the store cannot work with. The messages never hold
/// the URL (it may carry a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The URL does not parse.
    #[error(
        "the value of ${env} is not a Redis URL (expected redis://[user:password@]host[:port][/db])"
    )]
    BadUrl {
        /// The variable holding it.
        env: String,
    },
    /// `rediss://`: TLS is not built into this gateway.
    #[error(
        "the value of ${env} is a rediss:// (TLS) URL, which this build does not support; use redis:// on a trusted network or a TLS-terminating proxy"
    )]
    TlsUnsupported {
        /// The variable holding it.
        env: String,
    },
}

impl RedisSettings {
    /// Settings for `url`, read from `url_env`; the URL is checked here.
    pub fn new(
        url: String,
        url_env: impl Into<String>,
        key_prefix: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, SettingsError> {
        let url_env = url_env.into();
        let lower = url.trim_start().to_ascii_lowercase();
        if lower.starts_with("rediss://") {
            return Err(SettingsError::TlsUnsupported { env: url_env });
        }
        if !(lower.starts_with("redis://")
            || lower.starts_with("redis+unix://")
            || lower.starts_with("unix://"))
            || redis::Client::open(url.as_str()).is_err()
        {
            return Err(SettingsError::BadUrl { env: url_env });
        }
        Ok(Self {
            url,
            url_env,
            key_prefix: key_prefix.into(),
            timeout,
            on_store_failure: OnStoreFailure::Local,
        })
    }

    /// The same settings, with budgets doing `on_store_failure` while the
    /// store fails.
    #[must_use]
    pub fn with_on_store_failure(mut self, on_store_failure: OnStoreFailure) -> Self {
        self.on_store_failure = on_store_failure;
        self
    }

    pub(crate) fn client(&self) -> Result<redis::Client, SettingsError> {
        redis::Client::open(self.url.as_str()).map_err(|_| SettingsError::BadUrl {
            env: self.url_env.clone(),
        })
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &format_args!("${} (redacted)", self.url_env))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("on_store_failure", &self.on_store_failure)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(20);

    #[test]
    fn a_bad_url_names_the_variable_and_never_the_secret() {
        let err = RedisSettings::new("http://u:hunter2@h".into(), "REDIS_URL", "b", MS)
            .expect_err("not redis");
        let text = err.to_string();
        assert!(text.contains("$REDIS_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let err = RedisSettings::new("rediss://u:hunter2@h".into(), "REDIS_URL", "b", MS)
            .expect_err("tls");
        assert!(matches!(err, SettingsError::TlsUnsupported { .. }));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn debug_shows_the_variable_not_the_url() {
        let s = RedisSettings::new("redis://:hunter2@127.0.0.1:1/0".into(), "R", "b", MS)
            .expect("valid");
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("$R (redacted)"), "{text}");
    }
}
