//! What the strategies may know about a request, computed once.

use crate::chat::ChatRequest;

/// Facts about one request, computed once and shared by every strategy.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The scenario (or single-model route) serving it.
    pub scenario: &'a str,
    /// Who is calling: a label for the caller's API key (never the key).
    pub caller: Option<&'a str>,
    /// Estimated prompt tokens ([`ChatRequest::estimated_prompt_tokens`]).
    pub prompt_tokens: u32,
    /// The caller's output-token bound, if it set one.
    pub max_tokens: Option<u32>,
    /// The caller asked for a stream.
    pub stream: bool,
    /// The request offers tools.
    pub tools: bool,
}

impl<'a> RequestFacts<'a> {
    /// Facts of a request served by `scenario` for `caller`.
    pub fn of(request: &ChatRequest, scenario: &'a str, caller: Option<&'a str>) -> Self {
        Self {
            scenario,
            caller,
            prompt_tokens: request.estimated_prompt_tokens(),
            max_tokens: request.requested_max_tokens(),
            stream: request.is_stream(),
            tools: request.has_tools(),
        }
    }
}
