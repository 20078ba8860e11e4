//! The `/v1/responses` door end to end: the `backstop` binary in front of
//! wiremock upstreams, called over HTTP with a real OpenAI client library
//! (`async-openai`'s Responses API) and checked against the published
//! event sequence, event by event.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures::StreamExt;
use serde_json::{Value, json};
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

// ---------------------------------------------------------------- helpers

fn responses_body(stream: bool) -> Value {
    json!({"model": "chat", "stream": stream, "store": false, "instructions": "You are terse.",
           "input": [{"role": "user", "content": [{"type": "input_text", "text": "What are foxes?"}]}]})
}

async fn send(gw: &Backstop, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/responses"))
        .bearer_auth("sk-anything")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `(event, data)` pairs of an SSE body; every event's data names its
/// type and carries a sequence number counting from 0.
async fn sse(response: reqwest::Response) -> Vec<(String, Value)> {
    let text = response.text().await.unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let data: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect();
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i);
    }
    events
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn text_of(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect()
}

/// The sequence of a one-message answer of `deltas` deltas.
fn text_sequence(deltas: usize) -> Vec<&'static str> {
    let mut v = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    v.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    v.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    v
}

fn anthropic_provider(url: &str) -> String {
    format!("type = \"anthropic\"\nbase_url = \"{url}\"\napi_key_env = \"E2E_ANTHROPIC_KEY\"")
}

// ----------------------------------------------------------------- tests

#[tokio::test]
async fn an_openai_responses_client_gets_answers_complete_and_streamed() {
    use async_openai::Client;
    use async_openai::config::OpenAIConfig;
    use async_openai::types::responses::{CreateResponseArgs, ResponseStreamEvent, Status};

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
    let request = CreateResponseArgs::default()
        .model("chat")
        .instructions("You are terse.")
        .input("What are foxes?")
        .store(false)
        .max_output_tokens(200u32)
        .build()
        .unwrap();
    let response = client.responses().create(request.clone()).await.unwrap();
    assert_eq!(response.model, "backup");
    assert_eq!(response.status, Status::Completed);
    assert_eq!(response.output_text().as_deref(), Some(ANSWER));
    let usage = response.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (12, 7));
    let sent = &seen(&backup).await[0];
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "You are terse."})
    );
    assert_eq!(sent["max_tokens"], 200);

    let mut stream = client.responses().create_stream(request).await.unwrap();
    let mut text = String::new();
    let mut completed = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            ResponseStreamEvent::ResponseOutputTextDelta(delta) => text.push_str(&delta.delta),
            ResponseStreamEvent::ResponseCompleted(done) => completed = Some(done.response),
            _ => {}
        }
    }
    assert_eq!(text, ANSWER);
    let completed = completed.expect("response.completed arrived");
    assert_eq!(completed.output_text().as_deref(), Some(ANSWER));
    assert_eq!(completed.model, "backup");
}

#[tokio::test]
async fn the_stream_follows_the_published_event_sequence_with_the_backstop_object() {
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);
    let r = send(&gw, &responses_body(true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-backstop-model"], "primary");
    let events = sse(r).await;
    assert_eq!(names(&events), text_sequence(5));
    let created = &events[0].1["response"];
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    assert_eq!(created["store"], false);
    let item_id = events[2].1["item"]["id"].as_str().unwrap().to_owned();
    assert_eq!(events[2].1["item"]["type"], "message");
    assert!(
        events[4..9]
            .iter()
            .all(|(_, d)| d["item_id"] == item_id.as_str())
    );
    assert_eq!(text_of(&events), ANSWER);
    assert_eq!(events[9].1["text"], ANSWER);
    let done = &events[12].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], ANSWER);
    assert_eq!(done["usage"]["total_tokens"], 19);
    assert_eq!(done["backstop"]["model_used"], "primary");
    assert_eq!(done["backstop"]["fallback_level"], 0);

    let v: Value = send(&gw, &responses_body(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["backstop"]["model_used"], "primary");
}

#[tokio::test]
async fn failover_on_5xx_429_and_refused_connection_is_visible_only_in_the_annotation() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let five = openai_upstream(vec![openai_error(500, "server_error", "boom", "Internal")]).await;
    let limited = openai_upstream(vec![
        openai_error(429, "requests", "rate_limit_exceeded", "Rate limit reached")
            .insert_header("retry-after", "120"),
    ])
    .await;
    for (primary, kind) in [
        (five.uri(), "server"),
        (limited.uri(), "rate_limited"),
        (refused.clone(), "connect"),
    ] {
        let backup = healthy_upstream().await;
        let toml = config(
            &[
                ("primary", openai_provider(&primary)),
                ("backup", openai_provider(&backup.uri())),
            ],
            &[model("primary"), model("backup")],
            "",
            "",
        );
        let gw = Backstop::start(&toml, &[]);
        let r = send(&gw, &responses_body(false)).await;
        assert_eq!(r.status(), 200, "{kind}");
        assert_eq!(r.headers()["x-backstop-model"], "backup");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["model"], "backup");
        assert_eq!(v["output"][0]["content"][0]["text"], ANSWER);
        assert_eq!(v["backstop"]["attempts"][0]["kind"], kind);

        let r = send(&gw, &responses_body(true)).await;
        assert_eq!(r.headers()["x-backstop-fallback-level"], "1", "{kind}");
        let events = sse(r).await;
        assert_eq!(names(&events), text_sequence(5), "{kind}");
        assert_eq!(events[0].1["response"]["model"], "backup");
        assert_eq!(
            events.last().unwrap().1["response"]["backstop"]["fallback_level"],
            1
        );
    }
}

#[tokio::test]
async fn a_first_model_failing_after_it_opened_but_before_output_is_invisible() {
    // The primary opens its stream and is cut before any output; the
    // caller's `response.created` comes once, from the backup.
    let primary = openai_upstream(vec![openai_sse(&[], false)]).await;
    let backup = healthy_upstream().await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);
    let r = send(&gw, &responses_body(true)).await;
    assert_eq!(r.headers()["x-backstop-model"], "backup");
    let events = sse(r).await;
    assert_eq!(names(&events), text_sequence(5));
    assert_eq!(text_of(&events), ANSWER);
    assert_eq!(seen(&primary).await.len(), 1);
}

/// A gateway whose primary streams "Foxes are small" and is cut, before
/// `backup` under the mid-stream `policy`; and that primary.
async fn cut_then(policy: &str, backup: (&str, String, bool)) -> (Backstop, MockServer) {
    let primary = openai_upstream(vec![openai_sse(&["Foxes", " are", " small"], false)]).await;
    let (id, provider, prefill) = backup;
    let toml = config(
        &[("primary", openai_provider(&primary.uri())), (id, provider)],
        &[
            model("primary"),
            Model {
                id,
                provider: id,
                window: 200_000,
                prefill,
            },
        ],
        &format!("mid_stream = \"{policy}\""),
        "",
    );
    (
        Backstop::start(&toml, &[("E2E_ANTHROPIC_KEY", "sk-ant-test")]),
        primary,
    )
}

#[tokio::test]
async fn a_cut_stream_under_each_mid_stream_policy() {
    // error: the stream ends with `response.failed`, no backup asked.
    let backup = healthy_upstream().await;
    let (gw, _primary) = cut_then("error", ("backup", openai_provider(&backup.uri()), false)).await;
    let events = sse(send(&gw, &responses_body(true)).await).await;
    let names_error = names(&events);
    assert_eq!(names_error.last(), Some(&"response.failed"));
    assert!(!names_error.contains(&"response.completed"));
    assert_eq!(text_of(&events), "Foxes are small");
    let failed = &events.last().unwrap().1["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "server_error");
    assert_eq!(failed["backstop"]["code"], "stream_aborted");
    assert!(seen(&backup).await.is_empty());

    // restart: the backup's answer continues where the caller is.
    let backup = openai_upstream(vec![openai_sse(
        &["Foxes are", " small omnivorous", " mammals."],
        true,
    )])
    .await;
    let (gw, _primary) =
        cut_then("restart", ("backup", openai_provider(&backup.uri()), false)).await;
    let events = sse(send(&gw, &responses_body(true)).await).await;
    assert_eq!(text_of(&events), ANSWER);
    let done = &events.last().unwrap().1["response"];
    assert_eq!(events.last().unwrap().0, "response.completed");
    assert_eq!(done["output"][0]["content"][0]["text"], ANSWER);
    assert_eq!(done["model"], "backup");

    // continue: a prefill model finishes the answer.
    let claude = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(anthropic_sse(&[" omnivorous", " mammals."]))
        .mount(&claude)
        .await;
    let (gw, _primary) = cut_then(
        "continue",
        ("claude", anthropic_provider(&claude.uri()), true),
    )
    .await;
    let events = sse(send(&gw, &responses_body(true)).await).await;
    assert_eq!(text_of(&events), ANSWER);
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["backstop"]["model_used"], "claude");
    assert_eq!(done["output"][0]["content"][0]["text"], ANSWER);
}

#[tokio::test]
async fn every_model_failing_is_a_503_and_stored_state_is_a_400() {
    let primary = openai_upstream(vec![openai_error(
        503,
        "server_error",
        "overloaded",
        "Overloaded",
    )])
    .await;
    let backup = openai_upstream(vec![openai_error(500, "server_error", "boom", "Internal")]).await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);
    for stream in [false, true] {
        let r = send(&gw, &responses_body(stream)).await;
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "all_models_failed");
        assert!(!v["backstop"]["attempts"].as_array().unwrap().is_empty());
    }
    let calls = seen(&primary).await.len() + seen(&backup).await.len();
    let mut stored = responses_body(false);
    stored["previous_response_id"] = json!("resp_abc");
    let r = send(&gw, &stored).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("previous_response_id")
    );
    let mut store = responses_body(false);
    store["store"] = json!(true);
    assert_eq!(send(&gw, &store).await.status(), 400);
    assert_eq!(
        seen(&primary).await.len() + seen(&backup).await.len(),
        calls,
        "refused requests reach no upstream"
    );
}

#[tokio::test]
async fn keys_are_checked() {
    let primary = openai_upstream(vec![completion(ANSWER)]).await;
    let toml = config(
        &[("primary", openai_provider(&primary.uri()))],
        &[model("primary")],
        "",
        "api_keys_env = \"E2E_GATEWAY_KEYS\"",
    );
    let gw = Backstop::start(&toml, &[("E2E_GATEWAY_KEYS", "sk-gw-1")]);
    let client = reqwest::Client::new();
    let url = gw.url("/v1/responses");
    let r = client
        .post(&url)
        .json(&responses_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = send(&gw, &responses_body(false)).await;
    assert_eq!(r.status(), 401, "a wrong key");
    let r = client
        .post(&url)
        .bearer_auth("sk-gw-1")
        .json(&responses_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(seen(&primary).await.len(), 1);
}

#[tokio::test]
async fn function_calls_stream_from_an_anthropic_model_and_their_outputs_go_back() {
    let claude = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(anthropic_tool_sse(&["{\"city\": ", "\"Paris\"}"]))
        .mount(&claude)
        .await;
    let toml = config(
        &[("claude", anthropic_provider(&claude.uri()))],
        &[model("claude")],
        "",
        "",
    );
    let gw = Backstop::start(&toml, &[("E2E_ANTHROPIC_KEY", "sk-ant-test")]);
    let request = json!({"model": "chat", "stream": true, "max_output_tokens": 100,
    "tools": [{"type": "function", "name": "get_weather",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    "input": [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "toolu_0", "name": "get_weather", "arguments": "{\"city\":\"Rome\"}"},
        {"type": "function_call_output", "call_id": "toolu_0", "output": "24C"}
    ]});
    let events = sse(send(&gw, &request).await).await;
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(
        events[2].1["item"],
        json!({"type": "function_call", "id": "fc_toolu_1", "call_id": "toolu_1",
               "name": "get_weather", "arguments": "", "status": "in_progress"})
    );
    assert_eq!(events[5].1["arguments"], "{\"city\": \"Paris\"}");
    let done = &events[7].1["response"];
    assert_eq!(done["output"][0]["call_id"], "toolu_1");
    assert_eq!(done["output"][0]["status"], "completed");
    let sent: Value = claude.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    let turns = sent["messages"].as_array().unwrap();
    assert_eq!(turns[1]["content"][0]["type"], "tool_use");
    assert_eq!(turns[1]["content"][0]["input"], json!({"city": "Rome"}));
    assert_eq!(turns[2]["content"][0]["type"], "tool_result");
    assert_eq!(turns[2]["content"][0]["tool_use_id"], "toolu_0");
}

#[tokio::test]
async fn a_function_call_cut_mid_stream_ends_in_response_failed_without_prose() {
    // The primary is cut inside the call's arguments; under `continue`
    // (with a prefill-capable backup) and `restart` alike, the call already
    // reached the caller, so no other model may finish it.
    for policy in ["continue", "restart"] {
        let primary = openai_upstream(vec![openai_tool_sse(false)]).await;
        let claude = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/messages"))
            .respond_with(anthropic_sse(&["Paris is sunny."]))
            .mount(&claude)
            .await;
        let toml = config(
            &[
                ("primary", openai_provider(&primary.uri())),
                ("claude", anthropic_provider(&claude.uri())),
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
            &format!("mid_stream = \"{policy}\""),
            "",
        );
        let gw = Backstop::start(&toml, &[("E2E_ANTHROPIC_KEY", "sk-ant-test")]);
        let request = json!({"model": "chat", "stream": true,
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "input": "Weather in Paris?"});
        let events = sse(send(&gw, &request).await).await;
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.failed"
            ],
            "{policy}"
        );
        assert_eq!(text_of(&events), "", "no prose after the call");
        let failed = &events.last().unwrap().1["response"];
        assert_eq!(failed["backstop"]["code"], "stream_aborted");
        assert!(
            claude.received_requests().await.unwrap().is_empty(),
            "{policy}: the backup is never asked to finish a function call"
        );
    }
}
