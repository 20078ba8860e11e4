//! Reading a stream chunk from JSON without `serde(flatten)`.
//!
//! A derived `Deserialize` with a flattened `extra` map first buffers every
//! field of the object (keys and values, strings copied) and only then
//! picks the named ones out of the buffer, at each of the three levels of
//! a chunk (chunk, choice, delta). A chunk is read once per relayed event,
//! so these hand-written readers take the named fields straight from the
//! parser and keep only the unnamed ones in `extra`. What they accept and
//! produce is what the derived readers did: the same defaults, `null` for
//! an absent `Option`, an error on a duplicated named field.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::{ChatChunk, ChunkChoice, Delta, Extra, object_chunk};

/// A key of an object: one of the names a struct reads, or another.
enum Key {
    Named(usize),
    Other(String),
}

struct KeyVisitor<const N: usize>(&'static [&'static str; N]);

impl<'de, const N: usize> de::DeserializeSeed<'de> for KeyVisitor<N> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<const N: usize> Visitor<'_> for KeyVisitor<N> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(match self.0.iter().position(|name| *name == key) {
            Some(i) => Key::Named(i),
            None => Key::Other(key.to_owned()),
        })
    }
}

/// Reads the keys of an object, named ones once each.
struct Keys<const N: usize> {
    names: &'static [&'static str; N],
    seen: [bool; N],
}

impl<const N: usize> Keys<N> {
    fn new(names: &'static [&'static str; N]) -> Self {
        Self {
            names,
            seen: [false; N],
        }
    }

    fn next<'de, A: MapAccess<'de>>(&mut self, map: &mut A) -> Result<Option<Key>, A::Error> {
        let key = map.next_key_seed(KeyVisitor(self.names))?;
        if let Some(Key::Named(i)) = key
            && std::mem::replace(&mut self.seen[i], true)
        {
            return Err(de::Error::duplicate_field(self.names[i]));
        }
        Ok(key)
    }
}

/// Keeps an unnamed field (the last one wins, as in a flattened map).
fn keep<'de, A: MapAccess<'de>>(
    map: &mut A,
    extra: &mut Extra,
    key: String,
) -> Result<(), A::Error> {
    let value: Value = map.next_value()?;
    extra.insert(key, value);
    Ok(())
}

const CHUNK: &[&str; 6] = &["id", "object", "created", "model", "choices", "usage"];

impl<'de> Deserialize<'de> for ChatChunk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ChatChunk;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chat completion chunk")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChatChunk, A::Error> {
                let mut chunk = ChatChunk {
                    id: String::new(),
                    object: String::new(),
                    created: 0,
                    model: String::new(),
                    choices: Vec::new(),
                    usage: None,
                    extra: Extra::new(),
                    raw: None,
                };
                let mut keys = Keys::new(CHUNK);
                while let Some(key) = keys.next(&mut map)? {
                    match key {
                        Key::Named(0) => chunk.id = map.next_value()?,
                        Key::Named(1) => chunk.object = map.next_value()?,
                        Key::Named(2) => chunk.created = map.next_value()?,
                        Key::Named(3) => chunk.model = map.next_value()?,
                        Key::Named(4) => chunk.choices = map.next_value()?,
                        Key::Named(_) => chunk.usage = map.next_value()?,
                        Key::Other(key) => keep(&mut map, &mut chunk.extra, key)?,
                    }
                }
                if !keys.seen[1] {
                    chunk.object = object_chunk();
                }
                Ok(chunk)
            }
        }
        d.deserialize_map(V)
    }
}

const CHOICE: &[&str; 3] = &["index", "delta", "finish_reason"];

impl<'de> Deserialize<'de> for ChunkChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ChunkChoice;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chunk choice")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChunkChoice, A::Error> {
                let mut choice = ChunkChoice {
                    index: 0,
                    delta: Delta::default(),
                    finish_reason: None,
                    extra: Extra::new(),
                };
                let mut keys = Keys::new(CHOICE);
                while let Some(key) = keys.next(&mut map)? {
                    match key {
                        Key::Named(0) => choice.index = map.next_value()?,
                        Key::Named(1) => choice.delta = map.next_value()?,
                        Key::Named(_) => choice.finish_reason = map.next_value()?,
                        Key::Other(key) => keep(&mut map, &mut choice.extra, key)?,
                    }
                }
                Ok(choice)
            }
        }
        d.deserialize_map(V)
    }
}

const DELTA: &[&str; 2] = &["role", "content"];

impl<'de> Deserialize<'de> for Delta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Delta;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chunk delta")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Delta, A::Error> {
                let mut delta = Delta::default();
                let mut keys = Keys::new(DELTA);
                while let Some(key) = keys.next(&mut map)? {
                    match key {
                        Key::Named(0) => delta.role = map.next_value()?,
                        Key::Named(_) => delta.content = map.next_value()?,
                        Key::Other(key) => keep(&mut map, &mut delta.extra, key)?,
                    }
                }
                Ok(delta)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::chat::Role;

    #[test]
    fn every_field_is_read_and_unnamed_ones_are_kept_at_every_level() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
            "model": "gpt-4o", "system_fingerprint": "fp", "obfuscation": "x",
            "choices": [{
                "index": 1, "logprobs": {"content": []}, "finish_reason": "stop",
                "delta": {"role": "assistant", "content": "Hi", "refusal": null,
                          "tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
            }],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        });
        let chunk: ChatChunk = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(chunk.created, 7);
        let choice = &chunk.choices[0];
        assert_eq!(
            (choice.index, choice.finish_reason.as_deref()),
            (1, Some("stop"))
        );
        assert_eq!(choice.delta.role, Some(Role::Assistant));
        assert_eq!(choice.delta.content.as_deref(), Some("Hi"));
        assert_eq!(choice.delta.tool_calls().len(), 1);
        assert_eq!(chunk.extra["obfuscation"], "x");
        assert_eq!(chunk.usage.as_ref().unwrap().total_tokens, 3);
        assert_eq!(serde_json::to_value(&chunk).unwrap(), body);
        // The same from text, as a provider reads it.
        let text: ChatChunk = serde_json::from_str(&body.to_string()).unwrap();
        assert_eq!(text, chunk);
    }

    #[test]
    fn absent_and_null_fields_take_their_defaults() {
        let chunk: ChatChunk = serde_json::from_str(
            r#"{"choices":[{"delta":{"content":null,"role":null},"finish_reason":null}],"usage":null}"#,
        )
        .unwrap();
        assert_eq!(chunk.object, "chat.completion.chunk");
        assert_eq!(
            (chunk.id.as_str(), chunk.model.as_str(), chunk.created),
            ("", "", 0)
        );
        assert_eq!(chunk.choices[0].index, 0);
        assert_eq!(chunk.choices[0].delta, Delta::default());
        assert!(chunk.usage.is_none() && chunk.extra.is_empty());
        let chunk: ChatChunk = serde_json::from_str(r#"{"choices":[{}]}"#).unwrap();
        assert_eq!(chunk.choices[0].delta, Delta::default());
        // vLLM's error object reads as a chunk, to be classified.
        let error: ChatChunk =
            serde_json::from_str(r#"{"object":"error","message":"m","code":400}"#).unwrap();
        assert_eq!(error.object, "error");
        assert_eq!(error.extra["code"], 400);
    }

    #[test]
    fn bad_input_is_an_error() {
        for text in [
            r#"{"model":"a","model":"b"}"#,
            r#"{"choices":[{"index":0,"index":1}]}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"choices":null}"#,
            r#"{"created":"soon"}"#,
            r#"{"choices":[{"delta":{"role":"narrator"}}]}"#,
            r#"["not","an","object"]"#,
        ] {
            assert!(serde_json::from_str::<ChatChunk>(text).is_err(), "{text}");
        }
    }
}
