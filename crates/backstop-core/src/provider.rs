//! The `Provider` seam: something that can answer a chat request.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

use crate::chat::{ChatChunk, ChatRequest, ChatResponse};
use crate::embeddings::{EmbeddingInput, EmbeddingsRequest, EmbeddingsResponse};
use crate::error::{FailureKind, ProviderError};
use crate::model::ModelSpec;

/// A stream of chunks from an upstream.
///
/// A provider's stream ends (`None`) only when the upstream finished the
/// answer properly (its terminator, or a finish reason). A stream cut by the
/// transport, or that ends with neither, yields
/// `Err(ProviderError { kind: StreamInterrupted, .. })` instead; the Router
/// also refuses to trust a stream that ends without any finish reason.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, ProviderError>> + Send>>;

/// One call to a provider.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The scenario (or single-model route) being served.
    pub scenario: &'a str,
    /// The model to call (its `upstream` name goes on the wire).
    pub model: &'a ModelSpec,
    /// The caller's request (with a trailing assistant message when the
    /// Router asks a prefill-capable model to continue a cut answer).
    pub request: &'a ChatRequest,
    /// The output-token bound to send: the caller's, capped by the model's.
    pub max_tokens: u32,
    /// How long establishing the connection may take.
    pub connect_timeout: Duration,
    /// The gateway's request id, for the upstream's logs.
    pub request_id: Option<&'a str>,
    /// More headers to send with this call (name, value): the trace
    /// context of a traced request, say. HTTP providers send them; others
    /// may ignore them.
    pub headers: &'a [(String, String)],
}

/// One embeddings call to a provider.
#[derive(Debug, Clone, Copy)]
pub struct EmbedCall<'a> {
    /// The scenario (or single-model route) being served.
    pub scenario: &'a str,
    /// The model to call (its `upstream` name goes on the wire).
    pub model: &'a ModelSpec,
    /// The caller's request.
    pub request: &'a EmbeddingsRequest,
    /// How long establishing the connection may take.
    pub connect_timeout: Duration,
    /// The gateway's request id, for the upstream's logs.
    pub request_id: Option<&'a str>,
    /// More headers to send with this call (name, value): the trace
    /// context of a traced request, say. HTTP providers send them; others
    /// may ignore them.
    pub headers: &'a [(String, String)],
}

/// Something that answers chat requests: an HTTP API, a local model, a
/// template. The Router applies every timeout except `connect_timeout`,
/// which only the transport can see.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Readies the provider for calls with this connect timeout (an HTTP
    /// provider builds its pooled client for it), so a request never pays
    /// for that setup; the first failover to a backup is exactly when it
    /// would hurt. The Router calls it while it is built, once per route
    /// and model. The default does nothing.
    fn prepare(&self, connect_timeout: Duration) {
        let _ = connect_timeout;
    }

    /// Answers with a complete response.
    async fn complete(&self, call: Call<'_>) -> Result<ChatResponse, ProviderError>;

    /// Answers with a stream of chunks. Errors that happen before the
    /// stream starts (an HTTP error status) come back as `Err`.
    async fn stream(&self, call: Call<'_>) -> Result<ChunkStream, ProviderError>;

    /// Embeds texts (float vectors, one per input, in input order). The
    /// default answers `unsupported`, so the Router falls over to a model
    /// whose provider can.
    async fn embed(&self, call: EmbedCall<'_>) -> Result<EmbeddingsResponse, ProviderError> {
        Err(ProviderError::new(
            FailureKind::Unsupported,
            format!(
                "the provider of `{}` does not serve embeddings",
                call.model.id
            ),
        ))
    }

    /// A tiny health probe (a few output tokens). The default sends a
    /// one-word prompt through [`Provider::complete`], or, for an
    /// embedding model (one that declares `dimensions`), embeds one word.
    async fn probe(
        &self,
        model: &ModelSpec,
        connect_timeout: Duration,
    ) -> Result<(), ProviderError> {
        if model.dimensions.is_some() {
            let request = EmbeddingsRequest {
                model: model.upstream.clone(),
                input: EmbeddingInput::Text("ping".to_owned()),
                dimensions: None,
                user: None,
                extra: crate::chat::Extra::new(),
            };
            let call = EmbedCall {
                scenario: "probe",
                model,
                request: &request,
                connect_timeout,
                request_id: None,
                headers: &[],
            };
            return self.embed(call).await.map(|_| ());
        }
        let request = ChatRequest::user(model.upstream.clone(), "ping");
        let call = Call {
            scenario: "probe",
            model,
            request: &request,
            max_tokens: PROBE_MAX_TOKENS,
            connect_timeout,
            request_id: None,
            headers: &[],
        };
        self.complete(call).await.map(|_| ())
    }
}

/// Output tokens a probe asks for.
pub const PROBE_MAX_TOKENS: u32 = 4;

fn _provider_is_object_safe(_: &dyn Provider) {}
