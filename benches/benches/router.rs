//! The Router's own cost: one routing decision plus a no-op provider call on
//! a 4-model chain with the default strategies (priority, circuit_breaker,
//! unlimited, annotate), and a failover from an instantly failing primary to
//! level 1. Targets (issue 2): median <= 1 us and <= 2 us. After the timing
//! runs, it counts heap allocations per request.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backstop_core::{
    Call, ChatRequest, ChatResponse, Choice, ChunkStream, Content, Extra, FailureKind, Message,
    ModelSpec, Provider, ProviderError, RequestContext, Role, RoutePolicy, Router, Scenario,
    Strategies, StrategyContext, SystemClock, Usage,
};
use backstop_strategies::catalog;
use criterion::{Criterion, criterion_group};
use serde_json::json;

/// Counts allocations so the bench can report allocations per request.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a relaxed atomic add.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Answers with the smallest valid response (one choice, empty text, usage:
/// one allocation) or fails at once, without I/O: what is measured is the
/// Router, not a provider building a body.
struct NoopProvider {
    answers: bool,
}

fn smallest_answer() -> ChatResponse {
    ChatResponse {
        id: String::new(),
        object: String::new(),
        created: 0,
        model: String::new(),
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: Role::Assistant,
                content: Some(Content::Text(String::new())),
                extra: Extra::new(),
            },
            finish_reason: None,
            extra: Extra::new(),
        }],
        usage: Some(Usage::new(9, 2)),
        extra: Extra::new(),
        raw: None,
    }
}

#[async_trait]
impl Provider for NoopProvider {
    async fn complete(&self, _: Call<'_>) -> Result<ChatResponse, ProviderError> {
        if self.answers {
            Ok(smallest_answer())
        } else {
            Err(ProviderError::new(
                FailureKind::InvalidResponse,
                "unparseable body",
            ))
        }
    }

    async fn stream(&self, _: Call<'_>) -> Result<ChunkStream, ProviderError> {
        Err(ProviderError::new(
            FailureKind::BadRequest,
            "not benchmarked",
        ))
    }
}

/// A 4-model chain; `failing_primary` makes the first model fail every
/// call, and `health` configures the circuit breaker.
fn router(failing_primary: bool, health: serde_json::Value) -> Router {
    let models: Vec<ModelSpec> = ["gpt-4o", "claude-sonnet-4", "gpt-4o-mini", "qwen-7b"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut m = ModelSpec::new(*id, *id);
            m.priority = i as u32 + 1;
            m
        })
        .collect();
    let chain = models.iter().map(|m| m.id.clone()).collect();
    let ctx = StrategyContext::new(models.clone(), SystemClock::shared());
    let strategies = Strategies {
        selector: catalog::build_selector(catalog::DEFAULT_SELECTOR, &json!({}), &ctx).unwrap(),
        health: catalog::build_health(catalog::DEFAULT_HEALTH, &health, &ctx).unwrap(),
        budget: catalog::build_budget(catalog::DEFAULT_BUDGET, &json!({}), &ctx).unwrap(),
        result: catalog::build_result(catalog::DEFAULT_RESULT, &json!({}), &ctx).unwrap(),
    };
    let mut builder = Router::builder(ctx);
    for (i, m) in models.iter().enumerate() {
        let answers = !(failing_primary && i == 0);
        builder = builder.provider(m.id.clone(), Arc::new(NoopProvider { answers }));
    }
    builder
        .scenario(
            Scenario {
                name: "chat".into(),
                chain,
                policy: RoutePolicy::default(),
            },
            strategies,
        )
        .build()
        .unwrap()
}

fn request() -> ChatRequest {
    ChatRequest::user("chat", "Summarise the plot of Hamlet in one sentence.")
}

/// A breaker that never opens, so every call really fails over.
fn never_opens() -> serde_json::Value {
    json!({"min_calls": 1_000_000_000u64})
}

struct Case {
    name: &'static str,
    router: Router,
    level: usize,
}

fn cases() -> Vec<Case> {
    let open = router(true, json!({}));
    vec![
        Case {
            name: "route_4_model_chain_noop_call",
            router: router(false, json!({})),
            level: 0,
        },
        Case {
            name: "failover_failing_primary_to_level_1",
            router: router(true, never_opens()),
            level: 1,
        },
        Case {
            name: "failover_open_circuit_to_level_1",
            router: open,
            level: 1,
        },
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn bench_router(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("router");
    for case in cases() {
        // Warm up: opens the breaker for the open-circuit case.
        for _ in 0..100 {
            let r = rt
                .block_on(case.router.complete(request(), RequestContext::default()))
                .unwrap();
            assert_eq!(r.outcome.fallback_level, case.level, "{}", case.name);
        }
        let template = request();
        group.bench_function(case.name, |b| {
            // Requests are cloned outside the timed loop, in batches small
            // enough to stay off the allocator's mmap path.
            b.to_async(&rt).iter_custom(|iters| {
                let router = case.router.clone();
                let template = template.clone();
                async move {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(256);
                        let batch: Vec<ChatRequest> = (0..n).map(|_| template.clone()).collect();
                        let start = Instant::now();
                        for req in batch {
                            black_box(
                                router
                                    .complete(req, RequestContext::default())
                                    .await
                                    .unwrap(),
                            );
                        }
                        total += start.elapsed();
                        left -= n;
                    }
                    total
                }
            });
        });
    }
    group.finish();
}

/// Heap allocations per request, measured over many requests (the request
/// clone the caller makes is not counted).
fn report_allocations() {
    let rt = runtime();
    println!("\nallocations per request (Router + strategies + no-op provider):");
    for case in cases() {
        for _ in 0..100 {
            rt.block_on(case.router.complete(request(), RequestContext::default()))
                .unwrap();
        }
        let n = 10_000u64;
        let mut total = 0;
        for _ in 0..n {
            let req = request();
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let r = rt
                .block_on(case.router.complete(req, RequestContext::default()))
                .unwrap();
            total += ALLOCATIONS.load(Ordering::Relaxed) - before;
            drop(r);
        }
        println!("  {:<40} {:>6.1}", case.name, total as f64 / n as f64);
    }
}

criterion_group!(benches, bench_router);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report_allocations();
}
