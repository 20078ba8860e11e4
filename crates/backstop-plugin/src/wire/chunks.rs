//! Stream chunks in batches.
//!
//! A batch is a JSON array of the chunks that were ready at one poll. The
//! fields every chunk of a stream repeats (`id`, `object`, `created`,
//! `model`) are written only when they differ from the previous chunk of
//! the same stream; each side keeps a [`ChunkHeader`] per stream to drop
//! and restore them. That halves what a typical chunk (one word of text)
//! costs to encode and decode.

use std::collections::VecDeque;
use std::fmt;

use backstop_core::{ChatChunk, ChunkChoice, Extra, Usage};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::chat::{Ser, option, vec};

/// The per-stream fields of the last chunk a side wrote or read.
#[derive(Debug, Default)]
pub struct ChunkHeader {
    id: String,
    object: String,
    created: u64,
    model: String,
}

/// Encodes a batch of one stream's chunks as one JSON array.
pub fn encode_chunks(
    chunks: &[ChatChunk],
    header: &mut ChunkHeader,
) -> serde_json::Result<Vec<u8>> {
    let capacity: usize = chunks
        .iter()
        .map(|c| 64 + c.content().map_or(0, str::len))
        .sum();
    let mut out = Vec::with_capacity(capacity + 128);
    let mut serializer = serde_json::Serializer::new(&mut out);
    serializer.collect_seq(chunks.iter().map(|chunk| {
        let out = ChunkOut {
            id: (chunk.id != header.id).then_some(chunk.id.as_str()),
            object: (chunk.object != header.object).then_some(chunk.object.as_str()),
            created: (chunk.created != header.created).then_some(chunk.created),
            model: (chunk.model != header.model).then_some(chunk.model.as_str()),
            chunk,
        };
        header.remember(chunk);
        out
    }))?;
    Ok(out)
}

/// Decodes a batch of one stream's chunks onto the end of `into`. On error
/// `into` may hold part of the batch.
pub fn decode_chunks(
    bytes: &[u8],
    header: &mut ChunkHeader,
    into: &mut VecDeque<ChatChunk>,
) -> serde_json::Result<()> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    Batch { header, into }.deserialize(&mut deserializer)?;
    deserializer.end()
}

impl ChunkHeader {
    fn remember(&mut self, chunk: &ChatChunk) {
        if chunk.id != self.id {
            self.id.clone_from(&chunk.id);
        }
        if chunk.object != self.object {
            self.object.clone_from(&chunk.object);
        }
        self.created = chunk.created;
        if chunk.model != self.model {
            self.model.clone_from(&chunk.model);
        }
    }

    /// `value`, remembered, or the remembered value when it is absent.
    fn restore(kept: &mut String, value: Option<String>) -> String {
        match value {
            Some(value) => {
                kept.clone_from(&value);
                value
            }
            None => kept.clone(),
        }
    }
}

/// A chunk as written: the per-stream fields only when they changed.
struct ChunkOut<'a> {
    id: Option<&'a str>,
    object: Option<&'a str>,
    created: Option<u64>,
    model: Option<&'a str>,
    chunk: &'a ChatChunk,
}

impl Serialize for ChunkOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(id) = self.id {
            map.serialize_entry("id", id)?;
        }
        if let Some(object) = self.object {
            map.serialize_entry("object", object)?;
        }
        if let Some(created) = self.created {
            map.serialize_entry("created", &created)?;
        }
        if let Some(model) = self.model {
            map.serialize_entry("model", model)?;
        }
        map.serialize_entry("choices", &Choices(&self.chunk.choices))?;
        if let Some(usage) = &self.chunk.usage {
            map.serialize_entry("usage", &Ser(usage))?;
        }
        if !self.chunk.extra.is_empty() {
            map.serialize_entry("extra", &self.chunk.extra)?;
        }
        map.end()
    }
}

struct Choices<'a>(&'a [ChunkChoice]);

impl Serialize for Choices<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        vec::serialize(self.0, s)
    }
}

/// A chunk as read.
#[derive(Deserialize)]
struct ChunkIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default)]
    model: Option<String>,
    #[serde(with = "vec")]
    choices: Vec<ChunkChoice>,
    #[serde(default, with = "option")]
    usage: Option<Usage>,
    #[serde(default)]
    extra: Extra,
}

/// Reads a batch straight into the queue, restoring omitted fields.
struct Batch<'a> {
    header: &'a mut ChunkHeader,
    into: &'a mut VecDeque<ChatChunk>,
}

impl<'de> DeserializeSeed<'de> for Batch<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Batch<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of chat chunks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let header = self.header;
        while let Some(chunk) = seq.next_element::<ChunkIn>()? {
            if let Some(created) = chunk.created {
                header.created = created;
            }
            self.into.push_back(ChatChunk {
                id: ChunkHeader::restore(&mut header.id, chunk.id),
                object: ChunkHeader::restore(&mut header.object, chunk.object),
                created: header.created,
                model: ChunkHeader::restore(&mut header.model, chunk.model),
                choices: chunk.choices,
                usage: chunk.usage,
                extra: chunk.extra,
                // What crossed the plugin boundary was re-encoded: no
                // upstream text to write through.
                raw: None,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use backstop_core::Role;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_stream_keeps_every_field_extra_and_order_across_batches() {
        let mut first = ChatChunk::text("id-1", "m", 17, "word");
        first.choices[0].delta.role = Some(Role::Assistant);
        first.choices[0].delta.extra = match json!({"tool_calls": [{"index": 0}]}) {
            serde_json::Value::Object(map) => map,
            _ => unreachable!(),
        };
        first.extra.insert("system_fingerprint".into(), json!("fp"));
        let mut renamed = ChatChunk::text("id-2", "m2", 18, " changed");
        renamed.object = "custom.chunk".into();
        let batches = vec![
            vec![first, ChatChunk::text("id-1", "m", 17, " more")],
            vec![
                renamed,
                ChatChunk::finish("id-2", "m2", 18, "stop"),
                ChatChunk::usage_only("id-2", "m2", 18, Usage::new(5, 6)),
            ],
            vec![ChatChunk::text("", "", 0, "empty header")],
        ];
        let (mut sent, mut read) = (ChunkHeader::default(), ChunkHeader::default());
        let mut queue = VecDeque::new();
        for batch in &batches {
            let json = encode_chunks(batch, &mut sent).unwrap();
            decode_chunks(&json, &mut read, &mut queue).unwrap();
        }
        assert_eq!(Vec::from(queue), batches.concat());
    }

    #[test]
    fn repeated_fields_are_written_once() {
        let batch = vec![
            ChatChunk::text("id-1", "m", 17, "a"),
            ChatChunk::text("id-1", "m", 17, "b"),
        ];
        let json = encode_chunks(&batch, &mut ChunkHeader::default()).unwrap();
        let text = String::from_utf8(json).unwrap();
        assert_eq!(text.matches("\"id\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"model\"").count(), 1, "{text}");
    }

    #[test]
    fn a_malformed_batch_is_an_error() {
        let mut queue = VecDeque::new();
        let mut header = ChunkHeader::default();
        assert!(decode_chunks(b"[{\"id\": 5, \"choices\": []}]", &mut header, &mut queue).is_err());
        assert!(decode_chunks(b"[] trailing", &mut header, &mut queue).is_err());
    }
}
