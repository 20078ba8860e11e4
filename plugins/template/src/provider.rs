//! The provider: renders the chosen text as an answer or a stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use backstop_core::{
    Call, ChatChunk, ChatResponse, ChunkStream, ModelSpec, Provider, ProviderError, Role, Usage,
};
use futures::StreamExt;

use crate::config::{BUILT_IN_TEXTS, TemplateConfig};
use crate::error::TemplateBuildError;
use crate::template::{Template, pieces};

/// How many text chunks a streamed answer has, about.
const STREAM_PIECES: usize = 4;

/// A provider that answers with configured text.
#[derive(Debug)]
pub struct TemplateProvider {
    template: Template,
    /// Numbers answers for their ids.
    answers: AtomicU64,
}

impl TemplateProvider {
    /// Checks every configured text and picks the one for `locale`.
    pub fn new(config: TemplateConfig) -> Result<Self, TemplateBuildError> {
        let default = Template::parse("text", &config.text)?;
        let mut localized = Vec::with_capacity(config.texts.len());
        for (locale, text) in &config.texts {
            localized.push((
                locale.as_str(),
                Template::parse(&format!("texts.{locale}"), text)?,
            ));
        }
        let template = match config.locale.as_deref() {
            None => default,
            Some(locale) => {
                let configured = localized
                    .into_iter()
                    .find(|(l, _)| l.eq_ignore_ascii_case(locale))
                    .map(|(_, t)| t);
                let built_in = || {
                    BUILT_IN_TEXTS
                        .iter()
                        .find(|(l, _)| l.eq_ignore_ascii_case(locale))
                        .and_then(|(l, t)| Template::parse(&format!("texts.{l}"), t).ok())
                };
                match configured.or_else(built_in) {
                    Some(template) => template,
                    None => {
                        let mut available: Vec<String> = config.texts.keys().cloned().collect();
                        for (l, _) in BUILT_IN_TEXTS {
                            if !available.iter().any(|a| a.eq_ignore_ascii_case(l)) {
                                available.push((*l).to_owned());
                            }
                        }
                        return Err(TemplateBuildError::UnknownLocale {
                            locale: locale.to_owned(),
                            available,
                        });
                    }
                }
            }
        };
        Ok(Self {
            template,
            answers: AtomicU64::new(0),
        })
    }

    /// The rendered text, an id and a timestamp for one answer.
    fn answer(&self, call: &Call<'_>) -> (String, String, u64) {
        let n = self.answers.fetch_add(1, Ordering::Relaxed);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = self.template.render(call.scenario, &call.model.id);
        (text, format!("chatcmpl-template-{created}-{n}"), created)
    }
}

#[async_trait]
impl Provider for TemplateProvider {
    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        let (text, id, created) = self.answer(&call);
        Ok(ChatResponse::assistant(
            id,
            call.model.upstream.as_str(),
            created,
            text,
            Some(Usage::new(0, 0)),
        ))
    }

    async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let (text, id, created) = self.answer(&call);
        let model = call.model.upstream.as_str();
        let mut chunks: Vec<ChatChunk> = pieces(&text, STREAM_PIECES)
            .into_iter()
            .map(|piece| ChatChunk::text(id.as_str(), model, created, piece))
            .collect();
        if let Some(first) = chunks.first_mut().and_then(|c| c.choices.first_mut()) {
            first.delta.role = Some(Role::Assistant);
        }
        chunks.push(ChatChunk::finish(id.as_str(), model, created, "stop"));
        chunks.push(ChatChunk::usage_only(
            id.as_str(),
            model,
            created,
            Usage::new(0, 0),
        ));
        Ok(futures::stream::iter(chunks.into_iter().map(Ok)).boxed())
    }

    /// Always healthy: nothing to ask.
    async fn probe(&self, _: &ModelSpec, _: Duration) -> Result<(), ProviderError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use backstop_core::ChatRequest;
    use futures::StreamExt;

    use super::*;

    fn call<'a>(model: &'a ModelSpec, request: &'a ChatRequest) -> Call<'a> {
        Call {
            scenario: "support_chat",
            model,
            request,
            max_tokens: 16,
            connect_timeout: Duration::from_secs(1),
            request_id: None,
            headers: &[],
        }
    }

    fn provider(locale: Option<&str>) -> Result<TemplateProvider, TemplateBuildError> {
        TemplateProvider::new(TemplateConfig {
            text: "The {scenario} assistant is busy ({model}).".into(),
            texts: BTreeMap::from([(
                "fr".to_owned(),
                "L'assistant {scenario} est occupé.".to_owned(),
            )]),
            locale: locale.map(str::to_owned),
        })
    }

    #[tokio::test]
    async fn answers_the_rendered_text_at_zero_cost() {
        let model = ModelSpec::new("rules", "template");
        let request = ChatRequest::user("support_chat", "hello?");
        let r = provider(None)
            .unwrap()
            .complete(call(&model, &request))
            .await
            .unwrap();
        assert_eq!(r.text(), "The support_chat assistant is busy (rules).");
        assert_eq!(r.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.usage, Some(Usage::new(0, 0)));
        assert_eq!(r.model, "rules");
    }

    #[tokio::test]
    async fn streams_a_few_chunks_then_stop_and_usage() {
        let model = ModelSpec::new("rules", "template");
        let request = ChatRequest::user("support_chat", "hello?");
        let chunks: Vec<ChatChunk> = provider(None)
            .unwrap()
            .stream(call(&model, &request))
            .await
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
            .await;
        let text: String = chunks.iter().filter_map(ChatChunk::content).collect();
        assert_eq!(text, "The support_chat assistant is busy (rules).");
        let texts = chunks.iter().filter(|c| c.content().is_some()).count();
        assert!((2..=5).contains(&texts), "a few chunks, got {texts}");
        assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
        let n = chunks.len();
        assert_eq!(chunks[n - 2].finish_reason(), Some("stop"));
        assert_eq!(chunks[n - 1].usage, Some(Usage::new(0, 0)));
        assert!(chunks.iter().all(|c| c.id == chunks[0].id));
    }

    #[tokio::test]
    async fn the_locale_picks_a_configured_or_built_in_text() {
        let model = ModelSpec::new("rules", "template");
        let request = ChatRequest::user("s", "x");
        let fr = provider(Some("FR"))
            .unwrap()
            .complete(call(&model, &request))
            .await
            .unwrap();
        assert_eq!(fr.text(), "L'assistant support_chat est occupé.");
        let zh = provider(Some("zh-CN"))
            .unwrap()
            .complete(call(&model, &request))
            .await
            .unwrap();
        assert_eq!(zh.text(), "抱歉，智能助手暂时无法使用，请稍后再试。");
        let e = provider(Some("de")).unwrap_err();
        assert_eq!(
            e,
            TemplateBuildError::UnknownLocale {
                locale: "de".into(),
                available: vec!["fr".into(), "en".into(), "zh-CN".into()]
            }
        );
        assert!(e.to_string().contains("fr, en, zh-CN"), "{e}");
    }

    #[test]
    fn every_text_is_checked_even_if_not_chosen() {
        let e = TemplateProvider::new(TemplateConfig {
            texts: BTreeMap::from([("ja".to_owned(), "{name}さん".to_owned())]),
            ..TemplateConfig::default()
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("texts.ja uses the placeholder `{name}`"),
            "{e}"
        );
    }

    #[test]
    fn config_has_defaults_and_refuses_unknown_keys() {
        let c: TemplateConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, TemplateConfig::default());
        assert!(serde_json::from_str::<TemplateConfig>(r#"{"message": "x"}"#).is_err());
        let c: TemplateConfig = serde_json::from_str(
            r#"{"text": "busy", "texts": {"zh-CN": "忙"}, "locale": "zh-CN"}"#,
        )
        .unwrap();
        assert_eq!(c.locale.as_deref(), Some("zh-CN"));
    }

    #[tokio::test]
    async fn the_probe_always_succeeds() {
        let p = TemplateProvider::new(TemplateConfig::default()).unwrap();
        p.probe(&ModelSpec::new("rules", "template"), Duration::ZERO)
            .await
            .unwrap();
    }
}
