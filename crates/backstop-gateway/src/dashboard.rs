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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// The totals when the last step closed.
    last: Totals,
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
            }),
        }
    }

    /// Closes a step at `unix_ms` with the running `totals`; the oldest
    /// step goes when the span is full.
    pub fn close_step(&self, totals: Totals, unix_ms: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let step = step_between(&inner.last, &totals, unix_ms);
        inner.last = totals;
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
        steps.push(step_between(&inner.last, &totals, unix_ms));
        HistoryView {
            span_ms: self.step_ms.saturating_mul(self.capacity as u64),
            steps,
            step_ms: self.step_ms,
        }
    }
}

fn step_between(earlier: &Totals, now: &Totals, unix_ms: u64) -> HistoryStep {
    let d = now.since(earlier);
    HistoryStep {
        end_unix_ms: unix_ms,
        errors: d.errors,
        fallbacks: d.fallbacks,
        requests: d.requests,
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Feeds a [`FallbackHistory`] from the metrics and adds it to the status
/// document. Dropping it stops the sampling task.
#[derive(Debug)]
pub struct HistoryObserver {
    history: Arc<FallbackHistory>,
    metrics: Arc<Metrics>,
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
        let task = tokio::spawn({
            let history = history.clone();
            let metrics = metrics.clone();
            async move {
                let mut ticks = tokio::time::interval(HISTORY_STEP);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    history.close_step(metrics.totals(), unix_ms_now());
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

impl Drop for HistoryObserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Observability for HistoryObserver {
    /// Nothing: `/metrics` has the running totals already.
    fn render_prometheus(&self, _: &mut String) {}

    fn status(&self, doc: &mut StatusDocument) {
        doc.fallback_history = Some(
            self.history
                .view(self.metrics.totals(), doc.generated_unix_ms),
        );
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
