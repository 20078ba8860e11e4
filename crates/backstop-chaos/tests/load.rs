//! The load generator against fake providers, no gateway in between.

// Test scaffolding may panic: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use backstop_chaos::load::{LostReason, Outcome};
use backstop_chaos::scenario::RequestMix;
use backstop_chaos::{
    AnswerCheck, Api, Behaviour, FakeProvider, FakeSpec, LoadGenerator, LoadPlan, Pacing, Target,
    Timeline,
};
use tokio::time::Instant;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn plan(rate: f64, requests: u64, deadline: Duration) -> LoadPlan {
    LoadPlan {
        model: "chaos-test".into(),
        rate_per_sec: rate,
        requests,
        max_duration: Duration::from_secs(5),
        deadline,
        mix: RequestMix::default(),
        max_in_flight: 256,
        burst: 1,
        precise_start: false,
    }
}

async fn fake(behaviour: Behaviour) -> FakeProvider {
    FakeProvider::start(
        FakeSpec::new("primary", Api::OpenAi)
            .schedule(Timeline::steady(behaviour))
            .hold_max(Duration::from_secs(3)),
    )
    .await
    .expect("fake starts")
}

fn percentile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test]
async fn fixed_rate_against_a_healthy_fake_succeeds_with_sane_latencies() {
    let pacing = Pacing {
        first_token: Duration::from_millis(10),
        token_interval: Duration::from_millis(1),
    };
    let fake = FakeProvider::start(FakeSpec::new("primary", Api::OpenAi).pacing(pacing))
        .await
        .unwrap();
    let generator = LoadGenerator::new(
        plan(100.0, 60, Duration::from_secs(2)),
        AnswerCheck::default(),
    )
    .unwrap();
    let epoch = Instant::now();
    let run = generator
        .run(&Target::new(fake.api_base_url()), epoch)
        .await
        .unwrap();

    assert_eq!(run.records.len(), 60);
    let failures: Vec<_> = run
        .records
        .iter()
        .filter(|r| r.outcome != Outcome::Succeeded)
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(run.records.iter().filter(|r| r.stream).count(), 30);
    assert!(run.records.iter().all(|r| r.usage_present));
    assert!(
        run.records
            .iter()
            .all(|r| r.model.as_deref() == Some("chaos-test"))
    );
    // Open loop: request i was meant to leave at i / rate.
    assert_eq!(run.records[59].intended_at, Duration::from_secs_f64(0.59));
    assert!(run.elapsed >= Duration::from_millis(590));
    assert!(run.elapsed < Duration::from_secs(3), "{:?}", run.elapsed);

    // Generation takes 10 ms + 1 ms per further token, about 30 ms.
    let generation = pacing.generation(backstop_chaos::answer::known_token_count());
    let latencies: Vec<Duration> = run.records.iter().map(|r| r.latency).collect();
    let p50 = percentile(latencies.clone(), 0.5);
    assert!(
        p50 >= generation,
        "p50 {p50:?} below the generation time {generation:?}"
    );
    assert!(p50 < generation + Duration::from_millis(100), "p50 {p50:?}");
    assert!(run.records.iter().filter(|r| r.stream).all(|r| {
        r.first_text
            .is_some_and(|t| t >= pacing.first_token && t <= r.latency)
    }));
    assert_eq!(fake.stats().requests, 60);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_cut_stream_is_lost_not_succeeded() {
    let fake = fake(Behaviour::StreamCut { after_tokens: 5 }).await;
    let generator = LoadGenerator::new(
        plan(100.0, 10, Duration::from_secs(2)),
        AnswerCheck::default(),
    )
    .unwrap();
    let run = generator
        .run(&Target::new(fake.api_base_url()), Instant::now())
        .await
        .unwrap();
    assert_eq!(run.records.len(), 10);
    for r in &run.records {
        assert_eq!(r.outcome, Outcome::Lost(LostReason::Transport), "{r:?}");
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn a_truncated_answer_presented_as_success_is_lost() {
    let server = MockServer::start().await;
    let short = serde_json::json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "primary",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Backstop kept this"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    });
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(short))
        .mount(&server)
        .await;
    let mut p = plan(200.0, 4, Duration::from_secs(2));
    p.mix.stream_share = 0.0;
    let run = LoadGenerator::new(p, AnswerCheck::default())
        .unwrap()
        .run(&Target::new(format!("{}/v1", server.uri())), Instant::now())
        .await
        .unwrap();
    assert!(
        run.records
            .iter()
            .all(|r| r.outcome == Outcome::Lost(LostReason::Truncated))
    );
}

#[tokio::test]
async fn a_hung_upstream_is_lost_at_the_deadline_and_the_run_ends() {
    let fake = fake(Behaviour::NeverAnswer).await;
    let deadline = Duration::from_millis(200);
    let started = Instant::now();
    let run = LoadGenerator::new(plan(100.0, 5, deadline), AnswerCheck::default())
        .unwrap()
        .run(&Target::new(fake.api_base_url()), Instant::now())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the deadline"
    );
    for r in &run.records {
        assert_eq!(r.outcome, Outcome::Lost(LostReason::Deadline));
        assert!(r.latency >= deadline);
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn clean_errors_are_failed_clean_and_refused_is_transport() {
    let flagging = FakeProvider::start(FakeSpec::new("primary", Api::OpenAi).flags_content())
        .await
        .unwrap();
    let mut p = plan(200.0, 8, Duration::from_secs(2));
    p.mix.flagged_every = Some(2);
    let run = LoadGenerator::new(p, AnswerCheck::default())
        .unwrap()
        .run(&Target::new(flagging.api_base_url()), Instant::now())
        .await
        .unwrap();
    for r in &run.records {
        if r.flagged {
            assert_eq!(r.outcome, Outcome::FailedClean { status: 400 }, "{r:?}");
        } else {
            assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        }
    }
    flagging.shutdown().await;

    let refused = fake(Behaviour::Refused).await;
    let run = LoadGenerator::new(
        plan(200.0, 4, Duration::from_secs(2)),
        AnswerCheck::default(),
    )
    .unwrap()
    .run(&Target::new(refused.api_base_url()), Instant::now())
    .await
    .unwrap();
    assert!(
        run.records
            .iter()
            .all(|r| r.outcome == Outcome::Lost(LostReason::Transport))
    );
    refused.shutdown().await;
}

#[tokio::test]
async fn latency_counts_from_the_intended_send_time() {
    // At most one request in flight against a 100 ms upstream while the
    // plan asks for one every 10 ms: requests queue in the generator, and
    // that queueing must show in their latency.
    let fake = fake(Behaviour::Delay(Duration::from_millis(100))).await;
    let mut p = plan(100.0, 5, Duration::from_secs(3));
    p.max_in_flight = 1;
    p.mix.stream_share = 0.0;
    let run = LoadGenerator::new(p, AnswerCheck::default())
        .unwrap()
        .run(&Target::new(fake.api_base_url()), Instant::now())
        .await
        .unwrap();
    assert!(run.records.iter().all(|r| r.outcome == Outcome::Succeeded));
    let last = &run.records[4];
    // Sent after four 100+ ms answers, meant to leave at 40 ms.
    assert!(
        last.latency >= Duration::from_millis(400),
        "{:?}",
        last.latency
    );
    fake.shutdown().await;
}

#[test]
fn invalid_plans_are_refused() {
    let mut p = plan(0.0, 1, Duration::from_secs(1));
    assert!(LoadGenerator::new(p.clone(), AnswerCheck::default()).is_err());
    p.rate_per_sec = 10.0;
    p.requests = 0;
    assert!(LoadGenerator::new(p.clone(), AnswerCheck::default()).is_err());
    p.requests = 1;
    p.burst = 0;
    assert!(LoadGenerator::new(p, AnswerCheck::default()).is_err());
}

#[test]
fn bursts_leave_together_at_the_mean_rate() {
    let mut p = plan(1000.0, 64, Duration::from_secs(1));
    p.burst = 32;
    assert_eq!(p.intended_at(0), Duration::ZERO);
    assert_eq!(p.intended_at(31), Duration::ZERO);
    assert_eq!(p.intended_at(32), Duration::from_millis(32));
    assert_eq!(p.intended_at(63), Duration::from_millis(32));
    p.burst = 1;
    assert_eq!(p.intended_at(5), Duration::from_millis(5));
}

#[tokio::test]
async fn a_burst_is_in_flight_at_once_and_a_shared_client_reuses_connections() {
    // Every answer takes 50 ms: a burst of 8 sent together finishes in
    // about 50 ms, not 8 x 50.
    let fake = fake(Behaviour::Delay(Duration::from_millis(50))).await;
    let mut p = plan(100.0, 8, Duration::from_secs(2));
    p.burst = 8;
    p.mix.stream_share = 0.0;
    let warm = LoadGenerator::new(p.clone(), AnswerCheck::default()).unwrap();
    let target = Target::new(fake.api_base_url());
    warm.run(&target, Instant::now()).await.unwrap();
    let measured = warm.with_plan(p).unwrap();
    let run = measured.run(&target, Instant::now()).await.unwrap();
    assert!(run.records.iter().all(|r| r.outcome == Outcome::Succeeded));
    let slowest = run.records.iter().map(|r| r.latency).max().unwrap();
    assert!(slowest < Duration::from_millis(250), "{slowest:?}");
    fake.shutdown().await;
}
