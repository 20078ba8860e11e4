//! What a dynamic plugin costs over the same code compiled in.
//!
//! The example plugin's `echo` provider and the round-robin selector are
//! each measured twice: linked into this binary as crates, and loaded from
//! their release cdylibs (built by this bench with `cargo build --release`)
//! through `backstop_plugin::host`. The difference is the boundary: JSON for
//! the call and the answer, the FFI future, the plugin runtime's context.
//!
//! - `plugin/complete`: one non-streaming call (target: dynamic adds
//!   <= 5 us).
//! - `plugin/stream`: one streamed answer of 64 words, opened and read to its
//!   end; throughput is per chunk (target: dynamic adds <= 1 us a chunk).
//! - `plugin/order`: one `Selector::order` over a chain of four models.

// Bench scaffolding may panic: a panic is a failed bench.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use backstop_core::{Call, Candidate, ChatRequest, ModelSpec, Provider, RequestFacts, Selector};
use backstop_plugin::host;
use backstop_plugin::testing::{Profile, build_plugins};
use backstop_plugin::{PluginProvider, PluginSelector};
use backstop_plugin_example::Echo;
use backstop_plugin_round_robin::RoundRobin;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use serde_json::json;

/// Words of the streamed answer; it streams as that many chunks plus the
/// finishing one.
const STREAM_WORDS: usize = 64;

struct Subjects {
    compiled: Arc<dyn Provider>,
    dynamic: Arc<dyn Provider>,
    compiled_stream: Arc<dyn Provider>,
    dynamic_stream: Arc<dyn Provider>,
    compiled_selector: Arc<dyn Selector>,
    dynamic_selector: Arc<dyn Selector>,
}

fn subjects(models: &[ModelSpec]) -> Subjects {
    let paths = build_plugins(
        &["backstop-plugin-example", "backstop-plugin-round-robin"],
        Profile::Release,
    )
    .expect("the plugins build");
    let example = host::load(&paths[0]).expect("the example plugin loads");
    let round_robin = host::load(&paths[1]).expect("the round-robin plugin loads");
    let echo = example.provider_factory("echo").unwrap();

    let short = json!({
        "reply": "Backstop answered from the next model of the chain because the primary timed out."
    });
    let long = json!({ "reply": vec!["word"; STREAM_WORDS].join(" ") });
    let selector_config = json!({ "weights": { "m0": 2 } });
    Subjects {
        compiled: Arc::new(Echo::from_config(short.clone()).unwrap()),
        dynamic: echo.create(&short).unwrap(),
        compiled_stream: Arc::new(Echo::from_config(long.clone()).unwrap()),
        dynamic_stream: echo.create(&long).unwrap(),
        compiled_selector: Arc::new(
            RoundRobin::from_config(selector_config.clone(), models.to_vec().into()).unwrap(),
        ),
        dynamic_selector: round_robin
            .selector_factory("round_robin")
            .unwrap()
            .create(&selector_config, models)
            .unwrap(),
    }
}

fn call<'a>(model: &'a ModelSpec, request: &'a ChatRequest) -> Call<'a> {
    Call {
        scenario: "bench",
        model,
        request,
        max_tokens: 1024,
        connect_timeout: Duration::from_secs(5),
        request_id: Some("req-bench"),
        headers: &[],
    }
}

fn plugin(c: &mut Criterion) {
    let models: Vec<ModelSpec> = (0..4)
        .map(|i| ModelSpec::new(format!("m{i}"), "p"))
        .collect();
    let s = subjects(&models);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let model = &models[0];
    let request = ChatRequest::user("bench", "Why did the answer come from a backup model?");

    let mut group = c.benchmark_group("plugin/complete");
    for (name, provider) in [("compiled_in", &s.compiled), ("dynamic", &s.dynamic)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                black_box(provider.complete(call(model, &request)).await.unwrap())
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("plugin/stream");
    group.throughput(Throughput::Elements(STREAM_WORDS as u64 + 1));
    for (name, provider) in [
        ("compiled_in", &s.compiled_stream),
        ("dynamic", &s.dynamic_stream),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let mut stream = provider.stream(call(model, &request)).await.unwrap();
                let mut chunks = 0;
                while let Some(chunk) = stream.next().await {
                    black_box(chunk.unwrap());
                    chunks += 1;
                }
                assert_eq!(chunks, STREAM_WORDS + 1);
            });
        });
    }
    group.finish();

    let facts = RequestFacts {
        scenario: "bench",
        caller: Some("team-a"),
        prompt_tokens: 12,
        max_tokens: Some(256),
        stream: false,
        tools: false,
    };
    let chain: Vec<Candidate<'_>> = models
        .iter()
        .enumerate()
        .map(|(index, spec)| Candidate {
            index,
            spec,
            position: index,
        })
        .collect();
    let mut group = c.benchmark_group("plugin/order");
    for (name, selector) in [
        ("compiled_in", &s.compiled_selector),
        ("dynamic", &s.dynamic_selector),
    ] {
        group.bench_function(name, |b| {
            let mut candidates = chain.clone();
            b.iter(|| {
                candidates.copy_from_slice(&chain);
                selector.order(black_box(&facts), black_box(&mut candidates));
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = plugin
}
criterion_main!(benches);
