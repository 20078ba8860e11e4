//! `GET /dashboard`: a live page for the people who run the gateway.
//!
//! The page is three static files built into the binary (`assets/`:
//! HTML, CSS, JavaScript; no CDN, nothing to build). It polls
//! `/v1/backstop/status` every second with the caller's key and draws,
//! from that one document: each scenario's chain with every model's
//! circuit state, since when, and its latency estimates; the fallback rate
//! over the last minutes; the last fallback events and their reasons;
//! budgets (and rate limits, when the document has them); and the fleet
//! store's state. A model that does not take calls is named at the top
//! with its state and since when, in words and a symbol as well as colour.
//!
//! The page itself needs no key; every data call does. With keys
//! configured the page asks for one once and keeps it in the browser's
//! session storage (gone when the tab closes); without keys it asks for
//! nothing.
//!
//! So that a page opened during an incident sees the minutes before it,
//! the gateway keeps the history: [`FallbackHistory`] closes a step every
//! [`HISTORY_STEP`] from the metrics' running totals (requests, fallbacks,
//! errors) and keeps the last [`HISTORY_SPAN`]; the status document carries
//! it as `fallback_history`, the step in progress last. The last fallback
//! events come from the alert sink's bounded list (`[alerts] recent`),
//! already in the document as `recent_fallbacks`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router as HttpRouter;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backstop_config::monitor::{Metrics, Totals};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::app::{Gateway, Observability};
use crate::introspect::StatusDocument;

/// One step of the fallback-rate history: 5 s.
pub const HISTORY_STEP: Duration = Duration::from_secs(5);

/// How far back the history goes: 15 minutes.
pub const HISTORY_SPAN: Duration = Duration::from_secs(15 * 60);

const PAGE: &str = include_str!("../assets/dashboard.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");

/// Only the gateway's own files run in the page; it talks only to the
/// gateway and cannot be framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's routes: `/dashboard` and its script and style sheet.
pub fn routes() -> HttpRouter<Arc<Gateway>> {
    HttpRouter::new()
        .route("/dashboard", get(|| async { asset(PAGE, "text/html") }))
        .route("/dashboard/", get(|| async { asset(PAGE, "text/html") }))
        .route(
            "/dashboard/dashboard.js",
            get(|| async { asset(SCRIPT, "text/javascript") }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { asset(STYLE, "text/css") }),
        )
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("{kind}; charset=utf-8"))
            .unwrap_or(HeaderValue::from_static("text/plain")),
    );
    // A new binary may bring a new page: never serve a stale one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// One step of the history: what finished between the previous step's end
/// and `end_unix_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HistoryStep {
    /// Wall clock (Unix ms) at the step's end (for the step in progress:
    /// now).
    pub end_unix_ms: u64,
    /// Requests that ended in an error.
    pub errors: u64,
    /// Requests a backup answered.
    pub fallbacks: u64,
    /// Requests finished.
    pub requests: u64,
}

/// `fallback_history` in the status document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryView {
    /// How far back the history goes when full.
    pub span_ms: u64,
    /// The steps, oldest first; the last is the step in progress.
    pub steps: Vec<HistoryStep>,
    /// The length of a step.
    pub step_ms: u64,
}

/// The last minutes of requests and fallbacks, one entry per step: a
/// bounded ring buffer fed from the metrics' running totals.
#[derive(Debug)]
pub struct FallbackHistory {
    step_ms: u64,
    capacity: usize,
    inner: Mutex<HistoryInner>,
}

#[derive(Debug)]
struct HistoryInner {
    steps: VecDeque<HistoryStep>,
    /// The totals when the last step closed (or the source changed).
    last: Totals,
    /// What the step in progress counted on a source it no longer reads.
    carried: HistoryStep,
}

impl FallbackHistory {
    /// Keeps `span` of history in steps of `step`, counting from `start`
    /// (the totals when the gateway started: zero, usually).
    pub fn new(step: Duration, span: Duration, start: Totals) -> Self {
        let step_ms = u64::try_from(step.as_millis()).unwrap_or(u64::MAX).max(1);
        let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
        let capacity = usize::try_from(span_ms / step_ms)
            .unwrap_or(usize::MAX)
            .max(1);
        Self {
            step_ms,
            capacity,
            inner: Mutex::new(HistoryInner {
                steps: VecDeque::with_capacity(capacity.min(4096)),
                last: start,
                carried: HistoryStep::default(),
            }),
        }
    }

    /// Closes a step at `unix_ms` with the running `totals`; the oldest
    /// step goes when the span is full.
    pub fn close_step(&self, totals: Totals, unix_ms: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let step = inner.step_to(&totals, unix_ms);
        inner.last = totals;
        inner.carried = HistoryStep::default();
        if inner.steps.len() == self.capacity {
            inner.steps.pop_front();
        }
        inner.steps.push_back(step);
    }

    /// The closed steps and, last, the one in progress up to `unix_ms`
    /// with the running `totals`.
    pub fn view(&self, totals: Totals, unix_ms: u64) -> HistoryView {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut steps: Vec<HistoryStep> = inner.steps.iter().copied().collect();
        steps.push(inner.step_to(&totals, unix_ms));
        HistoryView {
            span_ms: self.step_ms.saturating_mul(self.capacity as u64),
            steps,
            step_ms: self.step_ms,
        }
    }
}

impl FallbackHistory {
    /// The counters change from totals reading `old` to totals reading
    /// `new` now (a reload built new metrics): what the step in progress
    /// counted so far is kept, and it counts on from `new`.
    pub fn switch_source(&self, old: Totals, new: Totals) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.carried = inner.step_to(&old, 0);
        inner.last = new;
    }
}

impl HistoryInner {
    /// The step in progress, ending at `unix_ms` with the running `totals`.
    fn step_to(&self, totals: &Totals, unix_ms: u64) -> HistoryStep {
        let d = totals.since(&self.last);
        HistoryStep {
            end_unix_ms: unix_ms,
            errors: self.carried.errors + d.errors,
            fallbacks: self.carried.fallbacks + d.fallbacks,
            requests: self.carried.requests + d.requests,
        }
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Feeds a [`FallbackHistory`] from the metrics and adds it to the status
/// document. Dropping it stops the sampling task.
///
/// A reload that builds new metrics keeps the observer (and so the past
/// minutes) and calls [`HistoryObserver::follow`].
#[derive(Debug)]
pub struct HistoryObserver {
    history: Arc<FallbackHistory>,
    /// Where the totals come from; shared with the sampling task.
    metrics: Arc<Mutex<Arc<Metrics>>>,
    task: JoinHandle<()>,
}

impl HistoryObserver {
    /// Starts closing a step of `metrics` every [`HISTORY_STEP`], keeping
    /// [`HISTORY_SPAN`], on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn(metrics: Arc<Metrics>) -> Arc<Self> {
        let history = Arc::new(FallbackHistory::new(
            HISTORY_STEP,
            HISTORY_SPAN,
            metrics.totals(),
        ));
        let metrics = Arc::new(Mutex::new(metrics));
        let task = tokio::spawn({
            let history = history.clone();
            let metrics = metrics.clone();
            async move {
                let mut ticks = tokio::time::interval(HISTORY_STEP);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    // Under the source's lock, so a switch cannot fall
                    // between reading the totals and closing the step.
                    let source = metrics.lock().unwrap_or_else(PoisonError::into_inner);
                    history.close_step(source.totals(), unix_ms_now());
                }
            }
        });
        Arc::new(Self {
            history,
            metrics,
            task,
        })
    }
}

impl HistoryObserver {
    /// Counts from `metrics` from now on, keeping the history (a reload
    /// that built new metrics). The same metrics change nothing.
    pub fn follow(&self, metrics: Arc<Metrics>) {
        let mut source = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&source, &metrics) {
            return;
        }
        self.history
            .switch_source(source.totals(), metrics.totals());
        *source = metrics;
    }
}

impl Drop for HistoryObserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Observability for HistoryObserver {
    /// Nothing: `/metrics` has the running totals already.
    fn render_prometheus(&self, _: &mut String) {}

    fn status(&self, doc: &mut StatusDocument) {
        let source = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        doc.fallback_history = Some(self.history.view(source.totals(), doc.generated_unix_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, fallbacks: u64, errors: u64) -> Totals {
        Totals {
            requests,
            errors,
            fallbacks,
            ..Totals::default()
        }
    }

    #[test]
    fn each_step_holds_what_finished_since_the_previous_one() {
        let h = FallbackHistory::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
            totals(0, 0, 0),
        );
        h.close_step(totals(10, 2, 0), 5_000);
        h.close_step(totals(25, 2, 1), 10_000);
        let view = h.view(totals(31, 5, 1), 12_000);
        assert_eq!(view.step_ms, 5_000);
        assert_eq!(view.span_ms, 60_000);
        assert_eq!(
            view.steps,
            [
                HistoryStep {
                    end_unix_ms: 5_000,
                    errors: 0,
                    fallbacks: 2,
                    requests: 10
                },
                HistoryStep {
                    end_unix_ms: 10_000,
                    errors: 1,
                    fallbacks: 0,
                    requests: 15
                },
                // The step in progress.
                HistoryStep {
                    end_unix_ms: 12_000,
                    errors: 0,
                    fallbacks: 3,
                    requests: 6
                },
            ]
        );
    }

    #[test]
    fn a_new_source_keeps_what_the_step_in_progress_counted() {
        let h = FallbackHistory::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
            totals(0, 0, 0),
        );
        h.close_step(totals(10, 1, 0), 5_000);
        // Mid-step, new counters start from zero; the old had 4 more.
        h.switch_source(totals(14, 3, 1), totals(0, 0, 0));
        let view = h.view(totals(2, 1, 0), 7_000);
        assert_eq!(
            view.steps[1],
            HistoryStep {
                end_unix_ms: 7_000,
                errors: 1,
                fallbacks: 3,
                requests: 6
            }
        );
        // The carried counts belong to that step only.
        h.close_step(totals(3, 1, 0), 10_000);
        let view = h.view(totals(5, 1, 0), 11_000);
        assert_eq!(view.steps[1].requests, 7);
        assert_eq!(view.steps[2].requests, 2);
    }

    fn metrics() -> Arc<Metrics> {
        let ctx = backstop_core::StrategyContext::new(
            vec![backstop_core::ModelSpec::new("m", "p")],
            backstop_core::ManualClock::shared(),
        );
        Arc::new(Metrics::from_value(&serde_json::json!({}), &ctx).unwrap())
    }

    /// A request of scenario `chat` answered at `level`, with its
    /// fallback event when the level is not 0, as the Router reports it.
    fn answered(metrics: &Metrics, level: usize) {
        use backstop_core::{Event, EventSink, FallbackEvent, RequestFinished};
        if level > 0 {
            metrics.record(&Event::Fallback(&FallbackEvent {
                timestamp_ms: 0,
                scenario: "chat".into(),
                primary: "p".into(),
                model_used: "m".into(),
                reason: "server",
                level,
                latency: Duration::from_millis(3),
            }));
        }
        metrics.record(&Event::RequestFinished(&RequestFinished {
            scenario: "chat",
            model_used: Some("m"),
            fallback_level: Some(level),
            error: None,
            latency: Duration::from_millis(3),
            upstream_attempts: 1,
            stream: false,
        }));
    }

    fn in_progress(observer: &HistoryObserver) -> HistoryStep {
        let source = observer.metrics.lock().unwrap();
        let view = observer.history.view(source.totals(), 1);
        *view.steps.last().unwrap()
    }

    #[tokio::test]
    async fn the_observer_follows_new_metrics_without_losing_the_minutes_counted() {
        let old = metrics();
        answered(&old, 0);
        // Counted from the totals at start: this request is before it.
        let observer = HistoryObserver::spawn(old.clone());
        answered(&old, 1);
        answered(&old, 0);
        assert_eq!(in_progress(&observer).requests, 2);
        // The same metrics again: nothing changes.
        observer.follow(old.clone());
        assert_eq!(in_progress(&observer).requests, 2);
        // A reload built new metrics.
        let new = metrics();
        observer.follow(new.clone());
        answered(&old, 1); // the old sink no longer counts here
        answered(&new, 1);
        let step = in_progress(&observer);
        assert_eq!((step.requests, step.fallbacks), (3, 2));
    }

    #[test]
    fn the_history_keeps_only_its_span() {
        let h = FallbackHistory::new(
            Duration::from_secs(5),
            Duration::from_secs(15),
            totals(100, 0, 0),
        );
        for i in 1..=5 {
            h.close_step(totals(100 + i, i, 0), i * 5_000);
        }
        let view = h.view(totals(105, 5, 0), 26_000);
        let ends: Vec<u64> = view.steps.iter().map(|s| s.end_unix_ms).collect();
        // Three closed steps (15 s / 5 s), then the one in progress.
        assert_eq!(ends, [15_000, 20_000, 25_000, 26_000]);
        // Counted from the totals at start, not from zero.
        assert!(view.steps.iter().take(3).all(|s| s.requests == 1));
        assert_eq!(view.steps[3].requests, 0);
    }

    #[test]
    fn a_step_shorter_than_a_millisecond_or_a_span_shorter_than_a_step_still_keeps_one() {
        let h = FallbackHistory::new(Duration::ZERO, Duration::ZERO, totals(0, 0, 0));
        h.close_step(totals(1, 0, 0), 1);
        h.close_step(totals(2, 0, 0), 2);
        let view = h.view(totals(2, 0, 0), 3);
        assert_eq!(view.steps.len(), 2);
        assert_eq!(view.step_ms, 1);
    }

    #[test]
    fn the_assets_are_served_with_their_types_and_a_strict_policy() {
        let page = asset(PAGE, "text/html");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
        // The page loads its own script and style sheet and nothing else.
        assert!(PAGE.contains("src=\"/dashboard/dashboard.js\""));
        assert!(PAGE.contains("href=\"/dashboard/dashboard.css\""));
        // No CDN: the only URL in the script is the SVG namespace's name.
        let script = SCRIPT.replace("http://www.w3.org/2000/svg", "");
        for text in [PAGE, STYLE, script.as_str()] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
