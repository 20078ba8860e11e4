//! Every scenario of the catalog: its fakes start, its config points at
//! them, and each fake does at the start what its timeline says.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use backstop_chaos::{
    Api, Behaviour, ErrorKind, FakeProvider, KNOWN_TEXT, Mode, RenderOptions, catalog,
    render_config,
};
use serde_json::{Value, json};

/// What one plain request to a fake got, in a few words.
async fn probe(client: &reqwest::Client, fake: &FakeProvider) -> String {
    let body = match fake.spec().api {
        Api::OpenAi => json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        Api::Anthropic => {
            json!({"model": "m", "max_tokens": 512, "messages": [{"role": "user", "content": "hi"}]})
        }
    };
    let call = async {
        let resp = match client.post(fake.endpoint_url()).json(&body).send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return "refused".to_owned(),
            Err(_) => return "transport".to_owned(),
        };
        let status = resp.status().as_u16();
        match resp.bytes().await {
            Err(_) => "transport".to_owned(),
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Err(_) => format!("{status} unparseable"),
                Ok(v) if status == 200 => {
                    let text = v
                        .pointer("/choices/0/message/content")
                        .or_else(|| v.pointer("/content/0/text"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if text == KNOWN_TEXT {
                        "200 known text".to_owned()
                    } else {
                        format!("200 other text: {text}")
                    }
                }
                Ok(_) => format!("{status}"),
            },
        }
    };
    tokio::time::timeout(Duration::from_millis(300), call)
        .await
        .unwrap_or_else(|_| "silent".to_owned())
}

fn expected(b: Behaviour, api: Api) -> String {
    match b {
        Behaviour::Healthy | Behaviour::NoDone | Behaviour::Delay(_) => "200 known text".into(),
        Behaviour::Refused => "refused".into(),
        Behaviour::ResetBeforeHeaders | Behaviour::StreamCut { .. } => "transport".into(),
        Behaviour::NeverAnswer | Behaviour::SlowFirstToken(_) | Behaviour::StreamStall { .. } => {
            "silent".into()
        }
        Behaviour::MalformedChunk { .. } => "200 unparseable".into(),
        Behaviour::Error(ErrorKind::Overloaded) if api == Api::Anthropic => "529".into(),
        Behaviour::Error(ErrorKind::Overloaded | ErrorKind::Unavailable) => "503".into(),
        Behaviour::Error(ErrorKind::Server) => "500".into(),
        Behaviour::Error(ErrorKind::RateLimited { .. }) => "429".into(),
        Behaviour::Error(other) => format!("unexpected in the catalog: {other:?}"),
    }
}

#[tokio::test]
async fn every_scenario_starts_renders_and_misbehaves_as_scripted() {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for spec in catalog(Mode::Quick) {
        let fakes = spec.start_fakes().await.unwrap();
        let options = RenderOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
        };
        let config = render_config(&spec, &fakes.urls(), &options).unwrap();
        for fake in fakes.fakes() {
            assert!(
                config.contains(&format!("127.0.0.1:{}", fake.addr().port())),
                "{}: config does not point at {}",
                spec.name,
                fake.model()
            );
        }
        fakes.arm(tokio::time::Instant::now());
        for fake in fakes.fakes() {
            let behaviour = fake.behaviour_now();
            let got = probe(&client, fake).await;
            assert_eq!(
                got,
                expected(behaviour, fake.spec().api),
                "{}: {} ({behaviour:?})",
                spec.name,
                fake.model()
            );
        }
        fakes.shutdown().await;
    }
}
