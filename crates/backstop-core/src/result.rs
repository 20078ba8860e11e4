//! The result-handling seam, and what the caller gets back.

use std::fmt;
use std::sync::Arc;

use crate::chat::ChatResponse;
use crate::error::Attempt;

/// How a request was served, as far as annotation is concerned.
#[derive(Debug, Clone, Copy)]
pub struct RouteSummary<'a> {
    /// The scenario (or single-model route).
    pub scenario: &'a str,
    /// The first model of the order tried for this request.
    pub primary: &'a str,
    /// The model that answered.
    pub model_used: &'a str,
    /// The answering model's index in the order tried (0 = primary).
    pub fallback_level: usize,
    /// Every attempt and skip, in order.
    pub attempts: &'a [Attempt],
}

/// What to tell the caller about a degraded answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotation {
    /// Set when a backup model answered.
    pub warning: Option<Arc<str>>,
    /// Set when the answer may lack features of the primary.
    pub limitation: Option<Arc<str>>,
}

/// Decides how an answer is annotated. Called once per answered request,
/// streaming or not.
pub trait ResultHandler: Send + Sync + fmt::Debug {
    /// The config `type` name.
    fn name(&self) -> &str;

    /// The annotation for an answer served as `summary` says.
    fn annotate(&self, summary: &RouteSummary<'_>) -> Annotation;
}

fn _result_handler_is_object_safe(_: &dyn ResultHandler) {}

/// A complete answer and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackResult {
    /// The answer. Its `model` is the model that answered, and its `usage`
    /// is that attempt's usage only.
    pub response: ChatResponse,
    /// The model that answered.
    pub model_used: Arc<str>,
    /// The answering model's index in the order tried (0 = primary).
    pub fallback_level: usize,
    /// Every attempt and skip, in order.
    pub attempts: Vec<Attempt>,
    /// Set when a backup model answered.
    pub warning: Option<Arc<str>>,
    /// Set when the answer may lack features of the primary.
    pub limitation: Option<Arc<str>>,
}

impl FallbackResult {
    /// How many upstream calls were made (skips not counted).
    pub fn upstream_attempts(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.outcome.called_upstream())
            .count()
    }
}
