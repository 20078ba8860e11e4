//! OpenTelemetry export (`[telemetry]`, or the standard `OTEL_*`
//! variables): GenAI traces and metrics over OTLP, HTTP/protobuf or gRPC.
//! Off unless an endpoint is configured, and then nothing here runs: a
//! request without telemetry carries no trace and pays one `Option` check
//! per upstream call.
//!
//! - **Spans** ([`spans`]): one SERVER span per request, the child of the
//!   caller's W3C `traceparent` when it sent one; one CLIENT span per
//!   upstream call under it, named and attributed by the GenAI semantic
//!   conventions, whose own `traceparent` goes upstream with the call. The
//!   spans are fed by core's per-request trace seam
//!   ([`backstop_core::RequestTrace`]), which the Router's Recorder calls
//!   in one place; a stream's CLIENT span ends when the stream does.
//! - **Metrics** ([`metrics`]): `gen_ai.client.operation.duration`,
//!   `gen_ai.client.token.usage`, time to first chunk, requests, fallbacks
//!   and skips from the same seam; circuit states and budgets observed from
//!   the Router at each export. `/metrics` (Prometheus) is unchanged.
//!
//! The spans are made with the OpenTelemetry API directly rather than
//! bridged from `tracing` spans: each CLIENT span's context must exist
//! before the upstream call starts, to send its `traceparent`; a stream's
//! span must end when the stream ends, long after the task that opened it
//! moved on; and the log subscriber's filters stay out of the way.

pub mod metrics;
pub mod spans;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use axum::http::HeaderMap;
use backstop_config::{OtlpProtocol, Resolved, TelemetrySettings};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub use spans::RequestSpan;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An exporter could not be built.
    #[error("telemetry.otlp_endpoint: cannot export {signal} to {endpoint}: {source}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// Where to.
        endpoint: String,
        /// Why not.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// What the spans say of a model beyond its id: its provider's type (the
/// `gen_ai.provider.name`) and the host and port it is called at.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelFacts {
    pub(crate) provider: String,
    pub(crate) address: Option<String>,
    pub(crate) port: Option<u16>,
}

/// What the configuration now serving says: the Router whose circuits
/// and budgets the gauges read, its metrics sink, and its models' facts. A
/// reload replaces it ([`Telemetry::follow`]).
#[derive(Debug)]
pub(crate) struct Following {
    pub(crate) router: backstop_core::Router,
    pub(crate) metrics: Arc<backstop_config::monitor::Metrics>,
    pub(crate) models: HashMap<String, ModelFacts>,
}

impl Following {
    fn of(resolved: &Resolved) -> Self {
        Self {
            router: resolved.router.clone(),
            metrics: Arc::clone(&resolved.metrics),
            models: model_facts(resolved),
        }
    }
}

/// What every span and instrument of the process shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) tracer: SdkTracer,
    pub(crate) instruments: metrics::Instruments,
    pub(crate) following: Arc<RwLock<Following>>,
    pub(crate) capture_content: bool,
}

impl Shared {
    /// The facts of a model of the configuration now serving.
    pub(crate) fn model(&self, id: &str) -> ModelFacts {
        self.following
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .models
            .get(id)
            .cloned()
            .unwrap_or_default()
    }
}

/// The running export: the providers (batching spans, reading metrics
/// periodically on their own threads) and what the spans share.
pub struct Telemetry {
    shared: Arc<Shared>,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts exporting as `[telemetry]` says; `Ok(None)` when it is off.
    /// Call it inside the tokio runtime (the gRPC exporter needs one).
    pub fn start(resolved: &Resolved) -> Result<Option<Arc<Self>>, TelemetryError> {
        let settings = &resolved.telemetry;
        let Some(endpoint) = &settings.endpoint else {
            return Ok(None);
        };
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        let spans = span_exporter(settings, endpoint)?;
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(spans)
            .build();
        let reader = PeriodicReader::builder(metric_exporter(settings, endpoint)?)
            .with_interval(settings.export_interval)
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        let scope = opentelemetry::InstrumentationScope::builder("backstop")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = tracer_provider.tracer_with_scope(scope.clone());
        let meter = meter_provider.meter_with_scope(scope);
        let following = Arc::new(RwLock::new(Following::of(resolved)));
        let instruments = metrics::Instruments::new(&meter, &following);
        tracing::info!(
            endpoint = %endpoint,
            protocol = ?settings.protocol,
            service = %settings.service_name,
            capture_content = settings.capture_content,
            "exporting OpenTelemetry traces and metrics"
        );
        Ok(Some(Arc::new(Self {
            shared: Arc::new(Shared {
                tracer,
                instruments,
                following,
                capture_content: settings.capture_content,
            }),
            tracer_provider,
            meter_provider,
        })))
    }

    /// The SERVER span of a request that came in by `door` with
    /// `headers` (whose `traceparent`, when valid, is its parent).
    pub fn request(&self, headers: &HeaderMap, door: &'static str) -> Arc<RequestSpan> {
        RequestSpan::start(self.shared.clone(), headers, door)
    }

    /// Follows a reloaded configuration: its Router's circuits and budgets,
    /// its metrics, its models. (`[telemetry]` itself is read at start.)
    pub fn follow(&self, resolved: &Resolved) {
        *self
            .shared
            .following
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Following::of(resolved);
    }

    /// Sends what is pending (spans, metrics) now.
    pub fn flush(&self) {
        if let Err(error) = self.tracer_provider.force_flush() {
            tracing::warn!(%error, "could not flush spans");
        }
        if let Err(error) = self.meter_provider.force_flush() {
            tracing::warn!(%error, "could not flush metrics");
        }
    }

    /// Flushes and stops the exporters (at shutdown).
    pub fn shutdown(&self) {
        if let Err(error) = self.tracer_provider.shutdown() {
            tracing::warn!(%error, "could not shut the span exporter down");
        }
        if let Err(error) = self.meter_provider.shutdown() {
            tracing::warn!(%error, "could not shut the metric exporter down");
        }
    }
}

/// Builds one signal's OTLP exporter for `settings.protocol`: the span and
/// metric exporters' builders are different types with the same methods.
macro_rules! otlp_exporter {
    ($builder:expr, $settings:expr, $endpoint:expr, $signal:literal, $http_path:literal) => {{
        let (settings, endpoint) = ($settings, $endpoint);
        let (url, built) = match settings.protocol {
            OtlpProtocol::HttpProtobuf => {
                let url = format!("{endpoint}{}", $http_path);
                let built = $builder
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(url.clone())
                    .with_timeout(settings.export_timeout)
                    .build();
                (url, built)
            }
            OtlpProtocol::Grpc => {
                let built = $builder
                    .with_tonic()
                    .with_endpoint(endpoint.to_owned())
                    .with_timeout(settings.export_timeout)
                    .build();
                (endpoint.to_owned(), built)
            }
        };
        built.map_err(|source| TelemetryError::Exporter {
            signal: $signal,
            endpoint: url,
            source,
        })
    }};
}

fn span_exporter(
    settings: &TelemetrySettings,
    endpoint: &str,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    otlp_exporter!(
        opentelemetry_otlp::SpanExporter::builder(),
        settings,
        endpoint,
        "traces",
        "/v1/traces"
    )
}

fn metric_exporter(
    settings: &TelemetrySettings,
    endpoint: &str,
) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
    otlp_exporter!(
        opentelemetry_otlp::MetricExporter::builder(),
        settings,
        endpoint,
        "metrics",
        "/v1/metrics"
    )
}

/// Each model's provider type and address, from the resolved config.
fn model_facts(resolved: &Resolved) -> HashMap<String, ModelFacts> {
    let report = &resolved.report;
    report
        .models
        .iter()
        .map(|m| {
            let provider = report.providers.iter().find(|p| p.id == m.spec.provider);
            let uri = provider
                .and_then(|p| p.config.get("base_url"))
                .and_then(serde_json::Value::as_str)
                .and_then(|u| u.parse::<axum::http::Uri>().ok());
            let facts = ModelFacts {
                provider: provider.map_or_else(|| m.spec.provider.clone(), |p| p.type_name.clone()),
                address: uri.as_ref().and_then(|u| u.host()).map(str::to_owned),
                port: uri.as_ref().and_then(|u| {
                    u.port_u16().or(match u.scheme_str() {
                        Some("https") => Some(443),
                        Some("http") => Some(80),
                        _ => None,
                    })
                }),
            };
            (m.spec.id.clone(), facts)
        })
        .collect()
}
