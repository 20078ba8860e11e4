//! Decoding a table into its type while reporting every bad key.
//!
//! serde stops at the first error of a struct. To report every bad key of a
//! table at once, [`decode`] reports the error, removes the key it names,
//! and decodes again, until the table decodes or an error names no key
//! (a missing required key, a table that is not a table).

use figment::error::Kind;
use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;

use crate::problem::{KeyPath, Problem, did_you_mean, list};
use crate::registry::{FactoryError, FactoryIssue};
use crate::source::Sources;

/// A decoded table, and the keys that had to be dropped to decode it.
pub(crate) struct Decoded<T> {
    pub value: T,
    /// Key paths (relative to the table) dropped after being reported.
    pub dropped: Vec<Vec<String>>,
}

impl<T> Decoded<T> {
    /// Whether no key under `key` was dropped: checks across its keys may
    /// trust every value.
    pub fn clean_under(&self, key: &str) -> bool {
        !self
            .dropped
            .iter()
            .any(|d| d.first().is_some_and(|k| k == key))
    }
}

/// Decodes `value` (found at `path`) into `T`, pushing one problem per bad
/// key. `None` when the table cannot be decoded at all.
pub(crate) fn decode<T: DeserializeOwned>(
    src: &Sources,
    path: &KeyPath,
    value: &Value,
    problems: &mut Vec<Problem>,
) -> Option<Decoded<T>> {
    let (decoded, errors) = decode_relative(value);
    for (relative, message) in errors {
        problems.push(src.problem(&path.join(&relative), message));
    }
    decoded
}

/// Decodes a factory's table (JSON, as the Registry hands it over) into
/// its config type, reporting every bad key with its path, not only the
/// first as serde alone would. `null` reads as an empty table.
pub fn parse_config<C: DeserializeOwned>(table: &serde_json::Value) -> Result<C, FactoryError> {
    let value = if table.is_null() {
        Value::from(Dict::new())
    } else {
        Value::serialize(table).map_err(|e| FactoryError::new(e.kind))?
    };
    match decode_relative::<C>(&value) {
        (Some(decoded), errors) if errors.is_empty() => Ok(decoded.value),
        (_, errors) => Err(FactoryError::from_issues(
            errors
                .into_iter()
                .map(|(key, message)| FactoryIssue { key, message })
                .collect(),
        )),
    }
}

/// Decodes `value` into `T`; every error with its key path relative to
/// `value`.
fn decode_relative<T: DeserializeOwned>(
    value: &Value,
) -> (Option<Decoded<T>>, Vec<(KeyPath, String)>) {
    let mut value = value.clone();
    let mut errors = Vec::new();
    let mut dropped: Vec<Vec<String>> = Vec::new();
    // Each round drops one key, so a table cannot loop longer than it has
    // keys; the bound is a guard against a decoder that keeps failing.
    for _ in 0..256 {
        let error = match T::deserialize(&value) {
            Ok(decoded) => {
                let decoded = Decoded {
                    value: decoded,
                    dropped,
                };
                return (Some(decoded), errors);
            }
            Err(error) => error,
        };
        if let Kind::MissingField(field) = &error.kind {
            let mut missing = error.path.clone();
            missing.push(field.to_string());
            if dropped.contains(&missing) {
                // We dropped it ourselves after reporting it.
                return (None, errors);
            }
        }
        errors.push((
            key_path(&KeyPath::root(), &value, &error.path),
            message(&error.kind),
        ));
        let Some(key) = droppable(&value, &error.path) else {
            return (None, errors);
        };
        if !remove(&mut value, &key) {
            return (None, errors);
        }
        dropped.push(key);
    }
    (None, errors)
}

/// The message for an error kind, with the valid names listed and the
/// nearest one suggested.
pub(crate) fn message(kind: &Kind) -> String {
    match kind {
        Kind::UnknownField(field, expected) => format!(
            "unknown key {field:?}{}; expected one of {}",
            did_you_mean(field, expected.iter().copied()),
            list(expected.iter().copied())
        ),
        Kind::UnknownVariant(variant, expected) => format!(
            "unknown value {variant:?}{}; expected one of {}",
            did_you_mean(variant, expected.iter().copied()),
            list(expected.iter().copied())
        ),
        Kind::MissingField(field) => format!("missing required key {field:?}"),
        Kind::DuplicateField(field) => format!("key {field:?} is set twice"),
        Kind::InvalidType(actual, expected) => {
            format!("expected {}, found {actual}", expected_in_words(expected))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("expected {}, found {actual}", expected_in_words(expected))
        }
        other => other.to_string(),
    }
}

/// serde's name of a primitive, in words a config author reads.
fn expected_in_words(expected: &str) -> String {
    let max = match expected {
        "u8" => u64::from(u8::MAX),
        "u16" => u64::from(u16::MAX),
        "u32" => u64::from(u32::MAX),
        "u64" | "usize" => u64::MAX,
        "f32" | "f64" => return "a number".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" => return "an integer".to_owned(),
        other => return other.to_owned(),
    };
    format!("a whole number from 0 to {max}")
}

/// The error's path (relative to `value`) as a key path under `base`.
fn key_path(base: &KeyPath, value: &Value, relative: &[String]) -> KeyPath {
    let mut path = base.clone();
    let mut current = Some(value);
    for segment in relative {
        match current {
            Some(Value::Array(_, items)) => match segment.parse::<usize>() {
                Ok(i) => {
                    path = path.index(i);
                    current = items.get(i);
                }
                Err(_) => {
                    path = path.key(segment.as_str());
                    current = None;
                }
            },
            Some(Value::Dict(_, dict)) => {
                path = path.key(segment.as_str());
                current = dict.get(segment);
            }
            _ => {
                path = path.key(segment.as_str());
                current = None;
            }
        }
    }
    path
}

/// The table key to drop so decoding can go on past this error: the
/// innermost key of its path (an array is dropped whole, so later indexes
/// keep their meaning). `None` when the error names no key.
fn droppable(value: &Value, relative: &[String]) -> Option<Vec<String>> {
    let mut keys = Vec::new();
    let mut current = Some(value);
    let mut last_key_len = 0;
    for segment in relative {
        match current {
            Some(Value::Array(_, items)) => {
                current = segment.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            Some(Value::Dict(_, dict)) => {
                keys.push(segment.clone());
                last_key_len = keys.len();
                current = dict.get(segment);
            }
            _ => return (last_key_len > 0).then(|| keys[..last_key_len].to_vec()),
        }
        // Only keys that are directly nested tables can be followed; an
        // index into an array ends the walk at the array's key.
        if matches!(current, Some(Value::Array(..))) {
            return Some(keys);
        }
    }
    (last_key_len > 0).then(|| keys[..last_key_len].to_vec())
}

/// Removes the value at a path of table keys.
fn remove(value: &mut Value, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut dict: &mut Dict = match value {
        Value::Dict(_, dict) => dict,
        _ => return false,
    };
    for key in parents {
        dict = match dict.get_mut(key) {
            Some(Value::Dict(_, inner)) => inner,
            _ => return false,
        };
    }
    dict.remove(last).is_some()
}

/// The key path of a segment list, for tests and messages.
#[cfg(test)]
fn render(base: &KeyPath, value: &Value, relative: &[&str]) -> String {
    let relative: Vec<String> = relative.iter().map(|s| (*s).to_owned()).collect();
    key_path(base, value, &relative).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::util::map;

    #[test]
    fn error_paths_become_key_paths_with_indexes() {
        let value = Value::from(map! {
            "chain" => Value::from(vec![Value::from("a"), Value::from("b")]),
        });
        let base = KeyPath::root().key("scenarios").key("s");
        assert_eq!(
            render(&base, &value, &["chain", "1"]),
            "scenarios.s.chain[1]"
        );
        assert_eq!(render(&base, &value, &["other"]), "scenarios.s.other");
    }

    #[test]
    fn an_array_is_dropped_whole() {
        let value = Value::from(map! {
            "chain" => Value::from(vec![Value::from("a"), Value::from(5u8)]),
            "t" => Value::from(map! { "x" => Value::from(1u8) }),
        });
        let chain = droppable(&value, &["chain".to_owned(), "1".to_owned()]);
        assert_eq!(chain, Some(vec!["chain".to_owned()]));
        let nested = droppable(&value, &["t".to_owned(), "x".to_owned()]);
        assert_eq!(nested, Some(vec!["t".to_owned(), "x".to_owned()]));
        assert_eq!(droppable(&value, &[]), None);
    }
}
