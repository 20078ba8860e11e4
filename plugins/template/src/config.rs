//! The provider's configuration (a `[providers.<id>]` table without its
//! `type` key, which the config crate strips).
//!
//! ```toml
//! [providers.rules]
//! type = "template"
//! text = "Sorry, the {scenario} assistant is busy right now. Please try again in a minute."
//! texts = { "zh-CN" = "抱歉，{scenario} 助手暂时繁忙，请稍后再试。" }
//! locale = "zh-CN"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// The English answer used when no text is configured.
pub(crate) const DEFAULT_TEXT: &str =
    "Sorry, the assistant is temporarily unavailable. Please try again in a few minutes.";

/// Built-in answers per locale, used when `texts` does not override them.
pub(crate) const BUILT_IN_TEXTS: &[(&str, &str)] = &[
    ("en", DEFAULT_TEXT),
    ("zh-CN", "抱歉，智能助手暂时无法使用，请稍后再试。"),
];

/// Configuration of a template provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// The answer when `locale` is not set. May use `{scenario}` and
    /// `{model}`. Default: "Sorry, the assistant is temporarily
    /// unavailable. Please try again in a few minutes."
    #[serde(default = "default_text")]
    pub text: String,

    /// Answers by locale tag (`"zh-CN"`, `"en"`, ...), same placeholders.
    /// Built in, unless overridden here: `en` and `zh-CN`. Default: empty.
    #[serde(default)]
    pub texts: BTreeMap<String, String>,

    /// Which locale to answer in: a key of `texts` or a built-in locale
    /// (matched case-insensitively). Default: none, which answers `text`.
    #[serde(default)]
    pub locale: Option<String>,
}

fn default_text() -> String {
    DEFAULT_TEXT.to_owned()
}

impl Default for TemplateConfig {
    /// The built-in English answer.
    fn default() -> Self {
        Self {
            text: default_text(),
            texts: BTreeMap::new(),
            locale: None,
        }
    }
}

impl TemplateConfig {
    /// A config answering `text`.
    pub fn with_text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }
}
