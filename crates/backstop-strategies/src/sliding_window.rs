//! Lock-free counters over a sliding, time-bucketed window.
//!
//! The window is `buckets` buckets, each covering `window / buckets` of
//! time, kept in a ring of slots (a power of two at least that long, so a
//! bucket finds its slot with a mask), each slot holding `K` counters (calls, failures, slow calls; requests,
//! fallbacks). A counter is one `AtomicU64`: the low 40 bits count, the high
//! 24 bits tag the bucket the count belongs to (its bucket number modulo
//! 2^24). Adding to a counter whose tag is current is one `fetch_add`; a
//! stale tag is replaced by compare-and-swap, so a slot is recycled without a
//! lock and without losing a concurrent increment.
//!
//! Each slot is striped: its counters exist once per stripe, each stripe on
//! its own cache line, and a thread adds to its own stripe. Threads
//! recording at once therefore do not bounce one cache line between cores;
//! reading (rare: on failures, for snapshots) sums the stripes.
//!
//! Tags are truncated, so a slot left untouched for 2^24 buckets could alias
//! a current one. To rule that out, whoever moves the window's newest bucket
//! forward also zeroes the slots of the buckets skipped in between (all of
//! them after a gap longer than the window); every tag therefore stays
//! within one window of the newest bucket, and a window idle for longer than
//! itself reads as empty.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use backstop_core::clock::duration_to_nanos;

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;
const TAG_HALF: u64 = 1 << (64 - COUNT_BITS - 1);

/// Stripes per slot.
const STRIPES: usize = 4;

/// One stripe of a slot's counters, alone on its cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct Stripe<const K: usize>([AtomicU64; K]);

/// The stripe of the current thread: threads take stripes in turn as they
/// first record, so a handful of threads never share one.
fn my_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// `K` counters summed over the last `window` of time.
#[derive(Debug)]
pub(crate) struct SlidingWindow<const K: usize> {
    bucket_nanos: u64,
    /// Buckets the window spans.
    buckets: u64,
    /// Slots of the ring minus one (the ring's length is a power of two).
    ring_mask: u64,
    /// `ring * STRIPES` stripes: slot `i` is `stripes[i * STRIPES..][..STRIPES]`.
    stripes: Box<[Stripe<K>]>,
    /// The newest bucket number seen (full width).
    newest: AtomicU64,
}

fn tag_of(bucket: u64) -> u64 {
    bucket & TAG_MASK
}

/// Whether tag `a` is strictly older than tag `b` (modulo the tag width).
fn older(a: u64, b: u64) -> bool {
    let d = b.wrapping_sub(a) & TAG_MASK;
    d != 0 && d < TAG_HALF
}

fn word(tag: u64, count: u64) -> u64 {
    (tag << COUNT_BITS) | (count & COUNT_MASK)
}

impl<const K: usize> SlidingWindow<K> {
    /// A window of `window` split into `buckets` buckets (at least one, and
    /// buckets of at least one nanosecond).
    pub(crate) fn new(window: Duration, buckets: u32) -> Self {
        let buckets = u64::from(buckets.max(1));
        let bucket_nanos = (duration_to_nanos(window) / buckets).max(1);
        let ring = buckets.next_power_of_two();
        Self {
            bucket_nanos,
            buckets,
            ring_mask: ring - 1,
            stripes: (0..ring as usize * STRIPES)
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            newest: AtomicU64::new(0),
        }
    }

    /// Number of slots of the ring.
    fn ring(&self) -> u64 {
        self.ring_mask + 1
    }

    /// The bucket of `now`; `newest` spares the division in the common
    /// case of a time in the newest bucket.
    fn bucket_at(&self, now: Duration, newest: u64) -> u64 {
        let nanos = duration_to_nanos(now);
        let start = newest.wrapping_mul(self.bucket_nanos);
        if nanos.wrapping_sub(start) < self.bucket_nanos {
            newest
        } else {
            nanos / self.bucket_nanos
        }
    }

    /// Every stripe of `bucket`'s slot.
    fn slot(&self, bucket: u64) -> &[Stripe<K>] {
        // The mask keeps the range inside the slice.
        let first = (bucket & self.ring_mask) as usize * STRIPES;
        &self.stripes[first..first + STRIPES]
    }

    /// Every counter of `bucket`'s slot, all stripes.
    fn slot_counters(&self, bucket: u64) -> impl Iterator<Item = &AtomicU64> {
        self.slot(bucket).iter().flat_map(|stripe| stripe.0.iter())
    }

    /// Adds `by[k]` to counter `k` at time `now`.
    pub(crate) fn add(&self, now: Duration, by: [u64; K]) {
        let newest = self.newest.load(Ordering::Acquire);
        let bucket = self.bucket_at(now, newest);
        if bucket > newest {
            self.advance(bucket);
        }
        let tag = tag_of(bucket);
        let stripe = &self.slot(bucket)[my_stripe()];
        for (counter, n) in stripe.0.iter().zip(by) {
            if n == 0 {
                continue;
            }
            let mut current = counter.load(Ordering::Relaxed);
            loop {
                let current_tag = current >> COUNT_BITS;
                if !older(current_tag, tag) {
                    // Current bucket (or, for a caller whose clock read lags
                    // a bucket behind another's, the next one: a count a few
                    // nanoseconds late is harmless).
                    counter.fetch_add(n, Ordering::Relaxed);
                    break;
                }
                match counter.compare_exchange_weak(
                    current,
                    word(tag, n),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
        }
    }

    /// Moves the newest bucket to `bucket`, zeroing the slots of the buckets
    /// skipped since the previous newest one.
    fn advance(&self, bucket: u64) {
        let mut newest = self.newest.load(Ordering::Relaxed);
        while bucket > newest {
            match self.newest.compare_exchange_weak(
                newest,
                bucket,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if bucket - newest >= self.ring() {
                        // The whole ring expired and old tags may alias
                        // current ones: start every slot afresh.
                        for b in bucket + 1 - self.ring()..=bucket {
                            let tag = tag_of(b);
                            for counter in self.slot_counters(b) {
                                counter.store(word(tag, 0), Ordering::Relaxed);
                            }
                        }
                    } else {
                        for skipped in newest + 1..bucket {
                            self.clear_slot(skipped);
                        }
                    }
                    return;
                }
                Err(actual) => newest = actual,
            }
        }
    }

    /// Sets every counter of `bucket`'s slot to zero for that bucket, unless
    /// it already holds that bucket or a newer one.
    fn clear_slot(&self, bucket: u64) {
        let tag = tag_of(bucket);
        for counter in self.slot_counters(bucket) {
            let mut current = counter.load(Ordering::Relaxed);
            while older(current >> COUNT_BITS, tag) {
                match counter.compare_exchange_weak(
                    current,
                    word(tag, 0),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
        }
    }

    /// Each counter summed over the window ending at `now`.
    pub(crate) fn sums(&self, now: Duration) -> [u64; K] {
        let mut out = [0; K];
        let newest = self.newest.load(Ordering::Acquire);
        let bucket = self.bucket_at(now, newest);
        if bucket >= newest.saturating_add(self.buckets) {
            // Idle for longer than the window: everything has expired (and
            // the tags may have wrapped, so they are not consulted).
            return out;
        }
        let tag = tag_of(bucket);
        for stripe in self.stripes.iter() {
            for (sum, counter) in out.iter_mut().zip(&stripe.0) {
                let w = counter.load(Ordering::Relaxed);
                let age = tag.wrapping_sub(w >> COUNT_BITS) & TAG_MASK;
                if age < self.buckets {
                    *sum += w & COUNT_MASK;
                }
            }
        }
        out
    }

    /// Zeroes every count, keeping the buckets' tags. Increments racing with
    /// the reset may survive it; none is corrupted.
    pub(crate) fn reset(&self) {
        for stripe in self.stripes.iter() {
            for counter in &stripe.0 {
                let mut current = counter.load(Ordering::Relaxed);
                while current & COUNT_MASK != 0 {
                    match counter.compare_exchange_weak(
                        current,
                        current & !COUNT_MASK,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break,
                        Err(actual) => current = actual,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn counts_expire_bucket_by_bucket() {
        // 10 s window, 1 s buckets.
        let w = SlidingWindow::<2>::new(ms(10_000), 10);
        w.add(ms(0), [1, 0]);
        w.add(ms(500), [1, 1]);
        w.add(ms(4_200), [1, 0]);
        assert_eq!(w.sums(ms(4_200)), [3, 1]);
        // At 10.0 s the bucket [0, 1) s has left the window.
        assert_eq!(w.sums(ms(9_999)), [3, 1]);
        assert_eq!(w.sums(ms(10_000)), [1, 0]);
        // The bucket [4, 5) s leaves at 14.0 s.
        assert_eq!(w.sums(ms(13_999)), [1, 0]);
        assert_eq!(w.sums(ms(14_000)), [0, 0]);
    }

    #[test]
    fn a_recycled_slot_starts_from_zero() {
        let w = SlidingWindow::<1>::new(ms(1_000), 4);
        w.add(ms(0), [5]);
        // Bucket 4 reuses slot 0.
        w.add(ms(1_000), [2]);
        assert_eq!(w.sums(ms(1_000)), [2]);
    }

    #[test]
    fn a_window_shorter_than_its_ring_counts_only_its_buckets() {
        // 3 buckets of 1 s in a ring of 4 slots.
        let w = SlidingWindow::<1>::new(ms(3_000), 3);
        w.add(ms(0), [5]);
        w.add(ms(3_500), [2]);
        assert_eq!(w.sums(ms(3_500)), [2]);
        assert_eq!(w.sums(ms(2_999)), [5]);
        // Bucket 4 takes slot 0 again, from zero.
        w.add(ms(4_000), [1]);
        assert_eq!(w.sums(ms(4_000)), [3]);
        assert_eq!(w.sums(ms(6_000)), [1]);
        assert_eq!(w.sums(ms(7_000)), [0]);
    }

    #[test]
    fn slots_skipped_over_a_long_gap_never_alias() {
        // 4 buckets of 1 ns, so 2^24 buckets pass quickly.
        let w = SlidingWindow::<1>::new(Duration::from_nanos(4), 4);
        w.add(Duration::from_nanos(1), [7]);
        w.add(Duration::from_nanos(2), [1]);
        // Exactly 2^24 buckets later, bucket 1's tag would match again.
        let later = (1u64 << 24) + 2;
        w.add(Duration::from_nanos(later), [1]);
        assert_eq!(w.sums(Duration::from_nanos(later)), [1]);
        assert_eq!(w.sums(Duration::from_nanos(later + 1)), [1]);
    }

    #[test]
    fn an_idle_window_reads_empty() {
        let w = SlidingWindow::<1>::new(ms(1_000), 10);
        w.add(ms(100), [3]);
        assert_eq!(w.sums(ms(5_000)), [0]);
    }

    #[test]
    fn reset_zeroes_counts() {
        let w = SlidingWindow::<2>::new(ms(1_000), 10);
        w.add(ms(100), [3, 2]);
        w.add(ms(200), [1, 0]);
        w.reset();
        assert_eq!(w.sums(ms(200)), [0, 0]);
        w.add(ms(200), [1, 1]);
        assert_eq!(w.sums(ms(200)), [1, 1]);
    }

    #[test]
    fn concurrent_adds_are_all_counted() {
        let w = std::sync::Arc::new(SlidingWindow::<1>::new(ms(1_000), 10));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let w = w.clone();
                s.spawn(move || {
                    for _ in 0..10_000 {
                        w.add(ms(50), [1]);
                    }
                });
            }
        });
        assert_eq!(w.sums(ms(50)), [40_000]);
    }
}
