//! Event sinks: metrics (always on) and alerts (`[alerts]`).

use std::sync::Arc;

use backstop_core::{EventSink, StrategyContext};

use super::Builder;
use crate::problem::KeyPath;
use crate::registry::Registry;
use crate::report::StrategyChoice;

/// The sinks wired into the Router.
pub(crate) struct Sinks {
    pub metrics: Option<Arc<dyn EventSink>>,
    pub alerts: Option<Arc<dyn EventSink>>,
    pub choices: Vec<StrategyChoice>,
}

impl Sinks {
    pub fn all(&self) -> impl Iterator<Item = Arc<dyn EventSink>> + '_ {
        self.metrics.iter().chain(self.alerts.iter()).cloned()
    }
}

/// The sink type built from `[alerts]`.
pub(crate) const ALERT: &str = "alert";
/// The sink type that is always on.
pub(crate) const METRICS: &str = "metrics";

impl Builder<'_> {
    pub(super) fn sinks(&mut self, registry: &Registry, ctx: &StrategyContext) -> Option<Sinks> {
        let mut sinks = Sinks {
            metrics: None,
            alerts: None,
            choices: Vec::new(),
        };
        let mut ok = true;
        let empty = serde_json::Value::Object(serde_json::Map::new());

        if let Some(factory) = registry.sink_factory(METRICS) {
            match factory(&empty, ctx) {
                Ok(sink) => {
                    sinks.metrics = Some(sink);
                    sinks.choices.push(StrategyChoice {
                        type_name: METRICS.to_owned(),
                        config: empty.clone(),
                        instance: 1,
                    });
                }
                Err(e) => {
                    self.factory_problem(&KeyPath::root(), METRICS, e);
                    ok = false;
                }
            }
        }

        let path = KeyPath::root().key("alerts");
        let config = match self.section("alerts") {
            None => Some(empty),
            // The whole table: `[alerts]` has no `type` key to strip.
            Some(value) => self.table(&path, value, "a table").map(|dict| {
                serde_json::to_value(figment::value::Value::from(dict.clone()))
                    .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()))
            }),
        };
        let config = config?;
        match registry.sink_factory(ALERT) {
            Some(factory) => match factory(&config, ctx) {
                Ok(sink) => {
                    sinks.alerts = Some(sink);
                    sinks.choices.push(StrategyChoice {
                        type_name: ALERT.to_owned(),
                        config,
                        instance: 1,
                    });
                }
                Err(e) => {
                    self.factory_problem(&path, ALERT, e);
                    ok = false;
                }
            },
            None if self.section("alerts").is_some() => {
                self.problem(&path, "this build has no alert sink: remove [alerts]");
                ok = false;
            }
            None => {}
        }
        ok.then_some(sinks)
    }
}
