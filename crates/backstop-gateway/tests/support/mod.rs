//! What the binary's end-to-end tests share: `backstop serve` started as a
//! process against a config file, wiremock upstreams speaking OpenAI's and
//! Anthropic's wire formats, config builders and SSE readers.

// Each test file uses a part of this module.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backstop_http::sse::{write_data, write_event};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const ANSWER: &str = "Foxes are small omnivorous mammals.";

/// A running `backstop serve`; killed when dropped.
pub struct Backstop {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
}

impl Backstop {
    pub fn start(config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(config, env, Stdio::inherit())
    }

    /// Like [`Backstop::start`], with the process's stderr (its log) sent
    /// to `stderr`.
    pub fn start_with(config: &str, env: &[(&str, &str)], stderr: Stdio) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "backstop-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("backstop.toml");
        std::fs::write(&file, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_backstop"));
        command
            .args(["serve", "--config"])
            .arg(&file)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "error")
            .env_remove("BACKSTOP_API_KEYS")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("backstop starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("backstop did not print its address");
            }
        };
        let base = line
            .strip_prefix("backstop listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        Self { child, base, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Backstop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------- upstreams

pub fn completion(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    }))
}

pub fn openai_error(status: u16, kind: &str, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

/// An OpenAI SSE body: one chunk per piece; `finished` adds the finish
/// chunk, the usage chunk and `[DONE]`.
pub fn openai_sse(pieces: &[&str], finished: bool) -> ResponseTemplate {
    let mut body = Vec::new();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    write_data(
        &mut body,
        &chunk(json!({"role": "assistant", "content": ""}), Value::Null),
    );
    for piece in pieces {
        write_data(&mut body, &chunk(json!({"content": piece}), Value::Null));
    }
    if finished {
        write_data(&mut body, &chunk(json!({}), json!("stop")));
        write_data(
            &mut body,
            &json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1_700_000_000,
                    "model": "gpt-4o-mini", "choices": [],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}})
            .to_string(),
        );
        write_data(&mut body, "[DONE]");
    }
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_bytes(body)
}

/// An OpenAI SSE body that calls `get_weather` for Paris in three pieces;
/// `finished` ends it properly, else it is cut inside the arguments.
pub fn openai_tool_sse(finished: bool) -> ResponseTemplate {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let mut body = Vec::new();
    write_data(
        &mut body,
        &chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
    );
    write_data(
        &mut body,
        &chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            Value::Null,
        ),
    );
    if finished {
        write_data(
            &mut body,
            &chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                Value::Null,
            ),
        );
        write_data(&mut body, &chunk(json!({}), json!("tool_calls")));
        write_data(&mut body, "[DONE]");
    }
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_bytes(body)
}

/// An Anthropic Messages SSE body calling `get_weather` (`toolu_1`), its
/// input JSON streamed in `pieces`.
pub fn anthropic_tool_sse(pieces: &[&str]) -> ResponseTemplate {
    let mut body = Vec::new();
    let mut events = vec![
        json!({"type": "message_start", "message": {"id": "msg_t", "type": "message",
            "role": "assistant", "model": "claude", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 30, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
    ];
    for piece in pieces {
        events.push(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": piece}}));
    }
    events.extend([
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 12}}),
        json!({"type": "message_stop"}),
    ]);
    for event in events {
        let name = event["type"].as_str().unwrap_or_default().to_owned();
        write_event(&mut body, &name, &event.to_string());
    }
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_bytes(body)
}

/// An Anthropic Messages SSE body streaming `pieces`.
pub fn anthropic_sse(pieces: &[&str]) -> ResponseTemplate {
    let mut body = Vec::new();
    write_event(
        &mut body,
        "message_start",
        &json!({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 20, "output_tokens": 1}}})
        .to_string(),
    );
    write_event(
        &mut body,
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}})
        .to_string(),
    );
    write_event(&mut body, "ping", &json!({"type": "ping"}).to_string());
    for piece in pieces {
        write_event(
            &mut body,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": piece}})
            .to_string(),
        );
    }
    write_event(
        &mut body,
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}).to_string(),
    );
    write_event(
        &mut body,
        "message_delta",
        &json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}})
        .to_string(),
    );
    write_event(
        &mut body,
        "message_stop",
        &json!({"type": "message_stop"}).to_string(),
    );
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_bytes(body)
}

pub async fn openai_upstream(responses: Vec<ResponseTemplate>) -> MockServer {
    let server = MockServer::start().await;
    let n = responses.len();
    for (i, r) in responses.into_iter().enumerate() {
        let mock = Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(r);
        // Every response but the last answers once, in order.
        let mock = if i + 1 < n {
            mock.up_to_n_times(1)
        } else {
            mock
        };
        mock.with_priority(u8::try_from(i + 1).unwrap())
            .mount(&server)
            .await;
    }
    server
}

/// An upstream that answers ANSWER, as SSE to streaming requests and as
/// JSON otherwise, as many times as asked.
pub async fn healthy_upstream() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(wiremock::matchers::body_partial_json(
            json!({"stream": true}),
        ))
        .respond_with(openai_sse(
            &["Foxes", " are", " small", " omnivorous", " mammals."],
            true,
        ))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(completion(ANSWER))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

pub async fn seen(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.body_json().unwrap())
        .collect()
}

// ---------------------------------------------------------------- config

pub struct Model<'a> {
    pub id: &'a str,
    pub provider: &'a str,
    pub window: u32,
    pub prefill: bool,
}

pub fn model(id: &'static str) -> Model<'static> {
    Model {
        id,
        provider: id,
        window: 128_000,
        prefill: false,
    }
}

/// A config whose scenario `chat` chains `models` in order; each model has
/// its own provider (`providers` gives its TOML), and `scenario` adds keys
/// to the scenario.
pub fn config(
    providers: &[(&str, String)],
    models: &[Model<'_>],
    scenario: &str,
    server: &str,
) -> String {
    let mut toml = format!("[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n");
    for (id, body) in providers {
        toml.push_str(&format!("[providers.{id}]\n{body}\n\n"));
    }
    for (i, m) in models.iter().enumerate() {
        toml.push_str(&format!(
            "[models.{id}]\nprovider = \"{p}\"\nmodel = \"{id}-upstream\"\npriority = {prio}\ncontext_window = {w}\nsupports_prefill = {pf}\ncost_per_1k = 0\n\n",
            id = m.id,
            p = m.provider,
            prio = i + 1,
            w = m.window,
            pf = m.prefill
        ));
    }
    let chain: Vec<String> = models.iter().map(|m| format!("\"{}\"", m.id)).collect();
    toml.push_str(&format!(
        "[scenarios.chat]\nchain = [{}]\n{scenario}\n",
        chain.join(", ")
    ));
    toml
}

pub fn openai_provider(url: &str) -> String {
    format!("type = \"openai\"\nbase_url = \"{url}/v1\"")
}

pub fn two_openai(primary: &MockServer, backup: &MockServer, scenario: &str) -> String {
    config(
        &[
            ("primary", openai_provider(&primary.uri())),
            ("backup", openai_provider(&backup.uri())),
        ],
        &[model("primary"), model("backup")],
        scenario,
        "",
    )
}

pub fn body(stream: bool) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "What are foxes?"}],
           "temperature": 0.2, "stream": stream, "stream_options": {"include_usage": true}})
}

pub async fn post(gw: &Backstop, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of an SSE body.
pub async fn events(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

pub fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

pub fn last_json(events: &[String]) -> Value {
    let last = events
        .iter()
        .rev()
        .find(|e| e.as_str() != "[DONE]")
        .unwrap();
    serde_json::from_str(last).unwrap()
}

/// Waits (at most 5 s) until the gateway's status says its fleet store
/// answers, so a fleet test's first request is not served on the replica's
/// own state while the store is still connecting.
pub async fn wait_for_store(gw: &Backstop) {
    let started = std::time::Instant::now();
    loop {
        let status: Value = reqwest::get(gw.url("/v1/backstop/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["state"]["store_up"] == true {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the store never came up: {}",
            status["state"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
