//! Signals that tell the truth, through the `backstop` binary over real
//! HTTP against wiremock upstreams: what the caller is told when no window
//! fits or every circuit is open, errors in OpenAI's shape for every path,
//! `check`'s warnings, latency-aware routing that learns, probes held to
//! the route's limits, metrics counted once, and logs that scale.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::*;
use wiremock::ResponseTemplate;

fn long_prompt(words: usize) -> Value {
    let text = "fox ".repeat(words);
    json!({"model": "chat", "messages": [{"role": "user", "content": text}], "max_tokens": 16})
}

fn small_window(id: &'static str, window: u32) -> Model<'static> {
    Model {
        window,
        ..model(id)
    }
}

#[tokio::test]
async fn a_prompt_no_window_fits_is_a_400_context_length_exceeded_with_the_trail() {
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    let config = config(
        &[
            ("primary", openai_provider(&primary.uri())),
            ("backup", openai_provider(&backup.uri())),
        ],
        &[
            small_window("primary", 8_000),
            small_window("backup", 9_000),
        ],
        "",
        "",
    );
    let gw = Backstop::start(&config, &[]);
    let r = post(&gw, &long_prompt(20_000)).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context window"),
        "{body}"
    );
    let kinds: Vec<&str> = body["backstop"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["context_window", "context_window"]);
    assert!(seen(&primary).await.is_empty());
    assert!(seen(&backup).await.is_empty());

    // A prompt that fits is still served.
    let r = post(&gw, &long_prompt(10)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_answer_in_openais_error_shape() {
    let upstream = healthy_upstream().await;
    let config = config(
        &[("primary", openai_provider(&upstream.uri()))],
        &[model("primary")],
        "",
        "",
    );
    let gw = Backstop::start(&config, &[]);
    let client = reqwest::Client::new();
    for (request, status, code) in [
        (client.get(gw.url("/v1/nope")), 404, "unknown_url"),
        (
            client.get(gw.url("/v1/chat/completions")),
            405,
            "method_not_allowed",
        ),
        (
            client.delete(gw.url("/v1/models")),
            405,
            "method_not_allowed",
        ),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/json"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn a_503_because_every_circuit_is_open_carries_retry_after() {
    let limited = || {
        ResponseTemplate::new(429)
            .insert_header("retry-after", "30")
            .set_body_json(
                json!({"error": {"message": "slow down", "type": "rate_limit_error",
                                            "param": null, "code": "rate_limit_exceeded"}}),
            )
    };
    let primary = openai_upstream(vec![limited()]).await;
    let backup = openai_upstream(vec![limited()]).await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);

    // Both answer 429 with a Retry-After over the cap: no header yet, the
    // upstreams were called.
    let r = post(&gw, &body(false)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_none());

    // Now both cool down: nothing is called, and the caller learns when to
    // come back.
    let r = post(&gw, &body(false)).await;
    assert_eq!(r.status(), 503);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((28..=30).contains(&after), "retry-after {after}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "all_models_failed");
    let kinds: Vec<&str> = body["backstop"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["circuit_open", "circuit_open"]);
    assert_eq!(seen(&primary).await.len(), 1);
    assert_eq!(seen(&backup).await.len(), 1);
}

fn check(config: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("backstop-signals-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{:x}.toml", config.len()));
    std::fs::write(&file, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_warns_when_continue_has_no_prefill_model_to_continue_with() {
    let providers = [
        ("primary", openai_provider("http://127.0.0.1:9")),
        ("backup", openai_provider("http://127.0.0.1:9")),
    ];
    let plain = [model("primary"), model("backup")];
    let (ok, out) = check(&config(&providers, &plain, "mid_stream = \"continue\"", ""));
    assert!(ok, "{out}");
    assert!(out.contains("warnings"), "{out}");
    assert!(out.contains("scenarios.chat.mid_stream"), "{out}");
    assert!(out.contains("supports_prefill"), "{out}");

    // A backup that takes a prefill: nothing to warn about.
    let prefill = [
        model("primary"),
        Model {
            prefill: true,
            ..model("backup")
        },
    ];
    let (ok, out) = check(&config(
        &providers,
        &prefill,
        "mid_stream = \"continue\"",
        "",
    ));
    assert!(ok, "{out}");
    assert!(!out.contains("mid_stream"), "{out}");
    // Only the first takes one: it cannot continue its own cut stream.
    let first_only = [
        Model {
            prefill: true,
            ..model("primary")
        },
        model("backup"),
    ];
    let (_, out) = check(&config(
        &providers,
        &first_only,
        "mid_stream = \"continue\"",
        "",
    ));
    assert!(out.contains("scenarios.chat.mid_stream"), "{out}");
    // The default policy is not a choice the user made: no warning.
    let (_, out) = check(&config(&providers, &plain, "", ""));
    assert!(!out.contains("mid_stream"), "{out}");
}
