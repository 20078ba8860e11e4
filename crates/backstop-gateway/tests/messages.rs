//! The `/v1/messages` door end to end: the `backstop` binary in front of
//! wiremock upstreams speaking OpenAI's and Anthropic's wire formats,
//! called over HTTP the way Anthropic's SDKs call it (`x-api-key`,
//! `anthropic-version`). No maintained Rust client speaks the Messages API,
//! so streams are checked against Anthropic's published event sequence,
//! event by event.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use backstop_http::sse::write_event;
use serde_json::{Value, json};
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

// ---------------------------------------------------------------- helpers

fn messages_body(stream: bool) -> Value {
    json!({"model": "chat", "max_tokens": 256, "stream": stream,
           "system": "You are terse.",
           "messages": [{"role": "user", "content": "What are foxes?"}]})
}

async fn send(gw: &Backstop, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "sk-anything")
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `(event, data)` pairs of an SSE body.
async fn sse(response: reqwest::Response) -> Vec<(String, Value)> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
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
            assert_eq!(data["type"], name.as_str(), "event name matches its type");
            (name, data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn text_of(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect()
}

/// The event sequence of a one-text-block answer of `deltas` deltas.
fn text_sequence(deltas: usize) -> Vec<&'static str> {
    let mut v = vec!["message_start", "ping", "content_block_start"];
    v.extend(std::iter::repeat_n("content_block_delta", deltas));
    v.extend(["content_block_stop", "message_delta", "message_stop"]);
    v
}

fn anthropic_provider(url: &str) -> String {
    format!("type = \"anthropic\"\nbase_url = \"{url}\"\napi_key_env = \"E2E_ANTHROPIC_KEY\"")
}

/// An Anthropic complete message with `content` blocks.
fn anthropic_message(content: Value, stop_reason: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "msg_up", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
        "content": content, "stop_reason": stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": 20, "output_tokens": 9}
    }))
}

async fn anthropic_upstream(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

fn weather_tool_request(stream: bool) -> Value {
    json!({"model": "chat", "max_tokens": 256, "stream": stream,
           "tools": [{"name": "get_weather", "description": "Current weather",
                      "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
           "tool_choice": {"type": "auto"},
           "messages": [{"role": "user", "content": "Weather in Paris?"}]})
}

// ----------------------------------------------------------------- tests

#[tokio::test]
async fn a_healthy_answer_comes_back_in_anthropics_shape_complete_and_streamed() {
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    let gw = Backstop::start(&two_openai(&primary, &backup, ""), &[]);

    let r = send(&gw, &messages_body(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backstop-model"], "primary");
    assert_eq!(r.headers()["x-backstop-fallback-level"], "0");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "primary");
    assert_eq!(v["content"], json!([{"type": "text", "text": ANSWER}]));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"], json!({"input_tokens": 12, "output_tokens": 7}));
    assert_eq!(v["backstop"]["model_used"], "primary");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    let sent = &seen(&primary).await[0];
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "You are terse."})
    );
    assert_eq!(sent["max_tokens"], 256);

    let r = send(&gw, &messages_body(true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse(r).await;
    assert_eq!(names(&events), text_sequence(5));
    let start = &events[0].1["message"];
    assert_eq!(start["model"], "primary");
    assert_eq!(start["content"], json!([]));
    assert_eq!(
        events[2].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert!(
        events[3..8]
            .iter()
            .all(|(_, d)| d["index"] == 0 && d["delta"]["type"] == "text_delta")
    );
    assert_eq!(text_of(&events), ANSWER);
    let delta = &events[9].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 7);
    assert_eq!(delta["backstop"]["model_used"], "primary");
    assert_eq!(delta["backstop"]["fallback_level"], 0);
    let sent = &seen(&primary).await[1];
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn failover_on_5xx_429_and_refused_connection_is_visible_only_in_the_annotation() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let five = openai_upstream(vec![openai_error(
        503,
        "server_error",
        "overloaded",
        "Overloaded",
    )])
    .await;
    let limited = openai_upstream(vec![
        openai_error(429, "requests", "rate_limit_exceeded", "Rate limit reached")
            .insert_header("retry-after", "120"),
    ])
    .await;
    for (primary, kind) in [
        (five.uri(), "overloaded"),
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
        let r = send(&gw, &messages_body(false)).await;
        assert_eq!(r.status(), 200, "{kind}");
        assert_eq!(r.headers()["x-backstop-model"], "backup");
        assert_eq!(r.headers()["x-backstop-fallback-level"], "1");
        assert!(r.headers().contains_key("x-backstop-warning"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["model"], "backup");
        assert_eq!(v["content"][0]["text"], ANSWER);
        assert_eq!(v["backstop"]["attempts"][0]["kind"], kind);
        assert!(v["backstop"]["warning"].is_string());

        let r = send(&gw, &messages_body(true)).await;
        assert_eq!(r.status(), 200, "{kind}");
        assert_eq!(r.headers()["x-backstop-model"], "backup");
        let events = sse(r).await;
        assert_eq!(names(&events), text_sequence(5), "{kind}");
        assert_eq!(events[0].1["message"]["model"], "backup");
        assert_eq!(text_of(&events), ANSWER);
        let last_delta = &events[events.len() - 2].1;
        assert_eq!(last_delta["backstop"]["model_used"], "backup");
        assert_eq!(last_delta["backstop"]["fallback_level"], 1);
    }
}

#[tokio::test]
async fn a_first_model_failing_before_any_text_is_invisible_in_the_stream() {
    // An OpenAI primary that opens its stream (the role chunk) and is cut
    // before any text, and an Anthropic primary that sends `message_start`
    // and then an `error` event: the stream the caller gets starts once,
    // with the backup, and carries no error.
    let openai_cut = openai_upstream(vec![openai_sse(&[], false)]).await;
    let mut body = Vec::new();
    write_event(
        &mut body,
        "message_start",
        &json!({"type": "message_start", "message": {"id": "msg_x", "type": "message", "role": "assistant",
            "model": "claude", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 5, "output_tokens": 0}}})
        .to_string(),
    );
    write_event(
        &mut body,
        "error",
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            .to_string(),
    );
    let claude_error = anthropic_upstream(
        ResponseTemplate::new(200)
            .insert_header("content-type", "text/event-stream")
            .set_body_bytes(body),
    )
    .await;
    for primary in [
        openai_provider(&openai_cut.uri()),
        anthropic_provider(&claude_error.uri()),
    ] {
        let backup = healthy_upstream().await;
        let toml = config(
            &[
                ("primary", primary),
                ("backup", openai_provider(&backup.uri())),
            ],
            &[model("primary"), model("backup")],
            "",
            "",
        );
        let gw = Backstop::start(&toml, &[("E2E_ANTHROPIC_KEY", "sk-ant-test")]);
        let r = send(&gw, &messages_body(true)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backstop-model"], "backup");
        let events = sse(r).await;
        assert_eq!(names(&events), text_sequence(5));
        assert_eq!(events[0].1["message"]["model"], "backup");
        assert_eq!(text_of(&events), ANSWER);
    }
}

/// A config whose primary streams "Foxes are small" and is cut, before
/// `backup` under the scenario's mid-stream `policy`.
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
async fn a_cut_stream_under_the_error_policy_ends_with_an_error_event() {
    let backup = healthy_upstream().await;
    let (gw, _primary) = cut_then("error", ("backup", openai_provider(&backup.uri()), false)).await;
    let events = sse(send(&gw, &messages_body(true)).await).await;
    assert_eq!(
        names(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(text_of(&events), "Foxes are small");
    let error = &events.last().unwrap().1;
    assert_eq!(error["error"]["type"], "api_error");
    assert_eq!(error["backstop"]["code"], "stream_aborted");
    assert!(seen(&backup).await.is_empty());
}

#[tokio::test]
async fn a_cut_stream_under_restart_is_completed_by_the_backup_without_repeats() {
    let backup = openai_upstream(vec![openai_sse(
        &["Foxes are", " small omnivorous", " mammals."],
        true,
    )])
    .await;
    let (gw, _primary) =
        cut_then("restart", ("backup", openai_provider(&backup.uri()), false)).await;
    let events = sse(send(&gw, &messages_body(true)).await).await;
    assert_eq!(text_of(&events), ANSWER);
    let names = names(&events);
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "content_block_start")
            .count(),
        1,
        "the restarted answer continues the same text block"
    );
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["backstop"]["model_used"], "backup");
    assert_eq!(
        delta["backstop"]["attempts"][0]["kind"],
        "stream_interrupted"
    );
}

#[tokio::test]
async fn a_cut_stream_under_continue_is_finished_by_a_prefill_model() {
    let claude = anthropic_upstream(anthropic_sse(&[" omnivorous", " mammals."])).await;
    let (gw, _primary) = cut_then(
        "continue",
        ("claude", anthropic_provider(&claude.uri()), true),
    )
    .await;
    let events = sse(send(&gw, &messages_body(true)).await).await;
    assert_eq!(text_of(&events), ANSWER);
    assert_eq!(names(&events).last(), Some(&"message_stop"));
    assert_eq!(
        events[events.len() - 2].1["backstop"]["model_used"],
        "claude"
    );
    let sent: Value = claude.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["role"], "assistant",
        "the partial answer is the prefill"
    );
    assert_eq!(sent["system"], "You are terse.");
}

#[tokio::test]
async fn every_model_failing_is_an_anthropic_error_with_the_trail() {
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
        let r = send(&gw, &messages_body(stream)).await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert_eq!(v["backstop"]["code"], "all_models_failed");
        assert!(!v["backstop"]["attempts"].as_array().unwrap().is_empty());
    }
}

#[tokio::test]
async fn keys_are_checked_from_x_api_key_or_bearer_and_bad_input_is_a_400() {
    let primary = openai_upstream(vec![completion(ANSWER)]).await;
    let backup = openai_upstream(vec![completion(ANSWER)]).await;
    let toml = config(
        &[
            ("primary", openai_provider(&primary.uri())),
            ("backup", openai_provider(&backup.uri())),
        ],
        &[model("primary"), model("backup")],
        "",
        "api_keys_env = \"E2E_GATEWAY_KEYS\"",
    );
    let gw = Backstop::start(&toml, &[("E2E_GATEWAY_KEYS", "sk-gw-1")]);
    let client = reqwest::Client::new();
    let url = gw.url("/v1/messages");
    let body = messages_body(false);
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    let r = client
        .post(&url)
        .header("x-api-key", "sk-nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for auth in [
        ("x-api-key", "sk-gw-1"),
        ("authorization", "Bearer sk-gw-1"),
    ] {
        let r = client
            .post(&url)
            .header(auth.0, auth.1)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", auth.0);
    }
    let r = client
        .post(&url)
        .header("x-api-key", "sk-gw-1")
        .header("anthropic-version", "yesterday")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut no_max = body.clone();
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let r = client
        .post(&url)
        .header("x-api-key", "sk-gw-1")
        .json(&no_max)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    assert_eq!(seen(&primary).await.len(), 2, "refusals reach no upstream");
}

#[tokio::test]
async fn an_anthropic_request_with_tools_is_answered_by_an_openai_model() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(wiremock::matchers::body_partial_json(
            json!({"stream": true}),
        ))
        .respond_with(openai_tool_sse(true))
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-t", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38}
        })))
        .with_priority(2)
        .mount(&upstream)
        .await;
    let toml = config(
        &[("gpt", openai_provider(&upstream.uri()))],
        &[model("gpt")],
        "",
        "",
    );
    let gw = Backstop::start(&toml, &[]);

    let v: Value = send(&gw, &weather_tool_request(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"],
        json!([{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}])
    );
    let sent = &seen(&upstream).await[0];
    assert_eq!(sent["tools"][0]["type"], "function");
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(
        sent["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );
    assert_eq!(sent["tool_choice"], "auto");

    let events = sse(send(&gw, &weather_tool_request(true)).await).await;
    assert_eq!(
        names(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        events[2].1["content_block"],
        json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}})
    );
    let json: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(json, "{\"city\":\"Paris\"}");
    assert_eq!(events[6].1["delta"]["stop_reason"], "tool_use");

    // The tool's result goes back as a `tool_result` block and reaches the
    // OpenAI model as a tool message.
    let mut follow_up = weather_tool_request(false);
    follow_up["messages"] = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}]}
    ]);
    assert_eq!(send(&gw, &follow_up).await.status(), 200);
    let sent = &seen(&upstream).await[2];
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "18C"})
    );
}

#[tokio::test]
async fn an_openai_request_with_tools_is_answered_by_an_anthropic_model() {
    let claude = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(wiremock::matchers::body_partial_json(
            json!({"stream": true}),
        ))
        .respond_with(anthropic_tool_sse(&["{\"city\": \"Paris\"}"]))
        .with_priority(1)
        .mount(&claude)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(anthropic_message(
            json!([{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]),
            "tool_use",
        ))
        .with_priority(2)
        .mount(&claude)
        .await;
    let toml = config(
        &[("claude", anthropic_provider(&claude.uri()))],
        &[model("claude")],
        "",
        "",
    );
    let gw = Backstop::start(&toml, &[("E2E_ANTHROPIC_KEY", "sk-ant-test")]);
    let chat = |stream: bool| {
        json!({"model": "chat", "stream": stream, "max_tokens": 100,
               "messages": [{"role": "user", "content": "Weather in Paris?"}],
               "tools": [{"type": "function", "function": {"name": "get_weather",
                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
               "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    };
    let v: Value = post(&gw, &chat(false)).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_1");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));
    let sent: Value = claude.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );

    let events = events(post(&gw, &chat(true)).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "toolu_1");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let streamed: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&streamed).unwrap(),
        json!({"city": "Paris"})
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
}

#[tokio::test]
async fn a_tool_call_cut_mid_stream_is_never_spliced_with_prose() {
    // The primary is cut inside a tool call's arguments. Under `continue`
    // (with a prefill-capable backup) and under `restart` alike, the tool
    // call already reached the caller, so no other model may finish it:
    // the stream ends with the clean in-band error and the backup is not
    // asked.
    for policy in ["continue", "restart"] {
        let primary = openai_upstream(vec![openai_tool_sse(false)]).await;
        let claude = anthropic_upstream(anthropic_sse(&["Paris is sunny."])).await;
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

        let anthropic = sse(send(&gw, &weather_tool_request(true)).await).await;
        assert_eq!(
            names(&anthropic),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "error"
            ],
            "{policy}"
        );
        assert_eq!(anthropic[2].1["content_block"]["type"], "tool_use");
        assert_eq!(text_of(&anthropic), "", "no prose after the tool call");

        let mut chat = weather_tool_request(true);
        chat["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
                                 "parameters": {"type": "object"}}}]);
        chat.as_object_mut().unwrap().remove("tool_choice");
        let data = events(post(&gw, &chat).await).await;
        assert_ne!(data.last().unwrap(), "[DONE]");
        assert_eq!(last_json(&data)["error"]["code"], "stream_aborted");
        assert_eq!(streamed_text(&data), "");
        assert!(
            claude.received_requests().await.unwrap().is_empty(),
            "{policy}: the backup is never asked to finish a tool call"
        );
    }
}
