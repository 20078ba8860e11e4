//! # backstop-provider-template
//!
//! The last rung of a fallback chain: a rule-based provider that answers
//! instantly with configured text, so a product still says something
//! sensible when every model is down (the seed's `rule_based` / `template`
//! fallback).
//!
//! - The text is chosen per locale (`text`, `texts`, `locale`) and may name
//!   `{scenario}` (the scenario being served) and `{model}` (the id of the
//!   model entry this provider serves); `{{` and `}}` write literal braces.
//!   Every text is checked when the provider is built.
//! - Complete calls get a one-choice answer; streams get the text in a few
//!   chunks, a `stop` finish chunk and a usage chunk.
//! - It costs nothing: usage is always zero tokens, so no budget is
//!   charged whatever prices the model is configured with.
//! - It is always healthy: it never fails, and its probe succeeds without
//!   doing any work.

mod config;
mod error;
mod provider;
mod template;

pub use config::TemplateConfig;
pub use error::TemplateBuildError;
pub use provider::TemplateProvider;
