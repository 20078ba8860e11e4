//! The alert rule in a fleet: two replicas' windows are summed through the
//! store, so a fallback rate that neither reaches alone fires, once for the
//! fleet (one webhook POST, counted by a wiremock receiver); a store that
//! fails leaves each replica counting, and alerting, on its own.

use std::sync::Arc;
use std::time::Duration;

use backstop_core::{
    Event, EventSink, FallbackEvent, FleetState, LocalState, ModelSpec, RequestFinished,
    StrategyContext, SystemClock,
};
use backstop_fleet::testing::RedisServer;
use backstop_fleet::{FleetHandle, RedisState};
use backstop_strategies::monitor::{AlertConfig, AlertDelivery, AlertSink};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{MODELS, settings, wait_up, within};

/// The webhook sender of `backstop-http` behind the delivery seam, as
/// config attaches it.
#[derive(Debug)]
struct HttpWebhook(backstop_http::webhook::Webhook);

impl AlertDelivery for HttpWebhook {
    fn deliver(&self, body: serde_json::Value) {
        self.0.send(body);
    }
}

struct AlertReplica {
    state: Option<Arc<RedisState>>,
    sink: AlertSink,
    _tasks: Option<FleetHandle>,
}

/// Five fallbacks in a minute fire; the webhook goes to `receiver`.
fn config(receiver: &MockServer) -> AlertConfig {
    AlertConfig {
        max_fallbacks: 5,
        window_ms: 60_000,
        buckets: 60,
        webhook_url: Some(format!("{}/hook", receiver.uri())),
        ..AlertConfig::default()
    }
}

fn sink(config: AlertConfig, fleet: Arc<dyn FleetState>) -> AlertSink {
    let models = MODELS.iter().map(|m| ModelSpec::new(*m, "p")).collect();
    let ctx = StrategyContext::new(models, Arc::new(SystemClock::new())).with_fleet(fleet);
    let webhook = backstop_http::webhook::Webhook::new(
        config.webhook_url.as_deref().expect("a webhook"),
        Duration::from_secs(2),
    )
    .expect("webhook");
    AlertSink::new(config, &ctx)
        .expect("sink")
        .with_delivery(Arc::new(HttpWebhook(webhook)))
}

async fn replica(url: String, config: AlertConfig) -> AlertReplica {
    let state = RedisState::new(
        settings(url),
        MODELS.iter().map(|m| (*m).to_owned()).collect(),
    )
    .expect("state");
    let sink = sink(config, state.clone() as Arc<dyn FleetState>);
    let tasks = state.start().await.expect("start");
    wait_up(&state).await;
    AlertReplica {
        state: Some(state),
        sink,
        _tasks: Some(tasks),
    }
}

/// One request's events on `sink`: its end and, when a backup answered,
/// its fallback.
fn request(sink: &AlertSink, fell_back: bool) {
    let finished = RequestFinished {
        scenario: "chat",
        model_used: Some(if fell_back { "backup" } else { "primary" }),
        fallback_level: Some(usize::from(fell_back)),
        error: None,
        latency: Duration::from_millis(10),
        upstream_attempts: 1,
        stream: false,
    };
    sink.record(&Event::RequestFinished(&finished));
    if fell_back {
        sink.record(&Event::Fallback(&FallbackEvent {
            timestamp_ms: 0,
            scenario: "chat".into(),
            primary: "primary".into(),
            model_used: "backup".into(),
            reason: "server",
            level: 1,
            latency: Duration::from_millis(10),
        }));
    }
}

async fn hooks(receiver: &MockServer) -> Vec<serde_json::Value> {
    receiver
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("a JSON body"))
        .collect()
}

async fn receiver() -> MockServer {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&receiver)
        .await;
    receiver
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_rate_only_the_fleet_reaches_fires_one_alert_for_the_fleet() {
    let redis = RedisServer::start();
    let receiver = receiver().await;
    let a = replica(redis.url(), config(&receiver)).await;
    let b = replica(redis.url(), config(&receiver)).await;

    // Three fallbacks on A, two on B, among ten requests: neither reaches
    // five alone.
    for fell_back in [true, true, true, false, false, false] {
        request(&a.sink, fell_back);
    }
    for fell_back in [true, true, false, false] {
        request(&b.sink, fell_back);
    }
    let counted = within(Duration::from_secs(5), || {
        [&a, &b].iter().all(|r| {
            let s = r.sink.status();
            s.counted_by == "fleet" && s.fallbacks == 5 && s.requests == 10
        })
    })
    .await;
    assert!(
        counted.is_some(),
        "both replicas read the fleet's window: {:?} / {:?}",
        a.sink.status(),
        b.sink.status()
    );
    assert!((a.sink.status().fallback_rate - 0.5).abs() < 1e-9);

    let started = std::time::Instant::now();
    while hooks(&receiver).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the fleet never alerted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both replicas see the crossing on every refresh (each 100 ms) and on
    // every fallback: give them many chances to alert twice.
    for fell_back in [true, true] {
        request(&a.sink, fell_back);
        request(&b.sink, fell_back);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let sent = hooks(&receiver).await;
    assert_eq!(sent.len(), 1, "one alert for the fleet: {sent:?}");
    assert_eq!(sent[0]["alert"], "fallbacks");
    assert_eq!(sent[0]["counted_by"], "fleet");
    assert!(sent[0]["fallbacks"].as_u64().unwrap() >= 5, "{}", sent[0]);
    assert_eq!(
        a.sink.status().alerts_fired + b.sink.status().alerts_fired,
        1,
        "one replica sent it"
    );
    assert!(a.state.as_ref().is_some_and(|s| s.store_up()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shared_store_each_replica_counts_alone() {
    let receiver = receiver().await;
    // The local backend: the same traffic as above fires nothing.
    let a = sink(config(&receiver), Arc::new(LocalState));
    let b = sink(config(&receiver), Arc::new(LocalState));
    for fell_back in [true, true, true, false] {
        request(&a, fell_back);
    }
    for fell_back in [true, true, false] {
        request(&b, fell_back);
    }
    assert_eq!(a.status().counted_by, "replica");
    assert_eq!((a.status().fallbacks, b.status().fallbacks), (3, 2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hooks(&receiver).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_leaves_each_replica_counting_and_alerting_on_its_own() {
    let mut redis = RedisServer::start();
    let receiver = receiver().await;
    let a = replica(redis.url(), config(&receiver)).await;
    let b = replica(redis.url(), config(&receiver)).await;
    request(&a.sink, true);
    request(&b.sink, true);
    assert!(
        within(Duration::from_secs(5), || a.sink.status().fallbacks == 2)
            .await
            .is_some(),
        "the fleet's window holds both"
    );

    redis.stop();
    assert!(
        within(Duration::from_secs(5), || {
            a.sink.status().counted_by == "replica" && b.sink.status().counted_by == "replica"
        })
        .await
        .is_some(),
        "a replica whose store is gone counts on its own"
    );
    assert_eq!(a.sink.status().fallbacks, 1, "A's own window");
    // Five fallbacks on A alone fire A's own alert, store or no store;
    // B's four do not.
    for _ in 0..4 {
        request(&a.sink, true);
    }
    for _ in 0..3 {
        request(&b.sink, true);
    }
    let started = std::time::Instant::now();
    while hooks(&receiver).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "A never alerted alone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = hooks(&receiver).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["counted_by"], "replica");
    assert_eq!(sent[0]["fallbacks"], 5);
    assert_eq!(a.sink.status().alerts_fired, 1);

    // The store comes back (empty): the fleet's window is read again.
    redis.restart();
    assert!(
        within(Duration::from_secs(10), || a.sink.status().counted_by
            == "fleet")
        .await
        .is_some(),
        "the fleet's counts are read again once the store answers"
    );
}
