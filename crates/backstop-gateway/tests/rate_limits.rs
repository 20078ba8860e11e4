//! Rate limits over real HTTP, against the real binary: a model at its
//! provider quota (`rpm`) is skipped before its upstream has to answer 429,
//! a caller over its own limit (`[limits] per_caller`) gets a 429 with
//! `Retry-After` at every door, and two gateways sharing one Redis share
//! one quota.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::*;

/// `primary` (at most `rpm` calls a minute) then `backup`, both wiremock
/// upstreams; `extra` is appended.
fn quota_config(primary: &str, backup: &str, rpm: u32, extra: &str) -> String {
    format!(
        "[providers.primary]\n{}\n\n[providers.backup]\n{}\n\n\
         [models.primary]\nprovider = \"primary\"\nmodel = \"gpt-4o\"\ncost_per_1k = 0\nrpm = {rpm}\n\n\
         [models.backup]\nprovider = \"backup\"\nmodel = \"gpt-4o-mini\"\ncost_per_1k = 0\n\n\
         [scenarios.chat]\nchain = [\"primary\", \"backup\"]\n\n\
         [scenarios.solo]\nchain = [\"primary\"]\n{extra}",
        openai_provider(primary),
        openai_provider(backup),
    )
}

async fn post_to(
    gw: &Backstop,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let mut request = reqwest::Client::new().post(gw.url(path)).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let model = response
        .headers()
        .get("x-backstop-model")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut json: Value = response.json().await.unwrap_or(Value::Null);
    if let Some(model) = model {
        json["x-backstop-model"] = json!(model);
    }
    (status, retry_after, json)
}

/// The gateway's status document, asked with `key` if given.
async fn status_of(gw: &Backstop, key: Option<&str>) -> Value {
    let mut request = reqwest::Client::new().get(gw.url("/v1/backstop/status"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap().json().await.unwrap()
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "What are foxes?"}]})
}

#[tokio::test]
async fn a_model_at_its_rpm_quota_is_skipped_and_the_backup_answers() {
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    let gw = Backstop::start(&quota_config(&primary.uri(), &backup.uri(), 2, ""), &[]);
    let mut used = Vec::new();
    for _ in 0..3 {
        let (status, _, body) = post_to(&gw, "/v1/chat/completions", None, &chat("chat")).await;
        assert_eq!(status, 200, "{body}");
        used.push(body["x-backstop-model"].as_str().unwrap().to_owned());
        if used.len() == 3 {
            assert_eq!(body["backstop"]["fallback_level"], 1, "{body}");
            assert_eq!(
                body["backstop"]["attempts"][0]["kind"], "over_rate_limit",
                "{body}"
            );
        }
    }
    assert_eq!(used, ["primary", "primary", "backup"]);
    // A stream is skipped the same way, before its first byte.
    let r = post(&gw, &body(true)).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-backstop-model"], "backup");
    assert_eq!(streamed_text(&events(r).await), ANSWER);
    assert_eq!(seen(&primary).await.len(), 2, "the quota was never passed");

    // With no backup left, the caller gets a clean 429 with the wait.
    let (status, retry_after, body) =
        post_to(&gw, "/v1/chat/completions", None, &chat("solo")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "models_rate_limited", "{body}");
    assert_eq!(body["backstop"]["attempts"][0]["kind"], "over_rate_limit");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=61).contains(&secs), "{secs}");
    assert_eq!(seen(&primary).await.len(), 2);

    // The status document and the metrics show the quota and its use.
    let status = status_of(&gw, None).await;
    let limits = &status["rate_limits"];
    assert_eq!(limits.as_array().unwrap().len(), 1, "{limits}");
    assert_eq!(limits[0]["scope"], "model");
    assert_eq!(limits[0]["name"], "primary");
    assert_eq!(limits[0]["rpm"], 2);
    assert_eq!(limits[0]["requests"], 2);
    assert_eq!(limits[0]["refused"], 3);
    let metrics = reqwest::get(gw.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "backstop_rate_limit_requests{scope=\"model\",name=\"primary\"} 2",
        "backstop_rate_limit_per_minute{scope=\"model\",name=\"primary\",unit=\"rpm\"} 2",
        "backstop_rate_limit_refused_total{scope=\"model\",name=\"primary\"} 3",
        "backstop_requests_total{scenario=\"solo\",outcome=\"rate_limited\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert_eq!(
        metrics
            .matches("# TYPE backstop_rate_limit_requests gauge")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_caller_over_its_limit_gets_429_with_retry_after_at_every_door() {
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    // An embeddings deployment nobody listens on: a refused caller never
    // reaches it.
    let extra = "\n[providers.vectors]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n\
                 [models.embed]\nprovider = \"vectors\"\nmodel = \"text-embedding-3-small\"\ndimensions = 4\n\n\
                 [scenarios.vectors]\nchain = [\"embed\"]\n\n\
                 [limits]\nper_caller = { rpm = 1 }\n";
    let gw = Backstop::start(
        &quota_config(&primary.uri(), &backup.uri(), 100, extra),
        &[("BACKSTOP_API_KEYS", "key-one,key-two")],
    );
    let (status, _, body) =
        post_to(&gw, "/v1/chat/completions", Some("key-one"), &chat("chat")).await;
    assert_eq!(status, 200, "{body}");

    let doors = [
        ("/v1/chat/completions", chat("chat")),
        (
            "/v1/messages",
            json!({"model": "chat", "max_tokens": 50,
                   "messages": [{"role": "user", "content": "What are foxes?"}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "chat", "input": "What are foxes?"}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "vectors", "input": "fox"}),
        ),
    ];
    for (path, request) in &doors {
        let (status, retry_after, body) = post_to(&gw, path, Some("key-one"), request).await;
        assert_eq!(status, 429, "{path}: {body}");
        let secs: u64 = retry_after
            .unwrap_or_else(|| panic!("{path}: no Retry-After"))
            .parse()
            .unwrap();
        assert!((1..=61).contains(&secs), "{path}: {secs}");
        let message = if *path == "/v1/messages" {
            assert_eq!(body["type"], "error", "{body}");
            assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
            assert_eq!(body["backstop"]["code"], "rate_limit_exceeded", "{body}");
            body["error"]["message"].as_str().unwrap().to_owned()
        } else {
            assert_eq!(
                body["error"]["code"], "rate_limit_exceeded",
                "{path}: {body}"
            );
            body["error"]["message"].as_str().unwrap().to_owned()
        };
        assert!(message.contains("rpm limit of 1"), "{path}: {message}");
    }
    // The other key has a limit of its own; nothing refused reached an
    // upstream.
    let (status, _, body) =
        post_to(&gw, "/v1/chat/completions", Some("key-two"), &chat("chat")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&primary).await.len(), 2);

    let status = status_of(&gw, Some("key-one")).await;
    let callers: Vec<(String, u64, u64)> = status["rate_limits"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["scope"] == "caller")
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_owned(),
                l["requests"].as_u64().unwrap(),
                l["refused"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        callers,
        [("key-1".to_owned(), 1, 4), ("key-2".to_owned(), 1, 0)]
    );
}

/// Two replicas share one rpm quota through the store: requests alternate
/// between them, the primary's upstream sees only its quota (each replica
/// alone would have sent it twice as many), and the backup answers the
/// rest before the primary had to refuse anything.
#[tokio::test]
async fn a_fleet_of_two_gateways_shares_one_rpm_quota() {
    let redis = backstop_fleet::testing::RedisServer::start();
    let primary = healthy_upstream().await;
    let backup = healthy_upstream().await;
    let toml = quota_config(
        &primary.uri(),
        &backup.uri(),
        3,
        "\n[state]\nbackend = \"redis\"\nurl_env = \"FLEET_REDIS_URL\"\nkey_prefix = \"e2e-rpm\"\n",
    );
    let url = redis.url();
    let env = [("FLEET_REDIS_URL", url.as_str())];
    let a = Backstop::start(&toml, &env);
    let b = Backstop::start(&toml, &env);
    wait_for_store(&a).await;
    wait_for_store(&b).await;
    let mut used = Vec::new();
    for gw in [&a, &b, &a, &b, &a, &b] {
        let (status, _, body) = post_to(gw, "/v1/chat/completions", None, &chat("chat")).await;
        assert_eq!(status, 200, "{body}");
        used.push(body["x-backstop-model"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        used,
        [
            "primary", "primary", "primary", "backup", "backup", "backup"
        ],
        "the fourth call would pass the fleet's quota"
    );
    assert_eq!(seen(&primary).await.len(), 3, "the upstream saw its quota");
    // Each replica's status says the limit is shared.
    let status = status_of(&b, None).await;
    assert_eq!(status["rate_limits"][0]["shared"], true, "{status}");
}
