//! `[telemetry]`: off unless an endpoint is configured, in the file or in
//! the standard `OTEL_*` variables; every bad value named by its key (and
//! the variable it came from).

use std::time::Duration;

use backstop_config::OtlpProtocol;
use figment::Jail;

use crate::{load, problems};

const BASE: &str = r#"
[providers.rules]
type = "template"
"#;

#[test]
fn without_a_section_or_variables_telemetry_is_off_and_content_never_captured() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("c.toml", BASE)?;
        let telemetry = load("c.toml").expect("loads").telemetry;
        assert_eq!(telemetry.endpoint, None);
        assert!(!telemetry.capture_content);
        assert_eq!(telemetry.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(telemetry.service_name, "backstop");
        Ok(())
    });
}

#[test]
fn the_file_wins_and_the_standard_variables_fill_what_it_leaves_unset() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317/");
        jail.set_env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        jail.set_env("OTEL_SERVICE_NAME", "from-env");
        jail.create_file("c.toml", BASE)?;
        let telemetry = load("c.toml").expect("loads").telemetry;
        assert_eq!(telemetry.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(telemetry.protocol, OtlpProtocol::Grpc);
        assert_eq!(telemetry.service_name, "from-env");

        jail.create_file(
            "c.toml",
            &format!(
                "{BASE}\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nprotocol = \"http/protobuf\"\nservice_name = \"gw\"\ncapture_content = true\nexport_interval_ms = 500\n"
            ),
        )?;
        let telemetry = load("c.toml").expect("loads").telemetry;
        assert_eq!(telemetry.endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        assert_eq!(telemetry.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(telemetry.service_name, "gw");
        assert!(telemetry.capture_content);
        assert_eq!(telemetry.export_interval, Duration::from_millis(500));
        Ok(())
    });
}

#[test]
fn every_bad_telemetry_value_is_named_by_its_key_and_variable() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "c.toml",
            &format!(
                "{BASE}\n[telemetry]\notlp_endpoint = \"collector:4318\"\nprotocol = \"grcp\"\nexport_interval_ms = 0\nsample = 1\n"
            ),
        )?;
        assert_eq!(
            problems("c.toml"),
            vec![
                r#"c.toml: telemetry.sample: unknown key "sample"; expected one of "otlp_endpoint", "protocol", "service_name", "capture_content", "export_interval_ms", "export_timeout_ms""#.to_owned(),
                r#"c.toml: telemetry.otlp_endpoint: "collector:4318" is not a usable OTLP endpoint: scheme `collector` is not http or https; expected a URL such as "http://127.0.0.1:4318" (HTTP) or "http://127.0.0.1:4317" (gRPC)"#.to_owned(),
                r#"c.toml: telemetry.protocol: unknown OTLP protocol "grcp" (did you mean "grpc"?); expected one of "http/protobuf", "grpc""#.to_owned(),
                "c.toml: telemetry.export_interval_ms: must be greater than 0".to_owned(),
            ]
        );
        jail.set_env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
        jail.create_file("c.toml", BASE)?;
        assert_eq!(
            problems("c.toml"),
            vec![
                r#"c.toml: telemetry.protocol: unknown OTLP protocol "http/json" (from OTEL_EXPORTER_OTLP_PROTOCOL) (http/json is not supported: use http/protobuf); expected one of "http/protobuf", "grpc""#.to_owned(),
            ]
        );
        Ok(())
    });
}
