//! Every built-in strategy by its config `type` name, per seam.
//!
//! The config crate composes strategies by name: for a table such as
//! `health = { type = "circuit_breaker", failure_ratio = 0.5 }` it looks up
//! the factory of `circuit_breaker` in [`HEALTH`] and calls it with the
//! table minus its `type` key (as a `serde_json::Value`; `null` or `{}` for
//! a table with only `type`) and the Router's [`StrategyContext`].
//! Factories deserialize the table with unknown keys denied, check every
//! value, and return a [`StrategyError`] whose message names the key, for
//! the config crate to prefix with the table's path.
//!
//! ```
//! use backstop_core::{ManualClock, ModelSpec, StrategyContext};
//! use backstop_strategies::catalog;
//!
//! let ctx = StrategyContext::new(vec![ModelSpec::new("gpt-4o", "openai")], ManualClock::shared());
//! let table = serde_json::json!({ "failure_ratio": 0.5, "min_calls": 5 });
//! let health = catalog::build_health("circuit_breaker", &table, &ctx).unwrap();
//! assert_eq!(health.name(), "circuit_breaker");
//!
//! let typo = serde_json::json!({ "failur_ratio": 0.5 });
//! let err = catalog::build_health("circuit_breaker", &typo, &ctx).unwrap_err();
//! assert!(err.to_string().starts_with("unknown field `failur_ratio`, expected one of"));
//! ```
//!
//! The prober (`active_probe`) is not a strategy of a seam: build it with
//! [`ActiveProbe::from_value`](crate::health::ActiveProbe::from_value) from
//! the config's `probe` table.

use std::sync::Arc;

use backstop_core::{
    BudgetPolicy, EventSink, HealthPolicy, ResultHandler, Selector, StrategyContext,
};
use serde_json::Value;

use crate::budget::{PerRequest, Rolling, Unlimited};
use crate::error::StrategyError;
use crate::health::CircuitBreaker;
use crate::monitor::{AlertSink, Metrics};
use crate::result::Annotate;
use crate::selector::{CostAware, LatencyAware, Priority, Weighted};

/// Builds a selector from its table.
pub type SelectorFactory = fn(&Value, &StrategyContext) -> Result<Arc<dyn Selector>, StrategyError>;
/// Builds a health policy from its table.
pub type HealthFactory =
    fn(&Value, &StrategyContext) -> Result<Arc<dyn HealthPolicy>, StrategyError>;
/// Builds a budget from its table.
pub type BudgetFactory =
    fn(&Value, &StrategyContext) -> Result<Arc<dyn BudgetPolicy>, StrategyError>;
/// Builds a result handler from its table.
pub type ResultFactory =
    fn(&Value, &StrategyContext) -> Result<Arc<dyn ResultHandler>, StrategyError>;
/// Builds an event sink from its table.
pub type MonitorFactory = fn(&Value, &StrategyContext) -> Result<Arc<dyn EventSink>, StrategyError>;

/// The default selector's name.
pub const DEFAULT_SELECTOR: &str = crate::selector::priority::NAME;
/// The default health policy's name.
pub const DEFAULT_HEALTH: &str = crate::health::circuit_breaker::NAME;
/// The default budget's name.
pub const DEFAULT_BUDGET: &str = crate::budget::unlimited::NAME;
/// The default result handler's name.
pub const DEFAULT_RESULT: &str = crate::result::annotate::NAME;

/// Selectors by name.
pub const SELECTORS: &[(&str, SelectorFactory)] = &[
    (crate::selector::priority::NAME, |v, ctx| {
        Ok(Arc::new(Priority::from_value(v, ctx)?))
    }),
    (crate::selector::latency_aware::NAME, |v, ctx| {
        Ok(Arc::new(LatencyAware::from_value(v, ctx)?))
    }),
    (crate::selector::cost_aware::NAME, |v, ctx| {
        Ok(Arc::new(CostAware::from_value(v, ctx)?))
    }),
    (crate::selector::weighted::NAME, |v, ctx| {
        Ok(Arc::new(Weighted::from_value(v, ctx)?))
    }),
];

/// Health policies by name.
pub const HEALTH: &[(&str, HealthFactory)] = &[(crate::health::circuit_breaker::NAME, |v, ctx| {
    Ok(CircuitBreaker::from_value(v, ctx)?.into_shared())
})];

/// Budgets by name.
pub const BUDGETS: &[(&str, BudgetFactory)] = &[
    (crate::budget::unlimited::NAME, |v, ctx| {
        Ok(Arc::new(Unlimited::from_value(v, ctx)?))
    }),
    (crate::budget::per_request::NAME, |v, ctx| {
        Ok(Arc::new(PerRequest::from_value(v, ctx)?))
    }),
    (crate::budget::rolling::NAME, |v, ctx| {
        Ok(Arc::new(Rolling::from_value(v, ctx)?))
    }),
];

/// Result handlers by name.
pub const RESULTS: &[(&str, ResultFactory)] = &[(crate::result::annotate::NAME, |v, ctx| {
    Ok(Arc::new(Annotate::from_value(v, ctx)?))
})];

/// Event sinks by name. A gateway that serves `/metrics` or an alert status
/// page builds [`Metrics`] and [`AlertSink`] directly, to keep the concrete
/// type. An alert sink built here has no webhook sender (strategies send no
/// HTTP); config attaches one with [`AlertSink::with_delivery`].
pub const MONITORS: &[(&str, MonitorFactory)] = &[
    (crate::monitor::alert::NAME, |v, ctx| {
        Ok(Arc::new(AlertSink::from_value(v, ctx)?))
    }),
    (crate::monitor::metrics::NAME, |v, ctx| {
        Ok(Arc::new(Metrics::from_value(v, ctx)?))
    }),
];

/// The factory named `name` in `list`.
pub fn lookup<F: Copy>(list: &[(&'static str, F)], name: &str) -> Option<F> {
    list.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}

/// The names of `list`, in order.
pub fn names<F>(list: &[(&'static str, F)]) -> Vec<&'static str> {
    list.iter().map(|&(n, _)| n).collect()
}

/// The selector factory named `name`.
pub fn selector(name: &str) -> Option<SelectorFactory> {
    lookup(SELECTORS, name)
}

/// The health factory named `name`.
pub fn health(name: &str) -> Option<HealthFactory> {
    lookup(HEALTH, name)
}

/// The budget factory named `name`.
pub fn budget(name: &str) -> Option<BudgetFactory> {
    lookup(BUDGETS, name)
}

/// The result-handler factory named `name`.
pub fn result(name: &str) -> Option<ResultFactory> {
    lookup(RESULTS, name)
}

/// The event-sink factory named `name`.
pub fn monitor(name: &str) -> Option<MonitorFactory> {
    lookup(MONITORS, name)
}

fn build<F: Copy, T>(
    seam: &'static str,
    list: &[(&'static str, F)],
    name: &str,
    call: impl FnOnce(F) -> Result<T, StrategyError>,
) -> Result<T, StrategyError> {
    match lookup(list, name) {
        Some(factory) => call(factory),
        None => Err(StrategyError::UnknownType {
            seam,
            name: name.to_owned(),
            expected: names(list),
        }),
    }
}

/// Builds the selector named `name` from `table`.
pub fn build_selector(
    name: &str,
    table: &Value,
    ctx: &StrategyContext,
) -> Result<Arc<dyn Selector>, StrategyError> {
    build("selector", SELECTORS, name, |f| f(table, ctx))
}

/// Builds the health policy named `name` from `table`.
pub fn build_health(
    name: &str,
    table: &Value,
    ctx: &StrategyContext,
) -> Result<Arc<dyn HealthPolicy>, StrategyError> {
    build("health", HEALTH, name, |f| f(table, ctx))
}

/// Builds the budget named `name` from `table`.
pub fn build_budget(
    name: &str,
    table: &Value,
    ctx: &StrategyContext,
) -> Result<Arc<dyn BudgetPolicy>, StrategyError> {
    build("budget", BUDGETS, name, |f| f(table, ctx))
}

/// Builds the result handler named `name` from `table`.
pub fn build_result(
    name: &str,
    table: &Value,
    ctx: &StrategyContext,
) -> Result<Arc<dyn ResultHandler>, StrategyError> {
    build("result", RESULTS, name, |f| f(table, ctx))
}

/// Builds the event sink named `name` from `table`.
pub fn build_monitor(
    name: &str,
    table: &Value,
    ctx: &StrategyContext,
) -> Result<Arc<dyn EventSink>, StrategyError> {
    build("monitor", MONITORS, name, |f| f(table, ctx))
}

#[cfg(test)]
mod tests {
    use backstop_core::{ManualClock, ModelSpec};

    use super::*;

    fn ctx() -> StrategyContext {
        StrategyContext::new(
            vec![
                ModelSpec::new("gpt-4o", "openai"),
                ModelSpec::new("qwen-7b", "local"),
            ],
            ManualClock::shared(),
        )
    }

    /// A table every strategy of the catalog accepts.
    fn minimal(name: &str) -> Value {
        match name {
            "per_request" => serde_json::json!({"max_cost": 0.05}),
            "rolling" => serde_json::json!({"max_cost": 10.0}),
            _ => Value::Null,
        }
    }

    #[test]
    fn every_strategy_builds_by_its_name_and_reports_it() {
        let ctx = ctx();
        for &(name, f) in SELECTORS {
            assert_eq!(f(&minimal(name), &ctx).unwrap().name(), name);
        }
        for &(name, f) in HEALTH {
            assert_eq!(f(&minimal(name), &ctx).unwrap().name(), name);
        }
        for &(name, f) in BUDGETS {
            assert_eq!(f(&minimal(name), &ctx).unwrap().name(), name);
            assert_eq!(f(&minimal(name), &ctx).unwrap().snapshot().policy, name);
        }
        for &(name, f) in RESULTS {
            assert_eq!(f(&minimal(name), &ctx).unwrap().name(), name);
        }
        for &(name, f) in MONITORS {
            f(&minimal(name), &ctx).unwrap();
        }
    }

    #[test]
    fn the_issue_example_tables_build() {
        let ctx = ctx();
        build_selector(
            "latency_aware",
            &serde_json::json!({"max_latency_ms": 5000}),
            &ctx,
        )
        .unwrap();
        build_selector("priority", &serde_json::json!({}), &ctx).unwrap();
        build_health(
            "circuit_breaker",
            &serde_json::json!({"failure_ratio": 0.5, "min_calls": 5, "window_ms": 30000, "break_ms": 5000}),
            &ctx,
        )
        .unwrap();
        build_budget("per_request", &serde_json::json!({"max_cost": 0.05}), &ctx).unwrap();
        build_result("annotate", &serde_json::json!({"locale": "en"}), &ctx).unwrap();
        build_monitor(
            "alert",
            &serde_json::json!({"max_fallbacks": 10, "window_ms": 3600000}),
            &ctx,
        )
        .unwrap();
        crate::health::ActiveProbe::from_value(
            &serde_json::json!({"interval_ms": 5000, "idle_ms": 60000}),
            &ctx,
        )
        .unwrap();
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = build_selector("latency", &Value::Null, &ctx()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown selector strategy `latency`, expected one of priority, latency_aware, cost_aware, weighted"
        );
        assert!(health("nope").is_none());
        assert!(budget("rolling").is_some());
        assert!(result("annotate").is_some());
        assert!(monitor("metrics").is_some());
        assert!(selector("weighted").is_some());
        assert_eq!(names(BUDGETS), ["unlimited", "per_request", "rolling"]);
    }

    #[test]
    fn misspelled_keys_are_named_with_the_expected_ones() {
        let ctx = ctx();
        let err = build_health(
            "circuit_breaker",
            &serde_json::json!({"failur_ratio": 0.5}),
            &ctx,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("unknown field `failur_ratio`, expected one of `failure_ratio`"),
            "{err}"
        );
        let err = build_budget("rolling", &serde_json::json!({"max_cots": 1}), &ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `max_cots`"), "{err}");
        let err = build_selector("priority", &serde_json::json!({"x": 1}), &ctx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `x`"), "{err}");
        let err = build_budget(
            "per_request",
            &serde_json::json!({"max_cost": "cheap"}),
            &ctx,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("invalid type"), "{err}");
    }
}
