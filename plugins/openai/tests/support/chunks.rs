//! Reading chunk streams in tests. Shared by the provider crates' tests
//! (`#[path]`-included).

#![allow(dead_code)]

use backstop_core::{ChatChunk, ChunkStream, ProviderError};
use futures::StreamExt;

/// Reads a stream to its end: the chunks, and the error that ended it.
pub async fn drain(mut stream: ChunkStream) -> (Vec<ChatChunk>, Option<ProviderError>) {
    let mut chunks = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => chunks.push(chunk),
            Err(error) => {
                assert!(stream.next().await.is_none(), "nothing follows an error");
                return (chunks, Some(error));
            }
        }
    }
    (chunks, None)
}

/// The text of the chunks' choice 0.
pub fn text(chunks: &[ChatChunk]) -> String {
    chunks.iter().filter_map(ChatChunk::content).collect()
}
