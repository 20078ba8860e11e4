//! Result handlers: how a degraded answer is annotated.
//!
//! - [`annotate`]: a warning when a backup answered, a limitation notice
//!   when the answer came from further down the chain; localized.

pub mod annotate;

pub use annotate::{Annotate, AnnotateConfig, Locale};
