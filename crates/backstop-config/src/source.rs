//! Reading the file and layering the environment over it.
//!
//! The file is parsed once by its format's own parser (`.toml`, `.yaml` /
//! `.yml`, `.json`), so a syntax error carries its line and column, and once
//! more to learn the order of its `[providers]`, `[models]` and `[scenarios]`
//! (ties in priority keep file order) and to refuse duplicate keys that
//! JSON and YAML parsers would silently collapse. Then figment merges, over
//! the file, every `BACKSTOP__SECTION__KEY` environment variable (`__`
//! separates levels, so snake_case keys survive; keys are lower-cased).
//! Every merged value keeps a tag that tells whether the file or the
//! environment set it, so a problem can name the variable that caused it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::Env;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Deserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::problem::{KeyPath, Location, Problem};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "BACKSTOP__";

/// The sections whose keys are ids and whose order matters.
const ORDERED_SECTIONS: [&str; 3] = ["providers", "models", "scenarios"];

/// A configuration file format, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.toml`
    Toml,
    /// `.yaml`, `.yml`
    Yaml,
    /// `.json`
    Json,
}

impl Format {
    /// The format of a file, by its extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Toml => "TOML",
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The order of ids in the file's id sections.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileOrder {
    pub providers: Vec<String>,
    pub models: Vec<String>,
    pub scenarios: Vec<String>,
}

impl FileOrder {
    fn section_mut(&mut self, section: &str) -> Option<&mut Vec<String>> {
        match section {
            "providers" => Some(&mut self.providers),
            "models" => Some(&mut self.models),
            "scenarios" => Some(&mut self.scenarios),
            _ => None,
        }
    }
}

/// The merged configuration: the file with the environment over it.
pub(crate) struct Sources {
    /// The file, as the user named it.
    pub file: String,
    /// The file with the environment merged over it; its metadata tells
    /// which of the two set a value.
    pub figment: Figment,
    /// The merged root table.
    pub root: Dict,
    /// File order of ids.
    pub order: FileOrder,
}

impl Sources {
    /// Where a problem at `path` is, naming the environment variable when
    /// the value there (or its nearest existing parent) came from one.
    pub fn location(&self, path: &KeyPath) -> Location {
        let env = self.value_at(path).and_then(|value| {
            let metadata = self.figment.get_metadata(value.tag())?;
            is_env(metadata).then(|| path.env_var())
        });
        Location::Key {
            path: path.clone(),
            env,
        }
    }

    /// A problem at `path`.
    pub fn problem(&self, path: &KeyPath, message: impl Into<String>) -> Problem {
        Problem {
            file: self.file.clone(),
            location: self.location(path),
            message: message.into(),
        }
    }

    /// The value at `path`, or the deepest value on the way to it.
    fn value_at(&self, path: &KeyPath) -> Option<&Value> {
        use crate::problem::Segment;
        let mut segments = path.segments().iter();
        let first = match segments.next()? {
            Segment::Key(k) => self.root.get(k)?,
            Segment::Index(_) => return None,
        };
        let mut current = first;
        for segment in segments {
            let next = match (segment, current) {
                (Segment::Key(k), Value::Dict(_, dict)) => dict.get(k),
                (Segment::Index(i), Value::Array(_, items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(v) => current = v,
                None => break,
            }
        }
        Some(current)
    }

    /// The keys of a top-level id section, in file order first, then the
    /// ones only the environment added, sorted.
    pub fn ordered_keys<'a>(&self, section: &str, dict: &'a Dict) -> Vec<&'a str> {
        let order: &[String] = match section {
            "providers" => &self.order.providers,
            "models" => &self.order.models,
            "scenarios" => &self.order.scenarios,
            _ => &[],
        };
        let mut keys: Vec<&'a str> = order
            .iter()
            .filter_map(|k| dict.get_key_value(k).map(|(k, _)| k.as_str()))
            .collect();
        let seen: BTreeSet<&str> = keys.iter().copied().collect();
        keys.extend(
            dict.keys()
                .map(String::as_str)
                .filter(|k| !seen.contains(k)),
        );
        keys
    }
}

fn is_env(metadata: &Metadata) -> bool {
    metadata
        .source
        .as_ref()
        .and_then(|s| s.file_path())
        .is_none()
}

/// The file as a figment provider, so merged values remember they came
/// from it.
struct FileLayer {
    path: PathBuf,
    format: Format,
    dict: Dict,
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        Metadata::from(
            format!("{} file", self.format),
            figment::Source::File(self.path.clone()),
        )
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Reads `path` and layers the environment over it (when `env` is set).
/// Syntax errors, an unreadable file or an unknown extension end the
/// loading with that one problem: nothing after them can be trusted.
pub(crate) fn read(path: &Path, env: bool) -> Result<Sources, Problem> {
    let file = path.display().to_string();
    let whole_file = |message: String| Problem {
        file: file.clone(),
        location: Location::File,
        message,
    };
    let Some(format) = Format::from_path(path) else {
        return Err(whole_file(
            "unknown configuration format: name the file .toml, .yaml, .yml or .json".to_owned(),
        ));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| whole_file(format!("cannot read the configuration file: {e}")))?;
    from_text(&file, path, format, &text, env)
}

/// Like [`read`], for text already in memory; `file` names it in problems.
pub(crate) fn from_text(
    file: &str,
    path: &Path,
    format: Format,
    text: &str,
    env: bool,
) -> Result<Sources, Problem> {
    let syntax = |error: SyntaxError| Problem {
        file: file.to_owned(),
        location: match error.position {
            Some((line, column)) => Location::Position { line, column },
            None => Location::File,
        },
        message: format!("invalid {format}: {}", error.message),
    };
    let dict: Dict = parse(format, text, Parse::Values).map_err(syntax)?.0;
    let order = parse(format, text, Parse::Order).map_err(syntax)?.1;

    let mut figment = Figment::new().merge(FileLayer {
        path: path.to_owned(),
        format,
        dict,
    });
    if env {
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
    }
    let root = match figment.find_value("") {
        Ok(Value::Dict(_, dict)) => dict,
        Ok(_) => Dict::new(),
        Err(e) => {
            return Err(Problem {
                file: file.to_owned(),
                location: Location::File,
                message: format!("cannot merge the environment over the file: {e}"),
            });
        }
    };
    Ok(Sources {
        file: file.to_owned(),
        figment,
        root,
        order,
    })
}

/// A syntax error with its line and column, both from 1.
struct SyntaxError {
    message: String,
    position: Option<(usize, usize)>,
}

enum Parse {
    Values,
    Order,
}

/// Parses the text into values, or walks it for key order and duplicates.
fn parse(format: Format, text: &str, what: Parse) -> Result<(Dict, FileOrder), SyntaxError> {
    let order = RefCell::new(FileOrder::default());
    let walk = Walk {
        path: Vec::new(),
        order: &order,
    };
    let dict = match (format, what) {
        (Format::Toml, Parse::Values) => toml::from_str::<Dict>(text).map_err(toml_error(text))?,
        (Format::Toml, Parse::Order) => {
            let de = toml::Deserializer::parse(text).map_err(toml_error(text))?;
            walk.deserialize(de).map_err(toml_error(text))?;
            Dict::new()
        }
        (Format::Yaml, Parse::Values) => {
            if text.trim().is_empty() {
                Dict::new()
            } else {
                serde_yaml::from_str::<Dict>(text).map_err(yaml_error(text))?
            }
        }
        (Format::Yaml, Parse::Order) => {
            if !text.trim().is_empty() {
                walk.deserialize(serde_yaml::Deserializer::from_str(text))
                    .map_err(yaml_error(text))?;
            }
            Dict::new()
        }
        (Format::Json, Parse::Values) => serde_json::from_str::<Dict>(text).map_err(json_error)?,
        (Format::Json, Parse::Order) => {
            let mut de = serde_json::Deserializer::from_str(text);
            walk.deserialize(&mut de).map_err(json_error)?;
            Dict::new()
        }
    };
    Ok((dict, order.into_inner()))
}

fn toml_error(text: &str) -> impl Fn(toml::de::Error) -> SyntaxError + '_ {
    move |e| SyntaxError {
        message: e.message().trim_end().to_owned(),
        position: e.span().map(|span| line_column(text, span.start)),
    }
}

fn yaml_error(text: &str) -> impl Fn(serde_yaml::Error) -> SyntaxError + '_ {
    move |e| {
        let position = e.location().map(|l| line_column(text, l.index()));
        let mut message = e.to_string();
        if let Some(l) = e.location() {
            let at = format!(" at line {} column {}", l.line(), l.column());
            message = message.replacen(&at, "", 1);
        }
        SyntaxError { message, position }
    }
}

fn json_error(e: serde_json::Error) -> SyntaxError {
    let at = format!(" at line {} column {}", e.line(), e.column());
    SyntaxError {
        message: e.to_string().replacen(&at, "", 1),
        position: (e.line() > 0).then(|| (e.line(), e.column().max(1))),
    }
}

/// Line and column (both from 1, columns in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Walks any value: records the key order of the id sections and refuses
/// a key that appears twice in one table.
struct Walk<'a> {
    path: Vec<String>,
    order: &'a RefCell<FileOrder>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<KeyString>()? {
            let key = key.0;
            if !seen.insert(key.clone()) {
                let mut at: Vec<&str> = self.path.iter().map(String::as_str).collect();
                at.push(&key);
                return Err(de::Error::custom(format!(
                    "duplicate key `{}`",
                    at.join(".")
                )));
            }
            if let [section] = self.path.as_slice()
                && ORDERED_SECTIONS.contains(&section.as_str())
                && let Some(keys) = self.order.borrow_mut().section_mut(section)
            {
                keys.push(key.clone());
            }
            let mut path = self.path.clone();
            path.push(key);
            map.next_value_seed(Walk {
                path,
                order: self.order,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            let mut path = self.path.clone();
            path.push(index.to_string());
            let walk = Walk {
                path,
                order: self.order,
            };
            if seq.next_element_seed(walk)?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // YAML tags (`!Tag value`); nothing of ours uses them.
        let (IgnoredAny, variant) = data.variant::<IgnoredAny>()?;
        de::VariantAccess::newtype_variant::<IgnoredAny>(variant).map(|_| ())
    }
}

/// A map key as a string, whatever scalar the format used (YAML allows
/// numbers and booleans as keys).
struct KeyString(String);

impl<'de> de::Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyString, E> {
                Ok(KeyString(v.to_owned()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<KeyString, E> {
                Ok(KeyString("null".to_owned()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::from_path(Path::new("a/b.toml")), Some(Format::Toml));
        assert_eq!(Format::from_path(Path::new("b.YML")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("b.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("b.ini")), None);
        assert_eq!(Format::from_path(Path::new("b")), None);
    }

    #[test]
    fn line_and_column_count_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, text.rfind('=').unwrap_or(0)), (2, 4));
    }

    #[test]
    fn order_of_ids_is_file_order_in_every_format() {
        let toml = "[models.b]\n[models.a]\n[models.c]\n";
        let yaml = "models:\n  b: {}\n  a: {}\n  c: {}\n";
        let json = r#"{"models": {"b": {}, "a": {}, "c": {}}}"#;
        for (format, text) in [
            (Format::Toml, toml),
            (Format::Yaml, yaml),
            (Format::Json, json),
        ] {
            let order = parse(format, text, Parse::Order).map(|r| r.1);
            let models = order.map(|o| o.models).unwrap_or_default();
            assert_eq!(models, ["b", "a", "c"], "{format}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_position() {
        let json = "{\"models\": {\"a\": {},\n \"a\": {}}}";
        let err = parse(Format::Json, json, Parse::Order).err();
        let err = err.map(|e| (e.message, e.position));
        assert_eq!(
            err,
            Some(("duplicate key `models.a`".to_owned(), Some((2, 4))))
        );
    }
}
