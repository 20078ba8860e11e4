//! Lock-free counters over a sliding, time-bucketed window.
//!
//! The window is `buckets` buckets, each covering `window / buckets` of
//! time, kept in a ring of slots (a power of two at least that long, so a
//! bucket finds its slot with a mask), each slot holding `K` counters
//! (calls, failures, slow calls; requests, fallbacks).
//!
//! Each slot is striped: its counters exist once per stripe, each stripe on
//! its own cache line, and a thread adds to its own stripe. Threads
//! recording at once therefore do not bounce one cache line between cores;
//! reading (rare: on failures, for snapshots) sums the stripes.
//!
//! Every stripe carries the full bucket number (its epoch) its counts
//! belong to, in a `u64` that never wraps. Adding to a stripe of the
//! current bucket is one `fetch_add` per counter. A stripe still holding an
//! older bucket is recycled by whoever finds it first: one compare-and-swap
//! marks it as being recycled, the counters are set, and the new epoch is
//! published; a thread that meets a stripe mid-recycle adds to another
//! stripe of the slot instead of waiting. A reader counts a stripe only if
//! its epoch lies within the window of its `now`, so a slot left untouched
//! for any length of time can never pass for a current one, and nothing
//! needs clearing when time jumps ahead.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use backstop_core::clock::duration_to_nanos;

/// Marks an epoch whose stripe is being recycled.
const RECYCLING: u64 = 1 << 63;
/// The largest epoch (bucket number + 1; 0 marks a stripe never used).
const EPOCH_MAX: u64 = RECYCLING - 1;

/// Stripes per slot.
const STRIPES: usize = 4;

/// One stripe of a slot's counters, alone on its cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct Stripe<const K: usize> {
    /// The bucket the counts belong to, plus one (0: never used), with
    /// [`RECYCLING`] set while they are being replaced.
    epoch: AtomicU64,
    counts: [AtomicU64; K],
}

/// The stripe of the current thread: threads take stripes in turn as they
/// first record, so a handful of threads never share one.
fn my_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// The epoch of `bucket`.
fn epoch_of(bucket: u64) -> u64 {
    bucket.min(EPOCH_MAX - 1) + 1
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
    /// The newest bucket seen: only a hint that spares `bucket_at` its
    /// division in the common case.
    newest: AtomicU64,
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
                .map(|_| Stripe {
                    epoch: AtomicU64::new(0),
                    counts: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
            newest: AtomicU64::new(0),
        }
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

    /// Adds `by[k]` to counter `k` at time `now`.
    pub(crate) fn add(&self, now: Duration, by: [u64; K]) {
        let newest = self.newest.load(Ordering::Relaxed);
        let bucket = self.bucket_at(now, newest);
        if bucket > newest {
            self.newest.fetch_max(bucket, Ordering::Relaxed);
        }
        let epoch = epoch_of(bucket);
        let slot = self.slot(bucket);
        let mut index = my_stripe();
        let mut busy = 0;
        loop {
            let stripe = &slot[index];
            let current = stripe.epoch.load(Ordering::Acquire);
            if current & RECYCLING != 0 {
                // Another thread is recycling this stripe: any stripe of
                // the slot will do. Only when all of them are being
                // recycled at once is there anything to wait for.
                index = (index + 1) % STRIPES;
                busy += 1;
                if busy % STRIPES == 0 {
                    std::hint::spin_loop();
                }
                continue;
            }
            if current >= epoch {
                // The current bucket (or, for a caller whose clock read
                // lags a whole ring behind another's, a newer one: a count
                // a little late is harmless).
                for (counter, n) in stripe.counts.iter().zip(by) {
                    if n != 0 {
                        counter.fetch_add(n, Ordering::Relaxed);
                    }
                }
                return;
            }
            // The stripe holds a bucket that has left the window: start it
            // afresh for this one.
            if stripe
                .epoch
                .compare_exchange(
                    current,
                    epoch | RECYCLING,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                for (counter, n) in stripe.counts.iter().zip(by) {
                    counter.store(n, Ordering::Relaxed);
                }
                stripe.epoch.store(epoch, Ordering::Release);
                return;
            }
        }
    }

    /// Each counter summed over the window ending at `now`.
    pub(crate) fn sums(&self, now: Duration) -> [u64; K] {
        let bucket = self.bucket_at(now, self.newest.load(Ordering::Relaxed));
        let epoch = epoch_of(bucket);
        let mut out = [0; K];
        for stripe in self.stripes.iter() {
            let e = stripe.epoch.load(Ordering::Acquire);
            // Never used, being recycled (its old counts have expired and
            // its new ones are about to start), newer than `now`, or out of
            // the window.
            if e == 0 || e & RECYCLING != 0 || e > epoch || epoch - e >= self.buckets {
                continue;
            }
            for (sum, counter) in out.iter_mut().zip(&stripe.counts) {
                *sum += counter.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// Zeroes every count, keeping the buckets' epochs. Increments racing
    /// with the reset may survive it; none is corrupted.
    pub(crate) fn reset(&self) {
        for stripe in self.stripes.iter() {
            for counter in &stripe.counts {
                counter.store(0, Ordering::Relaxed);
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
        assert_eq!(w.sums(Duration::from_nanos(later)), [0]);
        w.add(Duration::from_nanos(later), [1]);
        assert_eq!(w.sums(Duration::from_nanos(later)), [1]);
        assert_eq!(w.sums(Duration::from_nanos(later + 1)), [1]);
    }

    #[test]
    fn old_counts_never_alias_for_a_reader_during_a_jump_of_2_pow_24_buckets() {
        // A window full of counts, then one call exactly 2^24 buckets later
        // (1 ns buckets, so 2^24 ns): with bucket tags 24 bits wide, every
        // old bucket would carry the tag of a current one. A reader at the
        // new time, racing the call that jumps there, must see at most that
        // one call.
        const WRAP: u64 = 1 << 24;
        const BUCKETS: u64 = 1_000;
        let w = SlidingWindow::<1>::new(Duration::from_nanos(BUCKETS), BUCKETS as u32);
        let target = AtomicU64::new(0);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut start = 0;
                for _ in 0..500 {
                    // A full window of old counts...
                    for b in start..start + BUCKETS {
                        w.add(Duration::from_nanos(b), [1]);
                    }
                    // ...then, exactly the wrap distance later, one call.
                    let jump = start + BUCKETS - 1 + WRAP;
                    target.store(jump, Ordering::SeqCst);
                    w.add(Duration::from_nanos(jump), [1]);
                    start = jump + 1;
                }
                done.store(true, Ordering::SeqCst);
            });
            s.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    let now = target.load(Ordering::SeqCst);
                    let [calls] = w.sums(Duration::from_nanos(now));
                    assert!(
                        calls <= 1,
                        "{calls} calls seen at {now}: old buckets aliased"
                    );
                }
            });
        });
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

    #[test]
    fn concurrent_adds_across_fresh_buckets_are_all_counted() {
        // Every add starts a new bucket, so threads recycle stripes of the
        // same slots at the same time.
        let w = SlidingWindow::<1>::new(Duration::from_nanos(10_000), 10_000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for b in 0..10_000 {
                        w.add(Duration::from_nanos(b), [1]);
                    }
                });
            }
        });
        assert_eq!(w.sums(Duration::from_nanos(9_999)), [40_000]);
    }
}
