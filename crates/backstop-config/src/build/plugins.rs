//! `[[plugins]]`: dynamic plugin libraries, loaded before anything names
//! their types.

use std::collections::BTreeSet;
use std::path::Path;

use figment::value::Value;

use super::Builder;
use crate::problem::KeyPath;
use crate::registry::{Registry, SeamKind};
use crate::report::PluginEntry;
use crate::schema::PluginSection;

const SEAMS: [SeamKind; 5] = [
    SeamKind::Provider,
    SeamKind::Selector,
    SeamKind::Health,
    SeamKind::Budget,
    SeamKind::Result,
];

fn known(registry: &Registry) -> BTreeSet<(SeamKind, String)> {
    SEAMS
        .iter()
        .flat_map(|&seam| {
            registry
                .names(seam)
                .into_iter()
                .map(move |n| (seam, n.to_owned()))
        })
        .collect()
}

impl Builder<'_> {
    pub(super) fn plugins(&mut self, registry: &mut Registry) -> Vec<PluginEntry> {
        let path = KeyPath::root().key("plugins");
        let Some(value) = self.section("plugins") else {
            return Vec::new();
        };
        let Value::Array(_, items) = value else {
            self.problem(
                &path,
                format!(
                    "expected an array of tables ([[plugins]] with a `path`), found {}",
                    value.to_actual()
                ),
            );
            return Vec::new();
        };
        let mut loaded = Vec::new();
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = path.index(i);
            let Some(entry) = self.decode::<PluginSection>(&at, item) else {
                continue;
            };
            let library = entry.value.path;
            if let Some((_, first)) = seen.iter().find(|(p, _)| *p == library) {
                self.problem(
                    &at.key("path"),
                    format!("plugin {library:?} is already loaded by plugins[{first}]"),
                );
                continue;
            }
            seen.push((library.clone(), i));
            let before = known(registry);
            let problems = crate::dynamic::load(registry, Path::new(&library));
            let types: Vec<_> = known(registry).difference(&before).cloned().collect();
            for problem in problems {
                self.problem(&at.key("path"), problem);
            }
            if !types.is_empty() {
                loaded.push(PluginEntry {
                    path: library,
                    types,
                });
            }
        }
        loaded
    }
}
