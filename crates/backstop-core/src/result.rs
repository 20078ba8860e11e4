//! The result-handling seam, and what the caller gets back.

use std::fmt;
use std::sync::Arc;

use crate::chat::{ChatResponse, Usage};
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

/// How a request was served: the facts every door tells the caller (the
/// `x-backstop-*` headers, the `backstop` object). One type for complete
/// answers and for streams, at their start and at their end.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The model that answered.
    pub model_used: Arc<str>,
    /// The answering model's index in the order tried (0 = primary).
    pub fallback_level: usize,
    /// Every attempt and skip, in order (for a stream that just started,
    /// the streaming call last).
    pub attempts: Vec<Attempt>,
    /// How many upstream calls were made (skips not counted).
    pub upstream_attempts: u32,
    /// Set when a backup model answered.
    pub warning: Option<Arc<str>>,
    /// Set when the answer may lack features of the primary.
    pub limitation: Option<Arc<str>>,
    /// The answering attempt's usage, when the upstream reported it (for a
    /// stream: known only at its end).
    pub usage: Option<Usage>,
}

/// A complete answer and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackResult {
    /// The answer. Its `model` is the model that answered, and its `usage`
    /// is that attempt's usage only.
    pub response: ChatResponse,
    /// How it was served.
    pub outcome: Outcome,
}
