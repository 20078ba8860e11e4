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
