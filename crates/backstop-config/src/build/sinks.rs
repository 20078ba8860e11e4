//! Event sinks: metrics (always on) and alerts (`[alerts]`, on with its
//! defaults when the table is absent), and the prober that reports to both.

use std::sync::Arc;
use std::time::Duration;

use backstop_core::{EventSink, StrategyContext};
use backstop_http::webhook::Webhook;
use backstop_strategies::StrategyError;
use backstop_strategies::health::{ActiveProbe, ActiveProbeConfig};
use backstop_strategies::monitor::{AlertConfig, AlertDelivery, AlertSink, Metrics, MetricsConfig};

use super::Builder;
use crate::builtin::strategy_error;
use crate::decode::{Decoded, parse_config};
use crate::problem::KeyPath;
use crate::reload::Handover;
use crate::report::StrategyChoice;
use crate::resolved::ProbeSettings;
use crate::schema::StrategiesSection;

/// The sinks wired into the Router, and the prober.
pub(crate) struct Sinks {
    pub metrics: Arc<Metrics>,
    pub alerts: Arc<AlertSink>,
    /// The `[alerts]` table the alert sink was built from.
    pub alerts_table: serde_json::Value,
    pub prober: ActiveProbe,
    pub probe: ProbeSettings,
    pub choices: Vec<StrategyChoice>,
}

impl Sinks {
    pub fn all(&self) -> [Arc<dyn EventSink>; 2] {
        [
            Arc::clone(&self.metrics) as Arc<dyn EventSink>,
            Arc::clone(&self.alerts) as Arc<dyn EventSink>,
        ]
    }
}

impl Builder<'_> {
    /// The sinks and the prober. On a reload (`running`) the metrics go on
    /// counting: the running sink itself while the model table is
    /// unchanged (`same_models`), else one that shares the counters of the
    /// models and scenarios both configurations have. The alert sink is
    /// kept while the model table and `[alerts]` are unchanged.
    pub(super) fn sinks(
        &mut self,
        section: &Decoded<StrategiesSection>,
        ctx: &StrategyContext,
        running: Option<&Handover>,
        same_models: bool,
    ) -> Option<Sinks> {
        let empty = serde_json::Value::Object(serde_json::Map::new());
        let metrics = match running {
            Some(r) if same_models => Ok(Arc::clone(&r.metrics)),
            Some(r) => Metrics::continuing(&r.metrics, MetricsConfig::default(), ctx).map(Arc::new),
            None => Metrics::new(MetricsConfig::default(), ctx).map(Arc::new),
        };
        let metrics = match metrics {
            Ok(metrics) => Some(metrics),
            Err(e) => {
                self.factory_problem(&KeyPath::root(), "metrics sink", strategy_error(e));
                None
            }
        };

        let path = KeyPath::root().key("alerts");
        let alerts_table = match self.section("alerts") {
            None => Some(empty.clone()),
            // The whole table: `[alerts]` has no `type` key to strip.
            Some(value) => self.table(&path, value, "a table").map(|dict| {
                serde_json::to_value(figment::value::Value::from(dict.clone()))
                    .unwrap_or_else(|_| empty.clone())
            }),
        };
        let alerts = alerts_table.as_ref().and_then(|table| {
            if let Some((running_table, sink)) = running.filter(|_| same_models).map(|r| &r.alerts)
                && running_table == table
            {
                return Some(Arc::clone(sink));
            }
            let built = parse_config::<AlertConfig>(table).and_then(|config| {
                let url = config.webhook_url.clone();
                let timeout = Duration::from_millis(config.webhook_timeout_ms);
                // The rule checks every key (the URL's shape included) first.
                let sink = AlertSink::new(config, ctx).map_err(strategy_error)?;
                let Some(url) = url else {
                    return Ok(sink);
                };
                let webhook = Webhook::new(&url, timeout).map_err(|reason| {
                    strategy_error(StrategyError::invalid("webhook_url", reason))
                })?;
                Ok(sink.with_delivery(Arc::new(WebhookDelivery(webhook))))
            });
            match built {
                Ok(sink) => Some(Arc::new(sink)),
                Err(e) => {
                    self.factory_problem(&path, "", e);
                    None
                }
            }
        });

        let path = KeyPath::root().key("strategies").key("probe");
        let probe_table = match &section.value.probe {
            Some(value) => serde_json::to_value(value).unwrap_or_else(|_| empty.clone()),
            None => empty.clone(),
        };
        let probe = parse_config::<ActiveProbeConfig>(&probe_table).and_then(|config| {
            let settings = ProbeSettings {
                interval: Duration::from_millis(config.interval_ms),
                idle: Duration::from_millis(config.idle_ms),
                timeout: Duration::from_millis(config.timeout_ms),
            };
            ActiveProbe::new(config, ctx)
                .map(|prober| (prober, settings))
                .map_err(strategy_error)
        });
        let probe = match probe {
            Ok(probe) => Some(probe),
            Err(e) => {
                self.factory_problem(&path, "", e);
                None
            }
        };

        let (metrics, alerts, (prober, probe)) = (metrics?, alerts?, probe?);
        let prober = prober
            .event_sink(Arc::clone(&metrics) as Arc<dyn EventSink>)
            .event_sink(Arc::clone(&alerts) as Arc<dyn EventSink>);
        Some(Sinks {
            metrics,
            alerts,
            alerts_table: alerts_table.clone().unwrap_or_default(),
            prober,
            probe,
            choices: vec![
                StrategyChoice {
                    type_name: "metrics".to_owned(),
                    config: empty,
                    instance: 1,
                },
                StrategyChoice {
                    type_name: "alert".to_owned(),
                    config: alerts_table.unwrap_or_default(),
                    instance: 1,
                },
            ],
        })
    }
}

/// The alert rule's webhook: `backstop-http`'s sender behind the
/// strategies' delivery seam.
#[derive(Debug)]
struct WebhookDelivery(Webhook);

impl AlertDelivery for WebhookDelivery {
    fn deliver(&self, body: serde_json::Value) {
        self.0.send(body);
    }
}
