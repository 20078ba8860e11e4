//! Errors of building the provider from its config. The provider itself
//! never fails.

/// Why a [`TemplateProvider`](crate::TemplateProvider) could not be built.
/// `key` is the config key of the faulty text: `text` or `texts.<locale>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateBuildError {
    /// A text is empty.
    #[error("{key} is empty; the last rung must say something")]
    EmptyText {
        /// `text` or `texts.<locale>`.
        key: String,
    },
    /// A text names a placeholder other than `{scenario}` and `{model}`.
    #[error(
        "{key} uses the placeholder `{{{placeholder}}}`; only {{scenario}} and {{model}} exist (write {{{{ and }}}} for literal braces)"
    )]
    UnknownPlaceholder {
        /// `text` or `texts.<locale>`.
        key: String,
        /// The name between the braces.
        placeholder: String,
    },
    /// A text has a `{` without its `}`, or a lone `}`.
    #[error("{key} has an unmatched brace (write {{{{ and }}}} for literal braces)")]
    UnmatchedBrace {
        /// `text` or `texts.<locale>`.
        key: String,
    },
    /// `locale` names no configured or built-in text.
    #[error("locale `{locale}` has no text; configured and built-in locales: {}", available.join(", "))]
    UnknownLocale {
        /// The configured locale.
        locale: String,
        /// The locales that have a text.
        available: Vec<String>,
    },
}
