//! Time, injected.
//!
//! Every window, cooldown, break duration and probe interval in Backstop reads
//! time through a [`Clock`], so state machines are tested by moving a
//! [`ManualClock`] forward instead of sleeping. Timestamps are plain
//! [`Duration`]s since the clock's origin: they fit in an `AtomicU64` (as
//! nanoseconds), which keeps lock-free strategies lock-free.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of monotonic time and wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic time since this clock's origin. Never goes backwards.
    fn now(&self) -> Duration;

    /// Wall-clock time as milliseconds since the Unix epoch, for event
    /// timestamps people read. Never used for measuring intervals.
    fn unix_ms(&self) -> u64;
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
///
/// It reads `tokio::time::Instant`, so in a test that pauses tokio's clock
/// (`tokio::time::pause`) it follows the paused time, and the Router's
/// timeouts and the strategies' windows move together.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }

    /// A shared handle to a new system clock.
    pub fn shared() -> SharedClock {
        Arc::new(Self::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that only moves when told to. For tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
    unix_origin_ms: u64,
}

impl ManualClock {
    /// A clock at time zero whose wall clock reads 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self {
            nanos: AtomicU64::new(0),
            unix_origin_ms: 1_767_225_600_000,
        }
    }

    /// A shared handle to a new manual clock.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        self.nanos
            .fetch_add(duration_to_nanos(by), Ordering::SeqCst);
    }

    /// Set the monotonic time. Panics if that would move time backwards.
    pub fn set(&self, to: Duration) {
        let to = duration_to_nanos(to);
        let before = self.nanos.swap(to, Ordering::SeqCst);
        assert!(before <= to, "ManualClock::set would move time backwards");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn unix_ms(&self) -> u64 {
        self.unix_origin_ms + self.nanos.load(Ordering::SeqCst) / 1_000_000
    }
}

/// Nanoseconds of a duration, saturating at `u64::MAX` (584 years).
pub fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        assert_eq!(clock.now(), Duration::ZERO);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), Duration::from_millis(1500));
        assert_eq!(clock.unix_ms(), 1_767_225_600_000 + 1500);
    }

    #[tokio::test(start_paused = true)]
    async fn system_clock_follows_paused_tokio_time() {
        let clock = SystemClock::new();
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(clock.now() >= Duration::from_secs(7));
    }
}
