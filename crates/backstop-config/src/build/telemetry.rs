//! `[telemetry]`: where OpenTelemetry traces and metrics go. Each unset key
//! falls back to its standard `OTEL_*` environment variable; a bad value
//! names the key, and the variable when it came from one.

use std::time::Duration;

use super::Builder;
use crate::problem::{KeyPath, did_you_mean, list};
use crate::resolved::{OtlpProtocol, TelemetrySettings};
use crate::schema::{DEFAULT_SERVICE_NAME, OTLP_PROTOCOLS, TelemetrySection};

/// The standard variables, read when the file leaves a key unset.
pub(crate) const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub(crate) const PROTOCOL_ENV: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub(crate) const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";

/// A key's value and where it came from (for messages).
fn or_env(value: Option<String>, var: &str) -> Option<(String, Option<&str>)> {
    match value {
        Some(v) => Some((v, None)),
        None => std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (v.trim().to_owned(), Some(var))),
    }
}

fn from(var: Option<&str>) -> String {
    var.map_or_else(String::new, |v| format!(" (from {v})"))
}

impl Builder<'_> {
    /// `[telemetry]`, checked; off when no endpoint is configured.
    pub(super) fn telemetry(&mut self) -> TelemetrySettings {
        let path = KeyPath::root().key("telemetry");
        let section = match self.section("telemetry") {
            Some(value) => self
                .decode::<TelemetrySection>(&path, value)
                .map(|d| d.value)
                .unwrap_or_default(),
            None => TelemetrySection::default(),
        };
        let endpoint = or_env(section.otlp_endpoint, ENDPOINT_ENV).and_then(|(url, var)| {
            match backstop_http::body::parse_base_url(&url) {
                Ok(_) => Some(url.trim_end_matches('/').to_owned()),
                Err(reason) => {
                    self.problem(
                        &path.key("otlp_endpoint"),
                        format!(
                            "{url:?}{} is not a usable OTLP endpoint: {reason}; expected a URL such as \"http://127.0.0.1:4318\" (HTTP) or \"http://127.0.0.1:4317\" (gRPC)",
                            from(var)
                        ),
                    );
                    None
                }
            }
        });
        let protocol = match or_env(section.protocol, PROTOCOL_ENV) {
            None => OtlpProtocol::HttpProtobuf,
            Some((p, _)) if p == "http/protobuf" => OtlpProtocol::HttpProtobuf,
            Some((p, _)) if p == "grpc" => OtlpProtocol::Grpc,
            Some((other, var)) => {
                let hint = if other == "http/json" {
                    " (http/json is not supported: use http/protobuf)".to_owned()
                } else {
                    did_you_mean(&other, OTLP_PROTOCOLS)
                };
                self.problem(
                    &path.key("protocol"),
                    format!(
                        "unknown OTLP protocol {other:?}{}{hint}; expected one of {}",
                        from(var),
                        list(OTLP_PROTOCOLS)
                    ),
                );
                OtlpProtocol::HttpProtobuf
            }
        };
        let service_name = or_env(section.service_name, SERVICE_NAME_ENV)
            .map_or_else(|| DEFAULT_SERVICE_NAME.to_owned(), |(name, _)| name);
        if service_name.trim().is_empty() {
            self.problem(&path.key("service_name"), "must not be empty");
        }
        for (key, ms) in [
            ("export_interval_ms", section.export_interval_ms),
            ("export_timeout_ms", section.export_timeout_ms),
        ] {
            if ms == 0 {
                self.problem(&path.key(key), "must be greater than 0");
            }
        }
        if section.capture_content && endpoint.is_none() {
            self.warn(
                &path.key("capture_content"),
                format!("is set, but no OTLP endpoint is configured (`otlp_endpoint` or {ENDPOINT_ENV}): telemetry is off"),
            );
        }
        TelemetrySettings {
            endpoint,
            protocol,
            service_name,
            capture_content: section.capture_content,
            export_interval: Duration::from_millis(section.export_interval_ms),
            export_timeout: Duration::from_millis(section.export_timeout_ms),
        }
    }
}
