//! The periodic log summary: one line per `[server] log_summary_ms` that
//! sums up the traffic since the last one, in place of a line per request.
//!
//! The line says how many requests finished, how many ended in an error,
//! how many a backup answered (and that rate), how many upstream calls
//! failed and how many circuits opened. It is at warn when anything fell
//! back, failed or opened, at info otherwise, and a period without any
//! traffic writes nothing. Circuit transitions are logged as they happen
//! (the Router and the prober); per-request detail is at debug.

use std::sync::Arc;
use std::time::Duration;

use backstop_config::monitor::{Metrics, Totals};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Keeps the summary running; dropping it stops the task.
#[derive(Debug)]
pub struct LogSummary {
    task: JoinHandle<()>,
}

impl Drop for LogSummary {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts logging a summary of `metrics` every `every`, on the current
/// tokio runtime.
///
/// # Panics
///
/// Outside a tokio runtime, as `tokio::spawn` does.
pub fn spawn(metrics: Arc<Metrics>, every: Duration) -> LogSummary {
    LogSummary {
        task: tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks.tick().await;
            let mut last = metrics.totals();
            loop {
                ticks.tick().await;
                let now = metrics.totals();
                log(&now.since(&last), every);
                last = now;
            }
        }),
    }
}

fn log(d: &Totals, every: Duration) {
    if d.requests == 0 && d.failed_calls == 0 && d.circuits_opened == 0 {
        return;
    }
    let period_s = every.as_secs_f64();
    let fallback_rate = if d.requests == 0 {
        0.0
    } else {
        d.fallbacks as f64 / d.requests as f64
    };
    let troubled = d.errors > 0 || d.fallbacks > 0 || d.failed_calls > 0 || d.circuits_opened > 0;
    macro_rules! summary {
        ($level:ident) => {
            tracing::$level!(
                period_s,
                requests = d.requests,
                errors = d.errors,
                fallbacks = d.fallbacks,
                fallback_rate,
                failed_calls = d.failed_calls,
                circuits_opened = d.circuits_opened,
                "traffic summary"
            )
        };
    }
    if troubled {
        summary!(warn);
    } else {
        summary!(info);
    }
}
