//! The alert rule on a manual clock, and its webhook on loopback.

use std::sync::Arc;

use backstop_core::{HealthTransition, ManualClock, ModelSpec, RequestFinished, StrategyContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn ctx() -> (StrategyContext, Arc<ManualClock>) {
    let clock = ManualClock::shared();
    let models = vec![ModelSpec::new("gpt-4o", "openai")];
    (StrategyContext::new(models, clock.clone()), clock)
}

fn sink(config: AlertConfig) -> (AlertSink, Arc<ManualClock>) {
    let (ctx, clock) = ctx();
    let webhook = config.webhook_url.clone().map(|url| {
        let timeout = Duration::from_millis(config.webhook_timeout_ms);
        backstop_http::webhook::Webhook::new(&url, timeout).unwrap()
    });
    let sink = AlertSink::new(config, &ctx).unwrap();
    let sink = match webhook {
        // What config attaches when `webhook_url` is set.
        Some(webhook) => sink.with_delivery(Arc::new(HttpWebhook(webhook))),
        None => sink,
    };
    (sink, clock)
}

/// The webhook sender of `backstop-http` behind the delivery seam.
#[derive(Debug)]
struct HttpWebhook(backstop_http::webhook::Webhook);

impl AlertDelivery for HttpWebhook {
    fn deliver(&self, body: serde_json::Value) {
        self.0.send(body);
    }
}

fn rule(max_fallbacks: u32, window_ms: u64) -> AlertConfig {
    AlertConfig {
        max_fallbacks,
        window_ms,
        ..AlertConfig::default()
    }
}

fn fallback_event(n: u64) -> FallbackEvent {
    FallbackEvent {
        timestamp_ms: n,
        scenario: "realtime_chat".into(),
        primary: "gpt-4o".into(),
        model_used: "qwen-7b".into(),
        reason: "timeout",
        level: 1,
        latency: ms(120),
    }
}

/// One request's events: its end and, when a backup answered, its fallback.
fn request(s: &AlertSink, fell_back: bool) {
    let finished = RequestFinished {
        scenario: "realtime_chat",
        model_used: Some(if fell_back { "qwen-7b" } else { "gpt-4o" }),
        fallback_level: Some(usize::from(fell_back)),
        error: None,
        latency: ms(100),
        upstream_attempts: 1,
        stream: false,
    };
    s.record(&Event::RequestFinished(&finished));
    if fell_back {
        s.record(&Event::Fallback(&fallback_event(0)));
    }
}

#[test]
fn defaults_are_ten_per_hour() {
    let c = AlertConfig::default();
    assert_eq!((c.max_fallbacks, c.window_ms), (10, 3_600_000));
    assert_eq!(c.webhook_url, None);
}

#[test]
fn fires_once_per_window_not_once_per_event() {
    let (s, clock) = sink(rule(3, 60_000));
    request(&s, true);
    request(&s, true);
    assert_eq!(s.status().alerts_fired, 0);
    request(&s, true);
    assert_eq!(s.status().alerts_fired, 1);
    let first = s.status().last_alert_unix_ms.unwrap();
    // The storm goes on within the window: no more alerts.
    for _ in 0..20 {
        clock.advance(ms(2_000));
        request(&s, true);
    }
    assert_eq!(s.status().alerts_fired, 1);
    assert_eq!(s.status().last_alert_unix_ms, Some(first));
    // A window after the first alert, it still goes on: one more.
    clock.advance(ms(20_000));
    request(&s, true);
    assert_eq!(s.status().alerts_fired, 2);
    request(&s, true);
    assert_eq!(s.status().alerts_fired, 2);
}

#[test]
fn fallbacks_spread_thinner_than_the_threshold_never_fire() {
    let (s, clock) = sink(rule(3, 60_000));
    for _ in 0..30 {
        request(&s, true);
        request(&s, false);
        clock.advance(ms(31_000));
    }
    assert_eq!(s.status().alerts_fired, 0);
}

#[test]
fn the_fallback_rate_is_exact_over_the_window() {
    let (s, clock) = sink(rule(100, 60_000));
    for i in 0..8 {
        request(&s, i % 4 == 0);
    }
    let status = s.status();
    assert_eq!((status.requests, status.fallbacks), (8, 2));
    assert_eq!(status.fallback_rate, 0.25);
    assert_eq!(s.fallback_rate(), 0.25);
    clock.advance(ms(30_000));
    for _ in 0..2 {
        request(&s, true);
    }
    assert_eq!(s.fallback_rate(), 0.4);
    // The first eight leave the window.
    clock.advance(ms(30_000));
    assert_eq!(s.fallback_rate(), 1.0);
    clock.advance(ms(60_000));
    assert_eq!(s.status().requests, 0);
    assert_eq!(s.fallback_rate(), 0.0);
}

#[test]
fn keeps_the_last_fallback_events() {
    let (s, _) = sink(AlertConfig {
        recent: 3,
        ..AlertConfig::default()
    });
    for n in 0..5 {
        s.record(&Event::Fallback(&fallback_event(n)));
    }
    let recent: Vec<u64> = s.status().recent.iter().map(|e| e.timestamp_ms).collect();
    assert_eq!(recent, [2, 3, 4]);
}

#[test]
fn many_threads_fire_one_alert() {
    let (s, _) = sink(rule(10, 60_000));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..500 {
                    request(&s, true);
                }
            });
        }
    });
    let status = s.status();
    assert_eq!(status.alerts_fired, 1);
    assert_eq!((status.requests, status.fallbacks), (2_000, 2_000));
}

#[test]
fn a_webhook_without_a_runtime_is_skipped_not_a_panic() {
    let (s, _) = sink(AlertConfig {
        max_fallbacks: 1,
        webhook_url: Some("http://127.0.0.1:9/hook".into()),
        ..AlertConfig::default()
    });
    request(&s, true);
    assert_eq!(s.status().alerts_fired, 1);
}

#[test]
fn bad_values_name_their_key() {
    let (ctx, _) = ctx();
    for (value, field) in [
        (serde_json::json!({"max_fallbacks": 0}), "max_fallbacks"),
        (serde_json::json!({"window_ms": 0}), "window_ms"),
        (
            serde_json::json!({"window_ms": 10, "buckets": 60}),
            "buckets",
        ),
        (
            serde_json::json!({"webhook_url": "ftp://x/y"}),
            "webhook_url",
        ),
        (
            serde_json::json!({"webhook_url": "not a url"}),
            "webhook_url",
        ),
        (
            serde_json::json!({"webhook_timeout_ms": 0}),
            "webhook_timeout_ms",
        ),
    ] {
        let err = AlertSink::from_value(&value, &ctx).unwrap_err();
        assert_eq!(err.field(), Some(field), "{value}: {err}");
    }
}

/// Accepts one HTTP request, answers 200, returns its JSON body.
async fn next_post(listener: &TcpListener) -> serde_json::Value {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let (head_end, length) = loop {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the body");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("post /hook "), "{head}");
            assert!(head.contains("content-type: application/json"), "{head}");
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .trim()
                .parse::<usize>()
                .unwrap();
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    serde_json::from_slice(&buf[head_end..head_end + length]).unwrap()
}

#[tokio::test]
async fn the_webhook_receives_one_post_per_window_and_one_per_disabled_model() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (s, _) = sink(AlertConfig {
        max_fallbacks: 2,
        window_ms: 60_000,
        webhook_url: Some(url),
        ..AlertConfig::default()
    });
    for _ in 0..6 {
        request(&s, true);
    }
    request(&s, false);
    let bound = Duration::from_secs(10);
    let body = tokio::time::timeout(bound, next_post(&listener))
        .await
        .unwrap();
    assert_eq!(body["alert"], "fallbacks");
    assert_eq!(body["fallbacks"], 2);
    assert_eq!(body["requests"], 2);
    assert_eq!(body["fallback_rate"], 1.0);
    assert_eq!(body["window_ms"], 60_000);
    assert_eq!(body["recent"].as_array().unwrap().len(), 2);
    assert_eq!(body["recent"][0]["model_used"], "qwen-7b");

    s.record(&Event::Health {
        model: "gpt-4o",
        transition: HealthTransition {
            from: CircuitState::Closed,
            to: CircuitState::Disabled,
            cause: Some(FailureKind::Auth),
        },
    });
    // Had the storm fired again, that POST would have been sent first.
    let body = tokio::time::timeout(bound, next_post(&listener))
        .await
        .unwrap();
    assert_eq!(body["alert"], "model_disabled");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["cause"], "auth");
    assert_eq!(s.status().alerts_fired, 1);
}
