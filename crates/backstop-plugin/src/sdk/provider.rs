//! The exports of a provider type: a [`ProviderVTable`] whose functions
//! decode the host's JSON, run the provider on the plugin runtime and encode
//! what it answers.

use std::ffi::c_void;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_ffi::{FfiContext, FfiFuture, FutureExt};
use backstop_core::{ChatResponse, FailureKind, ModelSpec, Provider, ProviderError};

use super::guard::guard;
use super::runtime::{PluginStream, PluginTask, StreamPoll, runtime};
use super::{InitError, failure_bytes};
use crate::abi::{
    FfiBytes, FfiNew, FfiNext, FfiOutcome, FfiRegistered, FfiStr, FfiStreamHandle, FfiStreamStart,
    NEXT_CHUNKS, NEXT_END, NEXT_ERROR, NEXT_PANIC, NEXT_PENDING, ProviderVTable, STATUS_ERROR,
    STATUS_OK, STATUS_PANIC,
};
use crate::wire::{self, ModelHandle, OwnedCall, WireError};

/// A [`Provider`] a plugin can export: one that can be built from its JSON
/// config.
pub trait PluginProvider: Provider + Sized {
    /// Builds the provider from its config (the provider's table of the
    /// gateway config, as JSON). An error is reported to the operator as the
    /// reason the provider could not be created.
    fn from_config(config: serde_json::Value) -> Result<Self, InitError>;
}

/// The vtable of `P`, as an associated constant so that a reference to it
/// is `'static`.
pub(crate) struct Exports<P>(std::marker::PhantomData<P>);

impl<P: PluginProvider> Exports<P> {
    pub(crate) const VTABLE: ProviderVTable = ProviderVTable {
        new: new::<P>,
        drop: drop_instance::<P>,
        register_model: register_model::<P>,
        complete: complete::<P>,
        stream: stream::<P>,
        probe: probe::<P>,
        poll_next,
        drop_stream,
    };
}

/// The instance behind the host's pointer.
struct Instance<P> {
    /// An `Arc` so that calls in flight keep the provider alive after the
    /// host drops it.
    provider: Arc<P>,
    /// Registered models, by handle.
    models: RwLock<Vec<Arc<ModelSpec>>>,
}

impl<P> Instance<P> {
    /// # Safety
    ///
    /// `instance` must be a pointer `new::<P>` returned that
    /// `drop_instance::<P>` has not freed yet: the host keeps it until it
    /// drops its wrapper.
    unsafe fn from_ptr<'a>(instance: *const c_void) -> &'a Self {
        // SAFETY: per this function's contract the pointer is a live
        // `Box<Instance<P>>` made by `new::<P>`.
        unsafe { &*instance.cast::<Self>() }
    }

    /// The provider and the model `handle` names.
    fn resolve(&self, handle: ModelHandle) -> Result<(Arc<P>, Arc<ModelSpec>), ProviderError> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        let model = usize::try_from(handle)
            .ok()
            .and_then(|i| models.get(i))
            .cloned()
            .ok_or_else(|| {
                ProviderError::new(
                    FailureKind::InvalidResponse,
                    format!("the plugin has no model registered as {handle}"),
                )
            })?;
        Ok((self.provider.clone(), model))
    }
}

extern "C" fn new<P: PluginProvider>(config: FfiStr<'_>) -> FfiNew {
    let built = guard(|| -> Result<*mut c_void, String> {
        let handle = runtime()?;
        let _runtime = handle.enter();
        // SAFETY: the host lends the config for the duration of this call.
        let config = serde_json::from_slice(unsafe { config.as_bytes() })
            .map_err(|e| format!("the config is not valid JSON: {e}"))?;
        let provider = P::from_config(config).map_err(|e| e.to_string())?;
        let instance = Box::new(Instance {
            provider: Arc::new(provider),
            models: RwLock::new(Vec::new()),
        });
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

extern "C" fn drop_instance<P: PluginProvider>(instance: *mut c_void) {
    let _ = guard(|| {
        let _runtime = runtime().ok().map(|h| h.enter());
        // SAFETY: the host calls this once, with a pointer `new::<P>` made.
        drop(unsafe { Box::from_raw(instance.cast::<Instance<P>>()) });
    });
}

extern "C" fn register_model<P: PluginProvider>(
    instance_ptr: *const c_void,
    model: FfiStr<'_>,
) -> FfiRegistered {
    let registered = guard(|| -> Result<ModelHandle, String> {
        // SAFETY: the host passes the pointer of a live instance.
        let instance = unsafe { Instance::<P>::from_ptr(instance_ptr) };
        // SAFETY: the host lends the model for the duration of this call.
        let model: ModelSpec = serde_json::from_slice(unsafe { model.as_bytes() })
            .map_err(|e| format!("the plugin could not read the model: {e}"))?;
        let mut models = instance
            .models
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        models.push(Arc::new(model));
        ModelHandle::try_from(models.len() - 1).map_err(|e| e.to_string())
    });
    match registered {
        Ok(Ok(handle)) => FfiRegistered {
            status: STATUS_OK,
            handle,
            bytes: FfiBytes::empty(),
        },
        Ok(Err(message)) => FfiRegistered {
            status: STATUS_ERROR,
            handle: 0,
            bytes: error_bytes(&ProviderError::new(FailureKind::InvalidResponse, message)),
        },
        Err(panic) => FfiRegistered {
            status: STATUS_PANIC,
            handle: 0,
            bytes: failure_bytes(panic),
        },
    }
}

extern "C" fn complete<P: PluginProvider>(
    instance_ptr: *const c_void,
    call: FfiStr<'_>,
) -> FfiFuture<FfiOutcome> {
    let started = guard(|| -> Result<_, ProviderError> {
        // SAFETY: the host passes the pointer of a live instance.
        let instance = unsafe { Instance::<P>::from_ptr(instance_ptr) };
        // SAFETY: the host lends the call for the duration of this call.
        let call = decode_call(unsafe { call.as_bytes() })?;
        let (provider, model) = instance.resolve(call.model)?;
        let handle = runtime().map_err(|e| ProviderError::new(FailureKind::InvalidResponse, e))?;
        Ok(PluginTask::new(handle, async move {
            provider.complete(call.as_call(&model)).await
        }))
    });
    match started {
        Ok(Ok(task)) => async move {
            match task.await {
                Ok(Ok(response)) => response_outcome(&response),
                Ok(Err(error)) => error_outcome(&error),
                Err(panic) => panic_outcome(panic),
            }
        }
        .into_ffi(),
        Ok(Err(error)) => ready(error_outcome(&error)),
        Err(panic) => ready(panic_outcome(panic)),
    }
}

extern "C" fn stream<P: PluginProvider>(
    instance_ptr: *const c_void,
    call: FfiStr<'_>,
) -> FfiFuture<FfiStreamStart> {
    let started = guard(|| -> Result<_, ProviderError> {
        // SAFETY: the host passes the pointer of a live instance.
        let instance = unsafe { Instance::<P>::from_ptr(instance_ptr) };
        // SAFETY: the host lends the call for the duration of this call.
        let call = decode_call(unsafe { call.as_bytes() })?;
        let (provider, model) = instance.resolve(call.model)?;
        let handle = runtime().map_err(|e| ProviderError::new(FailureKind::InvalidResponse, e))?;
        let task = PluginTask::new(handle, async move {
            provider.stream(call.as_call(&model)).await
        });
        Ok((handle, task))
    });
    let not_started = |status, bytes| FfiStreamStart {
        status,
        stream: FfiStreamHandle(std::ptr::null_mut()),
        bytes,
    };
    match started {
        Ok(Ok((handle, task))) => async move {
            match task.await {
                Ok(Ok(stream)) => {
                    let stream = Box::new(PluginStream::new(handle, stream));
                    FfiStreamStart {
                        status: STATUS_OK,
                        stream: FfiStreamHandle(Box::into_raw(stream).cast()),
                        bytes: FfiBytes::empty(),
                    }
                }
                Ok(Err(error)) => not_started(STATUS_ERROR, error_bytes(&error)),
                Err(panic) => not_started(STATUS_PANIC, failure_bytes(panic)),
            }
        }
        .into_ffi(),
        Ok(Err(error)) => {
            let start = not_started(STATUS_ERROR, error_bytes(&error));
            async move { start }.into_ffi()
        }
        Err(panic) => {
            let start = not_started(STATUS_PANIC, failure_bytes(panic));
            async move { start }.into_ffi()
        }
    }
}

extern "C" fn probe<P: PluginProvider>(
    instance_ptr: *const c_void,
    model: ModelHandle,
    connect_timeout_ms: u64,
) -> FfiFuture<FfiOutcome> {
    let started = guard(|| -> Result<_, ProviderError> {
        // SAFETY: the host passes the pointer of a live instance.
        let instance = unsafe { Instance::<P>::from_ptr(instance_ptr) };
        let (provider, model) = instance.resolve(model)?;
        let handle = runtime().map_err(|e| ProviderError::new(FailureKind::InvalidResponse, e))?;
        let timeout = Duration::from_millis(connect_timeout_ms);
        Ok(PluginTask::new(handle, async move {
            provider.probe(&model, timeout).await
        }))
    });
    match started {
        Ok(Ok(task)) => async move {
            match task.await {
                Ok(Ok(())) => FfiOutcome {
                    status: STATUS_OK,
                    bytes: FfiBytes::empty(),
                },
                Ok(Err(error)) => error_outcome(&error),
                Err(panic) => panic_outcome(panic),
            }
        }
        .into_ffi(),
        Ok(Err(error)) => ready(error_outcome(&error)),
        Err(panic) => ready(panic_outcome(panic)),
    }
}

extern "C" fn poll_next(stream: *mut c_void, cx: &mut FfiContext<'_>) -> FfiNext {
    let polled = guard(|| {
        // SAFETY: the host passes a handle `stream::<P>` made and has not
        // dropped, and polls it from one thread at a time (`&mut` access).
        let stream = unsafe { &mut *stream.cast::<PluginStream>() };
        match cx.with_context(|cx| stream.poll_next(cx)) {
            StreamPoll::Pending => (NEXT_PENDING, FfiBytes::empty()),
            StreamPoll::Chunks => match stream.take_batch() {
                Ok(json) => (NEXT_CHUNKS, FfiBytes::from_vec(json)),
                Err(e) => (NEXT_ERROR, error_bytes(&unserializable(&e))),
            },
            StreamPoll::Error(error) => (NEXT_ERROR, error_bytes(&error)),
            StreamPoll::End => (NEXT_END, FfiBytes::empty()),
            StreamPoll::Panicked(panic) => (NEXT_PANIC, failure_bytes(panic)),
        }
    });
    let (state, bytes) = polled.unwrap_or_else(|panic| (NEXT_PANIC, failure_bytes(panic)));
    FfiNext { state, bytes }
}

extern "C" fn drop_stream(stream: *mut c_void) {
    let _ = guard(|| {
        // SAFETY: the host calls this once, with a handle `stream::<P>` made.
        drop(unsafe { Box::from_raw(stream.cast::<PluginStream>()) });
    });
}

fn decode_call(bytes: &[u8]) -> Result<OwnedCall, ProviderError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ProviderError::new(
            FailureKind::InvalidResponse,
            format!("the plugin could not read the call: {e}"),
        )
    })
}

fn ready<T: Send + 'static>(value: T) -> FfiFuture<T> {
    async move { value }.into_ffi()
}

fn response_outcome(response: &ChatResponse) -> FfiOutcome {
    match wire::encode_response(response) {
        Ok(json) => FfiOutcome {
            status: STATUS_OK,
            bytes: FfiBytes::from_vec(json),
        },
        Err(e) => error_outcome(&unserializable(&e)),
    }
}

fn unserializable(e: &serde_json::Error) -> ProviderError {
    ProviderError::new(
        FailureKind::InvalidResponse,
        format!("the plugin could not encode its answer: {e}"),
    )
}

fn error_bytes(error: &ProviderError) -> FfiBytes {
    FfiBytes::from_vec(serde_json::to_vec(&WireError::from(error)).unwrap_or_default())
}

fn error_outcome(error: &ProviderError) -> FfiOutcome {
    FfiOutcome {
        status: STATUS_ERROR,
        bytes: error_bytes(error),
    }
}

fn panic_outcome(panic: String) -> FfiOutcome {
    FfiOutcome {
        status: STATUS_PANIC,
        bytes: failure_bytes(panic),
    }
}
