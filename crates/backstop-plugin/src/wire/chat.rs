//! Core's chat types in the boundary's JSON.
//!
//! Core keeps the fields its chat types do not name with
//! `#[serde(flatten)]`, which makes serde buffer every object before reading
//! it, and its message content is an untagged enum, which serde buffers too.
//! Here the same types are written through serde "remote" definitions that
//! keep those fields in an explicit `extra` object and tag the content
//! (`{"text": ...}` or `{"parts": [...]}`): encoding reads the core value in
//! place and decoding builds it directly, with no intermediate copies, and
//! nothing is lost.

use backstop_core::{
    ChatRequest, ChatResponse, Choice, ChunkChoice, Content, Delta, Extra, Message, RawJson, Role,
    StreamOptions, Usage,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A core type with a remote definition below.
pub(crate) trait Remote: Sized {
    fn ser<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
    fn de<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
}

/// Serializes a core value through its remote definition.
pub(crate) struct Ser<'a, T>(pub &'a T);

impl<T: Remote> Serialize for Ser<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.ser(serializer)
    }
}

/// Deserializes a core value through its remote definition.
#[repr(transparent)]
pub(crate) struct De<T>(pub T);

impl<'de, T: Remote> Deserialize<'de> for De<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::de(deserializer).map(De)
    }
}

/// `#[serde(with = "vec")]` for a `Vec` of remote types.
pub(super) mod vec {
    use super::{De, Deserialize, Deserializer, Remote, Ser, Serializer};

    pub(in crate::wire) fn serialize<T: Remote, S: Serializer>(
        v: &[T],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(Ser))
    }

    pub(in crate::wire) fn deserialize<'de, T: Remote, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        // `De<T>` is transparent: this collects in place.
        Ok(Vec::<De<T>>::deserialize(d)?
            .into_iter()
            .map(|v| v.0)
            .collect())
    }
}

/// `#[serde(with = "option")]` for an `Option` of a remote type.
pub(super) mod option {
    use super::{De, Deserialize, Deserializer, Remote, Ser, Serializer};

    // serde's `with` passes `&Option<T>`.
    #[allow(clippy::ref_option)]
    pub(in crate::wire) fn serialize<T: Remote, S: Serializer>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&Ser(v)),
            None => s.serialize_none(),
        }
    }

    pub(in crate::wire) fn deserialize<'de, T: Remote, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Ok(Option::<De<T>>::deserialize(d)?.map(|v| v.0))
    }
}

macro_rules! remote {
    ($($ty:ty => $def:ident),+ $(,)?) => {$(
        impl Remote for $ty {
            fn ser<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $def::serialize(self, serializer)
            }
            fn de<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $def::deserialize(deserializer)
            }
        }
    )+};
}

remote! {
    Content => ContentDef,
    Message => MessageDef,
    StreamOptions => StreamOptionsDef,
    ChatRequest => ChatRequestDef,
    Usage => UsageDef,
    Choice => ChoiceDef,
    ChatResponse => ChatResponseDef,
    Delta => DeltaDef,
    ChunkChoice => ChunkChoiceDef,
}

fn no_extra(extra: &Extra) -> bool {
    extra.is_empty()
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Content", rename_all = "snake_case")]
enum ContentDef {
    Text(String),
    Parts(Vec<serde_json::Value>),
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Message")]
struct MessageDef {
    role: Role,
    #[serde(default, with = "option", skip_serializing_if = "Option::is_none")]
    content: Option<Content>,
    #[serde(default, skip_serializing_if = "no_extra")]
    extra: Extra,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "StreamOptions")]
struct StreamOptionsDef {
    include_usage: bool,
    #[serde(default, skip_serializing_if = "no_extra")]
    extra: Extra,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "ChatRequest")]
struct ChatRequestDef {
    model: String,
    #[serde(with = "vec")]
    messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(default, with = "option", skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "no_extra")]
    extra: Extra,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Usage")]
struct UsageDef {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    #[serde(default, skip_serializing_if = "no_extra")]
    extra: Extra,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Choice")]
struct ChoiceDef {
    index: u32,
    #[serde(with = "MessageDef")]
    message: Message,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "no_extra")]
    extra: Extra,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "ChatResponse")]
struct ChatResponseDef {
    id: String,
    object: String,
    created: u64,
    model: String,
    #[serde(with = "vec")]
    choices: Vec<Choice>,
    #[serde(default, with = "option", skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "no_extra")]
    extra: Extra,
    /// Not carried across the plugin boundary: the host writes the typed
    /// fields.
    #[serde(skip)]
    raw: Option<RawJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Delta")]
struct DeltaDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(default, skip_serializing_if = "no_extra")]
    extra: Extra,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "ChunkChoice")]
struct ChunkChoiceDef {
    index: u32,
    #[serde(with = "DeltaDef")]
    delta: Delta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "no_extra")]
    extra: Extra,
}
