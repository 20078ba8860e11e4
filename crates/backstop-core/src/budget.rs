//! The budget seam: whether a request may spend money on a model.

use std::fmt;

use futures::future::BoxFuture;
use serde::Serialize;

use crate::chat::Usage;
use crate::facts::RequestFacts;
use crate::model::{ModelIndex, ModelSpec};

/// Money held for one call until it is settled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation {
    /// The model it was reserved on.
    pub model: ModelIndex,
    /// Estimated USD held.
    pub amount: f64,
    /// Opaque data for the policy (a window id, a slot).
    pub ticket: u64,
}

/// A model the request cannot afford.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("estimated cost {needed:.6} USD exceeds the {remaining:.6} USD left of the budget")]
pub struct OverBudget {
    /// Estimated USD the call would cost.
    pub needed: f64,
    /// USD left under the cap that refused it.
    pub remaining: f64,
}

/// Spend so far, for status pages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetSnapshot {
    /// The config `type` name.
    pub policy: String,
    /// USD settled in the current window (or in total).
    pub spent: f64,
    /// USD reserved by calls in flight.
    pub reserved: f64,
    /// The cap, if there is one.
    pub limit: Option<f64>,
}

/// Decides whether a request may spend on a model. `reserve` is on the hot
/// path: synchronous, `&self`, atomic, so concurrent requests can never
/// overspend.
pub trait BudgetPolicy: Send + Sync + fmt::Debug {
    /// The config `type` name.
    fn name(&self) -> &str;

    /// Holds the estimated cost of a call on `model`, or refuses.
    fn reserve(
        &self,
        index: ModelIndex,
        model: &ModelSpec,
        facts: &RequestFacts<'_>,
    ) -> Result<Reservation, OverBudget>;

    /// Replaces the reservation with the actual cost (`usage`), or releases
    /// it when the call failed (`None`). Every reservation is settled once.
    fn settle(
        &self,
        reservation: Reservation,
        model: &ModelSpec,
        facts: &RequestFacts<'_>,
        usage: Option<&Usage>,
    );

    /// Spend so far.
    fn snapshot(&self) -> BudgetSnapshot;

    /// Whether this policy's reservations go through a store shared by a
    /// fleet: then the Router calls [`BudgetPolicy::reserve_shared`]
    /// instead of `reserve`. `false` by default (no allocation, no wait).
    fn is_shared(&self) -> bool {
        false
    }

    /// `reserve` for a policy whose caps a fleet shares: at most one store
    /// round trip, bounded by the store's timeout. By default, `reserve`.
    fn reserve_shared<'a>(
        &'a self,
        index: ModelIndex,
        model: &'a ModelSpec,
        facts: &'a RequestFacts<'a>,
    ) -> BoxFuture<'a, Result<Reservation, OverBudget>> {
        Box::pin(std::future::ready(self.reserve(index, model, facts)))
    }
}

fn _budget_is_object_safe(_: &dyn BudgetPolicy) {}
