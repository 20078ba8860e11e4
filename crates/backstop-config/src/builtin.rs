//! The compiled-in types: providers behind cargo features (`openai`,
//! `anthropic`, `template`, `simulated`, all on by default) and every strategy of
//! backstop-strategies' catalog. Each piece is wired by one small function.

#[cfg(any(
    feature = "openai",
    feature = "anthropic",
    feature = "template",
    feature = "simulated"
))]
use std::sync::Arc;

#[cfg(any(
    feature = "openai",
    feature = "anthropic",
    feature = "template",
    feature = "simulated"
))]
use backstop_core::Provider;
use backstop_strategies::{StrategyError, catalog};

#[cfg(any(
    feature = "openai",
    feature = "anthropic",
    feature = "template",
    feature = "simulated"
))]
use crate::decode::parse_config;
use crate::registry::{DuplicateType, FactoryError, Registry};

impl Registry {
    /// A registry with every compiled-in provider and strategy.
    pub fn builtin() -> Self {
        let mut registry = Self::new();
        registered(strategies(&mut registry));
        #[cfg(feature = "openai")]
        registered(openai(&mut registry));
        #[cfg(feature = "anthropic")]
        registered(anthropic(&mut registry));
        #[cfg(feature = "template")]
        registered(template(&mut registry));
        #[cfg(feature = "simulated")]
        registered(simulated(&mut registry));
        registry
    }
}

/// Provider types whose models continue a trailing assistant message (an
/// assistant prefill) unless a model says `supports_prefill = false`:
/// Anthropic's Messages API does; OpenAI's chat completions do not.
pub(crate) const PREFILL_BY_DEFAULT: &[&str] = &["anthropic"];

/// Built-in names are distinct; a clash is a bug of this crate, logged
/// rather than fatal so the other types stay usable.
fn registered(result: Result<(), DuplicateType>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "built-in type registered twice");
    }
}

/// A strategy's refusal, at the key it names.
pub(crate) fn strategy_error(e: StrategyError) -> FactoryError {
    match e {
        StrategyError::Invalid { field, problem } => FactoryError::at(&field, problem),
        other => FactoryError::new(other),
    }
}

/// Every strategy of the catalog, by its name.
fn strategies(registry: &mut Registry) -> Result<(), DuplicateType> {
    for &(name, factory) in catalog::SELECTORS {
        registry.selector(name, move |table, ctx| {
            factory(table, ctx).map_err(strategy_error)
        })?;
    }
    for &(name, factory) in catalog::HEALTH {
        registry.health(name, move |table, ctx| {
            factory(table, ctx).map_err(strategy_error)
        })?;
    }
    for &(name, factory) in catalog::BUDGETS {
        registry.budget(name, move |table, ctx| {
            factory(table, ctx).map_err(strategy_error)
        })?;
    }
    for &(name, factory) in catalog::RESULTS {
        registry.result(name, move |table, ctx| {
            factory(table, ctx).map_err(strategy_error)
        })?;
    }
    Ok(())
}

/// `type = "openai"`: OpenAI and every OpenAI-compatible server.
#[cfg(feature = "openai")]
fn openai(registry: &mut Registry) -> Result<(), DuplicateType> {
    use backstop_provider_openai::{OpenAiBuildError, OpenAiConfig, OpenAiProvider};
    registry.provider("openai", |table| {
        let config: OpenAiConfig = parse_config(table)?;
        let provider = OpenAiProvider::new(config).map_err(|e| match e {
            OpenAiBuildError::MissingKey { .. }
            | OpenAiBuildError::InvalidKey { .. }
            | OpenAiBuildError::EmptyKeyVar
            | OpenAiBuildError::KeyVarNotAName => FactoryError::at("api_key_env", e),
            OpenAiBuildError::InvalidBaseUrl { .. } => FactoryError::at("base_url", e),
            OpenAiBuildError::Client(_) => FactoryError::new(e),
        })?;
        Ok(Arc::new(provider) as Arc<dyn Provider>)
    })
}

/// `type = "anthropic"`: Anthropic's Messages API.
#[cfg(feature = "anthropic")]
fn anthropic(registry: &mut Registry) -> Result<(), DuplicateType> {
    use backstop_provider_anthropic::{AnthropicBuildError, AnthropicConfig, AnthropicProvider};
    registry.provider("anthropic", |table| {
        let config: AnthropicConfig = parse_config(table)?;
        let provider = AnthropicProvider::new(config).map_err(|e| match e {
            AnthropicBuildError::MissingKey { .. }
            | AnthropicBuildError::InvalidKey { .. }
            | AnthropicBuildError::EmptyKeyVar
            | AnthropicBuildError::KeyVarNotAName => FactoryError::at("api_key_env", e),
            AnthropicBuildError::InvalidVersion(_) => FactoryError::at("anthropic_version", e),
            AnthropicBuildError::InvalidBaseUrl { .. } => FactoryError::at("base_url", e),
            AnthropicBuildError::Client(_) => FactoryError::new(e),
        })?;
        Ok(Arc::new(provider) as Arc<dyn Provider>)
    })
}

/// `type = "template"`: the rule-based last rung, which stands in as a
/// model of its own id.
#[cfg(feature = "template")]
fn template(registry: &mut Registry) -> Result<(), DuplicateType> {
    use backstop_provider_template::{TemplateBuildError, TemplateConfig, TemplateProvider};
    registry.stand_in_provider("template", |table| {
        let config: TemplateConfig = parse_config(table)?;
        let provider = TemplateProvider::new(config).map_err(|e| match &e {
            TemplateBuildError::EmptyText { key }
            | TemplateBuildError::UnknownPlaceholder { key, .. }
            | TemplateBuildError::UnmatchedBrace { key } => FactoryError::at(&key.clone(), e),
            TemplateBuildError::UnknownLocale { .. } => FactoryError::at("locale", e),
        })?;
        Ok(Arc::new(provider) as Arc<dyn Provider>)
    })
}

/// `type = "simulated"`: a model in the gateway's own process, with
/// configurable latency and failures, for trying Backstop without keys.
#[cfg(feature = "simulated")]
fn simulated(registry: &mut Registry) -> Result<(), DuplicateType> {
    use backstop_provider_simulated::{SimulatedBuildError, SimulatedConfig, SimulatedProvider};
    registry.provider("simulated", |table| {
        let config: SimulatedConfig = parse_config(table)?;
        let provider = SimulatedProvider::new(config).map_err(|e| match e {
            SimulatedBuildError::FailureRate(_) => FactoryError::at("failure_rate", e),
        })?;
        Ok(Arc::new(provider) as Arc<dyn Provider>)
    })
}
