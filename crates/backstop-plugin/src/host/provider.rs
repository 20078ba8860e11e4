//! A plugin's provider type, behind core's [`Provider`] trait.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_ffi::{ContextExt, FfiFuture};
use async_trait::async_trait;
use backstop_core::{
    Call, ChatChunk, ChatResponse, ChunkStream, FailureKind, ModelSpec, Provider, ProviderError,
};
use futures::{FutureExt, Stream};

use super::{PluginError, created, decode, failure_message};
use crate::abi::{
    FfiBytes, FfiOutcome, FfiStr, NEXT_CHUNKS, NEXT_END, NEXT_ERROR, NEXT_PANIC, NEXT_PENDING,
    PluginKind, ProviderVTable, STATUS_ERROR, STATUS_OK, STATUS_PANIC,
};
use crate::wire::{self, ChunkHeader, ModelHandle, WireCall, WireError};

/// Creates instances of one provider type of a loaded plugin. Cheap to
/// clone, `Send + Sync + 'static`: a config registry can keep it in a
/// closure.
#[derive(Clone)]
pub struct ProviderFactory {
    pub(super) plugin: Arc<str>,
    pub(super) type_name: Arc<str>,
    pub(super) vtable: &'static ProviderVTable,
}

impl fmt::Debug for ProviderFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderFactory")
            .field("plugin", &self.plugin)
            .field("type_name", &self.type_name)
            .finish()
    }
}

impl ProviderFactory {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The name configs use in `type = "..."`.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// Builds a provider from its config (the provider's config table).
    pub fn create(&self, config: &serde_json::Value) -> Result<Arc<dyn Provider>, PluginError> {
        let config = serde_json::to_vec(config).map_err(|source| PluginError::Encode {
            plugin: self.plugin.to_string(),
            what: "config",
            source,
        })?;
        // SAFETY: `new` is the plugin's constructor, read from a declaration
        // whose ABI version matched; `config` outlives the call.
        let made = unsafe { (self.vtable.new)(FfiStr::new(&config)) };
        let instance = created(made, &self.plugin, PluginKind::Provider, &self.type_name)?;
        Ok(Arc::new(DynProvider {
            instance,
            vtable: self.vtable,
            plugin: self.plugin.clone(),
            type_name: self.type_name.clone(),
            models: RwLock::new(Vec::new()),
        }))
    }
}

/// A provider that lives in a plugin library.
pub(crate) struct DynProvider {
    instance: *mut c_void,
    vtable: &'static ProviderVTable,
    plugin: Arc<str>,
    type_name: Arc<str>,
    /// Models registered with the instance, and their handles.
    models: RwLock<Vec<(ModelSpec, ModelHandle)>>,
}

// SAFETY: the instance is the plugin's `Arc<P>` with `P: Provider`, which
// is `Send + Sync`; every vtable function takes it by shared pointer, and
// only `drop` (called once, from `Drop`) takes it back.
unsafe impl Send for DynProvider {}
// SAFETY: as above.
unsafe impl Sync for DynProvider {}

impl Drop for DynProvider {
    fn drop(&mut self) {
        // SAFETY: `instance` came from this vtable's `new` and is dropped
        // once, here; nothing uses it after.
        unsafe { (self.vtable.drop)(self.instance) };
    }
}

impl fmt::Debug for DynProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynProvider")
            .field("plugin", &self.plugin)
            .field("type_name", &self.type_name)
            .finish()
    }
}

impl DynProvider {
    fn invalid(&self, message: String) -> ProviderError {
        ProviderError::new(FailureKind::InvalidResponse, message)
    }

    fn panicked(&self, operation: &str, message: &str) -> ProviderError {
        tracing::error!(
            plugin = %self.plugin,
            type_name = %self.type_name,
            operation,
            message,
            "plugin panicked; the call fails as invalid_response"
        );
        self.invalid(format!(
            "plugin `{}` ({}) panicked in {operation}: {message}",
            self.plugin, self.type_name
        ))
    }

    /// Awaits a plugin future. The SDK never lets a poll panic, but a
    /// plugin built otherwise might; that fails the call, not the host.
    async fn settle<T>(&self, operation: &str, future: FfiFuture<T>) -> Result<T, ProviderError> {
        AssertUnwindSafe(future)
            .catch_unwind()
            .await
            .map_err(|_| self.panicked(operation, "its future panicked while polled"))
    }

    /// The answer of a complete call, or its error.
    fn response(&self, outcome: &FfiOutcome) -> Result<ChatResponse, ProviderError> {
        match outcome.status {
            STATUS_OK => wire::decode_response(outcome.bytes.as_slice()).map_err(|e| {
                self.invalid(format!(
                    "plugin `{}` returned an unreadable answer: {e}",
                    self.plugin
                ))
            }),
            status => Err(self.failure("complete", status, &outcome.bytes)),
        }
    }

    /// The error a failed call reports.
    fn failure(&self, operation: &str, status: u32, bytes: &FfiBytes) -> ProviderError {
        match status {
            STATUS_ERROR => self.provider_error(operation, bytes),
            STATUS_PANIC => self.panicked(operation, &failure_message(bytes)),
            other => self.invalid(format!(
                "plugin `{}` returned unknown status {other} from {operation}",
                self.plugin
            )),
        }
    }

    fn provider_error(&self, operation: &str, bytes: &FfiBytes) -> ProviderError {
        decode::<WireError>(bytes).map_or_else(
            |e| {
                self.invalid(format!(
                    "plugin `{}` returned an unreadable {operation} error: {e}",
                    self.plugin
                ))
            },
            ProviderError::from,
        )
    }

    fn encode_call(&self, call: &Call<'_>) -> Result<Vec<u8>, ProviderError> {
        let model = self.model_handle(call.model)?;
        let call = WireCall::of(call, model);
        wire::encode(&call, call.size_hint()).map_err(|e| {
            self.invalid(format!(
                "cannot encode the call for plugin `{}`: {e}",
                self.plugin
            ))
        })
    }

    /// The handle of `spec`, registering it with the instance the first
    /// time it is seen (a model table is small and fixed; a lookup is a
    /// read lock and a few comparisons).
    fn model_handle(&self, spec: &ModelSpec) -> Result<ModelHandle, ProviderError> {
        let known = |models: &[(ModelSpec, ModelHandle)]| {
            models
                .iter()
                .find(|(m, _)| m.id == spec.id && same_spec(m, spec))
                .map(|(_, h)| *h)
        };
        if let Some(handle) = known(&self.models.read().unwrap_or_else(PoisonError::into_inner)) {
            return Ok(handle);
        }
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = known(&models) {
            return Ok(handle);
        }
        let json = serde_json::to_vec(spec).map_err(|e| {
            self.invalid(format!(
                "cannot encode the model for plugin `{}`: {e}",
                self.plugin
            ))
        })?;
        // SAFETY: `instance` is live until `Drop`; `json` outlives the call.
        let registered = unsafe { (self.vtable.register_model)(self.instance, FfiStr::new(&json)) };
        if registered.status != STATUS_OK {
            return Err(self.failure("register_model", registered.status, &registered.bytes));
        }
        models.push((spec.clone(), registered.handle));
        Ok(registered.handle)
    }
}

/// Whether two specs are the same model. `==` is false for a spec with a
/// NaN price even against itself; comparing the JSON then keeps such a spec
/// from being registered again on every call.
fn same_spec(a: &ModelSpec, b: &ModelSpec) -> bool {
    a == b || serde_json::to_vec(a).ok() == serde_json::to_vec(b).ok()
}

#[async_trait]
impl Provider for DynProvider {
    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError> {
        let json = self.encode_call(&call)?;
        // The plugin decodes the call before it returns; `json` may go after.
        // SAFETY: `instance` is live until `Drop`, which cannot run while
        // `&self` is borrowed by this call.
        let future = unsafe { (self.vtable.complete)(self.instance, FfiStr::new(&json)) };
        drop(json);
        let outcome = self.settle("complete", future).await?;
        self.response(&outcome)
    }

    async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError> {
        let json = self.encode_call(&call)?;
        // SAFETY: as for `complete`: `instance` is live while `&self` is.
        let future = unsafe { (self.vtable.stream)(self.instance, FfiStr::new(&json)) };
        drop(json);
        let start = self.settle("stream", future).await?;
        match start.status {
            STATUS_OK if !start.stream.0.is_null() => Ok(Box::pin(DynChunkStream {
                handle: start.stream.0,
                vtable: self.vtable,
                plugin: self.plugin.clone(),
                type_name: self.type_name.clone(),
                ready: VecDeque::new(),
                header: ChunkHeader::default(),
                finished: false,
            })),
            STATUS_OK => Err(self.invalid(format!(
                "plugin `{}` reported a stream but returned no handle",
                self.plugin
            ))),
            status => Err(self.failure("stream", status, &start.bytes)),
        }
    }

    async fn probe(
        &self,
        model: &ModelSpec,
        connect_timeout: Duration,
    ) -> Result<(), ProviderError> {
        let model = self.model_handle(model)?;
        let timeout_ms = u64::try_from(connect_timeout.as_millis()).unwrap_or(u64::MAX);
        // SAFETY: `instance` is live while `&self` is; `model` is a handle
        // this instance returned from `register_model`.
        let future = unsafe { (self.vtable.probe)(self.instance, model, timeout_ms) };
        let outcome = self.settle("probe", future).await?;
        match outcome.status {
            STATUS_OK => Ok(()),
            status => Err(self.failure("probe", status, &outcome.bytes)),
        }
    }
}

/// A stream that lives in a plugin library. Dropping it drops the plugin's
/// stream and cancels its pump.
struct DynChunkStream {
    handle: *mut c_void,
    vtable: &'static ProviderVTable,
    plugin: Arc<str>,
    type_name: Arc<str>,
    /// Chunks of the last batch not yet yielded.
    ready: VecDeque<ChatChunk>,
    /// The per-stream fields of the last chunk read.
    header: ChunkHeader,
    finished: bool,
}

// SAFETY: the handle is the plugin's box around a `ChunkStream`, which is
// `Send`; it is polled only through `&mut self`.
unsafe impl Send for DynChunkStream {}

impl Drop for DynChunkStream {
    fn drop(&mut self) {
        // SAFETY: `handle` came from this vtable's `stream` and is dropped
        // once, here; nothing polls it after.
        unsafe { (self.vtable.drop_stream)(self.handle) };
    }
}

impl DynChunkStream {
    fn end_with(&mut self, error: ProviderError) -> Poll<Option<Result<ChatChunk, ProviderError>>> {
        self.finished = true;
        Poll::Ready(Some(Err(error)))
    }
}

impl Stream for DynChunkStream {
    type Item = Result<ChatChunk, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(chunk) = this.ready.pop_front() {
            return Poll::Ready(Some(Ok(chunk)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        let (poll_next, handle) = (this.vtable.poll_next, this.handle);
        // SAFETY: `handle` is live until `Drop` and polled only through
        // `&mut self`, so never twice at once.
        let next = cx.with_ffi_context(|cx| unsafe { poll_next(handle, cx) });
        let invalid = |message: String| ProviderError::new(FailureKind::InvalidResponse, message);
        match next.state {
            NEXT_PENDING => Poll::Pending,
            NEXT_CHUNKS => {
                match wire::decode_chunks(next.bytes.as_slice(), &mut this.header, &mut this.ready)
                {
                    Ok(()) => match this.ready.pop_front() {
                        Some(chunk) => Poll::Ready(Some(Ok(chunk))),
                        None => this.end_with(invalid(format!(
                            "plugin `{}` streamed an empty batch",
                            this.plugin
                        ))),
                    },
                    Err(e) => {
                        // A batch is read whole or not at all.
                        this.ready.clear();
                        this.end_with(invalid(format!(
                            "plugin `{}` streamed unreadable chunks: {e}",
                            this.plugin
                        )))
                    }
                }
            }
            NEXT_ERROR => Poll::Ready(Some(Err(decode::<WireError>(&next.bytes).map_or_else(
                |e| {
                    invalid(format!(
                        "plugin `{}` streamed an unreadable error: {e}",
                        this.plugin
                    ))
                },
                ProviderError::from,
            )))),
            NEXT_END => {
                this.finished = true;
                Poll::Ready(None)
            }
            NEXT_PANIC => {
                let message = failure_message(&next.bytes);
                tracing::error!(
                    plugin = %this.plugin,
                    type_name = %this.type_name,
                    message,
                    "plugin panicked mid-stream; the stream fails as invalid_response"
                );
                let error = invalid(format!(
                    "plugin `{}` ({}) panicked in stream: {message}",
                    this.plugin, this.type_name
                ));
                this.end_with(error)
            }
            other => {
                let error = invalid(format!(
                    "plugin `{}` returned unknown stream state {other}",
                    this.plugin
                ));
                this.end_with(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_the_same_model_even_with_a_nan_price() {
        let a = ModelSpec::new("m", "p");
        let mut b = a.clone();
        assert!(same_spec(&a, &b));
        b.priority = 2;
        assert!(!same_spec(&a, &b));
        let mut nan = a.clone();
        nan.input_cost_per_1k = f64::NAN;
        assert!(same_spec(&nan, &nan.clone()));
        assert!(!same_spec(&nan, &a));
    }
}
