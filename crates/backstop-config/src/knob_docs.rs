//! The knob tables of `docs/` checked against the code, so each knob's
//! name and default exist once: in the code, with the docs held to it.
//!
//! A table is checked when a `<!-- knobs: NAME -->` line precedes it. Its
//! first column names keys (one or several, in backticks); the set of keys
//! must equal the keys the code's type accepts (read from serde's own
//! "expected one of" list, so nothing is listed twice here). Its second
//! column is the default: when it starts with a literal in backticks (a
//! number, `true` / `false`, a quoted string), that literal must equal the
//! value the code takes when the key is absent (read from the `Debug` of
//! the type deserialized from an empty table). Prose defaults ("the id",
//! "none") are not compared.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// What the code says of one table: its keys and, per key, the `Debug` text
/// of its default.
struct Knobs {
    keys: BTreeSet<String>,
    defaults: BTreeMap<String, String>,
}

/// The keys `T` accepts and its defaults when only `required` is given.
fn knobs_of<T: DeserializeOwned + Debug>(required: Value) -> Knobs {
    let mut probe = required.clone();
    probe["\u{1}unknown"] = json!(0);
    let error = serde_json::from_value::<T>(probe)
        .expect_err("a deny_unknown_fields type refuses an unknown key")
        .to_string();
    let keys = expected_fields(&error);
    assert!(!keys.is_empty(), "no field list in {error:?}");
    let value: T = serde_json::from_value(required)
        .unwrap_or_else(|e| panic!("{} from its required keys: {e}", std::any::type_name::<T>()));
    Knobs {
        keys,
        defaults: debug_fields(&format!("{value:?}")),
    }
}

/// The names in serde's "expected one of `a`, `b`" (or "expected `a`").
fn expected_fields(error: &str) -> BTreeSet<String> {
    let Some((_, list)) = error.split_once("expected") else {
        return BTreeSet::new();
    };
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `Name { a: 1, b: Some("x"), c: Inner { d: 5s } }` as `a`, `b`, `c.d`.
fn debug_fields(debug: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    flatten("", debug, &mut out);
    out
}

fn flatten(prefix: &str, debug: &str, out: &mut BTreeMap<String, String>) {
    let Some(open) = debug.find(" { ") else {
        return;
    };
    let body = debug[open + 3..]
        .trim_end()
        .trim_end_matches('}')
        .trim_end();
    for field in split_top_level(body) {
        let Some((name, value)) = field.split_once(": ") else {
            continue;
        };
        let key = format!("{prefix}{}", name.trim());
        let value = value.trim();
        if value.contains(" { ") && !value.starts_with('{') && !value.starts_with("Some(") {
            flatten(&format!("{key}."), value, out);
        } else {
            out.insert(key, value.to_owned());
        }
    }
}

/// Splits at commas outside brackets, braces, parentheses and strings.
fn split_top_level(body: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut in_string, mut escaped, mut start) =
        (Vec::new(), 0i32, false, false, 0);
    for (i, c) in body.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    parts
}

/// A default as a comparable literal: a number (durations in ms), a bool,
/// or a string (enum variants in snake_case); `None` when the code has no
/// value.
#[derive(Debug, PartialEq)]
enum Literal {
    Number(f64),
    Bool(bool),
    Text(String),
}

fn code_literal(debug: &str) -> Option<Literal> {
    let debug = debug.trim();
    if debug == "None" {
        return None;
    }
    if let Some(inner) = debug
        .strip_prefix("Some(")
        .and_then(|d| d.strip_suffix(')'))
    {
        return code_literal(inner);
    }
    if let Some(text) = debug.strip_prefix('"').and_then(|d| d.strip_suffix('"')) {
        return Some(Literal::Text(text.to_owned()));
    }
    if let Ok(b) = debug.parse() {
        return Some(Literal::Bool(b));
    }
    if let Ok(n) = debug.parse() {
        return Some(Literal::Number(n));
    }
    for (suffix, scale) in [("ms", 1.0), ("µs", 0.001), ("ns", 0.000_001), ("s", 1000.0)] {
        if let Some(n) = debug
            .strip_suffix(suffix)
            .and_then(|n| n.parse::<f64>().ok())
        {
            return Some(Literal::Number(n * scale));
        }
    }
    if debug.chars().all(char::is_alphanumeric) {
        let mut snake = String::new();
        for (i, c) in debug.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        }
        return Some(Literal::Text(snake));
    }
    Some(Literal::Text(debug.to_owned()))
}

/// The literal a default cell starts with, if it starts with one.
fn doc_literal(cell: &str) -> Option<Literal> {
    let token = cell.trim().strip_prefix('`')?.split('`').next()?;
    if let Some(text) = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        return Some(Literal::Text(text.to_owned()));
    }
    if let Ok(b) = token.parse() {
        return Some(Literal::Bool(b));
    }
    token.parse().ok().map(Literal::Number)
}

/// One row of a docs table: its keys and its default cell.
struct Row {
    keys: Vec<String>,
    default: String,
}

/// The rows of every `<!-- knobs: NAME -->` table of `text`, by name.
fn tables(text: &str) -> BTreeMap<String, Vec<Row>> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- knobs: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        while lines.peek().is_some_and(|l| !l.starts_with('|')) {
            lines.next();
        }
        let mut rows = Vec::new();
        for row in lines.by_ref().take_while(|l| l.starts_with('|')).skip(2) {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
            let keys = cells[0]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            rows.push(Row {
                keys,
                default: cells.get(1).copied().unwrap_or_default().to_owned(),
            });
        }
        out.insert(name.to_owned(), rows);
    }
    out
}

/// Every knob table of `docs/`, by name, with the file it is in.
fn docs_tables() -> BTreeMap<String, (String, Vec<Row>)> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&docs).expect("docs/ exists") {
        let path = entry.expect("a docs entry").path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a readable doc");
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        for (name, rows) in tables(&text) {
            out.insert(name, (file.clone().unwrap_or_default(), rows));
        }
    }
    out
}

/// What the code says of every table the docs check.
fn code_tables() -> BTreeMap<&'static str, Knobs> {
    use crate::schema::{
        LimitsSection, ModelSection, RateSection, RetriesSection, ScenarioSection, ServerSection,
        StrategiesSection, TelemetrySection, TimeoutsSection,
    };
    let mut tables = BTreeMap::from([
        ("server", knobs_of::<ServerSection>(json!({}))),
        ("telemetry", knobs_of::<TelemetrySection>(json!({}))),
        ("models", {
            // A model without a price is priced when it is built, not read.
            let mut models = knobs_of::<ModelSection>(json!({"provider": "p"}));
            models.defaults.insert(
                "cost_per_1k".to_owned(),
                format!("{:?}", crate::schema::DEFAULT_COST_PER_1K),
            );
            models
        }),
        ("scenarios", knobs_of::<ScenarioSection>(json!({}))),
        ("limits", {
            // `per_caller` is an inline table: its keys are documented as
            // `per_caller.rpm`, `per_caller.tpm`.
            let outer = knobs_of::<LimitsSection>(json!({}));
            let inner = knobs_of::<RateSection>(json!({}));
            let mut keys = BTreeSet::new();
            let mut defaults = BTreeMap::new();
            for table in &outer.keys {
                for key in &inner.keys {
                    keys.insert(format!("{table}.{key}"));
                    if let Some(d) = inner.defaults.get(key) {
                        defaults.insert(format!("{table}.{key}"), d.clone());
                    }
                }
            }
            Knobs { keys, defaults }
        }),
        ("strategies", knobs_of::<StrategiesSection>(json!({}))),
        (
            "circuit_breaker",
            knobs_of::<backstop_strategies::health::CircuitBreakerConfig>(json!({})),
        ),
        (
            "probe",
            knobs_of::<backstop_strategies::health::ActiveProbeConfig>(json!({})),
        ),
        (
            "alerts",
            knobs_of::<backstop_strategies::monitor::AlertConfig>(json!({})),
        ),
    ]);
    // Route policy: the keys the schema reads, the defaults core applies.
    let mut keys = BTreeSet::new();
    for (prefix, inner) in [
        ("timeouts.", knobs_of::<TimeoutsSection>(json!({})).keys),
        ("retries.", knobs_of::<RetriesSection>(json!({})).keys),
    ] {
        keys.extend(inner.into_iter().map(|k| format!("{prefix}{k}")));
    }
    keys.extend(["mid_stream", "hedge_after_ms", "on_content_policy"].map(str::to_owned));
    let defaults = debug_fields(&format!("{:?}", backstop_core::RoutePolicy::default()));
    tables.insert("route_policy", Knobs { keys, defaults });
    #[cfg(feature = "openai")]
    tables.insert(
        "openai",
        knobs_of::<backstop_provider_openai::OpenAiConfig>(json!({})),
    );
    #[cfg(feature = "anthropic")]
    tables.insert(
        "anthropic",
        knobs_of::<backstop_provider_anthropic::AnthropicConfig>(json!({})),
    );
    #[cfg(feature = "template")]
    tables.insert(
        "template",
        knobs_of::<backstop_provider_template::TemplateConfig>(json!({})),
    );
    #[cfg(feature = "simulated")]
    tables.insert(
        "simulated",
        knobs_of::<backstop_provider_simulated::SimulatedConfig>(json!({})),
    );
    tables
}

/// The code's default of a documented key: the field itself, or the
/// duration field a `_ms` key sets.
fn code_default<'a>(knobs: &'a Knobs, key: &str) -> Option<&'a String> {
    knobs
        .defaults
        .get(key)
        .or_else(|| key.strip_suffix("_ms").and_then(|k| knobs.defaults.get(k)))
}

#[test]
fn every_knob_table_in_docs_matches_the_code() {
    let docs = docs_tables();
    let code = code_tables();
    let mut problems = Vec::new();
    for name in code.keys() {
        if !docs.contains_key(*name) {
            problems.push(format!("no `<!-- knobs: {name} -->` table in docs/"));
        }
    }
    for (name, (file, rows)) in &docs {
        let Some(knobs) = code.get(name.as_str()) else {
            problems.push(format!(
                "docs/{file}: `{name}` is not a table the code defines"
            ));
            continue;
        };
        let documented: BTreeSet<String> = rows.iter().flat_map(|r| r.keys.clone()).collect();
        for missing in knobs.keys.difference(&documented) {
            problems.push(format!(
                "docs/{file}: table `{name}` lacks the key `{missing}`"
            ));
        }
        for extra in documented.difference(&knobs.keys) {
            problems.push(format!(
                "docs/{file}: table `{name}` documents `{extra}`, which the code does not accept"
            ));
        }
        for row in rows {
            let Some(documented) = doc_literal(&row.default) else {
                continue;
            };
            for key in &row.keys {
                let code_value = code_default(knobs, key).and_then(|d| code_literal(d));
                if code_value.as_ref() != Some(&documented) {
                    problems.push(format!(
                        "docs/{file}: table `{name}`, key `{key}`: the docs say {documented:?}, the code {code_value:?}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_reads_serde_field_lists_and_debug_output() {
    assert_eq!(
        expected_fields("unknown field `x`, expected one of `a`, `b_ms`"),
        BTreeSet::from(["a".to_owned(), "b_ms".to_owned()])
    );
    let fields = debug_fields(
        r#"P { t: T { connect: 5s, idle: 50ms }, name: Some("a, b"), mode: Continue, m: {"x": 1}, off: None }"#,
    );
    assert_eq!(
        code_literal(&fields["t.connect"]),
        Some(Literal::Number(5000.0))
    );
    assert_eq!(code_literal(&fields["t.idle"]), Some(Literal::Number(50.0)));
    assert_eq!(
        code_literal(&fields["name"]),
        Some(Literal::Text("a, b".into()))
    );
    assert_eq!(
        code_literal(&fields["mode"]),
        Some(Literal::Text("continue".into()))
    );
    assert_eq!(code_literal(&fields["off"]), None);
    assert_eq!(doc_literal("`0.5`"), Some(Literal::Number(0.5)));
    assert_eq!(
        doc_literal("`\"return\"`"),
        Some(Literal::Text("return".into()))
    );
    assert_eq!(doc_literal("every model by priority"), None);
    let parsed = tables(
        "<!-- knobs: t -->\n\n| key | default | meaning |\n|---|---|---|\n| `a`, `b` | `1` | x |\n\nafter",
    );
    assert_eq!(parsed["t"][0].keys, ["a", "b"]);
    assert_eq!(parsed["t"][0].default, "`1`");
}
