//! What `backstop check` prints: the resolved configuration, as a running
//! gateway would use it.

use std::fmt;

use backstop_core::{ModelSpec, RoutePolicy};

use backstop_http::redact_url;

use crate::problem::Problem;
use crate::registry::{Origin, SeamKind};
use crate::resolved::{ProbeSettings, ServerSettings};

/// The resolved configuration, for people. `Display` is the output of
/// `backstop check`.
#[derive(Debug, Clone)]
pub struct Report {
    /// The file, as the user named it.
    pub file: String,
    /// `[server]`.
    pub server: ServerSettings,
    /// Providers, in file order.
    pub providers: Vec<ProviderEntry>,
    /// Models, in the Router's order (file order; implicit stand-ins last).
    pub models: Vec<ModelEntry>,
    /// Scenarios, in file order.
    pub scenarios: Vec<ScenarioEntry>,
    /// The defaults of `[strategies]`, which single-model routes use.
    pub defaults: RouteEntry,
    /// Models reachable by their own id (those no scenario name hides).
    pub single_model_routes: Vec<String>,
    /// The prober.
    pub probe: ProbeSettings,
    /// `[state]`.
    pub state: StateEntry,
    /// `[limits] per_caller`, when set.
    pub per_caller: Option<backstop_core::RateQuota>,
    /// Event sinks wired into the Router.
    pub sinks: Vec<StrategyChoice>,
    /// Dynamic plugins and the types they declared.
    pub plugins: Vec<PluginEntry>,
    /// Things that work but deserve attention.
    pub warnings: Vec<Problem>,
}

/// `<what> rpm N, tpm M` for the limits that are set; empty without any.
fn per_minute(what: &str, quota: &backstop_core::RateQuota) -> String {
    let parts: Vec<String> = [("rpm", quota.rpm), ("tpm", quota.tpm)]
        .into_iter()
        .filter_map(|(unit, v)| v.map(|v| format!("{unit} {v}")))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{what} {}", parts.join(", "))
    }
}

/// `[state]`, as printed: the variable the URL comes from, never the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// `local` or `redis`.
    pub backend: String,
    /// The variable holding the store's URL (redis only).
    pub url_env: Option<String>,
    /// Prefix of every key (redis only).
    pub key_prefix: Option<String>,
    /// Bound of a store call (redis only).
    pub timeout_ms: Option<u64>,
    /// What shared budgets do while the store fails (redis only).
    pub on_store_failure: Option<&'static str>,
}

/// A provider.
#[derive(Debug, Clone)]
pub struct ProviderEntry {
    /// Its id.
    pub id: String,
    /// Its `type`.
    pub type_name: String,
    /// Where the type comes from.
    pub origin: Origin,
    /// Whether it stands in as a model of its own id.
    pub stands_in: bool,
    /// Its table without `type`.
    pub config: serde_json::Value,
}

/// A model.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// The model.
    pub spec: ModelSpec,
    /// Whether it is a stand-in provider's implicit model.
    pub implicit: bool,
}

/// A scenario.
#[derive(Debug, Clone)]
pub struct ScenarioEntry {
    /// Its name.
    pub name: String,
    /// Model ids in configured order.
    pub chain: Vec<String>,
    /// Whether the chain was derived (every model, by priority) rather
    /// than written.
    pub chain_by_priority: bool,
    /// Its strategies and policy.
    pub route: RouteEntry,
}

/// The strategies and policy of a route.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// Selector.
    pub selector: StrategyChoice,
    /// Health policy.
    pub health: StrategyChoice,
    /// Budget policy.
    pub budget: StrategyChoice,
    /// Result handler.
    pub result: StrategyChoice,
    /// Timeouts, retries, streams, hedging, content policy.
    pub policy: RoutePolicy,
}

/// A strategy as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyChoice {
    /// Its `type`.
    pub type_name: String,
    /// Its table without `type`.
    pub config: serde_json::Value,
    /// Which instance of its seam it is (1-based): routes with the same
    /// number share one instance, and so its state.
    pub instance: usize,
}

/// A dynamic plugin.
#[derive(Debug, Clone)]
pub struct PluginEntry {
    /// Its path, as configured.
    pub path: String,
    /// The types it declared.
    pub types: Vec<(SeamKind, String)>,
}

impl fmt::Display for Report {
    /// The report, without a trailing newline (like [`Problems`](crate::Problems)).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.write(&mut text)?;
        f.write_str(text.trim_end())
    }
}

impl Report {
    fn write(&self, f: &mut String) -> fmt::Result {
        use std::fmt::Write as _;
        writeln!(f, "{}: configuration OK", self.file)?;

        let s = &self.server;
        writeln!(f, "\nserver")?;
        writeln!(f, "  listen               {}", s.listen)?;
        match &s.api_keys {
            Some(keys) => writeln!(
                f,
                "  auth                 {} bearer key{} from ${}",
                keys.len(),
                plural(keys.len()),
                s.api_keys_env
            )?,
            None => writeln!(
                f,
                "  auth                 NONE (${} is unset)",
                s.api_keys_env
            )?,
        }
        writeln!(f, "  body limit           {} bytes", s.body_limit_bytes)?;
        writeln!(
            f,
            "  header read timeout  {}",
            ms(s.header_read_timeout.as_millis())
        )?;
        writeln!(
            f,
            "  body read timeout    {}",
            ms(s.body_read_timeout.as_millis())
        )?;
        writeln!(
            f,
            "  shutdown grace       {}",
            ms(s.shutdown_grace.as_millis())
        )?;
        writeln!(f, "  max connections      {}", s.max_connections)?;
        match s.log_summary {
            Some(every) => writeln!(f, "  log summary          every {} ms", every.as_millis())?,
            None => writeln!(f, "  log summary          off")?,
        }

        writeln!(f, "\nproviders")?;
        let width = self.providers.iter().map(|p| p.id.len()).max().unwrap_or(0);
        for p in &self.providers {
            write!(f, "  {:width$}  {}", p.id, p.type_name)?;
            if p.origin != Origin::Builtin {
                write!(f, " ({})", p.origin)?;
            }
            let config = inline(&p.config);
            if !config.is_empty() {
                write!(f, " {config}")?;
            }
            if p.stands_in {
                write!(f, "  [stands in as model {:?}]", p.id)?;
            }
            writeln!(f)?;
        }

        writeln!(f, "\nmodels")?;
        let width = self
            .models
            .iter()
            .map(|m| m.spec.id.len())
            .max()
            .unwrap_or(0);
        for m in &self.models {
            let spec = &m.spec;
            if m.implicit {
                writeln!(
                    f,
                    "  {:width$}  stand-in of provider {:?}: free, any prompt size",
                    spec.id, spec.provider
                )?;
                continue;
            }
            let mut caps = Vec::new();
            if spec.capabilities.streaming {
                caps.push("streaming");
            }
            if spec.capabilities.tools {
                caps.push("tools");
            }
            if spec.capabilities.assistant_prefill {
                caps.push("prefill");
            }
            writeln!(
                f,
                "  {:width$}  priority {}, provider {}, upstream {:?}, USD/1k in {} out {}, window {}, max_tokens {}, {}{}",
                spec.id,
                spec.priority,
                spec.provider,
                spec.upstream,
                spec.input_cost_per_1k,
                spec.output_cost_per_1k,
                spec.context_window,
                spec.max_tokens,
                if caps.is_empty() {
                    "no streaming".to_owned()
                } else {
                    caps.join(" + ")
                },
                per_minute(", quota", &spec.quota)
            )?;
        }

        writeln!(
            f,
            "\nscenarios (strategies with the same #n share one instance, and its state)"
        )?;
        if self.scenarios.is_empty() {
            writeln!(f, "  none (requests name a model)")?;
        }
        for scenario in &self.scenarios {
            writeln!(f, "  {}", scenario.name)?;
            write!(f, "    chain      {}", scenario.chain.join(" -> "))?;
            if scenario.chain_by_priority {
                write!(f, "  (every model, by priority)")?;
            }
            writeln!(f)?;
            write_route(f, &scenario.route)?;
        }

        writeln!(f, "\ndefaults ([strategies], and single-model routes)")?;
        write_route(f, &self.defaults)?;
        writeln!(
            f,
            "    models     {}",
            if self.single_model_routes.is_empty() {
                "none".to_owned()
            } else {
                self.single_model_routes.join(", ")
            }
        )?;

        writeln!(f, "\nprobe")?;
        writeln!(
            f,
            "  every {}: models with an open circuit or idle for {}, timeout {}",
            ms(self.probe.interval.as_millis()),
            ms(self.probe.idle.as_millis()),
            ms(self.probe.timeout.as_millis())
        )?;

        writeln!(f, "\nstate")?;
        match (
            &self.state.url_env,
            &self.state.key_prefix,
            self.state.timeout_ms,
        ) {
            (Some(url_env), Some(prefix), Some(timeout)) => writeln!(
                f,
                "  {}: url from ${url_env}, key prefix {prefix:?}, timeout {}, budgets {} while the store fails",
                self.state.backend,
                ms(u128::from(timeout)),
                self.state.on_store_failure.unwrap_or("local")
            )?,
            _ => writeln!(
                f,
                "  {}: nothing shared with other replicas",
                self.state.backend
            )?,
        }

        writeln!(f, "\nlimits")?;
        match &self.per_caller {
            Some(quota) => writeln!(f, "  {}", per_minute("each caller", quota))?,
            None => writeln!(f, "  callers: none")?,
        }

        writeln!(f, "\nevent sinks")?;
        if self.sinks.is_empty() {
            writeln!(f, "  none")?;
        }
        for sink in &self.sinks {
            let config = inline(&sink.config);
            if config.is_empty() {
                writeln!(f, "  {}", sink.type_name)?;
            } else {
                writeln!(f, "  {} {config}", sink.type_name)?;
            }
        }

        if !self.plugins.is_empty() {
            writeln!(f, "\nplugins")?;
            for plugin in &self.plugins {
                let types: Vec<String> = plugin
                    .types
                    .iter()
                    .map(|(seam, name)| format!("{seam} {name:?}"))
                    .collect();
                writeln!(f, "  {}: {}", plugin.path, types.join(", "))?;
            }
        }

        if !self.warnings.is_empty() {
            writeln!(f, "\nwarnings")?;
            for warning in &self.warnings {
                writeln!(f, "  {warning}")?;
            }
        }
        Ok(())
    }
}

fn seams(route: &RouteEntry) -> [(&'static str, &StrategyChoice); 4] {
    [
        ("selector", &route.selector),
        ("health", &route.health),
        ("budget", &route.budget),
        ("result", &route.result),
    ]
}

fn write_route(f: &mut String, route: &RouteEntry) -> fmt::Result {
    use std::fmt::Write as _;
    for (seam, c) in seams(route) {
        writeln!(f, "    {seam:<10} {}", choice(c))?;
    }
    let p = &route.policy;
    let t = &p.timeouts;
    writeln!(
        f,
        "    timeouts   connect {}, first token {}, idle {}, attempt {}, total {}",
        ms(t.connect.as_millis()),
        ms(t.first_token.as_millis()),
        ms(t.idle.as_millis()),
        ms(t.attempt.as_millis()),
        ms(t.total.as_millis())
    )?;
    let r = &p.retries;
    writeln!(
        f,
        "    retries    {} same-model retr{}, Retry-After cap {}, backoff {} doubling to {}",
        r.same_model,
        if r.same_model == 1 { "y" } else { "ies" },
        ms(r.retry_after_cap.as_millis()),
        ms(r.backoff_base.as_millis()),
        ms(r.backoff_max.as_millis())
    )?;
    writeln!(
        f,
        "    streams    mid-stream {}, hedge {}, content policy {}",
        enum_name(&p.mid_stream),
        p.hedge_after.map_or_else(
            || "off".to_owned(),
            |h| format!("after {}", ms(h.as_millis()))
        ),
        enum_name(&p.on_content_policy)
    )
}

/// `type #instance { table }`.
fn choice(c: &StrategyChoice) -> String {
    let config = inline(&c.config);
    if config.is_empty() {
        format!("{} #{}", c.type_name, c.instance)
    } else {
        format!("{} #{} {config}", c.type_name, c.instance)
    }
}

/// The snake_case name a unit enum serializes to.
fn enum_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".to_owned(),
    }
}

fn ms(n: u128) -> String {
    format!("{n} ms")
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A table as a TOML inline table (`{ a = 1, b = "x" }`); empty when the
/// table is empty. Long strings are shortened.
pub(crate) fn inline(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) if map.is_empty() => String::new(),
        serde_json::Value::Null => String::new(),
        other => toml_value(other),
    }
}

fn toml_value(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            const MAX: usize = 48;
            if s.chars().count() > MAX {
                let short: String = s.chars().take(MAX - 1).collect();
                format!("{:?}", format!("{short}…"))
            } else {
                format!("{s:?}")
            }
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    let key = if !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        k.clone()
                    } else {
                        format!("{k:?}")
                    };
                    format!("{key} = {}", shown(k, v))
                })
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
    }
}

/// A table entry's value as `check` may print it. Plugin and strategy
/// tables are free-form, so secrets are recognised by their key: a URL loses
/// its userinfo and query, a webhook URL its path too (Slack-style hooks
/// carry their token there), and a key named like a secret is hidden.
fn shown(key: &str, value: &serde_json::Value) -> String {
    use serde_json::Value;
    let key = key.to_ascii_lowercase();
    let hidden = |s: String| toml_value(&Value::String(s));
    match value {
        Value::String(url) if key.contains("webhook") => hidden(without_path(&redact_url(url))),
        Value::String(url) if key.ends_with("url") => hidden(redact_url(url)),
        Value::String(_) if names_a_secret(&key) => hidden("<redacted>".to_owned()),
        other => toml_value(other),
    }
}

/// `scheme://host[:port]/<redacted>` when there is a path beyond `/`.
fn without_path(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |at| at + "://".len());
    match url[after_scheme..].find('/') {
        Some(slash) if after_scheme + slash + 1 < url.len() => {
            format!("{}/<redacted>", &url[..after_scheme + slash])
        }
        _ => url.to_owned(),
    }
}

/// Whether a key names a secret value (not the variable that holds one:
/// `api_key_env` is fine to show).
fn names_a_secret(key: &str) -> bool {
    !key.ends_with("_env")
        && ["key", "secret", "password", "token", "authorization"]
            .iter()
            .any(|word| key.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_tables_are_not_printed() {
        let v = serde_json::json!({
            "webhook_url": "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
            "base_url": "https://user:pass@proxy.example:8443/v1?api-key=SECRET",
            "api_key_env": "OPENAI_API_KEY",
            "api_key": "sk-SECRET",
            "auth_token": "SECRET",
            "locale": "en",
        });
        let shown = inline(&v);
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("pass"), "{shown}");
        assert_eq!(
            shown,
            r#"{ api_key = "<redacted>", api_key_env = "OPENAI_API_KEY", auth_token = "<redacted>", base_url = "https://proxy.example:8443/v1", locale = "en", webhook_url = "https://hooks.slack.com/<redacted>" }"#
        );
        let bare = serde_json::json!({"webhook_url": "http://127.0.0.1:9000/"});
        assert_eq!(
            inline(&bare),
            r#"{ webhook_url = "http://127.0.0.1:9000/" }"#
        );
    }

    #[test]
    fn tables_print_as_toml_inline_tables() {
        let v = serde_json::json!({"locale": "en", "max_latency_ms": 5000, "w": {"a.b": 1, "gpt-4o": 2}});
        assert_eq!(
            inline(&v),
            r#"{ locale = "en", max_latency_ms = 5000, w = { "a.b" = 1, gpt-4o = 2 } }"#
        );
        assert_eq!(inline(&serde_json::json!({})), "");
    }
}
