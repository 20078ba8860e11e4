//! `[models.<id>]`, and the implicit models of stand-in providers.

use std::collections::BTreeSet;

use backstop_core::{Capabilities, ModelSpec, RateQuota};

use super::Builder;
use super::providers::BuiltProvider;
use crate::problem::{KeyPath, did_you_mean, list};
use crate::report::ModelEntry;
use crate::schema::{DEFAULT_COST_PER_1K, DEFAULT_MAX_TOKENS, ModelSection};

/// The model table the Router and every strategy index into.
pub(crate) struct Models {
    /// Every model: `[models]` in file order, then stand-ins.
    pub specs: Vec<ModelSpec>,
    /// Whether each model is a stand-in provider's implicit model.
    pub implicit: Vec<bool>,
    /// Ids of `[models]` by priority, ties in file order: the chain of a
    /// scenario that names none.
    pub by_priority: Vec<String>,
    /// Every id a chain may name, built or not (so a broken model is
    /// reported once, at its own table).
    pub declared: BTreeSet<String>,
}

impl Models {
    /// By model index: whether a stand-in provider serves the model (its
    /// implicit model, or a `[models]` entry naming it).
    pub fn stand_in(&self, providers: &[BuiltProvider]) -> Vec<bool> {
        self.specs
            .iter()
            .map(|m| providers.iter().any(|p| p.stands_in && p.id == m.provider))
            .collect()
    }

    pub fn entries(&self) -> Vec<ModelEntry> {
        self.specs
            .iter()
            .zip(&self.implicit)
            .map(|(spec, &implicit)| ModelEntry {
                spec: spec.clone(),
                implicit,
            })
            .collect()
    }
}

/// The implicit model of a stand-in provider: free, with a window no
/// prompt exceeds, streaming, the lowest priority, and a last resort (the
/// Router tries it after every other model, whatever the selector says).
pub(crate) fn stand_in_model(provider_id: &str) -> ModelSpec {
    ModelSpec {
        id: provider_id.to_owned(),
        provider: provider_id.to_owned(),
        upstream: provider_id.to_owned(),
        priority: u32::MAX,
        max_tokens: DEFAULT_MAX_TOKENS,
        input_cost_per_1k: 0.0,
        output_cost_per_1k: 0.0,
        context_window: u32::MAX,
        capabilities: Capabilities {
            streaming: true,
            tools: true,
            assistant_prefill: false,
        },
        last_resort: true,
        dimensions: None,
        quota: RateQuota::default(),
    }
}

impl Builder<'_> {
    pub(super) fn models(&mut self, providers: &[BuiltProvider]) -> Models {
        let path = KeyPath::root().key("models");
        let mut models = Models {
            specs: Vec::new(),
            implicit: Vec::new(),
            by_priority: Vec::new(),
            declared: BTreeSet::new(),
        };
        let provider_ids: Vec<&str> = providers.iter().map(|p| p.id.as_str()).collect();
        let prefill_by_default: Vec<&str> = providers
            .iter()
            .filter(|p| {
                p.entry.as_ref().is_some_and(|e| {
                    crate::builtin::PREFILL_BY_DEFAULT.contains(&e.type_name.as_str())
                })
            })
            .map(|p| p.id.as_str())
            .collect();
        let dict = match self.section("models") {
            Some(value) => self.table(&path, value, "a table of models"),
            None => None,
        };
        if let Some(dict) = dict {
            for id in self.src.ordered_keys("models", dict) {
                models.declared.insert(id.to_owned());
                let at = path.key(id);
                let Some(value) = dict.get(id) else { continue };
                let Some(decoded) = self.decode::<ModelSection>(&at, value) else {
                    continue;
                };
                let spec =
                    self.model_spec(&at, id, decoded.value, &provider_ids, &prefill_by_default);
                models.specs.push(spec);
                models.implicit.push(false);
            }
        }

        let mut explicit: Vec<(u32, usize, String)> = models
            .specs
            .iter()
            .enumerate()
            .map(|(i, m)| (m.priority, i, m.id.clone()))
            .collect();
        explicit.sort();
        models.by_priority = explicit.into_iter().map(|(_, _, id)| id).collect();

        for p in providers.iter().filter(|p| p.stands_in) {
            if models.declared.insert(p.id.clone()) {
                models.specs.push(stand_in_model(&p.id));
                models.implicit.push(true);
            }
        }

        if models.declared.is_empty() {
            self.problem(
                &path,
                "no models: add a [models.<id>] table, or a template provider, which stands in as a model",
            );
        }
        models
    }

    fn model_spec(
        &mut self,
        at: &KeyPath,
        id: &str,
        m: ModelSection,
        provider_ids: &[&str],
        prefill_by_default: &[&str],
    ) -> ModelSpec {
        let prefill = m
            .supports_prefill
            .unwrap_or_else(|| prefill_by_default.contains(&m.provider.as_str()));
        if !provider_ids.contains(&m.provider.as_str()) {
            self.problem(
                &at.key("provider"),
                format!(
                    "unknown provider {:?}{}; providers: {}",
                    m.provider,
                    did_you_mean(&m.provider, provider_ids.iter().copied()),
                    list(provider_ids.iter().copied())
                ),
            );
        }
        if m.model.as_deref().is_some_and(|u| u.trim().is_empty()) {
            self.problem(
                &at.key("model"),
                "is empty: name the upstream model, or remove the key to use the id",
            );
        }
        for (key, cost) in [
            ("cost_per_1k", m.cost_per_1k),
            ("input_cost_per_1k", m.input_cost_per_1k),
            ("output_cost_per_1k", m.output_cost_per_1k),
        ] {
            if let Some(cost) = cost
                && !(cost.is_finite() && cost >= 0.0)
            {
                self.problem(
                    &at.key(key),
                    format!("must be a non-negative number of USD (got {cost})"),
                );
            }
        }
        if m.cost_per_1k.is_some()
            && m.input_cost_per_1k.is_some()
            && m.output_cost_per_1k.is_some()
        {
            self.warn(
                &at.key("cost_per_1k"),
                "is unused: input_cost_per_1k and output_cost_per_1k are both set",
            );
        }
        if m.context_window == 0 {
            self.problem(&at.key("context_window"), "must be greater than 0");
        }
        if m.dimensions == Some(0) {
            self.problem(&at.key("dimensions"), "must be greater than 0");
        }
        if m.max_tokens == 0 {
            self.problem(&at.key("max_tokens"), "must be greater than 0");
        } else if m.context_window > 0 && m.max_tokens > m.context_window {
            self.problem(
                &at.key("max_tokens"),
                format!(
                    "{} exceeds context_window ({}): no request could fit",
                    m.max_tokens, m.context_window
                ),
            );
        }
        let shared = m.cost_per_1k.unwrap_or(DEFAULT_COST_PER_1K);
        ModelSpec {
            id: id.to_owned(),
            upstream: m.model.unwrap_or_else(|| id.to_owned()),
            provider: m.provider,
            priority: m.priority,
            max_tokens: m.max_tokens,
            input_cost_per_1k: m.input_cost_per_1k.unwrap_or(shared),
            output_cost_per_1k: m.output_cost_per_1k.unwrap_or(shared),
            context_window: m.context_window,
            capabilities: Capabilities {
                streaming: m.streaming,
                tools: m.tools,
                assistant_prefill: prefill,
            },
            last_resort: m.last_resort,
            dimensions: m.dimensions,
            quota: RateQuota {
                rpm: self.per_minute(&at.key("rpm"), m.rpm),
                tpm: self.per_minute(&at.key("tpm"), m.tpm),
            },
        }
    }
}

impl Builder<'_> {
    /// A per-minute rate limit (`rpm`, `tpm`): a whole number above 0.
    pub(super) fn per_minute(&mut self, at: &KeyPath, value: Option<i64>) -> Option<u64> {
        let value = value?;
        match u64::try_from(value) {
            Ok(v) if v > 0 => Some(v),
            _ => {
                self.problem(
                    at,
                    format!(
                        "must be a whole number greater than 0 (got {value}); remove the key for no limit"
                    ),
                );
                None
            }
        }
    }
}
