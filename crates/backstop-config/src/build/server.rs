//! `[server]`.

use std::net::SocketAddr;
use std::time::Duration;

use backstop_http::{ENV_VAR_NAME_RULE, is_env_var_name};

use super::Builder;
use crate::problem::KeyPath;
use crate::resolved::{ApiKeys, ServerSettings};
use crate::schema::{DEFAULT_LISTEN, ServerSection};

impl Builder<'_> {
    pub(super) fn server(&mut self) -> ServerSettings {
        let path = KeyPath::root().key("server");
        let section = match self.section("server") {
            Some(value) => self
                .decode::<ServerSection>(&path, value)
                .map(|d| d.value)
                .unwrap_or_default(),
            None => ServerSection::default(),
        };

        let listen = match section.listen.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                self.problem(
                    &path.key("listen"),
                    format!(
                        "invalid address {:?}: expected IP:PORT, such as {DEFAULT_LISTEN:?} or \"0.0.0.0:8080\"",
                        section.listen
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 8080))
            }
        };

        let body_limit_bytes = match usize::try_from(section.body_limit_bytes) {
            Ok(0) => {
                self.problem(&path.key("body_limit_bytes"), "must be greater than 0");
                0
            }
            Err(_) => {
                self.problem(
                    &path.key("body_limit_bytes"),
                    format!("must be at most {} on this machine", usize::MAX),
                );
                0
            }
            Ok(n) => n,
        };
        if section.header_read_timeout_ms == 0 {
            self.problem(
                &path.key("header_read_timeout_ms"),
                "must be greater than 0: a client that never finishes its headers would hold a connection forever",
            );
        }

        if section.body_read_timeout_ms == 0 {
            self.problem(
                &path.key("body_read_timeout_ms"),
                "must be greater than 0: a client that never finishes its body would hold a request forever",
            );
        }
        if section.shutdown_grace_ms == 0 {
            self.problem(
                &path.key("shutdown_grace_ms"),
                "must be greater than 0: with no grace, a shutdown cuts every answer in flight",
            );
        }
        let max_connections = match usize::try_from(section.max_connections) {
            Ok(0) => {
                self.problem(&path.key("max_connections"), "must be greater than 0");
                1
            }
            Ok(n) => n,
            Err(_) => {
                self.problem(
                    &path.key("max_connections"),
                    format!("must be at most {} on this machine", usize::MAX),
                );
                1
            }
        };

        let var = section.api_keys_env.trim().to_owned();
        let api_keys = if var.is_empty() {
            self.problem(
                &path.key("api_keys_env"),
                "is empty: name the environment variable that holds the comma-separated API keys",
            );
            None
        } else if !is_env_var_name(&var) {
            self.problem(
                &path.key("api_keys_env"),
                format!(
                    "is not an environment variable name ({ENV_VAR_NAME_RULE}); it names the variable that holds the keys, never the keys themselves (the value is not repeated here)"
                ),
            );
            None
        } else {
            match std::env::var(&var) {
                Ok(list) => {
                    let keys = ApiKeys::parse(&list);
                    if keys.is_none() {
                        self.problem(
                            &path.key("api_keys_env"),
                            format!(
                                "environment variable {var:?} is set but holds no key: set comma-separated keys, or unset it to run without authentication"
                            ),
                        );
                    }
                    keys
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    self.problem(
                        &path.key("api_keys_env"),
                        format!("environment variable {var:?} is not valid Unicode"),
                    );
                    None
                }
                Err(std::env::VarError::NotPresent) => {
                    self.warn(
                        &path.key("api_keys_env"),
                        format!(
                            "environment variable {var:?} is not set: the gateway will accept requests WITHOUT authentication"
                        ),
                    );
                    None
                }
            }
        };

        ServerSettings {
            listen,
            api_keys_env: var,
            api_keys,
            body_limit_bytes,
            header_read_timeout: Duration::from_millis(section.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(section.body_read_timeout_ms),
            shutdown_grace: Duration::from_millis(section.shutdown_grace_ms),
            max_connections,
            log_summary: (section.log_summary_ms > 0)
                .then(|| Duration::from_millis(section.log_summary_ms)),
        }
    }
}
