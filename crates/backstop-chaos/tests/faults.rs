//! Every fault of the fake providers, hit directly with reqwest or raw TCP.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::ErrorKind as IoErrorKind;
use std::time::Duration;

use backstop_chaos::answer::{self, KNOWN_TEXT};
use backstop_chaos::{
    Api, Backend, Behaviour, ErrorKind, FakeProvider, FakeSpec, Pacing, Prefill, Schedule, Timeline,
};
use backstop_http::sse::{SseDecoder, SseEvent};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

fn openai_body(stream: bool) -> Value {
    json!({
        "model": "gpt-fake",
        "stream": stream,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hello"}]
    })
}

fn anthropic_body(stream: bool) -> Value {
    json!({
        "model": "claude-fake",
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}]
    })
}

async fn start(spec: FakeSpec) -> FakeProvider {
    FakeProvider::start(spec).await.expect("fake starts")
}

fn steady(model: &str, api: Api, behaviour: Behaviour) -> FakeSpec {
    FakeSpec::new(model, api).schedule(Timeline::steady(behaviour))
}

/// Reads a stream to its end (or error), returning the events, whether the
/// body ended with a transport error, and when each event arrived.
async fn read_events(resp: reqwest::Response) -> (Vec<SseEvent>, bool, Vec<Duration>) {
    read_events_since(resp, Instant::now()).await
}

/// [`read_events`] with arrival times counted from `start`.
async fn read_events_since(
    resp: reqwest::Response,
    start: Instant,
) -> (Vec<SseEvent>, bool, Vec<Duration>) {
    let mut resp = resp;
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    let mut times = Vec::new();
    let mut errored = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
            Ok(Ok(Some(bytes))) => {
                let before = events.len();
                decoder.feed(&bytes, &mut events);
                for _ in before..events.len() {
                    times.push(start.elapsed());
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(_)) => {
                errored = true;
                break;
            }
            Err(_) => panic!("stream read did not finish within 5 s"),
        }
    }
    (events, errored, times)
}

fn openai_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn healthy_openai_answers_the_known_text_with_usage() {
    let fake = start(FakeSpec::new("primary", Api::OpenAi)).await;
    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], KNOWN_TEXT);
    assert_eq!(v["model"], "gpt-fake");
    assert_eq!(
        v["usage"]["completion_tokens"],
        answer::known_token_count() as u64
    );

    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (events, errored, _) = read_events(resp).await;
    assert!(!errored);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(openai_text(&events), KNOWN_TEXT);
    let usage: Value = serde_json::from_str(&events[events.len() - 2].data).unwrap();
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(fake.stats().requests, 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn tokens_are_paced_at_the_set_interval() {
    let pacing = Pacing {
        first_token: Duration::from_millis(60),
        token_interval: Duration::from_millis(10),
    };
    let fake = start(FakeSpec::new("primary", Api::OpenAi).pacing(pacing)).await;
    let started = Instant::now();
    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(true))
        .send()
        .await
        .unwrap();
    let (events, _, times) = read_events_since(resp, started).await;
    let n = answer::known_token_count();
    // role chunk + n tokens + finish + usage + [DONE]
    assert_eq!(events.len(), n + 4);
    // The role chunk and the first token come 60 ms after the request.
    let first = times[1];
    assert!(
        first >= Duration::from_millis(60),
        "first token at {first:?}"
    );
    let span = times[n] - times[1];
    let expected = Duration::from_millis(10 * (n as u64 - 1));
    assert!(
        span >= expected.mul_f64(0.9) && span <= expected * 3,
        "{n} tokens spread over {span:?}, expected about {expected:?}"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn anthropic_stream_and_message_carry_the_known_text() {
    let fake = start(FakeSpec::new("secondary", Api::Anthropic)).await;
    let v: Value = client()
        .post(fake.endpoint_url())
        .json(&anthropic_body(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], KNOWN_TEXT);
    assert_eq!(v["stop_reason"], "end_turn");

    let resp = client()
        .post(fake.endpoint_url())
        .json(&anthropic_body(true))
        .send()
        .await
        .unwrap();
    let (events, errored, _) = read_events(resp).await;
    assert!(!errored);
    assert_eq!(events[0].event.as_deref(), Some("message_start"));
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("message_stop")
    );
    let text: String = events
        .iter()
        .filter(|e| e.event.as_deref() == Some("content_block_delta"))
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["delta"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, KNOWN_TEXT);
    fake.shutdown().await;
}

#[tokio::test]
async fn errors_carry_real_bodies_and_retry_after() {
    let limited = Behaviour::Error(ErrorKind::RateLimited {
        retry_after: Some(Duration::from_millis(1500)),
    });
    let fake = start(steady("primary", Api::OpenAi, limited)).await;
    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_eq!(resp.headers()["retry-after-ms"], "1500");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    fake.shutdown().await;

    let fake = start(steady(
        "secondary",
        Api::Anthropic,
        Behaviour::Error(ErrorKind::Overloaded),
    ))
    .await;
    let resp = client()
        .post(fake.endpoint_url())
        .json(&anthropic_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 529);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
    fake.shutdown().await;
}

#[tokio::test]
async fn refused_port_refuses_connections() {
    let fake = start(steady("primary", Api::OpenAi, Behaviour::Refused)).await;
    let err = TcpStream::connect(fake.addr()).await.unwrap_err();
    assert_eq!(err.kind(), IoErrorKind::ConnectionRefused);
    let err = client()
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    fake.shutdown().await;
}

#[tokio::test]
async fn reset_before_headers_is_an_rst() {
    let fake = start(steady(
        "primary",
        Api::OpenAi,
        Behaviour::ResetBeforeHeaders,
    ))
    .await;
    let mut tcp = TcpStream::connect(fake.addr()).await.unwrap();
    let body = openai_body(false).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the reset arrives");
    match read {
        Err(e) => assert_eq!(e.kind(), IoErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a reset, read {n} bytes: {:?}", &buf[..n]),
    }
    assert_eq!(fake.stats().by_behaviour["reset_before_headers"], 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn never_answer_holds_then_resets() {
    let fake = start(
        steady("primary", Api::OpenAi, Behaviour::NeverAnswer).hold_max(Duration::from_millis(300)),
    )
    .await;
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_millis(150),
        client()
            .post(fake.endpoint_url())
            .json(&openai_body(false))
            .send(),
    )
    .await;
    assert!(result.is_err(), "no answer within 150 ms");
    let err = client()
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(fake.stats().requests, 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn stream_cut_ends_with_a_transport_error_after_n_tokens() {
    let fake = start(steady(
        "primary",
        Api::OpenAi,
        Behaviour::StreamCut { after_tokens: 4 },
    ))
    .await;
    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (events, errored, _) = read_events(resp).await;
    assert!(errored, "a cut is a transport error, not a clean end");
    let text = openai_text(&events);
    assert_eq!(text, answer::tokens(KNOWN_TEXT)[..4].concat());
    assert!(events.iter().all(|e| e.data != "[DONE]"));

    let err = client()
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap_err();
    assert!(err.is_body() || err.is_decode(), "{err:?}");
    fake.shutdown().await;
}

#[tokio::test]
async fn stream_stall_keeps_the_connection_silent() {
    let fake = start(
        steady(
            "primary",
            Api::OpenAi,
            Behaviour::StreamStall { after_tokens: 3 },
        )
        .hold_max(Duration::from_secs(10)),
    )
    .await;
    let mut resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(true))
        .send()
        .await
        .unwrap();
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(400);
    loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(bytes))) => decoder.feed(&bytes, &mut events),
            Ok(other) => panic!("the stream ended instead of stalling: {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(
        openai_text(&events),
        answer::tokens(KNOWN_TEXT)[..3].concat()
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn malformed_chunk_is_skippable_by_a_lenient_reader() {
    let fake = start(steady(
        "primary",
        Api::OpenAi,
        Behaviour::MalformedChunk { after_tokens: 5 },
    ))
    .await;
    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(true))
        .send()
        .await
        .unwrap();
    let (events, errored, _) = read_events(resp).await;
    assert!(!errored);
    let bad: Vec<&SseEvent> = events
        .iter()
        .filter(|e| e.data != "[DONE]" && serde_json::from_str::<Value>(&e.data).is_err())
        .collect();
    assert_eq!(bad.len(), 1, "exactly one garbage event");
    let position = events.iter().position(|e| std::ptr::eq(e, bad[0])).unwrap();
    assert_eq!(position, 6, "after the role chunk and 5 tokens");
    assert_eq!(openai_text(&events), KNOWN_TEXT);
    fake.shutdown().await;
}

#[tokio::test]
async fn no_done_stream_finishes_without_terminator() {
    let fake = start(steady("primary", Api::OpenAi, Behaviour::NoDone)).await;
    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(true))
        .send()
        .await
        .unwrap();
    let (events, errored, _) = read_events(resp).await;
    assert!(!errored, "the body ends cleanly");
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    assert_eq!(openai_text(&events), KNOWN_TEXT);
    assert!(
        events
            .iter()
            .any(|e| e.data.contains("\"finish_reason\":\"stop\""))
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn slow_first_token_sends_headers_then_waits() {
    let fake = start(steady(
        "primary",
        Api::OpenAi,
        Behaviour::SlowFirstToken(Duration::from_millis(250)),
    ))
    .await;
    let started = Instant::now();
    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(true))
        .send()
        .await
        .unwrap();
    let headers_at = started.elapsed();
    assert!(
        headers_at < Duration::from_millis(200),
        "headers at {headers_at:?}"
    );
    let (events, _, times) = read_events(resp).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(headers_at + times[0] >= Duration::from_millis(240));
    assert_eq!(openai_text(&events), KNOWN_TEXT);
    fake.shutdown().await;
}

#[tokio::test]
async fn context_window_and_content_policy_reject_by_request() {
    let fake = start(
        FakeSpec::new("primary", Api::OpenAi)
            .context_window(1000, Some(16_000))
            .flags_content(),
    )
    .await;
    let long = json!({"model": "m", "messages": [{"role": "user", "content": answer::prompt_of_size(2000)}]});
    let resp = client()
        .post(fake.endpoint_url())
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");

    let flagged = json!({"model": "m", "messages": [{"role": "user", "content": format!("hi {}", answer::FLAGGED_MARKER)}]});
    let resp = client()
        .post(fake.endpoint_url())
        .json(&flagged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "content_policy_violation");

    let ok = client()
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let stats = fake.stats();
    assert_eq!(stats.by_behaviour["context_length"], 1);
    assert_eq!(stats.by_behaviour["content_policy"], 1);
    assert_eq!(stats.by_behaviour["healthy"], 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn prefill_model_continues_where_the_prefill_ends() {
    let fake = start(FakeSpec::new("secondary", Api::Anthropic).prefill(Prefill::Continue)).await;
    let cut = &KNOWN_TEXT[..23];
    let body = json!({
        "model": "claude-fake", "max_tokens": 1024, "stream": true,
        "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": cut}]
    });
    let resp = client()
        .post(fake.endpoint_url())
        .json(&body)
        .send()
        .await
        .unwrap();
    let (events, _, _) = read_events(resp).await;
    let rest: String = events
        .iter()
        .filter(|e| e.event.as_deref() == Some("content_block_delta"))
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["delta"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(format!("{cut}{rest}"), KNOWN_TEXT);
    assert!(fake.requests()[0].prefill);
    fake.shutdown().await;
}

#[tokio::test]
async fn wiremock_fake_fails_n_times_then_succeeds() {
    let fake = start(
        FakeSpec::new("primary", Api::OpenAi)
            .backend(Backend::Wiremock)
            .schedule(Schedule::fail_then_succeed(
                2,
                Behaviour::Error(ErrorKind::Server),
            )),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = client()
            .post(fake.endpoint_url())
            .json(&openai_body(false))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 200 {
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], KNOWN_TEXT);
        } else {
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["type"], "server_error");
        }
    }
    assert_eq!(statuses, [500, 500, 200]);
    fake.shutdown().await;
}

#[tokio::test]
async fn wiremock_backend_rejects_connection_faults() {
    let err = FakeProvider::start(
        steady("primary", Api::OpenAi, Behaviour::Refused).backend(Backend::Wiremock),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test]
async fn timeline_closes_and_reopens_the_port() {
    let ms = Duration::from_millis;
    let fake = start(
        FakeSpec::new("primary", Api::OpenAi).schedule(Timeline::outage(
            ms(150),
            ms(450),
            Behaviour::Refused,
        )),
    )
    .await;
    let epoch = Instant::now();
    fake.arm(epoch);
    let c = client();
    let ok = c
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    ok.bytes().await.unwrap();

    tokio::time::sleep_until(epoch + ms(250)).await;
    let err = TcpStream::connect(fake.addr()).await.unwrap_err();
    assert_eq!(err.kind(), IoErrorKind::ConnectionRefused);
    // A pooled keep-alive connection from before the outage is reset.
    let pooled = c
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await;
    assert!(
        pooled.is_err(),
        "a down provider does not answer on old connections"
    );

    tokio::time::sleep_until(epoch + ms(550)).await;
    let back = client()
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 200);
    let log = fake.requests();
    assert_eq!(log.first().map(|r| r.behaviour), Some("healthy"));
    assert_eq!(log.last().map(|r| r.behaviour), Some("healthy"));
    assert!(log.last().unwrap().at >= ms(450));
    fake.shutdown().await;
}

#[tokio::test]
async fn run_time_switch_changes_behaviour_at_once_and_is_remembered() {
    let fake = start(FakeSpec::new("primary", Api::OpenAi)).await;
    fake.arm(Instant::now());
    fake.set_behaviour(Behaviour::Error(ErrorKind::Unavailable))
        .unwrap();
    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let switched_at = fake.requests()[0].at;
    fake.set_behaviour(Behaviour::Refused).unwrap();
    // The accept loop closes the port as soon as it is told.
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(fake.addr()).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(refused, "the port closes after a switch to Refused");
    fake.resume_schedule();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        fake.behaviour_at(switched_at),
        Behaviour::Error(ErrorKind::Unavailable)
    );
    assert_eq!(fake.behaviour_now(), Behaviour::Healthy);
    fake.shutdown().await;
}

#[tokio::test]
async fn wiremock_building_blocks_mount_on_any_server() {
    use backstop_chaos::fake::mock::{
        completion_template, error_template, scheduled_responder, stream_template,
    };
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer};

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/overloaded/v1/messages"))
        .respond_with(error_template(Api::Anthropic, ErrorKind::Overloaded))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/ok/v1/chat/completions"))
        .respond_with(completion_template(Api::OpenAi))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/stream/v1/chat/completions"))
        .respond_with(stream_template(Api::OpenAi))
        .mount(&server)
        .await;
    let limited = Behaviour::Error(ErrorKind::RateLimited {
        retry_after: Some(Duration::from_secs(1)),
    });
    Mock::given(method("POST"))
        .and(path("/flaky/v1/chat/completions"))
        .respond_with(scheduled_responder(
            Api::OpenAi,
            Schedule::fail_then_succeed(1, limited),
        ))
        .mount(&server)
        .await;
    let c = client();

    let resp = c
        .post(format!("{}/overloaded/v1/messages", server.uri()))
        .json(&anthropic_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 529);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "overloaded_error"
    );

    let v: Value = c
        .post(format!("{}/ok/v1/chat/completions", server.uri()))
        .json(&openai_body(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], KNOWN_TEXT);

    let resp = c
        .post(format!("{}/stream/v1/chat/completions", server.uri()))
        .json(&openai_body(true))
        .send()
        .await
        .unwrap();
    let (events, _, _) = read_events(resp).await;
    assert_eq!(openai_text(&events), KNOWN_TEXT);
    assert_eq!(events.last().unwrap().data, "[DONE]");

    let flaky = format!("{}/flaky/v1/chat/completions", server.uri());
    let first = c
        .post(&flaky)
        .json(&openai_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 429);
    assert_eq!(first.headers()["retry-after"], "1");
    let second = c
        .post(&flaky)
        .json(&openai_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
}

#[tokio::test]
async fn wiremock_fake_delays_its_answer() {
    let fake = start(
        steady(
            "primary",
            Api::OpenAi,
            Behaviour::Delay(Duration::from_millis(150)),
        )
        .backend(Backend::Wiremock),
    )
    .await;
    let started = Instant::now();
    let resp = client()
        .post(fake.endpoint_url())
        .json(&openai_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    fake.shutdown().await;
}
