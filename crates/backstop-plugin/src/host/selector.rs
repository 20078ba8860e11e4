//! A plugin's selector type, behind core's [`Selector`] trait.
//!
//! `order` is on the hot path, so it crosses the boundary without JSON and
//! without allocating for chains of up to 16 models: the request facts as a
//! `#[repr(C)]` struct, the candidates as `(model index, chain position)`
//! pairs the plugin reorders in place. The plugin looks the models up in
//! the table it was built with. A plugin that fails, panics, or returns
//! something that is not a reordering of the candidates leaves them in
//! configured order: a selector orders, and the Router still serves.

use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backstop_core::{Candidate, ModelSpec, RequestFacts, Selector};
use smallvec::SmallVec;

use super::{PluginError, created, decode, failure_message};
use crate::abi::{
    FfiBytes, FfiCandidate, FfiFacts, FfiStr, PluginKind, STATUS_OK, STATUS_PANIC, SelectorVTable,
};

/// Creates instances of one selector type of a loaded plugin. Cheap to
/// clone, `Send + Sync + 'static`.
#[derive(Clone)]
pub struct SelectorFactory {
    pub(super) plugin: Arc<str>,
    pub(super) type_name: Arc<str>,
    pub(super) vtable: &'static SelectorVTable,
}

impl fmt::Debug for SelectorFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectorFactory")
            .field("plugin", &self.plugin)
            .field("type_name", &self.type_name)
            .finish()
    }
}

impl SelectorFactory {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The name configs use in `type = "..."`.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// Builds a selector from its config and the Router's model table
    /// (`StrategyContext::models`: the candidates' indexes point into it).
    pub fn create(
        &self,
        config: &serde_json::Value,
        models: &[ModelSpec],
    ) -> Result<Arc<dyn Selector>, PluginError> {
        let encode = |what, source| PluginError::Encode {
            plugin: self.plugin.to_string(),
            what,
            source,
        };
        let config = serde_json::to_vec(config).map_err(|e| encode("config", e))?;
        let table = serde_json::to_vec(models).map_err(|e| encode("model table", e))?;
        // SAFETY: `new` is the plugin's constructor, read from a declaration
        // whose ABI version matched; both buffers outlive the call.
        let made = unsafe { (self.vtable.new)(FfiStr::new(&config), FfiStr::new(&table)) };
        let instance = created(made, &self.plugin, PluginKind::Selector, &self.type_name)?;
        let mut selector = DynSelector {
            instance,
            vtable: self.vtable,
            plugin: self.plugin.clone(),
            type_name: self.type_name.clone(),
            name: self.type_name.to_string(),
            failures: AtomicU64::new(0),
        };
        // SAFETY: `instance` was just made by this vtable's `new`; the
        // selector that owns it drops it only later.
        let named = unsafe { (self.vtable.name)(instance) };
        match named.status {
            STATUS_OK => {
                if let Ok(name) = decode::<String>(&named.bytes) {
                    selector.name = name;
                }
            }
            _ => {
                // Dropping `selector` gives the instance back to the plugin.
                return Err(PluginError::NewPanicked {
                    plugin: self.plugin.to_string(),
                    kind: PluginKind::Selector,
                    type_name: self.type_name.to_string(),
                    message: format!("in `name`: {}", failure_message(&named.bytes)),
                });
            }
        }
        Ok(Arc::new(selector))
    }
}

/// A selector that lives in a plugin library.
pub(crate) struct DynSelector {
    instance: *mut c_void,
    vtable: &'static SelectorVTable,
    plugin: Arc<str>,
    type_name: Arc<str>,
    name: String,
    failures: AtomicU64,
}

// SAFETY: the instance holds a `Selector`, which is `Send + Sync`; every
// vtable function but `drop` takes it by shared pointer, and `drop` is
// called once, from `Drop`.
unsafe impl Send for DynSelector {}
// SAFETY: as above.
unsafe impl Sync for DynSelector {}

impl Drop for DynSelector {
    fn drop(&mut self) {
        // SAFETY: `instance` came from this vtable's `new` and is dropped
        // once, here; nothing uses it after.
        unsafe { (self.vtable.drop)(self.instance) };
    }
}

impl fmt::Debug for DynSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynSelector")
            .field("plugin", &self.plugin)
            .field("type_name", &self.type_name)
            .finish()
    }
}

impl DynSelector {
    /// Logs a failed `order` (the first, then every 1000th).
    fn failed(&self, scenario: &str, status: u32, reason: &str) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures == 1 || failures.is_multiple_of(1000) {
            tracing::warn!(
                plugin = %self.plugin,
                type_name = %self.type_name,
                scenario,
                failures,
                panicked = status == STATUS_PANIC,
                reason,
                "plugin selector failed; candidates keep their configured order"
            );
        }
    }
}

impl Selector for DynSelector {
    fn name(&self) -> &str {
        &self.name
    }

    fn order(&self, facts: &RequestFacts<'_>, candidates: &mut [Candidate<'_>]) {
        let mut slots: SmallVec<[FfiCandidate; 16]> = candidates
            .iter()
            .map(|c| FfiCandidate {
                index: c.index,
                position: c.position,
            })
            .collect();
        let ffi_facts = FfiFacts {
            scenario: FfiStr::from_str(facts.scenario),
            caller: FfiStr::from_str(facts.caller.unwrap_or("")),
            has_caller: u8::from(facts.caller.is_some()),
            has_max_tokens: u8::from(facts.max_tokens.is_some()),
            stream: u8::from(facts.stream),
            tools: u8::from(facts.tools),
            prompt_tokens: facts.prompt_tokens,
            max_tokens: facts.max_tokens.unwrap_or(0),
        };
        let mut error = FfiBytes::empty();
        // SAFETY: `instance` is live while `&self` is; `slots` holds
        // `slots.len()` initialised candidates and outlives the call.
        let status = unsafe {
            (self.vtable.order)(
                self.instance,
                &ffi_facts,
                slots.as_mut_ptr(),
                slots.len(),
                &mut error,
            )
        };
        if status != STATUS_OK {
            self.failed(facts.scenario, status, &failure_message(&error));
            return;
        }
        if let Err(reason) = reorder(candidates, &slots) {
            self.failed(facts.scenario, status, reason);
        }
    }
}

/// Puts `candidates` in the order of `slots`, if `slots` is a reordering
/// of them; leaves them alone otherwise.
fn reorder(candidates: &mut [Candidate<'_>], slots: &[FfiCandidate]) -> Result<(), &'static str> {
    let original: SmallVec<[Candidate<'_>; 16]> = candidates.iter().copied().collect();
    let mut taken: SmallVec<[bool; 16]> = SmallVec::from_elem(false, original.len());
    let mut order: SmallVec<[usize; 16]> = SmallVec::with_capacity(original.len());
    for slot in slots {
        let found = original
            .iter()
            .enumerate()
            .position(|(i, c)| !taken[i] && c.index == slot.index && c.position == slot.position);
        let Some(i) = found else {
            return Err(
                "the plugin returned candidates that are not a reordering of those it was given",
            );
        };
        taken[i] = true;
        order.push(i);
    }
    for (candidate, &i) in candidates.iter_mut().zip(&order) {
        *candidate = original[i];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(specs: &[ModelSpec]) -> Vec<Candidate<'_>> {
        specs
            .iter()
            .enumerate()
            .map(|(i, spec)| Candidate {
                index: i,
                spec,
                position: i,
            })
            .collect()
    }

    fn slot(index: usize, position: usize) -> FfiCandidate {
        FfiCandidate { index, position }
    }

    /// Reverses the chain for streams and remembers the facts it saw.
    #[derive(Debug)]
    struct FactsSelector;

    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    impl crate::PluginSelector for FactsSelector {
        fn from_config(
            _: serde_json::Value,
            models: Arc<[ModelSpec]>,
        ) -> Result<Self, crate::InitError> {
            assert_eq!(models.len(), 3);
            Ok(Self)
        }
    }

    impl Selector for FactsSelector {
        fn name(&self) -> &str {
            "facts"
        }

        fn order(&self, facts: &RequestFacts<'_>, candidates: &mut [Candidate<'_>]) {
            SEEN.lock().unwrap().push(format!("{facts:?}"));
            if facts.stream {
                candidates.reverse();
            }
        }
    }

    #[test]
    fn facts_and_candidates_cross_the_boundary_intact() {
        let factory = SelectorFactory {
            plugin: "in-process".into(),
            type_name: "facts".into(),
            vtable: &crate::sdk::selector::Exports::<FactsSelector>::VTABLE,
        };
        let specs = [
            ModelSpec::new("a", "p"),
            ModelSpec::new("b", "p"),
            ModelSpec::new("c", "p"),
        ];
        let selector = factory.create(&serde_json::json!({}), &specs).unwrap();
        assert_eq!(selector.name(), "facts");
        let streaming = RequestFacts {
            scenario: "chat",
            caller: Some("team-a"),
            prompt_tokens: 42,
            max_tokens: Some(7),
            stream: true,
            tools: true,
        };
        let plain = RequestFacts {
            scenario: "batch",
            caller: None,
            prompt_tokens: 1,
            max_tokens: None,
            stream: false,
            tools: false,
        };
        let mut c = candidates(&specs);
        selector.order(&streaming, &mut c);
        let ids: Vec<_> = c
            .iter()
            .map(|c| (c.spec.id.as_str(), c.index, c.position))
            .collect();
        assert_eq!(ids, [("c", 2, 2), ("b", 1, 1), ("a", 0, 0)]);
        let mut c = candidates(&specs);
        selector.order(&plain, &mut c);
        let ids: Vec<_> = c.iter().map(|c| c.spec.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(
            *SEEN.lock().unwrap(),
            [format!("{streaming:?}"), format!("{plain:?}")]
        );
    }

    #[test]
    fn reorder_applies_a_permutation() {
        let specs = [
            ModelSpec::new("a", "p"),
            ModelSpec::new("b", "p"),
            ModelSpec::new("c", "p"),
        ];
        let mut c = candidates(&specs);
        reorder(&mut c, &[slot(2, 2), slot(0, 0), slot(1, 1)]).unwrap();
        let ids: Vec<_> = c.iter().map(|c| c.spec.id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
    }

    #[test]
    fn reorder_refuses_duplicates_and_strangers() {
        let specs = [ModelSpec::new("a", "p"), ModelSpec::new("b", "p")];
        let mut c = candidates(&specs);
        assert!(reorder(&mut c, &[slot(0, 0), slot(0, 0)]).is_err());
        assert!(reorder(&mut c, &[slot(0, 0), slot(5, 1)]).is_err());
        let ids: Vec<_> = c.iter().map(|c| c.spec.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"], "a refused order leaves the configured one");
    }
}
