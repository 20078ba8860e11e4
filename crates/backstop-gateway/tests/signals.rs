//! Signals that tell the truth, through the `backstop` binary over real
//! HTTP against wiremock upstreams: what the caller is told when no window
//! fits or every circuit is open, errors in OpenAI's shape for every path,
//! `check`'s warnings, latency-aware routing that learns, probes held to
//! the route's limits, metrics counted once, and logs that scale.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

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
    // One folder per call, removed after: tests of one process may run
    // `check` at the same time, and nothing is left behind in /tmp.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "backstop-signals-check-{}-{call}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
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

/// An upstream answering every chat completion after `delay`.
async fn timed_upstream(delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    mount_timed(&server, delay).await;
    server
}

async fn mount_timed(server: &MockServer, delay: Duration) {
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(completion(ANSWER).set_delay(delay))
        .mount(server)
        .await;
}

/// Sends `n` requests one after the other; the model that answered each.
async fn answered_by(gw: &Backstop, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = post(gw, &body(false)).await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        out.push(answer["model"].as_str().unwrap().to_owned());
    }
    out
}

#[tokio::test]
async fn latency_aware_finds_the_fast_backup_within_its_bound_and_moves_back_when_it_slows() {
    let slow = timed_upstream(Duration::from_millis(150)).await;
    let fast = timed_upstream(Duration::from_millis(5)).await;
    let config = config(
        &[
            ("slowm", openai_provider(&slow.uri())),
            ("fastm", openai_provider(&fast.uri())),
        ],
        &[model("slowm"), model("fastm")],
        "selector = { type = \"latency_aware\" }",
        "",
    );
    let gw = Backstop::start(&config, &[]);

    // The documented bound with the defaults and two models: 10 requests.
    // Until then the primary by priority answers; the 10th explores the
    // backup, and from then on the fastest carries the traffic.
    let first = answered_by(&gw, 30).await;
    assert_eq!(first[..9], ["slowm"; 9], "{first:?}");
    assert_eq!(first[9..], ["fastm"; 21], "{first:?}");
    let status: Value = reqwest::get(gw.url("/v1/backstop/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fastm = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "fastm")
        .unwrap();
    assert!(
        fastm["latency_ms"]["total"].as_f64().unwrap() < 100.0,
        "{fastm}"
    );

    // The fast model slows down: its next answer shows it, and traffic
    // moves back to the model that is now faster.
    fast.reset().await;
    mount_timed(&fast, Duration::from_millis(400)).await;
    let after = answered_by(&gw, 6).await;
    assert_eq!(after[0], "fastm", "{after:?}");
    assert_eq!(after[1..], ["slowm"; 5], "{after:?}");
}

async fn status(gw: &Backstop) -> Value {
    reqwest::get(gw.url("/v1/backstop/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The circuit state of `model` under the default breaker.
async fn circuit(gw: &Backstop, model: &str) -> String {
    let status = status(gw).await;
    let m = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == model)
        .unwrap()
        .clone();
    m["health"]["circuit_breaker"]["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A breaker that opens after two calls and only a probe closes within a
/// test's time, and a prober every `interval_ms`.
fn strategies(interval_ms: u64, backoff_max_ms: u64) -> String {
    format!(
        "\n[strategies]\nhealth = {{ type = \"circuit_breaker\", min_calls = 2, break_ms = 60000 }}\n\
         probe = {{ interval_ms = {interval_ms}, backoff_max_ms = {backoff_max_ms} }}\n"
    )
}

#[tokio::test]
async fn a_probe_slower_than_the_routes_attempt_limit_fails_and_keeps_the_circuit_open() {
    let primary = timed_upstream(Duration::from_millis(2_000)).await;
    let backup = timed_upstream(Duration::from_millis(5)).await;
    let config = two_openai(
        &primary,
        &backup,
        "timeouts = { attempt_ms = 500, first_token_ms = 500 }",
    ) + &strategies(200, 60_000);
    let gw = Backstop::start(&config, &[]);

    // Two requests wait out the 500 ms attempt limit and fall over: the
    // circuit opens.
    for _ in 0..2 {
        let r = post(&gw, &body(false)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backstop-model"], "backup");
    }
    assert_eq!(circuit(&gw, "primary").await, "open");

    // The primary answers probes, in 2 s: slower than any real call may
    // take, so each probe is a timeout and the circuit stays open.
    tokio::time::sleep(Duration::from_millis(2_800)).await;
    assert!(
        primary.received_requests().await.unwrap().len() > 2,
        "probes were sent"
    );
    assert_eq!(circuit(&gw, "primary").await, "open");
    let started = std::time::Instant::now();
    let r = post(&gw, &body(false)).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["model"], "backup");
    assert_eq!(answer["backstop"]["attempts"][0]["kind"], "circuit_open");
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "no request waits for the slow primary"
    );
}

#[tokio::test]
async fn probes_of_a_failing_model_back_off_and_a_recovery_is_still_found() {
    let primary = openai_upstream(vec![openai_error(
        503,
        "server_error",
        "overloaded",
        "try later",
    )])
    .await;
    let backup = timed_upstream(Duration::from_millis(5)).await;
    let config = two_openai(&primary, &backup, "") + &strategies(100, 1_600);
    let gw = Backstop::start(&config, &[]);
    for _ in 0..2 {
        assert_eq!(post(&gw, &body(false)).await.status(), 200);
    }
    assert_eq!(circuit(&gw, "primary").await, "open");

    // Three seconds of 503s: one probe per 100 ms round would be 30;
    // backing off to 1.6 s it is about ten.
    let before = primary.received_requests().await.unwrap().len();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let probes = primary.received_requests().await.unwrap().len() - before;
    assert!((3..=14).contains(&probes), "{probes} probes in 3 s");

    // It recovers: a probe within the cap finds it, and traffic returns.
    primary.reset().await;
    mount_timed(&primary, Duration::from_millis(1)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while circuit(&gw, "primary").await != "closed" {
        assert!(
            std::time::Instant::now() < deadline,
            "the recovery was not found"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer: Value = post(&gw, &body(false)).await.json().await.unwrap();
    assert_eq!(answer["model"], "primary");
}

#[tokio::test]
async fn a_failing_primary_logs_its_transitions_and_a_summary_not_a_line_per_request() {
    let primary =
        openai_upstream(vec![openai_error(500, "server_error", "internal", "boom")]).await;
    let backup = timed_upstream(Duration::from_millis(1)).await;
    let config =
        two_openai(&primary, &backup, "").replace("[server]\n", "[server]\nlog_summary_ms = 300\n");
    let dir = std::env::temp_dir().join(format!("backstop-signals-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let gw = Backstop::start_with(&config, &[("RUST_LOG", "info")], log.into());
    let started = std::time::Instant::now();
    let requests = 60;
    for _ in 0..requests {
        let r = post(&gw, &body(false)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backstop-model"], "backup");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(gw);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    // Written to a file, not a terminal: no colour codes.
    assert!(!text.contains('\u{1b}'), "ANSI escapes in a file:\n{text}");
    let warns: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    // The circuit opening and one summary per period, not one line per
    // fallback.
    let summaries = warns
        .iter()
        .filter(|l| l.contains("traffic summary"))
        .count();
    let periods = started.elapsed().as_millis() / 300 + 2;
    assert!(
        warns.len() - summaries < 5 && summaries as u128 <= periods,
        "{} WARN lines for {requests} fallbacks in {periods} periods:\n{text}",
        warns.len()
    );
    assert!(
        warns
            .iter()
            .any(|l| l.contains("circuit changed") && l.contains("to=\"open\"")),
        "{text}"
    );
    assert!(
        warns.iter().any(|l| l.contains("traffic summary")),
        "{text}"
    );
    assert!(!text.contains("fallback scenario"), "{text}");
    let summed: u64 = warns
        .iter()
        .filter(|l| l.contains("traffic summary"))
        .filter_map(|l| l.split("requests=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        summed, requests,
        "the summaries count every request once:\n{text}"
    );
}

#[tokio::test]
async fn a_budget_shared_by_three_scenarios_is_exported_once_with_the_whole_spend() {
    let upstream = timed_upstream(Duration::from_millis(1)).await;
    // Each answer reports 12 prompt + 7 completion tokens: at 1 USD per 1k
    // tokens, 0.019 USD.
    let mut config = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[strategies]\n\
         budget = { type = \"rolling\", max_cost = 100 }\n\n",
    );
    config.push_str(&format!(
        "[providers.up]\n{}\n\n[models.m]\nprovider = \"up\"\ncost_per_1k = 1\n\n",
        openai_provider(&upstream.uri())
    ));
    for name in ["a", "b", "c"] {
        config.push_str(&format!("[scenarios.{name}]\nchain = [\"m\"]\n\n"));
    }
    let gw = Backstop::start(&config, &[]);
    for name in ["a", "b", "c", "a"] {
        let mut request = body(false);
        request["model"] = json!(name);
        assert_eq!(post(&gw, &request).await.status(), 200);
    }
    let metrics = reqwest::get(gw.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let spent: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("backstop_budget_spent_usd{"))
        .collect();
    assert_eq!(spent.len(), 1, "one instance, one series:\n{metrics}");
    assert!(
        spent[0].starts_with("backstop_budget_spent_usd{scope=\"default\",policy=\"rolling\"}"),
        "{metrics}"
    );
    let value: f64 = spent[0].rsplit(' ').next().unwrap().parse().unwrap();
    assert!((value - 4.0 * 0.019).abs() < 1e-9, "{value}");
    // The one breaker's circuit of `m`, once too.
    assert_eq!(
        metrics
            .matches("backstop_circuit_state{scope=\"default\",model=\"m\",state=\"closed\"} 1")
            .count(),
        1,
        "{metrics}"
    );
}
