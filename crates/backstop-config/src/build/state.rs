//! `[state]`: where a fleet's shared state lives.

use std::sync::Arc;
use std::time::Duration;

use backstop_core::OnStoreFailure;
use backstop_fleet::{RedisSettings, RedisState};
use backstop_http::{ENV_VAR_NAME_RULE, is_env_var_name};

use super::Builder;
use crate::problem::{KeyPath, did_you_mean, list};
use crate::resolved::FleetBackend;
use crate::schema::{ON_STORE_FAILURE, STATE_BACKENDS, StateSection};

impl Builder<'_> {
    /// `[state]`, checked; `models` are the ids a Redis backend reconciles.
    /// `None` after a problem.
    pub(super) fn state(&mut self, models: &[String]) -> Option<FleetBackend> {
        let path = KeyPath::root().key("state");
        let section = match self.section("state") {
            Some(value) => self.decode::<StateSection>(&path, value)?.value,
            None => StateSection::default(),
        };
        if section.timeout_ms == 0 {
            self.problem(
                &path.key("timeout_ms"),
                "must be greater than 0: it bounds every call to the store",
            );
        }
        let prefix = section.key_prefix.as_str();
        if prefix.is_empty()
            || prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}'))
        {
            self.problem(
                &path.key("key_prefix"),
                format!(
                    "{prefix:?} is not a usable key prefix: it must be non-empty, without spaces and without braces (braces are the model's hash tag)"
                ),
            );
        }
        let on_store_failure = match section.on_store_failure.as_str() {
            "local" => OnStoreFailure::Local,
            "closed" => OnStoreFailure::Closed,
            other => {
                self.problem(
                    &path.key("on_store_failure"),
                    format!(
                        "unknown value {other:?}{}; expected one of {}",
                        did_you_mean(other, ON_STORE_FAILURE),
                        list(ON_STORE_FAILURE)
                    ),
                );
                OnStoreFailure::Local
            }
        };
        match section.backend.as_str() {
            "local" => Some(FleetBackend::Local),
            "redis" => self.redis(&path, &section, models, on_store_failure),
            other => {
                self.problem(
                    &path.key("backend"),
                    format!(
                        "unknown state backend {other:?}{}; expected one of {}",
                        did_you_mean(other, STATE_BACKENDS),
                        list(STATE_BACKENDS)
                    ),
                );
                None
            }
        }
    }

    fn redis(
        &mut self,
        path: &KeyPath,
        section: &StateSection,
        models: &[String],
        on_store_failure: OnStoreFailure,
    ) -> Option<FleetBackend> {
        let key = path.key("url_env");
        let var = section.url_env.trim();
        if !is_env_var_name(var) {
            self.problem(
                &key,
                format!(
                    "is not an environment variable name ({ENV_VAR_NAME_RULE}); it names the variable that holds the store's URL, never the URL itself (the value is not repeated here)"
                ),
            );
            return None;
        }
        let url = match std::env::var(var) {
            Ok(url) => url,
            Err(std::env::VarError::NotPresent) => {
                self.problem(
                    &key,
                    format!(
                        "environment variable {var:?} is not set: backend = \"redis\" needs the store's URL there (redis://host:6379/0)"
                    ),
                );
                return None;
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                self.problem(
                    &key,
                    format!("environment variable {var:?} is not valid Unicode"),
                );
                return None;
            }
        };
        let settings = match RedisSettings::new(
            url,
            var,
            section.key_prefix.clone(),
            Duration::from_millis(section.timeout_ms.max(1)),
        ) {
            Ok(settings) => settings.with_on_store_failure(on_store_failure),
            Err(e) => {
                self.problem(&key, e.to_string());
                return None;
            }
        };
        match RedisState::new(settings, models.to_vec()) {
            Ok(state) => Some(FleetBackend::Redis(state)),
            Err(e) => {
                self.problem(&key, e.to_string());
                None
            }
        }
    }
}

impl FleetBackend {
    /// The state strategies talk to.
    pub fn state(&self) -> Arc<dyn backstop_core::FleetState> {
        match self {
            FleetBackend::Local => Arc::new(backstop_core::LocalState),
            FleetBackend::Redis(state) => Arc::clone(state) as Arc<dyn backstop_core::FleetState>,
        }
    }
}
