//! Every kind of problem `backstop check` reports, each at its exact key
//! path (or line and column), and all of them in one run.

use figment::Jail;

use crate::problems;

const BAD: &str = include_str!("../../../../examples/bad.toml");

#[test]
fn bad_example_reports_every_problem_in_one_run() {
    Jail::expect_with(|jail| {
        jail.create_dir("examples")?;
        jail.create_file("examples/bad.toml", BAD)?;
        let found = problems("examples/bad.toml");
        let expected = [
            r#"examples/bad.toml: server.listen: invalid address "localhost:8080": expected IP:PORT, such as "127.0.0.1:8080" or "0.0.0.0:8080""#,
            "examples/bad.toml: server.body_limit_bytes: must be greater than 0",
            r#"examples/bad.toml: providers.openai.api_key_env: environment variable "BAD_EXAMPLE_OPENAI_KEY" is not set"#,
            r#"examples/bad.toml: providers.openai.base_urll: openai: unknown key "base_urll" (did you mean "base_url"?); expected one of "base_url", "api_key_env", "max_tokens_field""#,
            r#"examples/bad.toml: providers.local.type: unknown provider type "openia" (did you mean "openai"?); known provider types: "anthropic", "openai", "simulated", "template""#,
            "examples/bad.toml: models.gpt-4o.cost_per_1k: must be a non-negative number of USD (got -0.005)",
            "examples/bad.toml: models.gpt-4o.context_window: must be greater than 0",
            r#"examples/bad.toml: models.gpt-4o-mini.prioritty: unknown key "prioritty" (did you mean "priority"?); expected one of "provider", "model", "priority", "max_tokens", "cost_per_1k", "input_cost_per_1k", "output_cost_per_1k", "context_window", "supports_prefill", "streaming", "tools", "last_resort", "dimensions", "rpm", "tpm""#,
            r#"examples/bad.toml: models.gpt-4o-mini.provider: unknown provider "opena" (did you mean "openai"?); providers: "openai", "local", "rules""#,
            r#"examples/bad.toml: strategies.selector.type: unknown selector type "fastest"; known selector types: "cost_aware", "latency_aware", "priority", "weighted""#,
            "examples/bad.toml: strategies.health.failure_ratio: circuit_breaker: must be within 0..=1 (got 1.5)",
            r#"examples/bad.toml: scenarios.realtime_chat.mid_stream: unknown value "contine" (did you mean "continue"?); expected one of "error", "continue", "restart""#,
            r#"examples/bad.toml: scenarios.realtime_chat.chain[1]: unknown model "qwen-7" (did you mean "qwen-7b"?); models: "gpt-4o", "gpt-4o-mini", "qwen-7b", "rules""#,
            r#"examples/bad.toml: scenarios.realtime_chat.selector.max_latncy_ms: latency_aware: unknown key "max_latncy_ms" (did you mean "max_latency_ms"?); expected one of "max_latency_ms", "explore_every", "max_age_ms""#,
            "examples/bad.toml: scenarios.realtime_chat.timeouts.first_token_ms: 40000 ms exceeds attempt_ms (20000 ms): every streamed attempt would time out before its first token was due",
            "examples/bad.toml: scenarios.content_generation.chain: is empty: name at least one model, or remove the key to use every model by priority",
            r#"examples/bad.toml: scenarios.analysis.chain[1]: "openai" is a provider, not a model; a chain names models (models of "openai": "gpt-4o")"#,
            r#"examples/bad.toml: scenarios.analysis.chain[2]: model "gpt-4o" is already in the chain at chain[0]"#,
            "examples/bad.toml: alerts.max_fallbacks: must be greater than 0",
        ];
        assert_eq!(found, expected, "\n{}", found.join("\n"));
        Ok(())
    });
}

/// A valid base every case below breaks in one place.
const BASE: &str = r#"
[providers.local]
type = "openai"
base_url = "http://127.0.0.1:9/v1"

[providers.rules]
type = "template"

[models.qwen-7b]
provider = "local"
"#;

/// The problems of `text`, written to `file` in the jail.
fn problems_of(jail: &mut Jail, file: &str, text: &str) -> figment::Result<Vec<String>> {
    jail.create_file(file, text)?;
    Ok(problems(file))
}

#[track_caller]
fn assert_problems(text: &str, expected: &[&str]) {
    Jail::expect_with(|jail| {
        let found = problems_of(jail, "c.toml", text)?;
        assert_eq!(found, expected, "\n{}", found.join("\n"));
        Ok(())
    });
}

#[test]
fn toml_syntax_errors_carry_line_and_column() {
    assert_problems(
        "[server]\nlisten = \"127.0.0.1:8080\"\nbody_limit_bytes = = 3\n",
        &["c.toml:3:20: invalid TOML: extra `=`, expected nothing"],
    );
}

#[test]
fn server_guards_must_not_be_zero() {
    assert_problems(
        &format!(
            "[server]\nheader_read_timeout_ms = 0\nbody_read_timeout_ms = 0\nshutdown_grace_ms = 0\nmax_connections = 0\n{BASE}"
        ),
        &[
            "c.toml: server.header_read_timeout_ms: must be greater than 0: a client that never finishes its headers would hold a connection forever",
            "c.toml: server.body_read_timeout_ms: must be greater than 0: a client that never finishes its body would hold a request forever",
            "c.toml: server.shutdown_grace_ms: must be greater than 0: with no grace, a shutdown cuts every answer in flight",
            "c.toml: server.max_connections: must be greater than 0",
        ],
    );
}

#[test]
fn keys_pasted_where_a_variable_name_belongs_are_refused_unrepeated() {
    assert_problems(
        &format!(
            "[server]\napi_keys_env = \"sk-caller-123\"\n{BASE}\n[providers.cloud]\ntype = \"openai\"\nbase_url = \"https://api.deepseek.com/v1\"\napi_key_env = \"sk-live-456\"\n"
        ),
        &[
            "c.toml: server.api_keys_env: is not an environment variable name (ASCII letters, digits and `_`, not starting with a digit); it names the variable that holds the keys, never the keys themselves (the value is not repeated here)",
            "c.toml: providers.cloud.api_key_env: is not an environment variable name (ASCII letters, digits and `_`, not starting with a digit); it names the variable that holds the secret, never the secret itself (the value is not repeated here)",
        ],
    );
}

#[test]
fn a_model_defined_twice_is_a_duplicate_key() {
    assert_problems(
        &format!("{BASE}\n[models.qwen-7b]\nprovider = \"local\"\n"),
        &["c.toml:12:9: invalid TOML: duplicate key"],
    );
    Jail::expect_with(|jail| {
        let json = r#"{"models": {"a": {"provider": "p"},
                        "a": {"provider": "q"}}}"#;
        let found = problems_of(jail, "c.json", json)?;
        assert_eq!(
            found,
            ["c.json:2:27: invalid JSON: duplicate key `models.a`"]
        );
        Ok(())
    });
}

#[test]
fn yaml_syntax_errors_carry_line_and_column() {
    Jail::expect_with(|jail| {
        let found = problems_of(
            jail,
            "c.yaml",
            "server:\n  listen: [127.0.0.1\nmodels: {}\n",
        )?;
        assert_eq!(
            found,
            [
                "c.yaml:3:7: invalid YAML: did not find expected ',' or ']', while parsing a flow sequence at line 2 column 11"
            ]
        );
        Ok(())
    });
}

#[test]
fn unknown_sections_and_keys_are_refused_with_the_expected_ones() {
    assert_problems(
        &format!(
            "{BASE}\n[modles.x]\nprovider = \"local\"\n\n[scenarios.chat]\nchain = [\"qwen-7b\"]\ntimeouts = {{ first_tokn_ms = 5 }}\nretries = {{ same_model = 1, backoff = 3 }}\n"
        ),
        &[
            r#"c.toml: modles: unknown section "modles" (did you mean "models"?); expected one of "server", "providers", "models", "scenarios", "strategies", "alerts", "plugins", "state", "limits", "telemetry""#,
            r#"c.toml: scenarios.chat.retries.backoff: unknown key "backoff" (did you mean "backoff_max_ms"?); expected one of "same_model", "retry_after_cap_ms", "backoff_base_ms", "backoff_max_ms""#,
            r#"c.toml: scenarios.chat.timeouts.first_tokn_ms: unknown key "first_tokn_ms" (did you mean "first_token_ms"?); expected one of "connect_ms", "first_token_ms", "idle_ms", "attempt_ms", "total_ms""#,
        ],
    );
}

#[test]
fn unknown_type_names_list_the_known_ones_in_every_seam() {
    assert_problems(
        &format!(
            "{BASE}\n[providers.cloud]\ntype = \"opnai\"\n\n[providers.other]\nbase_url = \"x\"\n\n[scenarios.chat]\nchain = [\"qwen-7b\"]\nselector = {{ type = \"latency\" }}\nhealth = {{ type = \"breaker\" }}\nbudget = \"perrequest\"\nresult = {{ locale = \"en\" }}\n"
        ),
        &[
            r#"c.toml: providers.cloud.type: unknown provider type "opnai" (did you mean "openai"?); known provider types: "anthropic", "openai", "simulated", "template""#,
            r#"c.toml: providers.other: missing required key "type"; known provider types: "anthropic", "openai", "simulated", "template""#,
            r#"c.toml: scenarios.chat.selector.type: unknown selector type "latency" (did you mean "latency_aware"?); known selector types: "cost_aware", "latency_aware", "priority", "weighted""#,
            r#"c.toml: scenarios.chat.health.type: unknown health type "breaker"; known health types: "circuit_breaker""#,
            r#"c.toml: scenarios.chat.budget.type: unknown budget type "perrequest" (did you mean "per_request"?); known budget types: "per_request", "rolling", "unlimited""#,
            r#"c.toml: scenarios.chat.result: missing required key "type"; known result types: "annotate""#,
        ],
    );
}

#[test]
fn strategy_tables_refuse_misspelled_keys_at_their_path() {
    assert_problems(
        &format!(
            "{BASE}\n[strategies]\nhealth = {{ type = \"circuit_breaker\", failur_ratio = 0.5 }}\nbudget = {{ type = \"per_request\", max_cots = 0.05 }}\nresult = {{ type = \"annotate\", locael = \"en\" }}\n\n[scenarios.chat]\nchain = [\"qwen-7b\"]\nselector = {{ type = \"priority\", max_latency_ms = 5 }}\n"
        ),
        &[
            r#"c.toml: strategies.health.failur_ratio: circuit_breaker: unknown key "failur_ratio" (did you mean "failure_ratio"?); expected one of "failure_ratio", "min_calls", "window_ms", "buckets", "slow_call_ms", "slow_call_ratio", "break_ms", "break_multiplier", "max_break_ms", "half_open_calls", "cooldown_ms", "max_cooldown_ms""#,
            r#"c.toml: strategies.budget.max_cots: per_request: unknown key "max_cots" (did you mean "max_cost"?); expected one of "max_cost""#,
            r#"c.toml: strategies.result.locael: annotate: unknown key "locael" (did you mean "locale"?); expected one of "locale", "warning", "limitation""#,
            r#"c.toml: scenarios.chat.selector.max_latency_ms: priority: unknown key "max_latency_ms"; this table takes no other keys"#,
        ],
    );
}

#[test]
fn provider_tables_report_every_bad_key() {
    assert_problems(
        &format!(
            "{BASE}\n[providers.cloud]\ntype = \"openai\"\nbase_url = 5\napi_key = \"sk-oops\"\n"
        ),
        &[
            r#"c.toml: providers.cloud.api_key: openai: unknown key "api_key" (did you mean "api_key_env"?); expected one of "base_url", "api_key_env", "max_tokens_field""#,
            "c.toml: providers.cloud.base_url: openai: expected a string, found unsigned int `5`",
        ],
    );
}

#[test]
fn chains_must_name_existing_models_once_and_not_be_empty() {
    assert_problems(
        &format!(
            "{BASE}\n[models.gpt-4o]\nprovider = \"cloud\"\n\n[scenarios.a]\nchain = [\"qwen-7\", \"local\", \"rules\", \"rules\"]\n\n[scenarios.b]\nchain = []\n"
        ),
        &[
            r#"c.toml: models.gpt-4o.provider: unknown provider "cloud"; providers: "local", "rules""#,
            r#"c.toml: scenarios.a.chain[0]: unknown model "qwen-7" (did you mean "qwen-7b"?); models: "gpt-4o", "qwen-7b", "rules""#,
            r#"c.toml: scenarios.a.chain[1]: "local" is a provider, not a model; a chain names models (models of "local": "qwen-7b")"#,
            r#"c.toml: scenarios.a.chain[3]: model "rules" is already in the chain at chain[2]"#,
            "c.toml: scenarios.b.chain: is empty: name at least one model, or remove the key to use every model by priority",
        ],
    );
}

#[test]
fn an_embeddings_chain_must_not_mix_dimensions_or_chat_models() {
    assert_problems(
        &format!(
            "{BASE}\n[models.embed-a]\nprovider = \"local\"\ndimensions = 1536\n\n[models.embed-b]\nprovider = \"local\"\ndimensions = 1536\n\n[models.embed-small]\nprovider = \"local\"\ndimensions = 512\n\n[models.embed-zero]\nprovider = \"local\"\ndimensions = 0\n\n[scenarios.vectors]\nchain = [\"embed-a\", \"embed-b\", \"embed-small\", \"qwen-7b\"]\n\n[scenarios.same]\nchain = [\"embed-a\", \"embed-b\"]\n"
        ),
        &[
            "c.toml: models.embed-zero.dimensions: must be greater than 0",
            r#"c.toml: scenarios.vectors.chain[2]: model "embed-small" has `dimensions = 512` but chain[0] "embed-a" has `dimensions = 1536`: a chain's models must all embed alike (the same dimensions) or all chat"#,
            r#"c.toml: scenarios.vectors.chain[3]: model "qwen-7b" has no `dimensions` (a chat model) but chain[0] "embed-a" has `dimensions = 1536`: a chain's models must all embed alike (the same dimensions) or all chat"#,
        ],
    );
}

#[test]
fn numbers_out_of_range_are_refused() {
    assert_problems(
        &format!(
            "{BASE}\n[models.big]\nprovider = \"local\"\nmax_tokens = 9000\ncontext_window = 8192\noutput_cost_per_1k = -1\n\n[scenarios.chat]\nchain = [\"big\"]\ntimeouts = {{ connect_ms = 0, attempt_ms = 60000, total_ms = 30000 }}\nretries = {{ backoff_base_ms = 5000, backoff_max_ms = 100 }}\n\n[strategies]\nprobe = {{ interval_ms = 0 }}\nbudget = {{ type = \"per_request\", max_cost = -1 }}\n\n[alerts]\nwindow_ms = 100\nbuckets = 1000\n"
        ),
        &[
            "c.toml: models.big.output_cost_per_1k: must be a non-negative number of USD (got -1)",
            "c.toml: models.big.max_tokens: 9000 exceeds context_window (8192): no request could fit",
            "c.toml: strategies.budget.max_cost: per_request: must be a non-negative number of USD (got -1)",
            "c.toml: scenarios.chat.timeouts.connect_ms: must be greater than 0",
            "c.toml: scenarios.chat.timeouts.attempt_ms: 60000 ms exceeds total_ms (30000 ms): no attempt could use its time",
            "c.toml: scenarios.chat.retries.backoff_base_ms: 5000 ms exceeds backoff_max_ms (100 ms)",
            "c.toml: alerts.buckets: must not exceed window_ms (100)",
            "c.toml: strategies.probe.interval_ms: must be greater than 0",
        ],
    );
}

#[test]
fn unset_secret_variables_are_named_even_when_defaulted() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let found = problems_of(
            jail,
            "c.toml",
            &format!(
                "{BASE}\n[providers.openai]\ntype = \"openai\"\n\n[providers.anthropic]\ntype = \"anthropic\"\n\n[providers.named]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"LOCAL_KEY\"\n"
            ),
        )?;
        assert_eq!(
            found,
            [
                "c.toml: providers.openai.api_key_env: openai: the environment variable `OPENAI_API_KEY` is not set (it should hold the API key)",
                "c.toml: providers.anthropic.api_key_env: anthropic: the environment variable `ANTHROPIC_API_KEY` is not set (it should hold the Anthropic API key)",
                r#"c.toml: providers.named.api_key_env: environment variable "LOCAL_KEY" is not set"#,
            ],
            "\n{}",
            found.join("\n")
        );
        Ok(())
    });
}

#[test]
fn a_configuration_without_models_is_refused() {
    assert_problems(
        "[providers.local]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
        &[
            "c.toml: models: no models: add a [models.<id>] table, or a template provider, which stands in as a model",
        ],
    );
}
