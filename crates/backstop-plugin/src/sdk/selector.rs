//! The exports of a selector type: a [`SelectorVTable`] whose `order`
//! takes plain indexes and request facts, never JSON, so ordering stays as
//! cheap across the boundary as in process.

use std::ffi::c_void;
use std::sync::Arc;

use backstop_core::{Candidate, ModelSpec, RequestFacts, Selector};
use smallvec::SmallVec;

use super::guard::guard;
use super::{InitError, failure_bytes};
use crate::abi::{
    FfiBytes, FfiCandidate, FfiFacts, FfiNew, FfiOutcome, FfiStr, STATUS_ERROR, STATUS_OK,
    STATUS_PANIC, SelectorVTable,
};

/// A [`Selector`] a plugin can export: one that can be built from its JSON
/// config and the model table its candidates' indexes point into.
pub trait PluginSelector: Selector + Sized {
    /// Builds the selector from its config (the strategy's table of the
    /// gateway config, as JSON) and the Router's model table, indexed by
    /// [`ModelIndex`](backstop_core::ModelIndex).
    fn from_config(config: serde_json::Value, models: Arc<[ModelSpec]>) -> Result<Self, InitError>;
}

pub(crate) struct Exports<S>(std::marker::PhantomData<S>);

impl<S: PluginSelector> Exports<S> {
    pub(crate) const VTABLE: SelectorVTable = SelectorVTable {
        new: new::<S>,
        drop: drop_instance::<S>,
        name: name::<S>,
        order: order::<S>,
    };
}

/// The instance behind the host's pointer.
struct Instance<S> {
    selector: S,
    models: Arc<[ModelSpec]>,
}

extern "C" fn new<S: PluginSelector>(config: FfiStr<'_>, models: FfiStr<'_>) -> FfiNew {
    let built = guard(|| -> Result<*mut c_void, String> {
        // SAFETY: the host lends both buffers for the duration of this call.
        let (config, models) = unsafe { (config.as_bytes(), models.as_bytes()) };
        let config = serde_json::from_slice(config)
            .map_err(|e| format!("the config is not valid JSON: {e}"))?;
        let models: Arc<[ModelSpec]> = serde_json::from_slice::<Vec<ModelSpec>>(models)
            .map_err(|e| format!("the plugin could not read the model table: {e}"))?
            .into();
        let selector = S::from_config(config, models.clone()).map_err(|e| e.to_string())?;
        let instance = Box::new(Instance { selector, models });
        Ok(Box::into_raw(instance).cast())
    });
    match built {
        Ok(Ok(instance)) => FfiNew {
            status: STATUS_OK,
            instance,
            bytes: FfiBytes::empty(),
        },
        Ok(Err(message)) => FfiNew {
            status: STATUS_ERROR,
            instance: std::ptr::null_mut(),
            bytes: failure_bytes(message),
        },
        Err(panic) => FfiNew {
            status: STATUS_PANIC,
            instance: std::ptr::null_mut(),
            bytes: failure_bytes(panic),
        },
    }
}

extern "C" fn drop_instance<S: PluginSelector>(instance: *mut c_void) {
    let _ = guard(|| {
        // SAFETY: the host calls this once, with a pointer `new::<S>` made.
        drop(unsafe { Box::from_raw(instance.cast::<Instance<S>>()) });
    });
}

extern "C" fn name<S: PluginSelector>(instance: *const c_void) -> FfiOutcome {
    let named = guard(|| {
        // SAFETY: the host passes the pointer of a live instance.
        let instance = unsafe { &*instance.cast::<Instance<S>>() };
        serde_json::to_vec(instance.selector.name()).unwrap_or_default()
    });
    match named {
        Ok(json) => FfiOutcome {
            status: STATUS_OK,
            bytes: FfiBytes::from_vec(json),
        },
        Err(panic) => FfiOutcome {
            status: STATUS_PANIC,
            bytes: failure_bytes(panic),
        },
    }
}

extern "C" fn order<S: PluginSelector>(
    instance: *const c_void,
    facts: &FfiFacts<'_>,
    candidates: *mut FfiCandidate,
    len: usize,
    error: &mut FfiBytes,
) -> u32 {
    let ordered = guard(|| -> Result<(), String> {
        // SAFETY: the host passes the pointer of a live instance.
        let instance = unsafe { &*instance.cast::<Instance<S>>() };
        // SAFETY: the host lends `len` candidates, exclusively, for the
        // duration of this call.
        let slots = unsafe { std::slice::from_raw_parts_mut(candidates, len) };
        // SAFETY: the host lends the facts' strings for this call.
        let (scenario, caller) = unsafe { (facts.scenario.as_bytes(), facts.caller.as_bytes()) };
        let text =
            |bytes| std::str::from_utf8(bytes).map_err(|e| format!("facts are not UTF-8: {e}"));
        let facts = RequestFacts {
            scenario: text(scenario)?,
            caller: if facts.has_caller == 1 {
                Some(text(caller)?)
            } else {
                None
            },
            prompt_tokens: facts.prompt_tokens,
            max_tokens: (facts.has_max_tokens == 1).then_some(facts.max_tokens),
            stream: facts.stream == 1,
            tools: facts.tools == 1,
        };
        let mut ordered: SmallVec<[Candidate<'_>; 16]> = SmallVec::with_capacity(len);
        for slot in slots.iter() {
            let spec = instance.models.get(slot.index).ok_or_else(|| {
                format!(
                    "candidate model index {} is outside the model table of {} models",
                    slot.index,
                    instance.models.len()
                )
            })?;
            ordered.push(Candidate {
                index: slot.index,
                spec,
                position: slot.position,
            });
        }
        instance.selector.order(&facts, &mut ordered);
        for (slot, candidate) in slots.iter_mut().zip(&ordered) {
            *slot = FfiCandidate {
                index: candidate.index,
                position: candidate.position,
            };
        }
        Ok(())
    });
    match ordered {
        Ok(Ok(())) => STATUS_OK,
        Ok(Err(message)) => {
            *error = failure_bytes(message);
            STATUS_ERROR
        }
        Err(panic) => {
            *error = failure_bytes(panic);
            STATUS_PANIC
        }
    }
}
