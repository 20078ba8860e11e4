//! The selection seam: in which order to try the models of a chain.

use std::fmt;

use crate::facts::RequestFacts;
use crate::model::{ModelIndex, ModelSpec};

/// A model of the chain, as the selector sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The model's index in the Router's model table.
    pub index: ModelIndex,
    /// The model.
    pub spec: &'a ModelSpec,
    /// Its position in the configured chain (ties keep this order).
    pub position: usize,
}

/// Orders a chain's models for one request. Hot path: synchronous, `&self`,
/// no I/O, no allocation. A selector orders; it never drops a model (health,
/// budget and capability filters do that, and record why).
pub trait Selector: Send + Sync + fmt::Debug {
    /// The config `type` name.
    fn name(&self) -> &str;

    /// Reorders `candidates` in place, most preferred first. They arrive in
    /// configured chain order.
    fn order(&self, facts: &RequestFacts<'_>, candidates: &mut [Candidate<'_>]);
}

fn _selector_is_object_safe(_: &dyn Selector) {}
