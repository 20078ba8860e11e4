//! The strategies' metrics and alert sinks as contributors to `/metrics`
//! and `/v1/backstop/status`.

use std::sync::Arc;

use crate::app::Observability;
use crate::introspect::{AlertWindow, StatusDocument};
use backstop_strategies::monitor::{AlertSink, Metrics};

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
