//! Every kind of problem `backstop check` reports, each at its exact key
//! path (or line and column), and all of them in one run.

use figment::Jail;

use crate::{EXAMPLE, problems, set_keys};

const BAD: &str = include_str!("../../../../examples/bad.toml");

#[test]
fn bad_example_reports_every_problem_in_one_run() {
    Jail::expect_with(|jail| {
        jail.create_dir("examples")?;
        jail.create_file("examples/bad.toml", BAD)?;
        let found = problems("examples/bad.toml");
        let expected = [
            r#"examples/bad.toml: server.listen: invalid address "localhost:8080": expected IP:PORT, such as "127.0.0.1:8080" or "0.0.0.0:8080""#,
            "examples/bad.toml: server.body_limit_bytes: must be between 1 and 18446744073709551615 (got 0)",
            r#"examples/bad.toml: providers.openai.api_key_env: environment variable "BAD_EXAMPLE_OPENAI_KEY" is not set"#,
            r#"examples/bad.toml: providers.openai.base_urll: openai: unknown key "base_urll" (did you mean "base_url"?); expected one of "base_url", "api_key_env", "max_tokens_field""#,
            r#"examples/bad.toml: providers.local.type: unknown provider type "openia" (did you mean "openai"?); known provider types: "anthropic", "openai", "template""#,
            "examples/bad.toml: models.gpt-4o.cost_per_1k: must be a non-negative number of USD (got -0.005)",
            "examples/bad.toml: models.gpt-4o.context_window: must be greater than 0",
            r#"examples/bad.toml: models.gpt-4o-mini.prioritty: unknown key "prioritty" (did you mean "priority"?); expected one of "provider", "model", "priority", "max_tokens", "cost_per_1k", "input_cost_per_1k", "output_cost_per_1k", "context_window", "supports_prefill", "streaming", "tools""#,
            r#"examples/bad.toml: models.gpt-4o-mini.provider: unknown provider "opena" (did you mean "openai"?); providers: "openai", "local", "rules""#,
            r#"examples/bad.toml: strategies.selector.type: unknown selector type "fastest"; known selector types: "cost_aware", "latency_aware", "priority", "weighted""#,
            "examples/bad.toml: strategies.health.failure_ratio: circuit_breaker: must be within 0..=1 (got 1.5)",
            r#"examples/bad.toml: scenarios.realtime_chat.mid_stream: unknown value "contine" (did you mean "continue"?); expected one of "error", "continue", "restart""#,
            r#"examples/bad.toml: scenarios.realtime_chat.chain[1]: unknown model "qwen-7" (did you mean "qwen-7b"?); models: "gpt-4o", "gpt-4o-mini", "qwen-7b", "rules""#,
            r#"examples/bad.toml: scenarios.realtime_chat.selector.max_latncy_ms: latency_aware: unknown key "max_latncy_ms" (did you mean "max_latency_ms"?); expected one of "max_latency_ms""#,
            "examples/bad.toml: scenarios.realtime_chat.timeouts.first_token_ms: (40000 ms) exceeds attempt_ms (20000 ms): every streamed attempt would time out before its first token was due",
            "examples/bad.toml: scenarios.content_generation.chain: is empty: name at least one model, or remove the key to use every model by priority",
            r#"examples/bad.toml: scenarios.analysis.chain[1]: "openai" is a provider, not a model; a chain names models (models of "openai": "gpt-4o")"#,
            r#"examples/bad.toml: scenarios.analysis.chain[2]: model "gpt-4o" is already in the chain at chain[0]"#,
            "examples/bad.toml: alerts.max_fallbacks: alerts: must be greater than 0",
        ];
        assert_eq!(found, expected, "\n{}", found.join("\n"));
        Ok(())
    });
}
