//! The strategies' metrics and alert sinks as contributors to `/metrics`
//! and `/v1/backstop/status`.

use std::sync::Arc;

use backstop_strategies::monitor::{AlertSink, Metrics};
use serde_json::{Map, Value, json};

use crate::app::Observability;

/// Request, attempt, fallback and latency counters, and each model's last
/// failures.
pub struct MetricsObserver(pub Arc<Metrics>);

impl Observability for MetricsObserver {
    fn render_prometheus(&self, out: &mut String) {
        self.0.render_prometheus(out);
    }

    /// Adds `recent_failures` (newest first) to each model of the document.
    fn status(&self, doc: &mut Map<String, Value>) {
        let Some(Value::Array(models)) = doc.get_mut("models") else {
            return;
        };
        for model in models {
            let Some(id) = model.get("id").and_then(Value::as_str) else {
                continue;
            };
            let recent = json!(self.0.recent_failures(id));
            if let Some(model) = model.as_object_mut() {
                model.insert("recent_failures".into(), recent);
            }
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

    fn status(&self, doc: &mut Map<String, Value>) {
        let status = self.0.status();
        doc.insert(
            "alerts".into(),
            json!({
                "window_ms": status.window_ms,
                "requests": status.requests,
                "fallbacks": status.fallbacks,
                "fallback_rate": status.fallback_rate,
                "max_fallbacks": status.max_fallbacks,
                "alerts_fired": status.alerts_fired,
                "last_alert_unix_ms": status.last_alert_unix_ms,
            }),
        );
        doc.insert("recent_fallbacks".into(), json!(status.recent));
    }
}
