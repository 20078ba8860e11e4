//! The boundary itself: every type that crosses between a host and a plugin
//! library.
//!
//! Only C types cross: integers, pointers, `#[repr(C)]` structs of them,
//! `extern "C"` function pointers and [`async_ffi`] futures. Requests,
//! responses, chunks, configs and errors cross as JSON bytes. The rules:
//!
//! 1. The host calls [`ABI_VERSION_SYMBOL`] first and touches nothing else
//!    unless it returns the host's [`ABI_VERSION`].
//! 2. [`DECLARATION_SYMBOL`] then returns a `'static` [`PluginDeclaration`]:
//!    the plugin's name, SDK version, and one [`TypeExport`] per type, whose
//!    `vtable` points at the vtable of its [`kind`](PluginKind).
//! 3. Bytes the host lends ([`FfiStr`]) are valid for the duration of the
//!    call only; a plugin copies what it keeps. Bytes a side hands over
//!    ([`FfiBytes`]) carry the function that frees them, so the side that
//!    allocated always frees, whichever side drops them.
//! 4. Instances and streams are opaque pointers owned by the plugin and
//!    given back to it to drop.
//! 5. No export unwinds: a panic comes back as a [`STATUS_PANIC`] outcome.
//!
//! Adding a new kind (a health policy, say) adds a [`PluginKind`] value and
//! a vtable; it does not change the layout of the existing ones, so it does
//! not bump [`ABI_VERSION`]. A host lists kinds it does not know and skips
//! them.

use std::ffi::c_void;
use std::marker::PhantomData;

use async_ffi::{FfiContext, FfiFuture};

/// The version of this boundary. A host loads only plugins that report the
/// same number.
pub const ABI_VERSION: u32 = 1;

/// `extern "C" fn() -> u32`: the plugin's [`ABI_VERSION`].
pub const ABI_VERSION_SYMBOL: &str = "backstop_plugin_abi_version";

/// `extern "C" fn() -> *const PluginDeclaration`.
pub const DECLARATION_SYMBOL: &str = "backstop_plugin_declaration";

/// The call succeeded; the bytes hold its JSON result.
pub const STATUS_OK: u32 = 0;
/// The call failed; the bytes hold a JSON error.
pub const STATUS_ERROR: u32 = 1;
/// The plugin panicked; the bytes hold a JSON error with the panic message.
pub const STATUS_PANIC: u32 = 2;

/// The stream has no item yet; the waker will be called.
pub const NEXT_PENDING: u32 = 0;
/// The bytes hold the next chunks, one or more, as a JSON array.
pub const NEXT_CHUNKS: u32 = 1;
/// The bytes hold a JSON provider error yielded by the stream.
pub const NEXT_ERROR: u32 = 2;
/// The stream ended.
pub const NEXT_END: u32 = 3;
/// The plugin panicked while producing the next item; the bytes hold a JSON
/// error with the panic message.
pub const NEXT_PANIC: u32 = 4;

/// A kind of type a plugin can export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// A [`Provider`](backstop_core::Provider); vtable: [`ProviderVTable`].
    Provider,
    /// A [`Selector`](backstop_core::Selector); vtable: [`SelectorVTable`].
    Selector,
    /// A kind this build does not know (from a newer SDK).
    Unknown(u32),
}

impl PluginKind {
    /// The number on the wire.
    pub const fn code(self) -> u32 {
        match self {
            PluginKind::Provider => 1,
            PluginKind::Selector => 2,
            PluginKind::Unknown(code) => code,
        }
    }

    /// The kind with this number.
    pub const fn from_code(code: u32) -> Self {
        match code {
            1 => PluginKind::Provider,
            2 => PluginKind::Selector,
            other => PluginKind::Unknown(other),
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginKind::Provider => f.write_str("provider"),
            PluginKind::Selector => f.write_str("selector"),
            PluginKind::Unknown(code) => write!(f, "unknown kind {code}"),
        }
    }
}

/// Borrowed bytes (usually UTF-8 or JSON), valid for the duration of the
/// call they are passed to, or `'static` inside a [`PluginDeclaration`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FfiStr<'a> {
    ptr: *const u8,
    len: usize,
    _borrow: PhantomData<&'a [u8]>,
}

impl<'a> FfiStr<'a> {
    /// Lends these bytes.
    pub const fn new(bytes: &'a [u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            _borrow: PhantomData,
        }
    }

    /// Lends this text.
    pub const fn from_str(text: &'a str) -> Self {
        Self::new(text.as_bytes())
    }

    /// The bytes.
    ///
    /// # Safety
    ///
    /// The pointer and length must come from [`FfiStr::new`] on a slice
    /// that is still alive (the boundary's rule 3), or be null with length 0.
    pub unsafe fn as_bytes(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees the pair describes a live slice.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Bytes handed over by the side that allocated them, with the function
/// that frees them. Dropping them, on either side, calls that function.
#[repr(C)]
pub struct FfiBytes {
    ptr: *mut u8,
    len: usize,
    cap: usize,
    free: extern "C" fn(ptr: *mut u8, len: usize, cap: usize),
}

// SAFETY: `FfiBytes` owns its buffer exclusively, like a `Vec<u8>`.
unsafe impl Send for FfiBytes {}

/// Frees a buffer made by [`FfiBytes::from_vec`] in this copy of the SDK.
extern "C" fn free_vec(ptr: *mut u8, len: usize, cap: usize) {
    if cap != 0 {
        // SAFETY: `ptr`, `len` and `cap` come from the `Vec` that
        // `FfiBytes::from_vec` took apart in this same library, so this
        // allocator allocated it, and `FfiBytes` frees it only once.
        drop(unsafe { Vec::from_raw_parts(ptr, len, cap) });
    }
}

impl FfiBytes {
    /// Hands over a buffer.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        Self {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
            free: free_vec,
        }
    }

    /// No bytes.
    pub fn empty() -> Self {
        Self::from_vec(Vec::new())
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` and `len` describe the live buffer this value owns.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for FfiBytes {
    fn drop(&mut self) {
        (self.free)(self.ptr, self.len, self.cap);
    }
}

impl std::fmt::Debug for FfiBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfiBytes").field("len", &self.len).finish()
    }
}

/// The result of a call: a status and its JSON bytes.
#[repr(C)]
#[derive(Debug)]
pub struct FfiOutcome {
    /// [`STATUS_OK`], [`STATUS_ERROR`] or [`STATUS_PANIC`].
    pub status: u32,
    /// The result or the error, as JSON.
    pub bytes: FfiBytes,
}

/// A new instance, or why there is none.
#[repr(C)]
#[derive(Debug)]
pub struct FfiNew {
    /// [`STATUS_OK`], [`STATUS_ERROR`] or [`STATUS_PANIC`].
    pub status: u32,
    /// The instance when the status is OK, else null.
    pub instance: *mut c_void,
    /// A JSON error unless the status is OK.
    pub bytes: FfiBytes,
}

/// A model registered with a provider instance, or why it is not.
#[repr(C)]
#[derive(Debug)]
pub struct FfiRegistered {
    /// [`STATUS_OK`], [`STATUS_ERROR`] or [`STATUS_PANIC`].
    pub status: u32,
    /// The model's handle when the status is OK.
    pub handle: u64,
    /// A JSON error unless the status is OK.
    pub bytes: FfiBytes,
}

/// A plugin-owned stream handle.
#[repr(transparent)]
#[derive(Debug)]
pub struct FfiStreamHandle(pub *mut c_void);

// SAFETY: the SDK makes handles only for `ChunkStream`s, which are `Send`.
unsafe impl Send for FfiStreamHandle {}

/// The start of a stream: a handle, or why there is none.
#[repr(C)]
#[derive(Debug)]
pub struct FfiStreamStart {
    /// [`STATUS_OK`], [`STATUS_ERROR`] or [`STATUS_PANIC`].
    pub status: u32,
    /// The stream when the status is OK, else null.
    pub stream: FfiStreamHandle,
    /// A JSON error unless the status is OK.
    pub bytes: FfiBytes,
}

/// One poll of a stream.
#[repr(C)]
#[derive(Debug)]
pub struct FfiNext {
    /// [`NEXT_PENDING`], [`NEXT_CHUNKS`], [`NEXT_ERROR`], [`NEXT_END`] or
    /// [`NEXT_PANIC`].
    pub state: u32,
    /// The chunks or the error, as JSON.
    pub bytes: FfiBytes,
}

/// What a selector may know about a request (see
/// [`RequestFacts`](backstop_core::RequestFacts)).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FfiFacts<'a> {
    /// The scenario.
    pub scenario: FfiStr<'a>,
    /// The caller's label; meaningful only when `has_caller` is 1.
    pub caller: FfiStr<'a>,
    /// 1 when the request has a caller label.
    pub has_caller: u8,
    /// 1 when the caller set `max_tokens`.
    pub has_max_tokens: u8,
    /// 1 when the request streams.
    pub stream: u8,
    /// 1 when the request offers tools.
    pub tools: u8,
    /// Estimated prompt tokens.
    pub prompt_tokens: u32,
    /// The caller's output-token bound, when `has_max_tokens` is 1.
    pub max_tokens: u32,
}

/// A model of the chain, as a plugin selector sees it: its index in the
/// model table the selector was built with, and its chain position.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FfiCandidate {
    /// The model's [`ModelIndex`](backstop_core::ModelIndex).
    pub index: usize,
    /// Its position in the configured chain.
    pub position: usize,
}

/// The functions of an exported provider type.
///
/// `instance` is the pointer `new` returned; it stays valid until `drop`.
/// Every function is `unsafe` to call: the caller (the host) promises that
/// `instance` and `stream` are live pointers this vtable's `new` and
/// `stream` returned and that `drop` / `drop_stream` are called once, last;
/// the plugin side may then dereference them.
#[repr(C)]
pub struct ProviderVTable {
    /// Builds an instance from a JSON config.
    pub new: unsafe extern "C" fn(config: FfiStr<'_>) -> FfiNew,
    /// Drops an instance.
    pub drop: unsafe extern "C" fn(instance: *mut c_void),
    /// Registers a model (a JSON `ModelSpec`) with an instance: calls then
    /// name it by the handle returned, so a spec crosses once, not per call.
    pub register_model:
        unsafe extern "C" fn(instance: *const c_void, model: FfiStr<'_>) -> FfiRegistered,
    /// `Provider::complete`; `call` is a JSON [`WireCall`](crate::wire::WireCall).
    /// The OK result is a JSON `ChatResponse` (see [`wire`](crate::wire));
    /// an error is a JSON [`WireError`](crate::wire::WireError).
    pub complete:
        unsafe extern "C" fn(instance: *const c_void, call: FfiStr<'_>) -> FfiFuture<FfiOutcome>,
    /// `Provider::stream`; the OK result is a stream handle.
    pub stream: unsafe extern "C" fn(
        instance: *const c_void,
        call: FfiStr<'_>,
    ) -> FfiFuture<FfiStreamStart>,
    /// `Provider::probe` of a registered model.
    pub probe: unsafe extern "C" fn(
        instance: *const c_void,
        model: u64,
        connect_timeout_ms: u64,
    ) -> FfiFuture<FfiOutcome>,
    /// `Stream::poll_next` of a stream handle. It returns every chunk that
    /// is ready (up to a batch), so a fast stream crosses in few calls.
    pub poll_next: unsafe extern "C" fn(stream: *mut c_void, cx: &mut FfiContext<'_>) -> FfiNext,
    /// Drops a stream handle, cancelling the plugin's work on it.
    pub drop_stream: unsafe extern "C" fn(stream: *mut c_void),
}

/// The functions of an exported selector type. As with
/// [`ProviderVTable`], every function is `unsafe` to call: `instance` must
/// be the live pointer `new` returned, and `candidates` must point to `len`
/// initialised candidates.
#[repr(C)]
pub struct SelectorVTable {
    /// Builds an instance from a JSON config and the JSON array of the
    /// `ModelSpec`s its candidates' indexes point into.
    pub new: unsafe extern "C" fn(config: FfiStr<'_>, models: FfiStr<'_>) -> FfiNew,
    /// Drops an instance.
    pub drop: unsafe extern "C" fn(instance: *mut c_void),
    /// `Selector::name`, as JSON string bytes.
    pub name: unsafe extern "C" fn(instance: *const c_void) -> FfiOutcome,
    /// `Selector::order`: reorders `candidates[..len]` in place. Returns a
    /// status; the bytes of an error or panic go to `error`, which is left
    /// alone on success.
    pub order: unsafe extern "C" fn(
        instance: *const c_void,
        facts: &FfiFacts<'_>,
        candidates: *mut FfiCandidate,
        len: usize,
        error: &mut FfiBytes,
    ) -> u32,
}

/// One exported type.
#[repr(C)]
#[derive(Debug)]
pub struct TypeExport {
    /// A [`PluginKind`] code.
    pub kind: u32,
    /// The name configs use in `type = "..."`.
    pub type_name: FfiStr<'static>,
    /// Points at the vtable of the kind.
    pub vtable: *const c_void,
}

/// What a plugin library declares about itself.
#[repr(C)]
#[derive(Debug)]
pub struct PluginDeclaration {
    /// The plugin's name.
    pub name: FfiStr<'static>,
    /// The version of `backstop-plugin` it was built with.
    pub sdk_version: FfiStr<'static>,
    /// Its exported types.
    pub exports: *const TypeExport,
    /// How many.
    pub exports_len: usize,
}

// SAFETY: a declaration and its exports are immutable once built and point
// only at data that lives as long as the library (which is never unloaded).
unsafe impl Sync for PluginDeclaration {}
// SAFETY: as above.
unsafe impl Send for PluginDeclaration {}
// SAFETY: as above.
unsafe impl Sync for TypeExport {}
// SAFETY: as above.
unsafe impl Send for TypeExport {}
