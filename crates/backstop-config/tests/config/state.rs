//! `[state]`: the fleet's store, checked key by key, its URL never printed.

use figment::Jail;

use crate::{load, problems};

const BASE: &str = r#"
[providers.rules]
type = "template"
"#;

fn problems_with(jail: &mut Jail, state: &str) -> figment::Result<Vec<String>> {
    jail.create_file("c.toml", &format!("{BASE}\n[state]\n{state}\n"))?;
    Ok(problems("c.toml"))
}

#[test]
fn without_a_state_section_nothing_is_shared() {
    Jail::expect_with(|jail| {
        jail.create_file("c.toml", BASE)?;
        let resolved = load("c.toml").expect("loads");
        assert_eq!(resolved.fleet.name(), "local");
        assert!(resolved.fleet.store_up());
        let report = resolved.report.to_string();
        assert!(
            report.contains("state\n  local: nothing shared with other replicas"),
            "{report}"
        );
        Ok(())
    });
}

#[test]
fn a_redis_backend_reads_its_url_from_the_environment_and_never_prints_it() {
    Jail::expect_with(|jail| {
        jail.set_env("FLEET_URL", "redis://:hunter2@127.0.0.1:6399/0");
        jail.create_file(
            "c.toml",
            &format!(
                "{BASE}\n[state]\nbackend = \"redis\"\nurl_env = \"FLEET_URL\"\nkey_prefix = \"team-a\"\ntimeout_ms = 35\non_store_failure = \"closed\"\n"
            ),
        )?;
        let resolved = load("c.toml").expect("loads");
        assert_eq!(resolved.fleet.name(), "redis");
        let report = resolved.report.to_string();
        assert!(
            report.contains("redis: url from $FLEET_URL, key prefix \"team-a\", timeout 35 ms, budgets closed while the store fails"),
            "{report}"
        );
        assert!(!report.contains("hunter2"), "{report}");
        assert!(!format!("{:?}", resolved.fleet).contains("hunter2"));
        Ok(())
    });
}

#[test]
fn every_bad_state_key_is_named_without_the_secret() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        assert_eq!(
            problems_with(jail, "backend = \"rediss\"\non_store_failure = \"close\"")?,
            [
                r#"c.toml: state.on_store_failure: unknown value "close" (did you mean "closed"?); expected one of "local", "closed""#,
                r#"c.toml: state.backend: unknown state backend "rediss" (did you mean "redis"?); expected one of "local", "redis""#,
            ]
        );
        assert_eq!(
            problems_with(jail, "backend = \"redis\"")?,
            [
                r#"c.toml: state.url_env: environment variable "BACKSTOP_REDIS_URL" is not set: backend = "redis" needs the store's URL there (redis://host:6379/0)"#
            ]
        );
        assert_eq!(
            problems_with(
                jail,
                "backend = \"redis\"\nurl_env = \"redis://:hunter2@h:6379\""
            )?,
            [
                "c.toml: state.url_env: is not an environment variable name (ASCII letters, digits and `_`, not starting with a digit); it names the variable that holds the store's URL, never the URL itself (the value is not repeated here)"
            ]
        );
        jail.set_env("BACKSTOP_REDIS_URL", "http://:hunter2@h:6379");
        assert_eq!(
            problems_with(jail, "backend = \"redis\"")?,
            [
                "c.toml: state.url_env: the value of $BACKSTOP_REDIS_URL is not a Redis URL (expected redis://[user:password@]host[:port][/db])"
            ]
        );
        jail.set_env("BACKSTOP_REDIS_URL", "redis://127.0.0.1:6379/0");
        assert_eq!(
            problems_with(
                jail,
                "backend = \"redis\"\nkey_prefix = \"{a}\"\ntimeout_ms = 0\ntimeout = 5"
            )?,
            [
                r#"c.toml: state.timeout: unknown key "timeout" (did you mean "timeout_ms"?); expected one of "backend", "url_env", "key_prefix", "timeout_ms", "on_store_failure""#,
                "c.toml: state.timeout_ms: must be greater than 0: it bounds every call to the store",
                r#"c.toml: state.key_prefix: "{a}" is not a usable key prefix: it must be non-empty, without spaces and without braces (braces are the model's hash tag)"#,
            ]
        );
        Ok(())
    });
}
