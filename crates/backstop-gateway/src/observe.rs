//! The strategies' metrics and alert sinks, and the fleet's state store, as
//! contributors to `/metrics` and `/v1/backstop/status`.

use std::sync::Arc;

use backstop_config::FleetBackend;
use backstop_config::monitor::{AlertSink, Metrics};

use crate::app::Observability;
use crate::introspect::{AlertWindow, StateStatus, StatusDocument};

/// Request, attempt, fallback and latency counters, and each model's last
/// failures.
pub struct MetricsObserver(pub Arc<Metrics>);

impl Observability for MetricsObserver {
    fn render_prometheus(&self, out: &mut String) {
        self.0.render_prometheus(out);
    }

    /// Adds `recent_failures` (newest first) to each model of the document.
    fn status(&self, doc: &mut StatusDocument) {
        for model in &mut doc.models {
            model.recent_failures = Some(self.0.recent_failures(&model.id));
        }
    }
}

/// The alert rule's window: requests, fallbacks, the exact fallback rate,
/// alerts fired, and the last fallback events.
pub struct AlertObserver(pub Arc<AlertSink>);

impl Observability for AlertObserver {
    fn render_prometheus(&self, out: &mut String) {
        let status = self.0.status();
        out.push_str("# HELP backstop_fallback_rate Fallbacks / requests in the alert window.\n# TYPE backstop_fallback_rate gauge\n");
        out.push_str(&format!(
            "backstop_fallback_rate {}\n",
            status.fallback_rate
        ));
        out.push_str("# HELP backstop_alerts_fired_total Fallback alerts fired.\n# TYPE backstop_alerts_fired_total counter\n");
        out.push_str(&format!(
            "backstop_alerts_fired_total {}\n",
            status.alerts_fired
        ));
    }

    fn status(&self, doc: &mut StatusDocument) {
        let status = self.0.status();
        doc.alerts = Some(AlertWindow {
            alerts_fired: status.alerts_fired,
            fallback_rate: status.fallback_rate,
            fallbacks: status.fallbacks,
            last_alert_unix_ms: status.last_alert_unix_ms,
            max_fallbacks: status.max_fallbacks,
            requests: status.requests,
            window_ms: status.window_ms,
        });
        doc.recent_fallbacks = Some(status.recent);
    }
}

/// Whether the fleet's state store answers: `backstop_state_store_up`
/// (1 for `local`, which has nothing to lose) and `state` in the status.
pub struct StateObserver(pub FleetBackend);

impl Observability for StateObserver {
    fn render_prometheus(&self, out: &mut String) {
        out.push_str("# HELP backstop_state_store_up Whether the fleet's shared state store answers (1) or this replica runs on its own state (0).\n# TYPE backstop_state_store_up gauge\n");
        out.push_str(&format!(
            "backstop_state_store_up{{backend=\"{}\"}} {}\n",
            self.0.name(),
            u8::from(self.0.store_up())
        ));
    }

    fn status(&self, doc: &mut StatusDocument) {
        doc.state = Some(StateStatus {
            backend: self.0.name(),
            store_up: self.0.store_up(),
        });
    }
}
