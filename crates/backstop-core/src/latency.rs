//! Per-model latency estimates: peak-sensitive EWMA, lock-free.
//!
//! Each model has three estimates: time to first token (streams) and total
//! time (complete calls) of real traffic, and the round trip of background
//! probes, kept apart because a probe asks for a few tokens only and is no
//! measure of a real answer's total time. A sample above the estimate
//! replaces it at once (one slow spike counts), a sample below pulls it
//! down exponentially with the time since the last sample (decay time
//! constant `tau`, 10 s by default). Models never measured have no
//! estimate, and selectors rank them by priority instead of comparing
//! "nothing" with a number. Each estimate knows its age (the time since
//! its last sample), so a selector can re-measure what it has not seen for
//! long instead of trusting it forever.
//!
//! Each model also has a *failing* flag: set when a call or probe fails in
//! a way that says something about the model (not a request fault), cleared
//! by its next answer. A selector that explores does not explore a model
//! believed down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{SharedClock, duration_to_nanos};
use crate::model::ModelIndex;

/// Which estimate a sample feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyKind {
    /// Time to first token of a stream.
    FirstToken,
    /// Total time of a complete call.
    Total,
    /// Round trip of a background probe (a request of a few tokens).
    Probe,
}

impl LatencyKind {
    /// The snake_case name used in status documents and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LatencyKind::FirstToken => "first_token",
            LatencyKind::Total => "total",
            LatencyKind::Probe => "probe",
        }
    }
}

#[derive(Debug, Default)]
struct PeakEwma {
    /// Estimate in nanoseconds, as `f64` bits; 0 = no data.
    estimate_bits: AtomicU64,
    /// Clock time of the last sample, in nanoseconds.
    stamp_nanos: AtomicU64,
}

impl PeakEwma {
    fn observe(&self, sample_nanos: f64, now_nanos: u64, tau_nanos: f64) {
        let last = self.stamp_nanos.swap(now_nanos, Ordering::AcqRel);
        let elapsed = now_nanos.saturating_sub(last) as f64;
        let mut current = self.estimate_bits.load(Ordering::Acquire);
        loop {
            let old = f64::from_bits(current);
            let new = if old == 0.0 || sample_nanos > old {
                sample_nanos
            } else {
                let w = (-elapsed / tau_nanos).exp();
                old * w + sample_nanos * (1.0 - w)
            };
            // Never store exactly 0.0, which means "no data".
            let new = new.max(1.0);
            match self.estimate_bits.compare_exchange_weak(
                current,
                new.to_bits(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn estimate(&self) -> Option<Duration> {
        let v = f64::from_bits(self.estimate_bits.load(Ordering::Acquire));
        (v > 0.0).then(|| Duration::from_nanos(v as u64))
    }

    /// Time since the last sample at clock time `now_nanos`; `None` when
    /// never measured.
    fn age(&self, now_nanos: u64) -> Option<Duration> {
        self.estimate()?;
        let stamp = self.stamp_nanos.load(Ordering::Acquire);
        Some(Duration::from_nanos(now_nanos.saturating_sub(stamp)))
    }
}

#[derive(Debug, Default)]
struct ModelLatency {
    first_token: PeakEwma,
    total: PeakEwma,
    probe: PeakEwma,
    failing: AtomicBool,
}

impl ModelLatency {
    fn of(&self, kind: LatencyKind) -> &PeakEwma {
        match kind {
            LatencyKind::FirstToken => &self.first_token,
            LatencyKind::Total => &self.total,
            LatencyKind::Probe => &self.probe,
        }
    }
}

/// Latency estimates of every model of a Router.
#[derive(Debug)]
pub struct LatencyStats {
    models: Box<[ModelLatency]>,
    clock: SharedClock,
    tau_nanos: f64,
}

impl LatencyStats {
    /// Estimates for `models` models, decaying with a 10 s time constant.
    pub fn new(models: usize, clock: SharedClock) -> Self {
        Self::with_decay(models, clock, Duration::from_secs(10))
    }

    /// Estimates decaying with time constant `tau`.
    pub fn with_decay(models: usize, clock: SharedClock, tau: Duration) -> Self {
        Self {
            models: (0..models).map(|_| ModelLatency::default()).collect(),
            clock,
            tau_nanos: (duration_to_nanos(tau).max(1)) as f64,
        }
    }

    /// Feeds one sample of an answer; the model is no longer failing.
    pub fn observe(&self, model: ModelIndex, kind: LatencyKind, sample: Duration) {
        let Some(m) = self.models.get(model) else {
            return;
        };
        let now = duration_to_nanos(self.clock.now());
        let sample = duration_to_nanos(sample) as f64;
        m.of(kind).observe(sample, now, self.tau_nanos);
        if m.failing.load(Ordering::Relaxed) {
            m.failing.store(false, Ordering::Relaxed);
        }
    }

    /// The current estimate, `None` when the model was never measured.
    pub fn estimate(&self, model: ModelIndex, kind: LatencyKind) -> Option<Duration> {
        self.models.get(model)?.of(kind).estimate()
    }

    /// Time since the estimate's last sample, `None` when never measured.
    pub fn age(&self, model: ModelIndex, kind: LatencyKind) -> Option<Duration> {
        self.age_at(model, kind, self.clock.now())
    }

    /// [`Self::age`] at clock time `now` (read once for many models).
    pub fn age_at(&self, model: ModelIndex, kind: LatencyKind, now: Duration) -> Option<Duration> {
        let m = self.models.get(model)?;
        m.of(kind).age(duration_to_nanos(now))
    }

    /// Records that a call or probe of the model failed in a way that says
    /// something about the model; its next answer clears it.
    pub fn note_failure(&self, model: ModelIndex) {
        if let Some(m) = self.models.get(model) {
            m.failing.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the model's last call or probe failed.
    pub fn is_failing(&self, model: ModelIndex) -> bool {
        self.models
            .get(model)
            .is_some_and(|m| m.failing.load(Ordering::Relaxed))
    }

    /// The clock the estimates are stamped with.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Number of models tracked.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether no model is tracked.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn unmeasured_model_has_no_estimate() {
        let stats = LatencyStats::new(2, ManualClock::shared());
        assert_eq!(stats.estimate(0, LatencyKind::Total), None);
        assert_eq!(stats.estimate(7, LatencyKind::Total), None);
    }

    #[test]
    fn a_spike_counts_at_once_and_decays_with_time() {
        let clock = Arc::new(ManualClock::new());
        let stats = LatencyStats::new(1, clock.clone());
        stats.observe(0, LatencyKind::Total, ms(100));
        stats.observe(0, LatencyKind::Total, ms(900));
        assert_eq!(stats.estimate(0, LatencyKind::Total), Some(ms(900)));
        // One tau later a fast sample pulls the estimate most of the way down.
        clock.advance(Duration::from_secs(10));
        stats.observe(0, LatencyKind::Total, ms(100));
        let e = stats.estimate(0, LatencyKind::Total).unwrap();
        let expected = 900.0 * (-1f64).exp() + 100.0 * (1.0 - (-1f64).exp());
        assert!((e.as_secs_f64() * 1000.0 - expected).abs() < 0.01, "{e:?}");
        // Without time passing a fast sample barely moves it.
        stats.observe(0, LatencyKind::Total, ms(1));
        assert!(stats.estimate(0, LatencyKind::Total).unwrap() > ms(390));
    }

    #[test]
    fn an_estimate_knows_its_age_and_a_failure_lasts_until_the_next_answer() {
        let clock = Arc::new(ManualClock::new());
        let stats = LatencyStats::new(1, clock.clone());
        assert_eq!(stats.age(0, LatencyKind::Total), None);
        stats.observe(0, LatencyKind::Total, ms(100));
        clock.advance(Duration::from_secs(7));
        assert_eq!(
            stats.age(0, LatencyKind::Total),
            Some(Duration::from_secs(7))
        );
        assert_eq!(stats.age(0, LatencyKind::Probe), None);
        stats.note_failure(0);
        assert!(stats.is_failing(0));
        stats.observe(0, LatencyKind::Probe, ms(20));
        assert!(!stats.is_failing(0));
        assert_eq!(stats.age(0, LatencyKind::Probe), Some(Duration::ZERO));
        assert_eq!(stats.estimate(0, LatencyKind::Total), Some(ms(100)));
    }

    #[test]
    fn first_token_and_total_are_separate() {
        let stats = LatencyStats::new(1, ManualClock::shared());
        stats.observe(0, LatencyKind::FirstToken, ms(50));
        assert_eq!(stats.estimate(0, LatencyKind::Total), None);
        assert_eq!(stats.estimate(0, LatencyKind::FirstToken), Some(ms(50)));
    }
}
