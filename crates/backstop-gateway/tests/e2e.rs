//! The `backstop` binary end to end: started as a process with a config
//! file, in front of wiremock upstreams speaking OpenAI's and Anthropic's
//! real wire formats, called over HTTP (and with a real OpenAI client
//! library). Each test asserts what the caller got and what each upstream
//! saw.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

// ----------------------------------------------------------------- tests

#[tokio::test]
async fn a_healthy_answer_streams_and_completes_through_the_binary() {
    let primary = openai_upstream(vec![completion(ANSWER)]).await;
    let streaming = openai_upstream(vec![openai_sse(
        &["Foxes", " are", " small", " omnivorous", " mammals."],
        true,
    )])
    .await;
    let gw = Backstop::start(&two_openai(&primary, &streaming, ""), &[]);

    let r = post(&gw, &body(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backstop-model"], "primary");
    assert_eq!(r.headers()["x-backstop-fallback-level"], "0");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "primary");
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(v["usage"]["total_tokens"], 19);
    assert_eq!(
        v["system_fingerprint"], "fp_1",
        "upstream extras pass through"
    );
    let sent = &seen(&primary).await[0];
    assert_eq!(sent["model"], "primary-upstream");
    assert_eq!(sent["temperature"], 0.2, "caller extras reach the upstream");

    // The backup streams when asked by name (its single-model route).
    let mut b = body(true);
    b["model"] = json!("backup");
    let r = post(&gw, &b).await;
    assert_eq!(r.headers()["x-backstop-model"], "backup");
    let events = events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(streamed_text(&events), ANSWER);
    let last = last_json(&events);
    assert_eq!(last["usage"]["total_tokens"], 19);
    assert_eq!(last["backstop"]["model_used"], "backup");
    let sent = &seen(&streaming).await[0];
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn a_5xx_primary_is_retried_once_then_the_backup_answers() {
    let primary = openai_upstream(vec![openai_error(
        500,
        "server_error",
        "server_error",
        "The server had an error",
    )])
    .await;
    let backup = openai_upstream(vec![completion(ANSWER)]).await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);
    let r = post(&gw, &body(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backstop-model"], "backup");
    assert_eq!(r.headers()["x-backstop-fallback-level"], "1");
    assert_eq!(r.headers()["x-backstop-attempts"], "3");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["backstop"]["attempts"][0]["kind"], "server");
    assert_eq!(v["backstop"]["attempts"][0]["status"], 500);
    assert!(
        v["backstop"]["warning"]
            .as_str()
            .unwrap()
            .contains("backup")
    );
    assert_eq!(seen(&primary).await.len(), 2);
    assert_eq!(seen(&backup).await.len(), 1);

    // The status page and the metrics saw it.
    let status: Value = reqwest::get(gw.url("/v1/backstop/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let model = |id: &str| {
        status["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap()
    };
    let primary_status = model("primary");
    let failures: Vec<&str> = primary_status["recent_failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(failures, ["server", "server"]);
    assert_eq!(
        model("primary")["health"]["circuit_breaker"]["state"],
        "closed"
    );
    assert!(model("backup")["latency_ms"]["total"].as_f64().is_some());
    assert_eq!(status["recent_fallbacks"][0]["model_used"], "backup");
    assert_eq!(status["recent_fallbacks"][0]["reason"], "server");
    assert!(
        status["recent_fallbacks"][0]["latency_ms"]
            .as_f64()
            .is_some()
    );
    assert_eq!(status["alerts"]["fallback_rate"], 1.0);
    let metrics = reqwest::get(gw.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("backstop_fallbacks_total{level=\"1\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("backstop_fallback_rate 1"), "{metrics}");
}

#[tokio::test]
async fn a_429_with_a_short_retry_after_is_waited_for_and_a_long_one_falls_over() {
    let limited = openai_error(429, "requests", "rate_limit_exceeded", "Rate limit reached")
        .insert_header("retry-after", "1");
    let primary = openai_upstream(vec![limited, completion(ANSWER)]).await;
    let backup = openai_upstream(vec![completion("backup")]).await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);
    let started = Instant::now();
    let r = post(&gw, &body(false)).await;
    assert_eq!(r.headers()["x-backstop-model"], "primary");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    assert_eq!(seen(&primary).await.len(), 2);
    assert!(seen(&backup).await.is_empty());

    let long = openai_error(429, "requests", "rate_limit_exceeded", "Rate limit reached")
        .insert_header("retry-after", "120");
    let primary = openai_upstream(vec![long]).await;
    let backup = healthy_upstream().await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);
    let started = Instant::now();
    let r = post(&gw, &body(true)).await;
    assert_eq!(r.headers()["x-backstop-model"], "backup");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(seen(&primary).await.len(), 1);
}

#[tokio::test]
async fn a_refused_connection_falls_over() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let backup = healthy_upstream().await;
    let toml = config(
        &[
            ("primary", openai_provider(&refused)),
            ("backup", openai_provider(&backup.uri())),
        ],
        &[model("primary"), model("backup")],
        "",
        "",
    );
    let gw = Backstop::start(&toml, &[]);
    for stream in [false, true] {
        let r = post(&gw, &body(stream)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backstop-model"], "backup");
    }
}

#[tokio::test]
async fn a_silent_upstream_times_out_and_falls_over() {
    let primary =
        openai_upstream(vec![completion("late").set_delay(Duration::from_secs(10))]).await;
    let backup = healthy_upstream().await;
    let scenario = "timeouts = { first_token_ms = 400, attempt_ms = 400 }";
    let gw = Backstop::start(&two_openai(&primary, &backup, scenario), &[]);
    for stream in [false, true] {
        let started = Instant::now();
        let r = post(&gw, &body(stream)).await;
        assert_eq!(r.headers()["x-backstop-model"], "backup");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        seen(&primary).await.len(),
        2,
        "one call per request: timeouts are not retried"
    );
}

/// A primary whose stream is cut after three pieces.
async fn cut_primary() -> MockServer {
    openai_upstream(vec![openai_sse(&["Foxes", " are", " small"], false)]).await
}

#[tokio::test]
async fn a_cut_stream_under_the_error_policy_ends_with_an_in_band_error() {
    let primary = cut_primary().await;
    let backup = openai_upstream(vec![openai_sse(&[ANSWER], true)]).await;
    let gw = Backstop::start(
        &two_openai(&primary, &backup, "mid_stream = \"error\""),
        &[],
    );
    let events = events(post(&gw, &body(true)).await).await;
    assert_eq!(streamed_text(&events), "Foxes are small");
    assert_ne!(
        events.last().unwrap(),
        "[DONE]",
        "a cut answer is never complete"
    );
    let last = last_json(&events);
    assert_eq!(last["error"]["code"], "stream_aborted");
    assert!(seen(&backup).await.is_empty());
}

#[tokio::test]
async fn a_cut_stream_under_restart_is_completed_by_the_backup_without_repeats() {
    let primary = cut_primary().await;
    let backup = openai_upstream(vec![openai_sse(
        &["Foxes are", " small omnivorous", " mammals."],
        true,
    )])
    .await;
    let gw = Backstop::start(
        &two_openai(&primary, &backup, "mid_stream = \"restart\""),
        &[],
    );
    let events = events(post(&gw, &body(true)).await).await;
    assert_eq!(streamed_text(&events), ANSWER);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let last = last_json(&events);
    assert_eq!(last["backstop"]["model_used"], "backup");
    assert_eq!(
        last["backstop"]["attempts"][0]["kind"],
        "stream_interrupted"
    );
    let sent = &seen(&backup).await[0];
    assert_eq!(
        sent["messages"].as_array().unwrap().len(),
        1,
        "no prefill to a model without prefill"
    );
}

#[tokio::test]
async fn a_cut_stream_under_continue_is_finished_by_a_prefill_model() {
    let primary = cut_primary().await;
    let claude = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(anthropic_sse(&[" omnivorous", " mammals."]))
        .mount(&claude)
        .await;
    let toml = config(
        &[
            ("primary", openai_provider(&primary.uri())),
            (
                "claude",
                format!(
                    "type = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"E2E_ANTHROPIC_KEY\"",
                    claude.uri()
                ),
            ),
        ],
        &[
            model("primary"),
            Model {
                id: "claude",
                provider: "claude",
                window: 200_000,
                prefill: true,
            },
        ],
        "mid_stream = \"continue\"",
        "",
    );
    let gw = Backstop::start(&toml, &[("E2E_ANTHROPIC_KEY", "sk-ant-test")]);
    let events = events(post(&gw, &body(true)).await).await;
    assert_eq!(streamed_text(&events), ANSWER);
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(last_json(&events)["backstop"]["model_used"], "claude");
    let requests = claude.received_requests().await.unwrap();
    assert_eq!(requests[0].headers["x-api-key"], "sk-ant-test");
    let sent: Value = requests[0].body_json().unwrap();
    let messages = sent["messages"].as_array().unwrap();
    let last = messages.last().unwrap();
    assert_eq!(last["role"], "assistant");
    let prefill = last["content"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| last["content"][0]["text"].as_str().unwrap().to_owned());
    assert_eq!(prefill, "Foxes are small");
}

#[tokio::test]
async fn a_context_length_error_is_routed_to_a_larger_window() {
    let small = openai_upstream(vec![openai_error(
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 8192 tokens.",
    )])
    .await;
    let same = openai_upstream(vec![completion("same")]).await;
    let large = openai_upstream(vec![completion(ANSWER)]).await;
    let toml = config(
        &[
            ("small", openai_provider(&small.uri())),
            ("same", openai_provider(&same.uri())),
            ("large", openai_provider(&large.uri())),
        ],
        &[
            Model {
                window: 8192,
                ..model("small")
            },
            Model {
                window: 8192,
                ..model("same")
            },
            Model {
                window: 200_000,
                ..model("large")
            },
        ],
        "",
        "",
    );
    let gw = Backstop::start(&toml, &[]);
    let r = post(&gw, &body(false)).await;
    assert_eq!(r.headers()["x-backstop-model"], "large");
    let v: Value = r.json().await.unwrap();
    let kinds: Vec<&str> = v["backstop"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["context_length", "context_window", "ok"]);
    assert!(seen(&same).await.is_empty());
}

#[tokio::test]
async fn a_content_policy_refusal_is_returned_with_the_providers_reason() {
    let primary = openai_upstream(vec![openai_error(
        400,
        "invalid_request_error",
        "content_policy_violation",
        "Your request was rejected as a result of our safety system.",
    )])
    .await;
    let backup = openai_upstream(vec![completion(ANSWER)]).await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);
    for stream in [false, true] {
        let r = post(&gw, &body(stream)).await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "content_policy_violation");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("safety system")
        );
    }
    assert!(seen(&backup).await.is_empty());
}

#[tokio::test]
async fn every_model_failing_is_a_503_with_the_whole_trail() {
    let primary = openai_upstream(vec![openai_error(
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-abc***",
    )])
    .await;
    let backup = openai_upstream(vec![openai_error(
        503,
        "server_error",
        "overloaded",
        "The engine is currently overloaded",
    )])
    .await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);
    // The 401 disables the primary until a probe succeeds, so the second
    // request skips it: its first real cause is the backup's overload, and
    // the backup, failing for the second time, is not retried.
    for (stream, trail, first_cause) in [
        (false, &["auth", "overloaded", "overloaded"][..], "auth"),
        (true, &["circuit_open", "overloaded"][..], "overloaded"),
    ] {
        let r = post(&gw, &body(stream)).await;
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "all_models_failed");
        let kinds: Vec<&str> = v["backstop"]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, trail);
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("first cause: {first_cause}")),
            "{message}"
        );
        assert!(
            !message.contains("sk-abc"),
            "upstream secrets never reach the caller: {message}"
        );
    }
}

#[tokio::test]
async fn keys_are_checked_and_bodies_are_limited() {
    let primary = openai_upstream(vec![completion(ANSWER)]).await;
    let backup = openai_upstream(vec![completion(ANSWER)]).await;
    let toml = config(
        &[
            ("primary", openai_provider(&primary.uri())),
            ("backup", openai_provider(&backup.uri())),
        ],
        &[model("primary"), model("backup")],
        "",
        "api_keys_env = \"E2E_GATEWAY_KEYS\"\nbody_limit_bytes = 2048",
    );
    let gw = Backstop::start(&toml, &[("E2E_GATEWAY_KEYS", "sk-gw-1, sk-gw-2")]);
    let client = reqwest::Client::new();
    let url = gw.url("/v1/chat/completions");
    assert_eq!(
        client
            .post(&url)
            .json(&body(false))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        client
            .post(&url)
            .bearer_auth("sk-nope")
            .json(&body(false))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        client
            .post(&url)
            .bearer_auth("sk-gw-2")
            .json(&body(false))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let big = json!({"model": "chat", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = client
        .post(&url)
        .bearer_auth("sk-gw-1")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        seen(&primary).await.len() == 1,
        "neither refusal reached an upstream"
    );
}

#[tokio::test]
async fn a_caller_leaving_mid_stream_closes_the_upstream_stream() {
    // A raw upstream: headers and one chunk, then silence until the
    // gateway closes the connection, which it reports.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = upstream.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = upstream.accept().await.unwrap();
        let mut request = vec![0u8; 65536];
        let _ = socket.read(&mut request).await.unwrap();
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "Foxes"}, "finish_reason": null}]});
        let event = format!("data: {chunk}\n\n");
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
            event.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut rest = [0u8; 1024];
        // Returns 0 (or an error) once the gateway drops the connection.
        let _ = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut rest)).await;
        let _ = closed_tx.send(());
    });
    let backup = openai_upstream(vec![completion(ANSWER)]).await;
    let toml = config(
        &[
            ("primary", openai_provider(&format!("http://{address}"))),
            ("backup", openai_provider(&backup.uri())),
        ],
        &[model("primary"), model("backup")],
        "",
        "",
    );
    let gw = Backstop::start(&toml, &[]);
    let r = post(&gw, &body(true)).await;
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("Foxes"));
    let left = Instant::now();
    drop(stream);
    tokio::time::timeout(Duration::from_secs(10), closed_rx)
        .await
        .expect("the gateway closed the upstream stream after the caller left")
        .unwrap();
    assert!(left.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_openai_client_library_works_against_the_gateway() {
    use async_openai::Client;
    use async_openai::config::OpenAIConfig;
    use async_openai::types::chat::{
        ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    };

    let primary = openai_upstream(vec![openai_error(
        502,
        "server_error",
        "bad_gateway",
        "Bad gateway",
    )])
    .await;
    let backup = healthy_upstream().await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(gw.url("/v1"))
            .with_api_key("sk-anything"),
    );
    let request = CreateChatCompletionRequestArgs::default()
        .model("chat")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("What are foxes?")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();
    let response = client.chat().create(request.clone()).await.unwrap();
    assert_eq!(response.model, "backup");
    assert_eq!(response.choices[0].message.content.as_deref(), Some(ANSWER));

    let mut stream = client.chat().create_stream(request).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(choice) = chunk.choices.first() {
            text.push_str(choice.delta.content.as_deref().unwrap_or_default());
        }
    }
    assert_eq!(text, ANSWER);
}

#[test]
fn plugin_inspect_prints_a_plugins_declaration_or_why_it_cannot_load() {
    let missing = std::env::temp_dir().join("backstop-no-such-plugin.so");
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["plugin", "inspect"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("backstop-no-such-plugin.so"), "{stderr}");
    assert_eq!(
        stderr.matches("backstop-no-such-plugin.so").count(),
        1,
        "the path is named once: {stderr}"
    );

    let paths = backstop_plugin::testing::build_plugins(
        &["backstop-plugin-example"],
        backstop_plugin::testing::Profile::Dev,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["plugin", "inspect"])
        .arg(&paths[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("plugin  example"), "{stdout}");
    assert!(stdout.contains("type    provider echo"), "{stdout}");
    assert!(stdout.contains("abi     "), "{stdout}");
}

// ------------------------------------------------------------ quickstart

/// `examples/quickstart.toml` as the README serves it: no key, no network.
fn quickstart() -> Backstop {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml");
    let config = std::fs::read_to_string(&file).unwrap();
    Backstop::start(&config, &[])
}

async fn simulate(gw: &Backstop, model: &str, change: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url(&format!("/v1/backstop/simulated/{model}")))
        .body(change.to_owned())
        .send()
        .await
        .unwrap()
}

async fn ask(gw: &Backstop) -> (Value, reqwest::header::HeaderMap) {
    let response = post(
        gw,
        &json!({"model": "chat", "messages": [{"role": "user", "content": "Hello!"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (response.json().await.unwrap(), headers)
}

#[tokio::test]
async fn the_quickstart_answers_without_keys_and_falls_back_when_its_primary_breaks() {
    let gw = quickstart();

    // The README's curl: the primary answers, complete and streamed.
    let (answer, headers) = ask(&gw).await;
    assert_eq!(answer["model"], "primary");
    assert_eq!(headers["x-backstop-fallback-level"], "0");
    assert!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Hello from primary")
    );
    let streamed = events(post(&gw, &body(true)).await).await;
    assert!(streamed_text(&streamed).starts_with("Hello from primary"));
    assert_eq!(streamed.last().map(String::as_str), Some("[DONE]"));

    // Break the primary: the backup answers, annotated, and once the
    // breaker has seen enough failures the primary is skipped outright.
    let broken = simulate(&gw, "primary", r#"{"failure_rate": 1.0}"#).await;
    assert_eq!(broken.status(), 200);
    let broken: Value = broken.json().await.unwrap();
    assert_eq!(broken["override"]["failure_rate"], 1.0);
    let mut trails = Vec::new();
    for _ in 0..4 {
        let (answer, headers) = ask(&gw).await;
        assert_eq!(answer["model"], "backup");
        assert_eq!(headers["x-backstop-fallback-level"], "1");
        assert!(headers.contains_key("x-backstop-warning"));
        trails.push(answer["backstop"]["attempts"][0]["kind"].clone());
    }
    assert_eq!(trails.first(), Some(&json!("server")));
    assert_eq!(trails.last(), Some(&json!("circuit_open")), "{trails:?}");

    // Restore it: the prober finds it healthy and it answers again within
    // the break (5 s) plus a probe interval (2 s); bounded at 20 s.
    assert_eq!(simulate(&gw, "primary", "{}").await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (answer, _) = ask(&gw).await;
        if answer["model"] == "primary" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restored primary never answered again"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn only_simulated_models_can_be_broken_and_bad_changes_are_refused() {
    let gw = quickstart();
    let not_simulated = simulate(&gw, "rules", r#"{"failure_rate": 1.0}"#).await;
    assert_eq!(not_simulated.status(), 404);
    let error: Value = not_simulated.json().await.unwrap();
    assert_eq!(
        error["error"]["message"],
        "`rules` is not a model of a `simulated` provider; simulated models: primary, backup."
    );
    let out_of_range = simulate(&gw, "primary", r#"{"failure_rate": 2}"#).await;
    assert_eq!(out_of_range.status(), 400);
    let unknown_kind = simulate(&gw, "primary", r#"{"failure": "on_fire"}"#).await;
    assert_eq!(unknown_kind.status(), 400);
    let error: Value = unknown_kind.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown variant `on_fire`"),
        "{error}"
    );
    // Nothing was changed by the refused calls.
    let (answer, _) = ask(&gw).await;
    assert_eq!(answer["model"], "primary");
}

// ---------------------------------------------------------- plugin guide

/// The repository's root.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file of the plugin guide's crate.
fn guide_file(name: &str) -> String {
    std::fs::read_to_string(repo().join("examples/plugin-guide").join(name)).unwrap()
}

#[test]
fn the_plugin_guide_shows_its_crate_exactly() {
    let guide = std::fs::read_to_string(repo().join("docs/plugins.md")).unwrap();
    for (name, fence) in [
        ("Cargo.toml", "toml"),
        ("src/lib.rs", "rust"),
        ("backstop.toml", "toml"),
    ] {
        let block = format!("```{fence}\n{}```", guide_file(name));
        assert!(
            guide.contains(&block),
            "docs/plugins.md does not show examples/plugin-guide/{name} as it is"
        );
    }
}

#[tokio::test]
async fn the_plugin_guide_crate_builds_outside_the_workspace_loads_and_serves() {
    // Built as the guide says (its own manifest, not a workspace member),
    // into this build's target directory so shared dependencies are reused.
    let backstop = PathBuf::from(env!("CARGO_BIN_EXE_backstop"));
    let target_dir = backstop.parent().and_then(|p| p.parent()).unwrap();
    let library = backstop_plugin::testing::build_outside(
        &repo().join("examples/plugin-guide/Cargo.toml"),
        "backstop-plugin-faq",
        target_dir,
        backstop_plugin::testing::Profile::Dev,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let inspect = Command::new(&backstop)
        .args(["plugin", "inspect"])
        .arg(&library)
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{inspect:?}");
    let printed = String::from_utf8(inspect.stdout).unwrap();
    assert!(printed.starts_with("plugin  faq\n"), "{printed}");
    assert!(printed.contains("type    provider faq"), "{printed}");

    // The guide's config, with the library where this build put it.
    let config = guide_file("backstop.toml");
    let configured = "path = \"target/release/libbackstop_plugin_faq.so\"";
    assert!(config.contains(configured));
    let config = config.replace(
        configured,
        &format!("path = {:?}", library.display().to_string()),
    );
    let gw = Backstop::start(&config, &[]);
    let ask = |question: &str| json!({"model": "support", "messages": [{"role": "user", "content": question}]});
    let answered: Value = post(&gw, &ask("How long does a refund take?"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answered["model"], "faq");
    assert_eq!(
        answered["choices"][0]["message"]["content"],
        "Refunds reach your account within 5 working days."
    );
    let streamed = events(
        post(
            &gw,
            &json!({"model": "support", "stream": true,
        "messages": [{"role": "user", "content": "What are your HOURS?"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(
        streamed_text(&streamed),
        "We answer from 9:00 to 17:00 CET."
    );
    let declined: Value = post(&gw, &ask("Can I pay by cheque?"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(declined["model"], "assistant");
    assert_eq!(declined["backstop"]["fallback_level"], 1);
    assert_eq!(declined["backstop"]["attempts"][0]["kind"], "unsupported");
}

#[test]
fn plugin_inspect_gives_the_loaders_reason_for_a_file_that_is_not_a_library() {
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["plugin", "inspect"])
        .arg(repo().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8(output.stderr).unwrap();
    assert!(
        said.contains("is not a loadable shared library: "),
        "{said}"
    );
    // libloading's own text is only "dlopen failed"; the loader's reason follows it.
    #[cfg(target_os = "linux")]
    assert!(said.contains("invalid ELF header"), "{said}");
}

// ------------------------------------------------------------------ fleet

/// The state of `model`'s circuit on `gw`'s status page.
async fn circuit_state(gw: &Backstop, model: &str) -> String {
    let status: Value = reqwest::get(gw.url("/v1/backstop/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == model)
        .map(|m| {
            m["health"]["circuit_breaker"]["state"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

/// Two `backstop serve` replicas sharing one real redis-server: the
/// primary dies, replica A opens its circuit after `min_calls`, and replica
/// B skips the primary without calling it once.
#[tokio::test]
async fn a_fleet_of_two_gateways_stops_calling_a_dead_primary_together() {
    let redis = backstop_fleet::testing::RedisServer::start();
    let primary = openai_upstream(vec![openai_error(
        500,
        "server_error",
        "server_error",
        "down",
    )])
    .await;
    let backup = healthy_upstream().await;
    let mut toml = two_openai(&primary, &backup, "retries = { same_model = 0 }");
    toml.push_str(
        "\n[strategies]\nhealth = { type = \"circuit_breaker\", min_calls = 2, break_ms = 60000 }\n\n[state]\nbackend = \"redis\"\nurl_env = \"FLEET_REDIS_URL\"\nkey_prefix = \"e2e\"\ntimeout_ms = 50\n",
    );
    let url = redis.url();
    let env = [("FLEET_REDIS_URL", url.as_str())];
    let a = Backstop::start(&toml, &env);
    let b = Backstop::start(&toml, &env);
    wait_for_store(&a).await;
    wait_for_store(&b).await;

    for _ in 0..2 {
        let r = post(&a, &body(false)).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(seen(&primary).await.len(), 2, "A called the primary twice");
    assert_eq!(circuit_state(&a, "primary").await, "open");

    // B adopts A's open circuit through the store.
    let started = Instant::now();
    while circuit_state(&b, "primary").await != "open" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B never adopted the open circuit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        let r = post(&b, &body(false)).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["model"], "backup");
    }
    assert_eq!(
        seen(&primary).await.len(),
        2,
        "B never called the dead primary"
    );

    let metrics = reqwest::get(b.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("backstop_state_store_up{backend=\"redis\"} 1"),
        "{metrics}"
    );
}

#[test]
fn check_connect_pings_the_state_store_and_never_prints_its_url() {
    let redis = backstop_fleet::testing::RedisServer::start_with(&["--requirepass", "s3cret-pass"]);
    let dir = std::env::temp_dir().join(format!("backstop-check-connect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backstop.toml");
    std::fs::write(
        &file,
        "[providers.rules]\ntype = \"template\"\n\n[state]\nbackend = \"redis\"\nurl_env = \"FLEET_REDIS_URL\"\n",
    )
    .unwrap();
    let check = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(["check", "--connect", "--config"])
            .arg(&file)
            .env("FLEET_REDIS_URL", url)
            .output()
            .unwrap()
    };
    let good = check(&format!(
        "redis://:s3cret-pass@127.0.0.1:{}/0",
        redis.port()
    ));
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        stdout.contains("redis: url from $FLEET_REDIS_URL"),
        "{stdout}"
    );
    assert!(stdout.contains("state store: answered PING in"), "{stdout}");
    assert!(!stdout.contains("s3cret-pass"), "{stdout}");

    let bad = check(&format!("redis://:wrong-pass@127.0.0.1:{}/0", redis.port()));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("state.url_env: the Redis at $FLEET_REDIS_URL refused the credentials"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-pass"), "{stderr}");
    assert!(!String::from_utf8_lossy(&bad.stdout).contains("wrong-pass"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two replicas share one rolling cap through the store: requests
/// alternate between them, and the upstream sees only what the fleet's
/// cap allows (each replica alone would have allowed twice as many).
#[tokio::test]
async fn a_fleet_of_two_gateways_shares_one_rolling_budget() {
    let redis = backstop_fleet::testing::RedisServer::start();
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    // 1 USD per 1k tokens and at most 10 output tokens: a reservation is
    // about 0.02 USD, a call settles at 0.019 (19 tokens of usage).
    let toml = two_openai(&primary, &backup, "chain = [\"primary\"]")
        .replace("chain = [\"primary\", \"backup\"]\n", "")
        .replace("cost_per_1k = 0\n", "cost_per_1k = 1\nmax_tokens = 10\n")
        + "\n[strategies]\nbudget = { type = \"rolling\", max_cost = 0.05 }\n\n[state]\nbackend = \"redis\"\nurl_env = \"FLEET_REDIS_URL\"\nkey_prefix = \"e2e-budget\"\n";
    let url = redis.url();
    let env = [("FLEET_REDIS_URL", url.as_str())];
    let a = Backstop::start(&toml, &env);
    let b = Backstop::start(&toml, &env);
    wait_for_store(&a).await;
    wait_for_store(&b).await;
    let mut statuses = Vec::new();
    for gw in [&a, &b, &a, &b] {
        let r = post(gw, &body(false)).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        if status != 200 {
            assert!(text.contains("over_budget"), "{text}");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [200, 200, 503, 503],
        "the third call would pass the fleet's cap"
    );
    assert_eq!(
        seen(&primary).await.len(),
        2,
        "the upstream saw what the cap allows"
    );
}

/// What the test's forward proxy saw: request heads, and for a `CONNECT`
/// to a `.invalid` host the first bytes sent through the tunnel.
type ProxyLog = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// Reads one request (head and `content-length` body) from `socket`; its
/// head, or `None` if the connection ended first.
async fn read_request<S>(socket: &mut S) -> Option<String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < end + length {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// Writes a completion of `ANSWER` and closes the connection.
async fn write_completion<S>(socket: &mut S)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let body = json!({
        "id": "chatcmpl-p", "object": "chat.completion", "created": 1_700_000_000,
        "model": "upstream",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    })
    .to_string();
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(reply.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// A forward proxy on 127.0.0.1 that answers every absolute-form request
/// itself with a completion of `ANSWER`, relays a `CONNECT` to 127.0.0.1,
/// and accepts a `CONNECT` to a `.invalid` host only to close the tunnel
/// after the client's first bytes.
async fn forward_proxy() -> (u16, ProxyLog, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = ProxyLog::default();
    let record = log.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Some(head) = read_request(&mut socket).await else {
                    return;
                };
                let Some(target) = head.strip_prefix("CONNECT ") else {
                    record.lock().unwrap().push((head, Vec::new()));
                    write_completion(&mut socket).await;
                    return;
                };
                let target = target.split(' ').next().unwrap_or_default().to_owned();
                let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
                if target.starts_with("127.0.0.1:") {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    record.lock().unwrap().push((head, Vec::new()));
                    let _ = socket.write_all(established).await;
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                    return;
                }
                let _ = socket.write_all(established).await;
                let mut first = vec![0u8; 5];
                let _ = socket.read_exact(&mut first).await;
                record.lock().unwrap().push((head, first));
            });
        }
    });
    (port, log, task)
}

/// The test CA and a certificate it signed for 127.0.0.1 (both valid until
/// 2126), made with openssl:
/// `req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes
/// -days 36500 -subj "/CN=Backstop test CA" -addext
/// basicConstraints=critical,CA:TRUE` for the CA, and for the upstream a
/// P-256 key whose certificate has `subjectAltName=IP:127.0.0.1`,
/// `extendedKeyUsage=serverAuth`.
fn tls_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// An https upstream on 127.0.0.1 (the fixture certificate) answering
/// every request with a completion of `ANSWER`; records the ALPN protocol
/// each connection agreed on.
async fn tls_upstream() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<Option<Vec<u8>>>>>,
    tokio::task::JoinHandle<()>,
) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(tls_fixture("upstream.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(tls_fixture("upstream.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let alpn = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = alpn.clone();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let agreed = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                record.lock().unwrap().push(agreed);
                if read_request(&mut tls).await.is_some() {
                    write_completion(&mut tls).await;
                }
            });
        }
    });
    (port, alpn, task)
}

#[tokio::test]
async fn https_upstreams_are_verified_with_the_platforms_roots_directly_and_through_a_tunnel() {
    let (tls_port, alpn, upstream) = tls_upstream().await;
    let (proxy_port, log, proxy) = forward_proxy().await;
    let config = config(
        &[(
            "tls",
            format!("type = \"openai\"\nbase_url = \"https://127.0.0.1:{tls_port}/v1\""),
        )],
        &[model("tls")],
        "",
        "",
    );
    let ca = tls_fixture("ca.pem");
    let ca = ca.to_str().unwrap();
    let via = format!("http://127.0.0.1:{proxy_port}");
    // Trusted (the platform verifier reads SSL_CERT_FILE on Linux), direct
    // and through the proxy's tunnel; then not trusted.
    for env in [
        vec![("SSL_CERT_FILE", ca)],
        vec![("SSL_CERT_FILE", ca), ("HTTPS_PROXY", via.as_str())],
    ] {
        let gw = Backstop::start(&config, &env);
        let r = post(&gw, &body(false)).await;
        assert_eq!(r.status(), 200, "{env:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
    }
    // The system's roots alone do not include the test CA.
    let gw = Backstop::start(&config, &[]);
    let r = post(&gw, &body(false)).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 503, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["backstop"]["attempts"][0]["kind"], "connect", "{text}");
    assert_eq!(
        v["backstop"]["attempts"][0]["message"],
        "could not connect: invalid peer certificate: UnknownIssuer"
    );
    drop(gw);
    upstream.abort();
    proxy.abort();

    let agreed = alpn.lock().unwrap().clone();
    assert_eq!(agreed.len(), 2, "{agreed:?}");
    for protocol in agreed {
        assert_eq!(protocol.as_deref(), Some(&b"http/1.1"[..]));
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0]
            .0
            .starts_with(&format!("CONNECT 127.0.0.1:{tls_port} HTTP/1.1\r\n")),
        "{log:?}"
    );
}

#[tokio::test]
async fn upstreams_are_reached_through_the_environments_proxies() {
    let (port, log, proxy) = forward_proxy().await;
    let via = format!("http://gw:pa%20ss@127.0.0.1:{port}");
    // `.invalid` names never resolve: only the proxy can reach them. The
    // https primary's tunnel is closed by the proxy, so the http backup,
    // sent to the proxy in absolute form, answers.
    let config = config(
        &[
            (
                "tunneled",
                "type = \"openai\"\nbase_url = \"https://secure.invalid/v1\"".to_owned(),
            ),
            (
                "proxied",
                "type = \"openai\"\nbase_url = \"http://plain.invalid:8080/v1\"".to_owned(),
            ),
        ],
        &[model("tunneled"), model("proxied")],
        "",
        "",
    );
    let gw = Backstop::start(
        &config,
        &[
            ("HTTPS_PROXY", via.as_str()),
            ("http_proxy", via.as_str()),
            ("NO_PROXY", "localhost"),
        ],
    );
    let r = post(&gw, &body(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backstop-model"], "proxied");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
    drop(gw);
    proxy.abort();

    let log = log.lock().unwrap().clone();
    // base64("gw:pa ss")
    let auth = |head: &str| {
        head.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.eq_ignore_ascii_case("proxy-authorization") && v.trim() == "Basic Z3c6cGEgc3M="
            })
        })
    };
    let tunnels: Vec<_> = log
        .iter()
        .filter(|(h, _)| h.starts_with("CONNECT "))
        .collect();
    assert!(!tunnels.is_empty(), "{log:?}");
    for (head, first) in &tunnels {
        assert!(
            head.starts_with("CONNECT secure.invalid:443 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(auth(head), "{head}");
        assert_eq!(first[0], 0x16, "a TLS handshake inside the tunnel");
    }
    let forwarded: Vec<_> = log.iter().filter(|(h, _)| h.starts_with("POST ")).collect();
    assert_eq!(forwarded.len(), 1, "{log:?}");
    let head = &forwarded[0].0;
    assert!(
        head.starts_with("POST http://plain.invalid:8080/v1/chat/completions HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("host: plain.invalid:8080\r\n"), "{head}");
    assert!(auth(head), "{head}");
}
