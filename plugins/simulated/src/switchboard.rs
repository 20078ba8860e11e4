//! Run-time changes to simulated models: how a person breaks the primary
//! of a running gateway and watches the fallback.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use backstop_core::FailureKind;
use serde::{Deserialize, Serialize};

/// What to change of one model's configured behaviour; `None` keeps the
/// configured value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Share of calls that fail, 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// How a failing call fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    /// Milliseconds before the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
}

impl Override {
    /// `failure_rate`, when set, is a share.
    pub fn is_valid(&self) -> bool {
        self.failure_rate
            .is_none_or(|rate| (0.0..=1.0).contains(&rate))
    }
}

/// The overrides by model id, one set per process: every simulated
/// provider reads it on each call, and the gateway's admin route
/// (`POST /v1/backstop/simulated/{model}`) writes it. A process-wide map
/// rather than a handle threaded through the configuration because it
/// exists only for demonstrations; keyed by model id, so two gateways in
/// one process (tests) stay apart as long as their model ids differ.
#[derive(Debug, Default)]
pub struct Switchboard {
    overrides: RwLock<HashMap<String, Override>>,
}

static GLOBAL: LazyLock<Arc<Switchboard>> = LazyLock::new(Arc::default);

impl Switchboard {
    /// The process's switchboard.
    pub fn global() -> Arc<Self> {
        GLOBAL.clone()
    }

    /// Replaces the override of `model` (an empty one restores the
    /// configuration).
    pub fn set(&self, model: &str, change: Override) {
        let mut overrides = self
            .overrides
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if change == Override::default() {
            overrides.remove(model);
        } else {
            overrides.insert(model.to_owned(), change);
        }
    }

    /// The override of `model`, if any.
    pub fn get(&self, model: &str) -> Override {
        self.overrides
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
            .copied()
            .unwrap_or_default()
    }
}
