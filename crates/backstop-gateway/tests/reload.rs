//! Reload without a restart, through the `backstop` binary over real HTTP
//! against wiremock upstreams: under steady load, `POST
//! /v1/backstop/reload` swaps in a config that adds a scenario and changes
//! a timeout (no request fails, the new scenario answers, an open circuit
//! stays open, the metrics keep counting), an invalid config is refused
//! with `check`'s file:key messages (no request fails), and SIGHUP reloads
//! too.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use wiremock::MockServer;

const KEY: &str = "sk-reload-test";

/// `chat` chains a primary that always fails (its circuit opens after
/// two calls and stays open for ten minutes) and a healthy backup.
fn config(primary: &MockServer, backup: &MockServer, extra: &str, attempt_ms: u64) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[providers.primary]
type = "openai"
base_url = "{primary}/v1"

[providers.backup]
type = "openai"
base_url = "{backup}/v1"

[models.primary]
provider = "primary"
priority = 1

[models.backup]
provider = "backup"
priority = 2

[strategies]
health = {{ type = "circuit_breaker", min_calls = 2, failure_ratio = 0.5, break_ms = 600000, max_break_ms = 600000 }}
probe = {{ interval_ms = 600000, idle_ms = 600000, backoff_max_ms = 600000 }}
retries = {{ same_model = 0 }}

[scenarios.chat]
chain = ["primary", "backup"]
timeouts = {{ attempt_ms = {attempt_ms} }}
{extra}
"#,
        primary = primary.uri(),
        backup = backup.uri(),
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn ask(gw: &Backstop, scenario: &str) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": scenario, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

async fn reload(gw: &Backstop) -> (u16, Value) {
    let r = client()
        .post(gw.url("/v1/backstop/reload"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The primary's circuit state under the scenario's breaker.
async fn primary_circuit(gw: &Backstop) -> String {
    let status: Value = client()
        .get(gw.url("/v1/backstop/status"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let primary = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "primary")
        .unwrap();
    let health = primary["health"].as_object().unwrap();
    assert_eq!(health.len(), 1, "{primary}");
    health.values().next().unwrap()["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Requests counted by `/metrics`, every scenario and outcome.
async fn requests_counted(gw: &Backstop) -> u64 {
    let text = client()
        .get(gw.url("/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("backstop_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A few clients asking `chat` over and over until told to stop (or a
/// bounded number of requests each); counts answers and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(base: &str, clients: usize, max_each: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let url = format!("{base}/v1/chat/completions");
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut failures = Vec::new();
                    for _ in 0..max_each {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let r = client
                            .post(&url)
                            .bearer_auth(KEY)
                            .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 200 => {
                                let body: Value = r.json().await.unwrap_or_default();
                                if body["choices"][0]["message"]["content"] == ANSWER {
                                    ok.fetch_add(1, Ordering::SeqCst);
                                } else {
                                    failed.fetch_add(1, Ordering::SeqCst);
                                    failures.push(body.to_string());
                                }
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                failures.push(format!("{}: {}", r.status(), r.text().await.unwrap_or_default()));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                failures.push(e.to_string());
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            clients,
        }
    }

    /// Waits until `n` more requests were answered (bounded).
    async fn answered(&self, n: u64) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ok.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the load stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients; returns (answered, failures).
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut failures = Vec::new();
        for client in self.clients {
            failures.extend(client.await.unwrap());
        }
        assert_eq!(self.failed.load(Ordering::SeqCst), failures.len() as u64);
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

fn write_config(gw: &Backstop, toml: &str) {
    std::fs::write(gw.dir.join("backstop.toml"), toml).unwrap();
}

/// Polls until `check` holds (bounded).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reload_under_load_keeps_every_request_and_the_open_circuit() {
    let primary = openai_upstream(vec![openai_error(
        500,
        "server_error",
        "internal",
        "the primary is down",
    )])
    .await;
    let backup = healthy_upstream().await;
    let gw = Backstop::start(
        &config(&primary, &backup, "", 50_000),
        &[("BACKSTOP_API_KEYS", KEY)],
    );

    // Open the primary's circuit: two failures in a row, the backup answers.
    for _ in 0..2 {
        let r = ask(&gw, "chat").await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(primary_circuit(&gw).await, "open");
    let primary_calls = primary.received_requests().await.unwrap().len();
    assert_eq!(primary_calls, 2);

    // The reload is behind the keys.
    let r = client()
        .post(gw.url("/v1/backstop/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let load = Load::start(&gw.base, 4, 400);
    load.answered(20).await;
    let counted_before = requests_counted(&gw).await;

    // A new scenario and a changed timeout.
    write_config(
        &gw,
        &config(
            &primary,
            &backup,
            "[scenarios.fresh]\nchain = [\"backup\"]\n",
            40_000,
        ),
    );
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scenarios"], json!(["chat", "fresh"]), "{body}");
    assert_eq!(body["models_unchanged"], true, "{body}");
    assert_eq!(body["built"], json!([]), "{body}");
    let kept: Vec<&str> = body["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for expected in ["health circuit_breaker #1", "latency estimates", "metrics"] {
        assert!(kept.contains(&expected), "{expected}: {body}");
    }
    assert_eq!(body["restart_required"], json!([]), "{body}");

    load.answered(20).await;
    let r = ask(&gw, "fresh").await;
    assert_eq!(r.status(), 200, "the new scenario answers");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["backstop"]["model_used"], "backup", "{answer}");
    assert_eq!(primary_circuit(&gw).await, "open", "the circuit survived");
    assert!(
        requests_counted(&gw).await > counted_before,
        "metrics keep counting"
    );

    // An invalid config changes nothing and says why, as `check` does.
    write_config(
        &gw,
        &config(
            &primary,
            &backup,
            "[scenarios.broken]\nchain = [\"backup\", \"nope\"]\n",
            40_000,
        ),
    );
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config", "{body}");
    let problems = body["error"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{body}");
    let file = gw.dir.join("backstop.toml");
    assert_eq!(
        problems[0]["text"],
        format!(
            "{}: scenarios.broken.chain[1]: unknown model \"nope\"; models: \"backup\", \"primary\"",
            file.display()
        ),
        "{body}"
    );
    assert_eq!(problems[0]["key"], "scenarios.broken.chain[1]", "{body}");
    // `check` prints the same line.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(problems[0]["text"].as_str().unwrap()),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    load.answered(20).await;
    let r = ask(&gw, "fresh").await;
    assert_eq!(r.status(), 200, "the running config still serves");
    assert_eq!(primary_circuit(&gw).await, "open");

    let (answered, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(answered >= 60, "{answered}");
    // The open circuit kept every request away from the primary.
    assert_eq!(
        primary.received_requests().await.unwrap().len(),
        primary_calls
    );
}

#[tokio::test]
async fn sighup_reloads_and_an_invalid_file_is_one_warning() {
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    let log = tempfile_path("sighup.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let gw = Backstop::start_with(
        &config(&primary, &backup, "", 50_000),
        &[("BACKSTOP_API_KEYS", KEY), ("RUST_LOG", "warn")],
        Stdio::from(stderr),
    );
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &gw.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP");
    };

    assert_eq!(ask(&gw, "hup").await.status(), 404);
    write_config(
        &gw,
        &config(
            &primary,
            &backup,
            "[scenarios.hup]\nchain = [\"backup\"]\n",
            50_000,
        ),
    );
    hup();
    eventually("the new scenario answers", || async {
        ask(&gw, "hup").await.status() == 200
    })
    .await;

    write_config(
        &gw,
        &config(
            &primary,
            &backup,
            "[scenarios.hup]\nchain = [\"nope\"]\n",
            50_000,
        ),
    );
    hup();
    let expected = "scenarios.hup.chain[0]: unknown model \\\"nope\\\"";
    let plain = "scenarios.hup.chain[0]: unknown model \"nope\"";
    eventually("the refusal is logged", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(expected) || text.contains(plain)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("not reloaded"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("WARN"), "{text}");
    // Still serving the last good configuration.
    assert_eq!(ask(&gw, "hup").await.status(), 200);
    drop(gw);
    let _ = std::fs::remove_file(&log);
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("backstop-reload-{}-{name}", std::process::id()))
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_old_config_and_reloads_run_one_at_a_time() {
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    let slow = MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(completion(ANSWER).set_delay(Duration::from_secs(3)))
        .mount(&slow)
        .await;
    let with_slow = format!(
        "[providers.slow]\ntype = \"openai\"\nbase_url = \"{}/v1\"\n\n[models.slow]\nprovider = \"slow\"\npriority = 3\n\n[scenarios.slowchat]\nchain = [\"slow\"]\n",
        slow.uri()
    );
    let gw = Backstop::start(
        &config(&primary, &backup, &with_slow, 50_000),
        &[("BACKSTOP_API_KEYS", KEY)],
    );

    // A request to `slowchat` is under way when a reload removes it.
    let in_flight = tokio::spawn({
        let url = gw.url("/v1/chat/completions");
        async move {
            client()
                .post(url)
                .bearer_auth(KEY)
                .json(
                    &json!({"model": "slowchat", "messages": [{"role": "user", "content": "hi"}]}),
                )
                .send()
                .await
                .unwrap()
        }
    });
    eventually("the slow upstream got the request", || async {
        !slow.received_requests().await.unwrap().is_empty()
    })
    .await;
    write_config(&gw, &config(&primary, &backup, "", 50_000));
    // Three reloads at once: each waits for the one before, all succeed.
    let (a, b, c) = tokio::join!(reload(&gw), reload(&gw), reload(&gw));
    for (status, body) in [a, b, c] {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["scenarios"], json!(["chat"]), "{body}");
    }
    assert!(
        !in_flight.is_finished(),
        "the slow request was still running"
    );

    let r = in_flight.await.unwrap();
    assert_eq!(r.status(), 200, "it finished on the Router it started on");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["backstop"]["model_used"], "slow", "{body}");
    // New requests see the new configuration.
    assert_eq!(ask(&gw, "slowchat").await.status(), 404);
    assert_eq!(ask(&gw, "chat").await.status(), 200);
}
