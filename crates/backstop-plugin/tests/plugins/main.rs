//! Real plugin libraries, built by cargo from this test and loaded through
//! the host side: load failures, provider and selector round trips through
//! the Router, cancellation, a host runtime left free, and plugins that
//! fail or panic.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod failures;
mod load;
mod provider;
mod selector;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backstop_core::testing::{AlwaysAdmit, InOrder, LevelNote, Unlimited};
use backstop_core::{
    Call, ChatRequest, FallbackStream, ModelSpec, Provider, RoutePolicy, Router, Scenario,
    Selector, Strategies, StrategyContext, StreamItem, SystemClock,
};
use backstop_plugin::host::{self, LoadedPlugin};
use backstop_plugin::testing::{Profile, build_plugins};
use futures::StreamExt;
use serde_json::{Value, json};

/// The plugin libraries under test.
struct Libraries {
    example: PathBuf,
    round_robin: PathBuf,
    wrong_abi: PathBuf,
    not_a_plugin: PathBuf,
    panics: PathBuf,
    errors: PathBuf,
    slow: PathBuf,
}

/// Builds every plugin once per test binary.
fn libraries() -> &'static Libraries {
    static LIBRARIES: OnceLock<Libraries> = OnceLock::new();
    LIBRARIES.get_or_init(|| {
        let paths = build_plugins(
            &[
                "backstop-plugin-example",
                "backstop-plugin-round-robin",
                "backstop-plugin-fixture-wrong-abi",
                "backstop-plugin-fixture-not-a-plugin",
                "backstop-plugin-fixture-panics",
                "backstop-plugin-fixture-errors",
                "backstop-plugin-fixture-slow",
            ],
            Profile::Dev,
        )
        .expect("the plugin libraries build");
        let [
            example,
            round_robin,
            wrong_abi,
            not_a_plugin,
            panics,
            errors,
            slow,
        ] = <[PathBuf; 7]>::try_from(paths).expect("one path per package");
        Libraries {
            example,
            round_robin,
            wrong_abi,
            not_a_plugin,
            panics,
            errors,
            slow,
        }
    })
}

fn load(path: &PathBuf) -> LoadedPlugin {
    host::load(path).expect("the plugin loads")
}

/// A provider of type `type_name` from the library at `path`.
fn provider(path: &PathBuf, type_name: &str, config: Value) -> Arc<dyn Provider> {
    load(path)
        .provider_factory(type_name)
        .expect("the plugin exports the type")
        .create(&config)
        .expect("the provider is created")
}

fn echo(reply: &str) -> Arc<dyn Provider> {
    provider(&libraries().example, "echo", json!({ "reply": reply }))
}

/// Calls a provider directly, as the Router would.
fn call<'a>(model: &'a ModelSpec, request: &'a ChatRequest) -> Call<'a> {
    Call {
        scenario: "test",
        model,
        request,
        max_tokens: 256,
        connect_timeout: Duration::from_secs(1),
        request_id: Some("req-test"),
        headers: &[],
    }
}

fn strategies(selector: Arc<dyn Selector>, health: Arc<AlwaysAdmit>) -> Strategies {
    Strategies {
        selector,
        health,
        budget: Arc::new(Unlimited::default()),
        result: Arc::new(LevelNote),
    }
}

/// A Router whose scenario `chat` chains `models` in order, each served by
/// the provider of the same id.
fn router(
    models: Vec<(&str, Arc<dyn Provider>)>,
    selector: Option<Arc<dyn Selector>>,
) -> (Router, Arc<AlwaysAdmit>) {
    let specs: Vec<ModelSpec> = models
        .iter()
        .map(|(id, _)| ModelSpec::new(*id, *id))
        .collect();
    let chain = specs.iter().map(|m| m.id.clone()).collect();
    let health = Arc::new(AlwaysAdmit::default());
    let mut builder = Router::builder(StrategyContext::new(specs, SystemClock::shared()));
    for (id, provider) in models {
        builder = builder.provider(id, provider);
    }
    let selector = selector.unwrap_or_else(|| Arc::new(InOrder));
    let router = builder
        .scenario(
            Scenario {
                name: "chat".into(),
                chain,
                policy: RoutePolicy::default(),
            },
            strategies(selector, health.clone()),
        )
        .build()
        .expect("the router builds");
    (router, health)
}

fn request(text: &str) -> ChatRequest {
    ChatRequest::user("chat", text)
}

fn stream_request(text: &str) -> ChatRequest {
    let mut r = request(text);
    r.stream = Some(true);
    r
}

/// Collects a Router stream: its text and its last item.
async fn drain(mut stream: FallbackStream) -> (String, StreamItem) {
    let mut text = String::new();
    let mut last = None;
    while let Some(item) = stream.next().await {
        match item {
            StreamItem::Chunk(chunk) => text.push_str(chunk.content().unwrap_or("")),
            other => last = Some(other),
        }
    }
    (text, last.expect("a stream ends with Done or Failed"))
}
