//! The batched relay never holds a chunk back (issue 18): an upstream
//! that sends its first chunk and then waits until the caller has
//! received it — a rendezvous, no timing threshold — before it sends the
//! rest. A gateway that kept chunk 1 to write it with later ones would
//! never see chunk 2 come, and this test would fail at its safety
//! timeout. Run through every chat door; each must then deliver the
//! whole answer in order.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Long enough for a loaded CI machine; only a held-back chunk reaches it.
const SAFETY: Duration = Duration::from_secs(30);

fn sse_chunk(delta: &str, finish: &str) -> String {
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m-upstream\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

/// One HTTP/1.1 chunked-encoding frame.
fn frame(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

/// Reads one request (headers and a Content-Length body).
async fn read_request(tcp: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "the gateway closed before sending its request");
        seen.extend_from_slice(&buf[..n]);
        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if seen.len() >= end + 4 + length {
            return;
        }
    }
}

/// An OpenAI upstream for one stream: chunk 1, then (once `go` fires)
/// chunk 2, the finish and `[DONE]`.
async fn rendezvous_upstream(go: oneshot::Receiver<()>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        read_request(&mut tcp).await;
        tcp.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        let first = sse_chunk(r#"{"role":"assistant","content":"first"}"#, "null");
        tcp.write_all(&frame(&first)).await.unwrap();
        tcp.flush().await.unwrap();
        // The rendezvous: nothing more until the caller has chunk 1.
        if tokio::time::timeout(SAFETY, go).await.is_err() {
            return;
        }
        let mut rest = frame(&sse_chunk(r#"{"content":" second"}"#, "null"));
        rest.extend(frame(&sse_chunk("{}", "\"stop\"")));
        rest.extend(frame("data: [DONE]\n\n"));
        rest.extend_from_slice(b"0\r\n\r\n");
        tcp.write_all(&rest).await.unwrap();
        tcp.flush().await.unwrap();
        // Hold the connection until the gateway is done with it.
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(SAFETY, tcp.read(&mut sink)).await;
    });
    url
}

struct Door {
    path: &'static str,
    body: Value,
    /// What the door's last event carries.
    end: &'static str,
}

fn doors() -> [Door; 3] {
    let messages = json!([{"role": "user", "content": "hi"}]);
    [
        Door {
            path: "/v1/chat/completions",
            body: json!({"model": "chat", "stream": true, "messages": messages}),
            end: "data: [DONE]",
        },
        Door {
            path: "/v1/messages",
            body: json!({"model": "chat", "stream": true, "max_tokens": 100, "messages": messages}),
            end: "message_stop",
        },
        Door {
            path: "/v1/responses",
            body: json!({"model": "chat", "stream": true, "input": "hi"}),
            end: "response.completed",
        },
    ]
}

#[tokio::test]
async fn a_lone_chunk_reaches_the_caller_before_the_upstream_sends_the_next_on_every_door() {
    for door in doors() {
        let (go, went) = oneshot::channel();
        let upstream = rendezvous_upstream(went).await;
        let gw = Backstop::start(
            &config(&[("m", openai_provider(&upstream))], &[model("m")], "", ""),
            &[],
        );
        let response = reqwest::Client::new()
            .post(gw.url(door.path))
            .json(&door.body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", door.path);
        let mut body = response.bytes_stream();
        let mut text = String::new();
        let got_first = tokio::time::timeout(SAFETY, async {
            while !text.contains("first") {
                match body.next().await {
                    Some(Ok(bytes)) => text.push_str(&String::from_utf8_lossy(&bytes)),
                    _ => return false,
                }
            }
            true
        })
        .await;
        assert_eq!(
            got_first,
            Ok(true),
            "{}: chunk 1 never reached the caller while the upstream waited for it: held back",
            door.path
        );
        assert!(!text.contains("second"), "{}: {text}", door.path);
        go.send(()).unwrap();
        let rest = tokio::time::timeout(SAFETY, async {
            while let Some(Ok(bytes)) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        })
        .await;
        assert!(rest.is_ok(), "{}: the stream did not end", door.path);
        let first = text.find("first").unwrap();
        let second = text
            .find(" second")
            .unwrap_or_else(|| panic!("{}: chunk 2 missing: {text}", door.path));
        assert!(first < second, "{}: out of order: {text}", door.path);
        assert!(
            text.trim_end().ends_with(door.end) || text.contains(door.end),
            "{}: no {} at the end: {text}",
            door.path,
            door.end
        );
        drop(gw);
    }
}

/// An SSE body of the given `data:` payloads, exactly as written, and
/// `data: [DONE]` when `done`.
fn raw_sse(payloads: &[String], done: bool) -> wiremock::ResponseTemplate {
    let mut body = String::new();
    for payload in payloads {
        body.push_str("data: ");
        body.push_str(payload);
        body.push_str("\n\n");
    }
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    wiremock::ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_string(body)
}

/// Chunks in OpenAI's shape with what a parse and re-serialisation would
/// change: key order, spacing, number spellings, nulls, extra fields,
/// escapes and non-ASCII text, and an upstream model name with escapes.
fn unusual_chunks(id: &str, model: &str) -> Vec<String> {
    let head = format!(
        r#""id":"{id}","object":"chat.completion.chunk","created":1700000000,"model":{model},"service_tier":"default","system_fingerprint":"fp_\u00e9""#
    );
    vec![
        format!(
            r#"{{{head},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"","refusal":null}},"logprobs":null,"finish_reason":null}}],"usage":null,"obfuscation":"Qz9"}}"#
        ),
        format!(
            r#"{{"choices":[ {{"index":0,"delta":{{"content":"Füchse \"model\": sind"}},"logprobs":{{"content":[{{"token":"F","logprob":-1.50e-3,"bytes":[70]}}]}},"finish_reason":null}} ], {head} ,"usage":null}}"#
        ),
        format!(
            r#"{{{head},"choices":[{{"index":0,"delta":{{"content":" 小さい\n\u2028🦊"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
        ),
        format!(
            r#"{{{head},"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}],"usage":null}}"#
        ),
    ]
}

#[tokio::test]
async fn a_streamed_answer_arrives_byte_identical_but_for_model() {
    let upstream_model = r#""gpt-4o \"mini\"\\2024""#;
    let chunks = unusual_chunks("chatcmpl-raw", upstream_model);
    let mut sent = chunks.clone();
    // The usage-only chunk: its usage goes to the gateway's last chunk.
    sent.push(format!(
        r#"{{"id":"chatcmpl-raw","object":"chat.completion.chunk","created":1700000000,"model":{upstream_model},"choices":[],"usage":{{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}}}"#
    ));
    let upstream = openai_upstream(vec![raw_sse(&sent, true)]).await;
    let gw = Backstop::start(
        &config(
            &[("m", openai_provider(&upstream.uri()))],
            &[model("m")],
            "",
            "",
        ),
        &[],
    );
    let events = events(post(&gw, &body(true)).await).await;
    let relayed = chunks.len();
    assert_eq!(events.len(), relayed + 2, "{events:#?}");
    for (got, came) in events.iter().zip(&chunks) {
        let want = came.replace(&format!(r#""model":{upstream_model}"#), r#""model":"m""#);
        assert_ne!(&want, came, "the test chunk names its model");
        assert_eq!(got, &want, "relayed as it came, but for `model`");
    }
    let last = last_json(&events);
    assert_eq!(last["id"], "chatcmpl-raw");
    assert_eq!(last["model"], "m");
    assert_eq!(last["usage"]["total_tokens"], 9);
    assert_eq!(last["backstop"]["model_used"], "m");
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn a_complete_answer_arrives_byte_identical_but_for_model_and_backstop() {
    // Pretty-printed, fields Backstop does not know, `usage` null, an
    // escaped upstream model name: all come through as they were.
    let upstream_model = r#""gpt-4o \"mini\"\\2024""#;
    let answer = format!(
        "{{\n  \"id\": \"chatcmpl-raw\",\n  \"object\": \"chat.completion\",\n  \"created\": 1700000000,\n  \"model\": {upstream_model},\n  \"choices\": [{{\"index\": 0, \"message\": {{\"role\": \"assistant\", \"content\": \"Füchse \\\"model\\\": 小\", \"refusal\": null, \"annotations\": []}}, \"logprobs\": null, \"finish_reason\": \"stop\"}}],\n  \"usage\": null,\n  \"service_tier\": \"default\",\n  \"system_fingerprint\": \"fp_\\u00e9\"\n}}\n"
    );
    let upstream = openai_upstream(vec![
        wiremock::ResponseTemplate::new(200).set_body_raw(answer.clone(), "application/json"),
    ])
    .await;
    let gw = Backstop::start(
        &config(
            &[("m", openai_provider(&upstream.uri()))],
            &[model("m")],
            "",
            "",
        ),
        &[],
    );
    let response = post(&gw, &body(false)).await;
    assert_eq!(response.status(), 200);
    let got = response.text().await.unwrap();
    let (head, backstop) = got.split_once(",\"backstop\":").expect("a backstop member");
    let want = answer.replace(&format!(r#""model": {upstream_model}"#), r#""model": "m""#);
    assert_ne!(want, answer, "the test answer names its model");
    let want = want.trim_end().strip_suffix('}').unwrap();
    assert_eq!(head, want, "written as it came, but for `model`");
    let info: Value = serde_json::from_str(backstop.strip_suffix('}').unwrap()).unwrap();
    assert_eq!(info["model_used"], "m");
    let parsed: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(
        parsed["choices"][0]["message"]["content"],
        "Füchse \"model\": 小"
    );
    assert!(parsed["usage"].is_null());
}

/// A chunk of an OpenAI stream, compact.
fn plain_chunk(id: &str, created: u64, delta: &str, finish: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":"up","system_fingerprint":"fp","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}],"usage":null}}"#
    )
}

#[tokio::test]
async fn chunks_the_router_changes_after_a_failover_are_rebuilt() {
    // The primary is cut after two words; the backup answers the whole
    // text again under its own id and time (restart), or its
    // continuation with an opening role (continue, with a prefill).
    for (policy, backup_says, prefill) in [
        ("restart", vec!["Foxes are", " small", " mammals."], false),
        ("continue", vec![" small", " mammals."], true),
    ] {
        // Cut: no finish reason, no `[DONE]`.
        let primary = openai_upstream(vec![raw_sse(
            &[
                plain_chunk(
                    "chatcmpl-a",
                    1,
                    r#"{"role":"assistant","content":""}"#,
                    "null",
                ),
                plain_chunk("chatcmpl-a", 1, r#"{"content":"Foxes"}"#, "null"),
                plain_chunk("chatcmpl-a", 1, r#"{"content":" are"}"#, "null"),
            ],
            false,
        )])
        .await;
        let mut backup_chunks = vec![plain_chunk(
            "chatcmpl-b",
            2,
            r#"{"role":"assistant","content":""}"#,
            "null",
        )];
        for piece in &backup_says {
            backup_chunks.push(plain_chunk(
                "chatcmpl-b",
                2,
                &format!(r#"{{"content":"{piece}"}}"#),
                "null",
            ));
        }
        backup_chunks.push(plain_chunk("chatcmpl-b", 2, "{}", r#""stop""#));
        let backup = openai_upstream(vec![raw_sse(&backup_chunks, true)]).await;
        let mut backup_model = model("backup");
        backup_model.prefill = prefill;
        let toml = config(
            &[
                ("primary", openai_provider(&primary.uri())),
                ("backup", openai_provider(&backup.uri())),
            ],
            &[model("primary"), backup_model],
            &format!("mid_stream = \"{policy}\""),
            "",
        );
        let gw = Backstop::start(&toml, &[]);
        let events = events(post(&gw, &body(true)).await).await;
        assert_eq!(
            streamed_text(&events),
            "Foxes are small mammals.",
            "{policy}"
        );
        assert_eq!(events.last().unwrap(), "[DONE]", "{policy}");
        let chunks: Vec<Value> = events[..events.len() - 2]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let roles = chunks
            .iter()
            .filter(|c| !c["choices"][0]["delta"]["role"].is_null())
            .count();
        assert_eq!(roles, 1, "{policy}: one opening role: {events:#?}");
        for chunk in &chunks {
            assert_eq!(chunk["id"], "chatcmpl-a", "{policy}: {chunk}");
            assert_eq!(chunk["created"], 1, "{policy}: {chunk}");
        }
        let models: Vec<&str> = chunks
            .iter()
            .map(|c| c["model"].as_str().unwrap())
            .collect();
        assert_eq!(models[..3], ["primary"; 3], "{policy}");
        assert!(
            models[3..].iter().all(|m| *m == "backup"),
            "{policy}: {models:?}"
        );
        assert_eq!(last_json(&events)["backstop"]["model_used"], "backup");
        drop(gw);
    }
}
