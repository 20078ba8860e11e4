//! The `/v1/embeddings` door end to end: the `backstop` binary in front of
//! wiremock upstreams serving OpenAI's embeddings API, called over HTTP and
//! with a real OpenAI client library (`async-openai`'s embeddings API).

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use serde_json::{Value, json};
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

// ---------------------------------------------------------------- helpers

/// An embeddings upstream: one vector of `dimensions` per input, whose
/// values say which upstream (`seed`) and which input made them.
struct Vectors {
    dimensions: usize,
    seed: f32,
}

fn vector(seed: f32, index: usize, dimensions: usize) -> Vec<f32> {
    (0..dimensions)
        .map(|d| seed + index as f32 + d as f32 / 8.0)
        .collect()
}

impl Respond for Vectors {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = request.body_json().unwrap();
        let count = match &body["input"] {
            Value::Array(items) if items.iter().all(Value::is_number) => 1,
            Value::Array(items) => items.len(),
            _ => 1,
        };
        let data: Vec<Value> = (0..count)
            .map(|i| json!({"object": "embedding", "index": i, "embedding": vector(self.seed, i, self.dimensions)}))
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({
            "object": "list", "data": data, "model": body["model"],
            "usage": {"prompt_tokens": 3 * count, "total_tokens": 3 * count}
        }))
    }
}

/// What one mock of an embeddings upstream answers.
enum Reply {
    Vectors(Vectors),
    Fixed(ResponseTemplate),
}

impl Respond for Reply {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        match self {
            Reply::Vectors(v) => v.respond(request),
            Reply::Fixed(t) => t.clone(),
        }
    }
}

async fn embeddings_upstream(responses: Vec<Reply>) -> MockServer {
    let server = MockServer::start().await;
    let n = responses.len();
    for (i, r) in responses.into_iter().enumerate() {
        let mock = Mock::given(method("POST"))
            .and(path("/v1/embeddings"))
            .respond_with(r);
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

fn healthy(seed: f32) -> Reply {
    Reply::Vectors(Vectors {
        dimensions: 4,
        seed,
    })
}

fn failing(template: ResponseTemplate) -> Reply {
    Reply::Fixed(template)
}

/// A config with the embeddings scenario `vectors` chaining `primary` and
/// `backup` (4 dimensions each) and a chat scenario `chat`.
fn embeddings_config(primary: &str, backup: &str, server: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n\
         [providers.primary]\ntype = \"openai\"\nbase_url = \"{primary}/v1\"\n\n\
         [providers.backup]\ntype = \"openai\"\nbase_url = \"{backup}/v1\"\n\n\
         [models.embed-primary]\nprovider = \"primary\"\nmodel = \"text-embedding-3-small\"\ndimensions = 4\n\n\
         [models.embed-backup]\nprovider = \"backup\"\nmodel = \"text-embedding-3-small\"\ndimensions = 4\n\n\
         [models.talker]\nprovider = \"primary\"\n\n\
         [scenarios.vectors]\nchain = [\"embed-primary\", \"embed-backup\"]\n\n\
         [scenarios.chat]\nchain = [\"talker\"]\n"
    )
}

async fn send(gw: &Backstop, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/embeddings"))
        .bearer_auth("sk-anything")
        .json(body)
        .send()
        .await
        .unwrap()
}

// ----------------------------------------------------------------- tests

#[tokio::test]
async fn batches_come_back_as_floats_or_base64_with_usage() {
    let primary = embeddings_upstream(vec![healthy(1.0)]).await;
    let backup = embeddings_upstream(vec![healthy(100.0)]).await;
    let gw = Backstop::start(&embeddings_config(&primary.uri(), &backup.uri(), ""), &[]);

    let r = send(
        &gw,
        &json!({"model": "vectors", "input": ["fox", "hound", "hare"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backstop-model"], "embed-primary");
    assert_eq!(r.headers()["x-backstop-fallback-level"], "0");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "embed-primary");
    assert_eq!(v["usage"], json!({"prompt_tokens": 9, "total_tokens": 9}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        assert_eq!(item["embedding"], json!(vector(1.0, i, 4)));
    }
    assert_eq!(v["backstop"]["model_used"], "embed-primary");
    let sent = &seen(&primary).await[0];
    assert_eq!(sent["model"], "text-embedding-3-small");
    assert_eq!(sent["input"], json!(["fox", "hound", "hare"]));
    assert_eq!(sent["encoding_format"], "float");

    let r = send(
        &gw,
        &json!({"model": "vectors", "input": "fox", "encoding_format": "base64"}),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    let encoded = v["data"][0]["embedding"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(floats, vector(1.0, 0, 4));
    assert_eq!(
        seen(&primary).await[1]["encoding_format"],
        "float",
        "the upstream is always asked for floats"
    );
}

#[tokio::test]
async fn an_openai_client_library_embeds_through_a_failover() {
    use async_openai::Client;
    use async_openai::config::OpenAIConfig;
    use async_openai::types::embeddings::CreateEmbeddingRequestArgs;

    let primary = embeddings_upstream(vec![failing(openai_error(
        502,
        "server_error",
        "bad_gateway",
        "Bad gateway",
    ))])
    .await;
    let backup = embeddings_upstream(vec![healthy(100.0)]).await;
    let gw = Backstop::start(&embeddings_config(&primary.uri(), &backup.uri(), ""), &[]);
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(gw.url("/v1"))
            .with_api_key("sk-anything"),
    );
    let request = CreateEmbeddingRequestArgs::default()
        .model("vectors")
        .input(["fox", "hound"])
        .build()
        .unwrap();
    let response = client.embeddings().create(request).await.unwrap();
    assert_eq!(response.model, "embed-backup");
    assert_eq!(response.data.len(), 2);
    assert_eq!(response.data[1].embedding, vector(100.0, 1, 4));
    assert_eq!(response.usage.prompt_tokens, 6);
}

#[tokio::test]
async fn failover_on_5xx_429_refused_and_wrong_dimensions_reaches_the_other_deployment() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let five = embeddings_upstream(vec![failing(openai_error(
        503,
        "server_error",
        "overloaded",
        "Overloaded",
    ))])
    .await;
    let limited = embeddings_upstream(vec![failing(
        openai_error(429, "requests", "rate_limit_exceeded", "Rate limit reached")
            .insert_header("retry-after", "120"),
    )])
    .await;
    // A deployment that answers with vectors of another length must never
    // have them mixed with the others'.
    let wrong = embeddings_upstream(vec![Reply::Vectors(Vectors {
        dimensions: 3,
        seed: 7.0,
    })])
    .await;
    for (primary, kind) in [
        (five.uri(), "overloaded"),
        (limited.uri(), "rate_limited"),
        (refused.clone(), "connect"),
        (wrong.uri(), "invalid_response"),
    ] {
        let backup = embeddings_upstream(vec![healthy(100.0)]).await;
        let gw = Backstop::start(&embeddings_config(&primary, &backup.uri(), ""), &[]);
        let r = send(&gw, &json!({"model": "vectors", "input": ["fox", "hound"]})).await;
        assert_eq!(r.status(), 200, "{kind}");
        assert_eq!(r.headers()["x-backstop-model"], "embed-backup", "{kind}");
        assert_eq!(r.headers()["x-backstop-fallback-level"], "1");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["data"][0]["embedding"],
            json!(vector(100.0, 0, 4)),
            "{kind}"
        );
        assert_eq!(v["backstop"]["attempts"][0]["kind"], kind);
        assert!(v["backstop"]["warning"].is_string());
    }
}

#[tokio::test]
async fn every_deployment_failing_is_a_503_with_the_trail() {
    let primary = embeddings_upstream(vec![failing(openai_error(
        500,
        "server_error",
        "boom",
        "Internal",
    ))])
    .await;
    let backup = embeddings_upstream(vec![failing(openai_error(
        503,
        "server_error",
        "overloaded",
        "Overloaded",
    ))])
    .await;
    let gw = Backstop::start(&embeddings_config(&primary.uri(), &backup.uri(), ""), &[]);
    let r = send(&gw, &json!({"model": "vectors", "input": "fox"})).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "all_models_failed");
    let kinds: Vec<&str> = v["backstop"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["server", "server", "overloaded", "overloaded"]);
}

#[tokio::test]
async fn keys_routes_and_dimensions_are_checked_before_any_upstream_call() {
    let primary = embeddings_upstream(vec![healthy(1.0)]).await;
    let backup = embeddings_upstream(vec![healthy(100.0)]).await;
    let gw = Backstop::start(
        &embeddings_config(
            &primary.uri(),
            &backup.uri(),
            "api_keys_env = \"E2E_GATEWAY_KEYS\"",
        ),
        &[("E2E_GATEWAY_KEYS", "sk-gw-1")],
    );
    let client = reqwest::Client::new();
    let url = gw.url("/v1/embeddings");
    let body = json!({"model": "vectors", "input": "fox"});
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(send(&gw, &body).await.status(), 401, "a wrong key");
    let post = |body: Value| client.post(&url).bearer_auth("sk-gw-1").json(&body).send();
    assert_eq!(post(body.clone()).await.unwrap().status(), 200);

    let r = post(json!({"model": "chat", "input": "fox"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not serve embeddings")
    );
    let r = post(json!({"model": "vectors", "input": "fox", "dimensions": 8}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post(json!({"model": "nope", "input": "fox"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = post(json!({"model": "vectors", "input": []}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        seen(&primary).await.len(),
        1,
        "refused requests reach no upstream"
    );

    // The doors each scenario serves.
    let models: Value = client
        .get(gw.url("/v1/models"))
        .bearer_auth("sk-gw-1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let doors = |id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["backstop"]["doors"]
            .clone()
    };
    assert_eq!(doors("vectors"), json!(["embeddings"]));
    assert_eq!(doors("embed-backup"), json!(["embeddings"]));
    assert_eq!(
        doors("chat"),
        json!(["chat_completions", "messages", "responses"])
    );
}
