//! What a loaded configuration hands the gateway: a ready Router, the
//! server settings, the event sinks, the probe settings and the report
//! `backstop check` prints.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backstop_core::{HealthPolicy, Router};
use backstop_fleet::{FleetError, FleetHandle, RedisState};
use backstop_strategies::health::{ActiveProbe, ProberHandle};
use backstop_strategies::monitor::{AlertSink, Metrics};

use crate::problem::Problem;
use crate::report::Report;

/// `[server]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The environment variable the bearer keys were read from.
    pub api_keys_env: String,
    /// The bearer keys callers must present; `None` when the variable is
    /// unset, which means no authentication (the load warns loudly).
    pub api_keys: Option<ApiKeys>,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Longest wait for a request's headers.
    pub header_read_timeout: Duration,
    /// Longest wait for a request's body once its headers arrived.
    pub body_read_timeout: Duration,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Time between two log summaries of the traffic; `None`: off.
    pub log_summary: Option<Duration>,
}

/// `[telemetry]`, resolved (the file's keys, else the `OTEL_*` variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// The OTLP endpoint (no trailing slash); `None`: telemetry is off.
    pub endpoint: Option<String>,
    /// How to speak OTLP.
    pub protocol: OtlpProtocol,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Whether prompts and completions go on the spans (off by default).
    pub capture_content: bool,
    /// Time between two metric exports.
    pub export_interval: Duration,
    /// Longest wait for one export.
    pub export_timeout: Duration,
}

/// OTLP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (`/v1/traces`, `/v1/metrics` under the endpoint).
    HttpProtobuf,
    /// gRPC.
    Grpc,
}

/// Bearer keys. Never printed: `Debug` shows only how many there are.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeys(Vec<String>);

impl ApiKeys {
    /// Parses a comma-separated list; blanks around keys are ignored.
    /// `None` when it holds no key.
    pub fn parse(list: &str) -> Option<Self> {
        let keys: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        (!keys.is_empty()).then_some(Self(keys))
    }

    /// The keys.
    pub fn keys(&self) -> &[String] {
        &self.0
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an empty list is not a set of keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} redacted)", self.0.len())
    }
}

/// `[state]`, resolved: where the fleet's shared state lives.
#[derive(Debug, Clone)]
pub enum FleetBackend {
    /// Nothing shared: this gateway is a fleet of one.
    Local,
    /// Shared through Redis; start it with [`FleetBackend::start`].
    Redis(Arc<RedisState>),
}

impl FleetBackend {
    /// The config name of the backend.
    pub fn name(&self) -> &'static str {
        match self {
            FleetBackend::Local => "local",
            FleetBackend::Redis(_) => "redis",
        }
    }

    /// Connects to the store and starts sharing (nothing to do for
    /// `local`). Keep the handle for the life of the server. Refused
    /// credentials are an error; a store that does not answer is not (the
    /// replica starts on its own state and keeps trying).
    pub async fn start(&self) -> Result<Option<FleetHandle>, FleetError> {
        match self {
            FleetBackend::Local => Ok(None),
            FleetBackend::Redis(state) => state.start().await.map(Some),
        }
    }

    /// Pings the store once (`backstop check --connect`): how long it took
    /// to answer, `None` for `local`.
    pub async fn ping(&self) -> Result<Option<Duration>, FleetError> {
        match self {
            FleetBackend::Local => Ok(None),
            FleetBackend::Redis(state) => backstop_fleet::ping(state.settings()).await.map(Some),
        }
    }

    /// Whether the store answers (`true` for `local`): the
    /// `backstop_state_store_up` gauge.
    pub fn store_up(&self) -> bool {
        match self {
            FleetBackend::Local => true,
            FleetBackend::Redis(state) => backstop_core::FleetState::store_up(state.as_ref()),
        }
    }
}

/// `[strategies] probe`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Period of a probe round.
    pub interval: Duration,
    /// A model without traffic for this long is probed.
    pub idle: Duration,
    /// A probe slower than this fails as a timeout.
    pub timeout: Duration,
}

/// A configuration turned into everything a running gateway needs.
pub struct Resolved {
    /// The Router, with every scenario and single-model route.
    pub router: Router,
    /// `[server]`.
    pub server: ServerSettings,
    /// The metrics sink (always on), already wired into the Router and the
    /// prober; `render_prometheus` serves `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The alert sink built from `[alerts]` (its defaults when absent),
    /// already wired into the Router and the prober.
    pub alerts: Arc<AlertSink>,
    /// When and how often the prober probes.
    pub probe: ProbeSettings,
    /// `[state]`: the fleet's shared state, to start with the server.
    pub fleet: FleetBackend,
    /// `[telemetry]`: OpenTelemetry export, off unless configured.
    pub telemetry: TelemetrySettings,
    /// Every distinct health policy (one per distinct `health` table).
    pub health_policies: Vec<Arc<dyn HealthPolicy>>,
    /// The background prober, ready to run: see [`Resolved::spawn_prober`].
    pub prober: ActiveProbe,
    /// What was resolved, as `backstop check` prints it.
    pub report: Report,
    /// Things that work but deserve attention (no API keys, unused
    /// providers...), also listed in the report.
    pub warnings: Vec<Problem>,
    /// The state this configuration hands to its successor on a reload,
    /// and what it took over from its predecessor; keep it while it
    /// serves (see [`ConfigFile::reload`](crate::ConfigFile::reload)).
    pub handover: crate::reload::Handover,
}

impl Resolved {
    /// Starts the background prober on the current tokio runtime. It runs
    /// until the handle is dropped; keep it for the life of the server.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn_prober(&self) -> ProberHandle {
        self.prober.clone().spawn(self.router.clone())
    }
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("router", &self.router)
            .field("server", &self.server)
            .field("probe", &self.probe)
            .field("health_policies", &self.health_policies.len())
            .field("warnings", &self.warnings.len())
            .finish_non_exhaustive()
    }
}
