//! `annotate`: tell the caller when a backup model answered.
//!
//! What it does:
//!
//! 1. At fallback level 0 (the primary answered) it adds nothing.
//! 2. At level >= 1 it sets the answer's `warning`:
//!    "a backup model ({model}) answered; quality may differ".
//! 3. At level >= 2 it also sets `limitation`: "the primary service is
//!    unavailable; some advanced features, such as long-form generation,
//!    may be limited".
//!
//! The messages come from the catalog of `locale` (`en` or `zh-CN`), unless
//! `warning` / `limitation` override them. Templates may use `{model}` (the
//! model that answered), `{primary}` (the model tried first) and `{level}`
//! (the fallback level); write `{{` and `}}` for literal braces. Unknown
//! placeholders are refused when the config is loaded.
//!
//! When to pick it: always, unless a plugin replaces it; it is the default
//! result handler. The gateway puts the texts in the response and in
//! `x-backstop-*` headers.
//!
//! Knobs (defaults):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `locale` | `en` | message catalog: `en` or `zh-CN` |
//! | `warning` | the locale's | template of the warning (level >= 1) |
//! | `limitation` | the locale's | template of the limitation (level >= 2) |

use std::fmt::Write as _;
use std::sync::Arc;

use backstop_core::{Annotation, ResultHandler, RouteSummary, StrategyContext};
use serde::Deserialize;

use crate::error::StrategyError;

/// The config `type` name.
pub const NAME: &str = "annotate";

/// A message catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Locale {
    /// English.
    #[default]
    #[serde(rename = "en")]
    En,
    /// Simplified Chinese.
    #[serde(rename = "zh-CN", alias = "zh")]
    ZhCn,
}

impl Locale {
    /// The default warning template.
    pub fn warning(self) -> &'static str {
        match self {
            Locale::En => "a backup model ({model}) answered; quality may differ",
            Locale::ZhCn => "当前使用了备用模型({model})，输出质量可能有所差异",
        }
    }

    /// The default limitation template.
    pub fn limitation(self) -> &'static str {
        match self {
            Locale::En => {
                "the primary service is unavailable; some advanced features, \
                 such as long-form generation, may be limited"
            }
            Locale::ZhCn => "由于主服务不可用，部分高级功能(如长文本生成)可能受限",
        }
    }
}

/// Knobs of the annotator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnnotateConfig {
    /// Message catalog. Default `en`.
    pub locale: Locale,
    /// Warning template (level >= 1). Default: the locale's.
    pub warning: Option<String>,
    /// Limitation template (level >= 2). Default: the locale's.
    pub limitation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    Model,
    Primary,
    Level,
}

/// A parsed message template.
#[derive(Debug, Clone)]
struct Template {
    pieces: Box<[Piece]>,
    /// The rendered text when the template has no placeholder, shared by
    /// every answer without allocating.
    fixed: Option<Arc<str>>,
}

impl Template {
    fn parse(field: &str, source: &str) -> Result<Self, StrategyError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(StrategyError::invalid(
                                    field,
                                    format!("has an unclosed `{{{name}`"),
                                ));
                            }
                        }
                    }
                    let piece = match name.as_str() {
                        "model" => Piece::Model,
                        "primary" => Piece::Primary,
                        "level" => Piece::Level,
                        _ => {
                            return Err(StrategyError::invalid(
                                field,
                                format!(
                                    "has an unknown placeholder `{{{name}}}`; use {{model}}, {{primary}} or {{level}}"
                                ),
                            ));
                        }
                    };
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text).into()));
                    }
                    pieces.push(piece);
                }
                '}' => {
                    return Err(StrategyError::invalid(
                        field,
                        "has a lone `}`; write `}}` for a literal brace",
                    ));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text.into()));
        }
        let fixed = match pieces.as_slice() {
            [] => Some(Arc::from("")),
            [Piece::Text(t)] => Some(Arc::from(&**t)),
            _ => None,
        };
        Ok(Self {
            pieces: pieces.into(),
            fixed,
        })
    }

    fn render(&self, summary: &RouteSummary<'_>) -> Arc<str> {
        if let Some(fixed) = &self.fixed {
            return fixed.clone();
        }
        let mut out = String::with_capacity(64);
        for piece in self.pieces.iter() {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Model => out.push_str(summary.model_used),
                Piece::Primary => out.push_str(summary.primary),
                // Writing to a String cannot fail.
                Piece::Level => {
                    let _ = write!(out, "{}", summary.fallback_level);
                }
            }
        }
        out.into()
    }
}

/// Annotates degraded answers; see the module docs.
#[derive(Debug, Clone)]
pub struct Annotate {
    warning: Template,
    limitation: Template,
}

impl Annotate {
    /// The annotator.
    pub fn new(config: AnnotateConfig, _ctx: &StrategyContext) -> Result<Self, StrategyError> {
        let warning = config.warning.as_deref().unwrap_or(config.locale.warning());
        let limitation = config
            .limitation
            .as_deref()
            .unwrap_or(config.locale.limitation());
        Ok(Self {
            warning: Template::parse("warning", warning)?,
            limitation: Template::parse("limitation", limitation)?,
        })
    }

    /// Builds one from its config table.
    pub fn from_value(
        value: &serde_json::Value,
        ctx: &StrategyContext,
    ) -> Result<Self, StrategyError> {
        Self::new(crate::error::parse(value)?, ctx)
    }
}

impl ResultHandler for Annotate {
    fn name(&self) -> &str {
        NAME
    }

    fn annotate(&self, summary: &RouteSummary<'_>) -> Annotation {
        Annotation {
            warning: (summary.fallback_level >= 1).then(|| self.warning.render(summary)),
            limitation: (summary.fallback_level >= 2).then(|| self.limitation.render(summary)),
        }
    }
}

#[cfg(test)]
mod tests {
    use backstop_core::ManualClock;

    use super::*;

    fn ctx() -> StrategyContext {
        StrategyContext::new(Vec::new(), ManualClock::shared())
    }

    fn annotate(value: serde_json::Value) -> Annotate {
        Annotate::from_value(&value, &ctx()).unwrap()
    }

    fn served(level: usize) -> RouteSummary<'static> {
        RouteSummary {
            scenario: "realtime_chat",
            primary: "gpt-4o-mini",
            model_used: "qwen-7b",
            fallback_level: level,
            attempts: &[],
        }
    }

    fn texts(a: &Annotation) -> (Option<&str>, Option<&str>) {
        (a.warning.as_deref(), a.limitation.as_deref())
    }

    #[test]
    fn english_by_level() {
        let a = annotate(serde_json::json!({}));
        assert_eq!(a.annotate(&served(0)), Annotation::default());
        assert_eq!(
            texts(&a.annotate(&served(1))),
            (
                Some("a backup model (qwen-7b) answered; quality may differ"),
                None
            )
        );
        assert_eq!(
            texts(&a.annotate(&served(2))),
            (
                Some("a backup model (qwen-7b) answered; quality may differ"),
                Some(
                    "the primary service is unavailable; some advanced features, \
                     such as long-form generation, may be limited"
                )
            )
        );
        assert!(a.annotate(&served(5)).limitation.is_some());
    }

    #[test]
    fn simplified_chinese_by_level() {
        let a = annotate(serde_json::json!({"locale": "zh-CN"}));
        assert_eq!(a.annotate(&served(0)), Annotation::default());
        assert_eq!(
            texts(&a.annotate(&served(1))),
            (
                Some("当前使用了备用模型(qwen-7b)，输出质量可能有所差异"),
                None
            )
        );
        assert_eq!(
            texts(&a.annotate(&served(2))),
            (
                Some("当前使用了备用模型(qwen-7b)，输出质量可能有所差异"),
                Some("由于主服务不可用，部分高级功能(如长文本生成)可能受限")
            )
        );
    }

    #[test]
    fn templates_are_overridable_with_placeholders() {
        let a = annotate(serde_json::json!({
            "locale": "zh-CN",
            "warning": "{model} answered instead of {primary} (level {level}) {{sic}}",
        }));
        let note = a.annotate(&served(2));
        assert_eq!(
            note.warning.as_deref(),
            Some("qwen-7b answered instead of gpt-4o-mini (level 2) {sic}")
        );
        // The other message still comes from the locale.
        assert_eq!(
            note.limitation.as_deref(),
            Some("由于主服务不可用，部分高级功能(如长文本生成)可能受限")
        );
    }

    #[test]
    fn bad_templates_and_locales_are_refused() {
        let err =
            Annotate::from_value(&serde_json::json!({"warning": "{modle}"}), &ctx()).unwrap_err();
        assert_eq!(err.field(), Some("warning"));
        assert!(err.to_string().contains("`{modle}`"), "{err}");
        let err = Annotate::from_value(&serde_json::json!({"limitation": "oops {model"}), &ctx())
            .unwrap_err();
        assert_eq!(err.field(), Some("limitation"));
        let err =
            Annotate::from_value(&serde_json::json!({"warning": "a } b"}), &ctx()).unwrap_err();
        assert_eq!(err.field(), Some("warning"));
        let err = Annotate::from_value(&serde_json::json!({"locale": "fr"}), &ctx())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `fr`"), "{err}");
        assert!(err.contains("`zh-CN`"), "{err}");
    }

    #[test]
    fn a_fixed_text_is_shared_not_rebuilt() {
        let a = annotate(serde_json::json!({}));
        let first = a.annotate(&served(2)).limitation.unwrap();
        let second = a.annotate(&served(3)).limitation.unwrap();
        assert!(Arc::ptr_eq(&first, &second));
    }
}
