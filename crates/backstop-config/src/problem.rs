//! What is wrong with a configuration, said so a person can fix it.
//!
//! Every problem names the file and the key path (`scenarios.realtime_chat.
//! chain[1]`), or the line and column for a syntax error, and where it can,
//! the nearest valid name ("did you mean `qwen-7b`?"). Problems are
//! collected, never thrown: a check reports all of them at once.

use std::fmt;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Where a value sits in the configuration, e.g.
/// `scenarios.realtime_chat.chain[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The root of the file.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path, one table key deeper.
    #[must_use]
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.into()));
        Self(segments)
    }

    /// This path, one array index deeper.
    #[must_use]
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        Self(segments)
    }

    /// This path followed by `relative`.
    #[must_use]
    pub fn join(&self, relative: &KeyPath) -> Self {
        let mut segments = self.0.clone();
        segments.extend(relative.0.iter().cloned());
        Self(segments)
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The environment variable that overrides this key: the table keys up
    /// to the first array index, upper-cased and joined by `__`, after the
    /// `BACKSTOP__` prefix.
    pub fn env_var(&self) -> String {
        let mut name = String::from(crate::source::ENV_PREFIX);
        let keys = self.0.iter().map_while(|s| match s {
            Segment::Key(k) => Some(k.to_ascii_uppercase()),
            Segment::Index(_) => None,
        });
        name.push_str(&keys.collect::<Vec<_>>().join("__"));
        name
    }
}

/// A bare TOML key needs no quotes: ASCII letters, digits, `_` and `-`.
fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(key) {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Where in the sources a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The file as a whole (it cannot be read, its format is unknown).
    File,
    /// A line and column of the file (syntax errors), both from 1.
    Position {
        /// Line, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
    },
    /// A key of the merged configuration; `env` names the environment
    /// variable that set the value, when one did.
    Key {
        /// The key path.
        path: KeyPath,
        /// The overriding environment variable, if the value came from one.
        env: Option<String>,
    },
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The configuration file, as the user named it.
    pub file: String,
    /// Where in it.
    pub location: Location,
    /// What is wrong, and what to do where that is not obvious.
    pub message: String,
}

impl Problem {
    /// The key path, when the problem is at a key.
    pub fn path(&self) -> Option<&KeyPath> {
        match &self.location {
            Location::Key { path, .. } => Some(path),
            _ => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::File => write!(f, "{}: {}", self.file, self.message),
            Location::Position { line, column } => {
                write!(f, "{}:{line}:{column}: {}", self.file, self.message)
            }
            Location::Key { path, env } => {
                write!(f, "{}: ", self.file)?;
                if !path.is_root() {
                    write!(f, "{path}: ")?;
                }
                f.write_str(&self.message)?;
                if let Some(env) = env {
                    write!(f, " (set by {env})")?;
                }
                Ok(())
            }
        }
    }
}

/// Every problem found in a configuration, in the order they were found
/// (file order within each section).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// The problems.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Problems {
    /// One problem per line, then a count.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.0 {
            writeln!(f, "{problem}")?;
        }
        let n = self.0.len();
        write!(f, "{n} problem{} found", if n == 1 { "" } else { "s" })
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The known name nearest to `wanted`, if one is near enough to be a
/// plausible typo.
pub fn nearest<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(wanted, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// ` (did you mean "x"?)` when a known name is near, else nothing.
pub fn did_you_mean<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    nearest(wanted, known)
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

/// `"a", "b", "c"`, or `none` when empty.
pub fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| format!("{n:?}")).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_render_like_the_file() {
        let path = KeyPath::root()
            .key("scenarios")
            .key("realtime_chat")
            .key("chain")
            .index(1);
        assert_eq!(path.to_string(), "scenarios.realtime_chat.chain[1]");
        let dotted = KeyPath::root().key("models").key("qwen2.5-7b");
        assert_eq!(dotted.to_string(), "models.\"qwen2.5-7b\"");
    }

    #[test]
    fn env_var_stops_at_the_first_index() {
        let path = KeyPath::root()
            .key("scenarios")
            .key("realtime_chat")
            .key("chain")
            .index(1);
        assert_eq!(path.env_var(), "BACKSTOP__SCENARIOS__REALTIME_CHAT__CHAIN");
    }

    #[test]
    fn suggests_only_near_names() {
        assert_eq!(nearest("qwen-7", ["qwen-7b", "gpt-4o"]), Some("qwen-7b"));
        assert_eq!(
            nearest("latency", ["latency_aware", "priority"]),
            Some("latency_aware")
        );
        assert_eq!(nearest("zzz", ["latency_aware", "priority"]), None);
    }
}
