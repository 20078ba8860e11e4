//! The dashboard in a real browser: `backstop serve` with two wiremock
//! upstreams and an API key, headless Chromium driven through chromedriver
//! (WebDriver, with fantoccini). The test enters the key, breaks the
//! primary, sends traffic and waits, bounded, for the page to show the open
//! circuit and the fallback with its reason. A screenshot of the page is
//! saved to `target/test-artifacts/dashboard.png` (and
//! `dashboard-failure.png` when a wait gives up).
//!
//! `cargo xtask test` installs Debian's `chromium` and `chromium-driver`
//! (and `procps` for `kill`) when `chromium`, `chromedriver` or `kill` is
//! missing; without them these tests fail, they are not skipped.

// A test fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

/// How long the page may take to show what the gateway knows.
const PAGE_WAIT: Duration = Duration::from_secs(10);

const KEY: &str = "sk-dash-1";

// ---------------------------------------------------------------- browser

fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH: run the suite with `cargo xtask test`, which installs \
                 it (or `apt-get install -y chromium chromium-driver`)"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// chromedriver on a free loopback port, in a process group of its own
/// with the Chromium it starts. Dropping it (also on panic) kills the group
/// and any process still using its profile folder, then removes the folder.
struct ChromeDriver {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl ChromeDriver {
    fn start() -> Self {
        let program = find_program("chromedriver");
        let dir = std::env::temp_dir().join(format!(
            "backstop-dashboard-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let driver = Self { child, port, dir };
        // Bounded wait until it answers /status.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn profile(&self) -> PathBuf {
        self.dir.join("profile")
    }

    /// A WebDriver session of headless Chromium with its own profile.
    async fn session(&self) -> Client {
        let chromium = find_program("chromium");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // CI runs as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-extensions",
                    "--window-size=1280,1600",
                    format!("--user-data-dir={}", self.profile().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url())
            .await
            .unwrap_or_else(|e| {
                let log =
                    std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
                panic!(
                    "no Chromium session: {e}\nchromedriver log (last lines, newest first):\n{tail}"
                )
            })
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_users_of(&self.profile());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills the processes whose command line names `profile` (a Chromium
/// helper that left the process group), by pid.
fn kill_users_of(profile: &Path) {
    let needle = profile.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = Command::new("kill")
                .args(["-s", "KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Where test artifacts go: `target/test-artifacts/`.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("a screenshot");
    let file = artifacts().join(name);
    std::fs::write(&file, png).unwrap();
    file
}

/// Evaluates `script` in the page until `done` holds for its value, for at
/// most [`PAGE_WAIT`]; on time-out saves `dashboard-failure.png` and panics
/// with what the page last said. Reading through a script means the page
/// redrawing between two WebDriver calls cannot leave a stale element.
async fn wait_for(
    client: &Client,
    what: &str,
    script: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + PAGE_WAIT;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        match client.execute(script, vec![]).await {
            Ok(value) if done(&value) => return value,
            Ok(value) => last = value,
            Err(e) => last = Value::String(format!("script failed: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shot = screenshot(client, "dashboard-failure.png").await;
    let text = client
        .execute("return document.body.innerText", vec![])
        .await
        .unwrap_or_default();
    panic!(
        "the page did not show {what} within {PAGE_WAIT:?}; last value: {last}\nscreenshot: {}\npage text:\n{}",
        shot.display(),
        text.as_str().unwrap_or_default()
    );
}

fn visible(id: &str) -> String {
    format!(
        "const e = document.getElementById('{id}'); return !!e && !e.hidden && e.offsetParent !== null;"
    )
}

// ---------------------------------------------------------------- gateway

async fn chat(gw: &Backstop, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body(false))
        .send()
        .await
        .unwrap()
}

/// Makes `server` answer every chat call with a 500.
async fn break_upstream(server: &MockServer) {
    server.reset().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(openai_error(
            500,
            "server_error",
            "server_error",
            "The server had an error",
        ))
        .mount(server)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_an_open_circuit_and_the_fallback_with_its_reason() {
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    // A provider quota on the primary and a limit per caller, far above
    // this traffic: the page shows their use.
    let toml = config(
        &[
            ("primary", openai_provider(&primary.uri())),
            ("backup", openai_provider(&backup.uri())),
        ],
        &[model("primary"), model("backup")],
        "",
        "api_keys_env = \"DASHBOARD_TEST_KEYS\"",
    )
    .replace(
        "model = \"primary-upstream\"\n",
        "model = \"primary-upstream\"\nrpm = 1000\n",
    ) + "\n[limits]\nper_caller = { rpm = 600 }\n";
    let gw = Backstop::start(&toml, &[("DASHBOARD_TEST_KEYS", KEY)]);
    let driver = ChromeDriver::start();
    let client = driver.session().await;

    // The page loads without a key and asks for one.
    client.goto(&gw.url("/dashboard")).await.unwrap();
    wait_for(&client, "the key form", &visible("key-form"), |v| v == true).await;
    let form = client.find(Locator::Id("key-input")).await.unwrap();

    // A wrong key is refused, and the page says so.
    form.send_keys("sk-wrong").await.unwrap();
    client
        .find(Locator::Id("key-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &client,
        "that the key was refused",
        "return document.getElementById('key-message').textContent",
        |v| v.as_str().is_some_and(|t| t.contains("refused")),
    )
    .await;

    // The right key opens the board: the primary takes calls.
    let form = client.find(Locator::Id("key-input")).await.unwrap();
    form.send_keys(KEY).await.unwrap();
    client
        .find(Locator::Id("key-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let primary_state = "const r = document.querySelector('[data-scenario=\"chat\"] tr[data-model=\"primary\"]'); \
         return r ? [r.dataset.state, r.querySelector('.state').textContent, r.querySelector('.since').textContent] : null;";
    let closed = wait_for(&client, "the primary closed", primary_state, |v| {
        v[0] == "closed"
    })
    .await;
    assert!(
        closed[1].as_str().unwrap().contains("closed"),
        "the state is written out, not only coloured: {closed}"
    );
    assert_eq!(chat(&gw, KEY).await.status(), 200);

    // The primary breaks; traffic falls over to the backup until the
    // circuit opens (5 failed calls: each request tries it twice).
    break_upstream(&primary).await;
    for _ in 0..4 {
        let r = chat(&gw, KEY).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backstop-model"], "backup");
    }

    let open = wait_for(&client, "the primary's circuit open", primary_state, |v| {
        v[0] == "open"
    })
    .await;
    assert!(
        open[1].as_str().unwrap().contains("open"),
        "the open state is written out: {open}"
    );
    assert!(
        open[2].as_str().unwrap().contains("for "),
        "the row says since when: {open}"
    );
    // At a glance: the top of the page names the model and since when.
    let glance = wait_for(
        &client,
        "the primary named at the top",
        "return document.getElementById('glance').innerText",
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("primary is open since"))
        },
    )
    .await;
    assert!(
        glance.as_str().unwrap().contains("takes no calls"),
        "{glance}"
    );
    // The fallback events, with their reasons: the primary's server
    // errors, then (newest, first) the request that skipped its open
    // circuit. One condition, so a redraw between checks cannot split them.
    wait_for(
        &client,
        "the fallback events with their reasons",
        "return [...document.querySelectorAll('#events-body tr')].map(r => [r.dataset.reason, r.innerText])",
        |v| {
            v.as_array().is_some_and(|rows| {
                rows.first().is_some_and(|newest| {
                    newest[0] == "circuit_open"
                        && newest[1]
                            .as_str()
                            .is_some_and(|t| t.contains("skipped: circuit open"))
                }) && rows.iter().any(|r| {
                    r[0] == "server"
                        && r[1].as_str().is_some_and(|t| {
                            t.contains("primary")
                                && t.contains("backup")
                                && t.contains("server error")
                        })
                })
            })
        },
    )
    .await;
    // The rate limits with their use: the primary's quota counted the
    // calls it was sent (it is skipped while open), the caller all five.
    let limits = wait_for(
        &client,
        "the rate limits",
        "return [...document.querySelectorAll('#limits tbody tr')].map(r => [r.dataset.limit, r.innerText])",
        |v| {
            v.as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r[0] == "caller:key-1" && r[1].as_str().is_some_and(|t| t.contains("5 / 600")))
            })
        },
    )
    .await;
    let quota = limits
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == "model:primary")
        .unwrap_or_else(|| panic!("the primary's quota is listed: {limits}"));
    assert!(quota[1].as_str().unwrap().contains("/ 1000"), "{limits}");
    // The chart has a bar for the fallbacks of the last seconds.
    wait_for(
        &client,
        "a fallback-rate bar",
        "return document.querySelectorAll('#rate-chart rect.bar').length",
        |v| v.as_u64().is_some_and(|n| n >= 1),
    )
    .await;

    let shot = screenshot(&client, "dashboard.png").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 1_000);

    // The gateway goes away: the page says so and keeps the last figures.
    drop(gw);
    wait_for(
        &client,
        "that the gateway cannot be reached",
        "return document.getElementById('connection-line').innerText",
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("Cannot reach the gateway"))
        },
    )
    .await;
    let kept = client.execute(primary_state, vec![]).await.unwrap();
    assert_eq!(kept[0], "open", "the last figures stay: {kept}");
    let _ = client.close().await;
    drop(driver);
    drop(backup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_the_dashboard_asks_for_none_and_hides_the_store_of_local_state() {
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);
    let driver = ChromeDriver::start();
    let client = driver.session().await;
    client.goto(&gw.url("/dashboard")).await.unwrap();
    wait_for(&client, "the board", &visible("board"), |v| v == true).await;
    let state = client
        .execute(
            "return [document.getElementById('key-form').hidden, document.getElementById('store-section').hidden, document.getElementById('forget-key').hidden]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        state,
        json!([true, true, true]),
        "no key form, no store section (local state), nothing to forget"
    );
    let _ = client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fleet_backend_the_dashboard_shows_whether_the_store_answers() {
    let mut redis = backstop_fleet::testing::RedisServer::start();
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    let toml = two_openai(&primary, &backup, "")
        + "\n[state]\nbackend = \"redis\"\nurl_env = \"DASHBOARD_REDIS_URL\"\nkey_prefix = \"dashboard\"\n";
    let url = redis.url();
    let gw = Backstop::start(&toml, &[("DASHBOARD_REDIS_URL", url.as_str())]);
    let driver = ChromeDriver::start();
    let client = driver.session().await;
    client.goto(&gw.url("/dashboard")).await.unwrap();
    let store = "const s = document.querySelector('#store [data-store]'); \
                 return document.getElementById('store-section').hidden || !s ? null : [s.dataset.store, document.getElementById('store').innerText];";
    let up = wait_for(&client, "the store up", store, |v| v[0] == "up").await;
    assert!(up[1].as_str().unwrap().contains("redis"), "{up}");
    // The store goes away: the page says this replica is on its own.
    redis.stop();
    let down = wait_for(&client, "the store down", store, |v| v[0] == "down").await;
    assert!(
        down[1].as_str().unwrap().contains("DOWN"),
        "written out, not only coloured: {down}"
    );
    let _ = client.close().await;
}

/// Over plain HTTP: the page and its files need no key and carry a strict
/// policy; the status document has what the page draws.
#[tokio::test]
async fn the_page_needs_no_key_but_the_status_it_draws_does() {
    let primary = openai_upstream(vec![openai_error(
        500,
        "server_error",
        "server_error",
        "The server had an error",
    )])
    .await;
    let backup = healthy_upstream().await;
    let toml = config(
        &[
            ("primary", openai_provider(&primary.uri())),
            ("backup", openai_provider(&backup.uri())),
        ],
        &[model("primary"), model("backup")],
        "",
        "api_keys_env = \"DASHBOARD_TEST_KEYS\"",
    );
    let gw = Backstop::start(&toml, &[("DASHBOARD_TEST_KEYS", KEY)]);
    let http = reqwest::Client::new();
    for (file, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
    ] {
        let r = http.get(gw.url(file)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{file}");
        let headers = r.headers();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{file}"
        );
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'"),
            "{file}"
        );
    }
    let status = gw.url("/v1/backstop/status");
    assert_eq!(http.get(&status).send().await.unwrap().status(), 401);

    let r = chat(&gw, KEY).await;
    assert_eq!(r.headers()["x-backstop-model"], "backup");
    let doc: Value = http
        .get(&status)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let now = doc["generated_unix_ms"].as_u64().unwrap();
    let circuit = &doc["models"][0]["health"]["circuit_breaker"];
    assert_eq!(circuit["state"], "closed");
    let since = circuit["since_unix_ms"].as_u64().unwrap();
    assert!(since <= now && now - since < 60_000, "{circuit}");
    let history = &doc["fallback_history"];
    assert_eq!(history["step_ms"], 5_000);
    assert_eq!(history["span_ms"], 15 * 60 * 1_000);
    let steps = history["steps"].as_array().unwrap();
    let (requests, fallbacks) = steps.iter().fold((0, 0), |(r, f), s| {
        (
            r + s["requests"].as_u64().unwrap(),
            f + s["fallbacks"].as_u64().unwrap(),
        )
    });
    assert_eq!((requests, fallbacks), (1, 1), "{history}");
    assert_eq!(steps.last().unwrap()["end_unix_ms"], now);
    assert_eq!(doc["recent_fallbacks"][0]["reason"], "server");
}

/// The page's drawing of a status document with every state and section,
/// served by a stand-in for the gateway: a model cooling down and one
/// disabled, a budget with a cap, rate limits, a fleet store that is down,
/// and a model id that tries to be HTML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_section_is_drawn_from_the_document_as_text() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let circuit = |state: &str, age_ms: u64, retry: Option<u64>| {
        json!({"circuit_breaker": {"state": state, "retry_after_ms": retry, "window_calls": 4,
            "failure_ratio": 0.5, "in_state_ms": age_ms, "since_unix_ms": now - age_ms}})
    };
    let model = |id: &str, health: Value| {
        json!({"id": id, "provider": "p", "upstream": "u", "priority": 1, "health": health,
               "latency_ms": {"total": 812.4, "first_token": null, "probe": 3.25},
               "recent_failures": [{"kind": "rate_limited", "unix_ms": now - 1_000}]})
    };
    let evil = "<img src=x id=injected>";
    let doc = json!({
        "generated_unix_ms": now,
        "alerts": {"alerts_fired": 1, "fallback_rate": 0.5, "fallbacks": 2, "last_alert_unix_ms": now - 5_000,
                   "max_fallbacks": 2, "requests": 4, "window_ms": 60_000},
        "budgets": [{"policy": "rolling", "spent": 0.5, "reserved": 0.0, "limit": 1.0}],
        "fallback_history": {"span_ms": 900_000, "step_ms": 5_000, "steps": [
            {"end_unix_ms": now - 5_000, "requests": 2, "fallbacks": 0, "errors": 0},
            {"end_unix_ms": now, "requests": 2, "fallbacks": 2, "errors": 1}]},
        "models": [model("gpt-4o", circuit("cooling_down", 90_000, Some(30_000))),
                   model("claude", circuit("disabled", 3_600_000, None)),
                   model(evil, circuit("closed", 10_000, None))],
        "rate_limits": [
            {"scope": "model", "name": "gpt-4o", "rpm": 60, "tpm": null, "requests": 30, "tokens": 900, "refused": 2, "shared": true},
            {"scope": "caller", "name": "key-1", "rpm": 10, "tpm": 1000, "requests": 10, "tokens": 250, "refused": 5, "shared": false}],
        "recent_fallbacks": [
            {"timestamp_ms": now - 2_000, "scenario": "chat", "primary": "gpt-4o", "model_used": evil,
             "reason": "over_rate_limit", "level": 2, "latency_ms": 15.5},
            {"timestamp_ms": now - 1_000, "scenario": "chat", "primary": "gpt-4o", "model_used": "claude",
             "reason": "brand_new_reason", "level": 1, "latency_ms": 7.0}],
        "scenarios": [{"name": "chat", "chain": ["gpt-4o", "claude", evil], "budget": "rolling",
                       "doors": ["chat_completions"], "health": "circuit_breaker", "hedge_after_ms": null,
                       "mid_stream": "error", "result": "annotate", "selector": "priority"}],
        "state": {"backend": "redis", "store_up": false}
    });
    let gateway = MockServer::start().await;
    let assets = [
        (
            "/dashboard",
            include_str!("../assets/dashboard.html"),
            "text/html",
        ),
        (
            "/dashboard/dashboard.js",
            include_str!("../assets/dashboard.js"),
            "text/javascript",
        ),
        (
            "/dashboard/dashboard.css",
            include_str!("../assets/dashboard.css"),
            "text/css",
        ),
    ];
    for (file, body, kind) in assets {
        Mock::given(method("GET"))
            .and(path(file))
            .respond_with(
                wiremock::ResponseTemplate::new(200)
                    .set_body_raw(body, &format!("{kind}; charset=utf-8")),
            )
            .mount(&gateway)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/v1/backstop/status"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(&doc))
        .mount(&gateway)
        .await;

    let driver = ChromeDriver::start();
    let client = driver.session().await;
    client
        .goto(&format!("{}/dashboard", gateway.uri()))
        .await
        .unwrap();
    let text = |id: &str| format!("return document.getElementById('{id}').innerText");
    let glance = wait_for(&client, "the glance", &text("glance"), |v| {
        v.as_str().is_some_and(|t| t.contains("claude"))
    })
    .await;
    let glance = glance.as_str().unwrap();
    assert!(glance.contains("2 models take no calls"), "{glance}");
    assert!(
        glance.contains("gpt-4o is cooling down since")
            && glance.contains("(for 1 min 30 s), next try in 30 s"),
        "{glance}"
    );
    assert!(
        glance.contains("claude is disabled since") && glance.contains("(for 1 h 0 min)"),
        "{glance}"
    );
    assert!(
        !glance.contains(evil),
        "a closed model is not listed: {glance}"
    );

    let value = client
        .execute(
            "const t = (id) => document.getElementById(id).innerText; \
             return {scenarios: t('scenarios'), rate: t('rate-summary'), bars: document.querySelectorAll('#rate-chart rect.bar').length, \
                     events: t('events-body'), budgets: t('budgets'), limits: t('limits'), \
                     limits_hidden: document.getElementById('limits-section').hidden, store: t('store'), \
                     injected: document.getElementById('injected') !== null};",
            vec![],
        )
        .await
        .unwrap();
    let field = |name: &str| value[name].as_str().unwrap_or_default().to_owned();
    assert_eq!(value["injected"], false, "document text is never HTML");
    assert!(
        field("scenarios").contains(evil),
        "the odd id is shown as text: {value}"
    );
    assert!(field("scenarios").contains("812 ms"), "{value}");
    assert!(field("scenarios").contains("3.3 ms"), "{value}");
    assert!(field("scenarios").contains("rate limited (429)"), "{value}");
    assert!(
        field("rate").contains("2 fallbacks in 4 requests (50.0%), 1 error."),
        "{value}"
    );
    assert_eq!(value["bars"], 1, "one step had fallbacks: {value}");
    let events = field("events");
    assert!(
        events.contains("skipped: over rate limit") && events.contains("brand_new_reason"),
        "{events}"
    );
    assert!(
        events.find("brand_new_reason") < events.find("over rate limit"),
        "newest first: {events}"
    );
    assert!(
        field("budgets").contains("$0.5000") && field("budgets").contains("50.0%"),
        "{value}"
    );
    assert_eq!(value["limits_hidden"], false);
    let limits = field("limits");
    for expected in [
        "model quota",
        "30 / 60 (50.0%)",
        "900 (no cap)",
        "fleet-wide",
        "key-1",
        "10 / 10 (100%)",
        "this replica",
    ] {
        assert!(limits.contains(expected), "{expected:?} in {limits}");
    }
    assert!(field("store").contains("DOWN"), "{value}");
    screenshot(&client, "dashboard-sections.png").await;
    let _ = client.close().await;
}
