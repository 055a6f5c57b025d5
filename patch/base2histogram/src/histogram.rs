//! The histogram: 252 counters on a log-linear scale, and percentiles read from them.
//!
//! Must never import anything outside this crate.

use std::fmt;
use std::marker::PhantomData;

/// Significant bits kept per value: four buckets per power of two (the published crate's
/// default width, the only one openraft uses).
const WIDTH: u32 = 3;
const PER_GROUP: usize = 1 << (WIDTH - 1);
/// Values below `PER_GROUP` get a bucket each; every bit length above adds a group.
pub(crate) const BUCKETS: usize = PER_GROUP * (66 - WIDTH as usize);

/// The bucket holding `value`.
pub(crate) fn bucket_of(value: u64) -> usize {
    if value < PER_GROUP as u64 {
        return value as usize;
    }
    let bits = u64::BITS - value.leading_zeros();
    let shift = bits - WIDTH;
    // The value's top WIDTH bits, PER_GROUP..2 * PER_GROUP, pick the bucket within its group.
    let top = (value >> shift) as usize;
    PER_GROUP * shift as usize + top
}

/// The smallest value in `bucket`, and how many values it spans.
pub(crate) fn bucket_bounds(bucket: usize) -> (u64, u64) {
    if bucket < PER_GROUP {
        return (bucket as u64, 1);
    }
    let shift = (bucket / PER_GROUP - 1) as u32;
    let top = (PER_GROUP + bucket % PER_GROUP) as u64;
    (top << shift, 1 << shift)
}

/// Counts of recorded values by magnitude.
///
/// `T` is the per-period label of the published API's sliding windows, which this crate does not
/// keep (see the crate comment); it only appears in type signatures.
pub struct Histogram<T = ()> {
    buckets: Box<[u64]>,
    total: u64,
    label: PhantomData<fn() -> T>,
}

impl<T> Histogram<T> {
    /// An empty histogram (2 KiB of counters).
    pub fn new() -> Self {
        Self {
            buckets: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            label: PhantomData,
        }
    }

    /// Counts one occurrence of `value`.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Counts `count` occurrences of `value`.
    pub fn record_n(&mut self, value: u64, count: u64) {
        let bucket = &mut self.buckets[bucket_of(value)];
        *bucket = bucket.saturating_add(count);
        self.total = self.total.saturating_add(count);
    }

    /// How many values were recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The value at fraction `p` (0.0 to 1.0) of the recorded values in ascending order, within
    /// the error of its bucket; 0 when nothing was recorded.
    pub fn percentile(&self, p: f64) -> u64 {
        self.percentiles(&[p])[0]
    }

    /// [`percentile`](Self::percentile) for each of `ps`, which must be ascending, in one pass.
    fn percentiles<const N: usize>(&self, ps: &[f64; N]) -> [u64; N] {
        let mut out = [0; N];
        if self.total == 0 {
            return out;
        }
        let mut bucket = 0;
        // Values in the buckets before `bucket`; wide, so that counts near u64::MAX cannot wrap.
        let mut below = 0u128;
        for (slot, &p) in out.iter_mut().zip(ps) {
            // The 1-based position in ascending order; ceil so that p = 0.5 of 2 values is the
            // first, as a nearest-rank percentile is.
            let rank = ((self.total as f64 * p).ceil() as u64).clamp(1, self.total);
            while below + u128::from(self.buckets[bucket]) < u128::from(rank) {
                below += u128::from(self.buckets[bucket]);
                bucket += 1;
            }
            *slot = value_within(bucket, u128::from(rank) - below, self.buckets[bucket]);
        }
        out
    }

    /// The percentiles openraft reports.
    pub fn percentile_stats(&self) -> PercentileStats {
        let [p0_1, p1, p5, p10, p50, p90, p99, p99_9] =
            self.percentiles(&[0.001, 0.01, 0.05, 0.10, 0.50, 0.90, 0.99, 0.999]);
        PercentileStats {
            samples: self.total,
            p0_1,
            p1,
            p5,
            p10,
            p50,
            p90,
            p99,
            p99_9,
        }
    }

    /// Non-empty buckets as (bucket, count), ascending.
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, &count)| count > 0)
            .map(|(bucket, &count)| (bucket, count))
    }
}

/// Where the `rank`-th of a bucket's `count` values lies, spreading them evenly over the bucket.
fn value_within(bucket: usize, rank: u128, count: u64) -> u64 {
    let (low, span) = bucket_bounds(bucket);
    // The middle of the rank's share of the span: (rank - 1/2) / count of the way in.
    let offset = u128::from(span) * (2 * rank - 1) / (2 * u128::from(count));
    low + offset as u64
}

impl<T> Default for Histogram<T> {
    fn default() -> Self {
        Self::new()
    }
}

// Written out rather than derived: a derive would demand `T: Clone` and the like of a label
// that is never stored.
impl<T> Clone for Histogram<T> {
    fn clone(&self) -> Self {
        Self {
            buckets: self.buckets.clone(),
            total: self.total,
            label: PhantomData,
        }
    }
}

impl<T> PartialEq for Histogram<T> {
    fn eq(&self, other: &Self) -> bool {
        self.total == other.total && self.buckets == other.buckets
    }
}

impl<T> Eq for Histogram<T> {}

impl<T> fmt::Debug for Histogram<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("percentiles", &self.percentile_stats())
            .finish()
    }
}

/// A histogram's sample count and percentiles (`p0_1` is the 0.1th, `p99_9` the 99.9th).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PercentileStats {
    pub samples: u64,
    pub p0_1: u64,
    pub p1: u64,
    pub p5: u64,
    pub p10: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
}

impl fmt::Display for PercentileStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p0.1={} p1={} p5={} p10={} p50={} p90={} p99={} p99.9={}",
            self.samples,
            self.p0_1,
            self.p1,
            self.p5,
            self.p10,
            self.p50,
            self.p90,
            self.p99,
            self.p99_9
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_once_in_order() {
        // Consecutive buckets abut, from 0 to u64::MAX, and each value maps back to its bucket.
        let mut next = 0u64;
        for bucket in 0..BUCKETS {
            let (low, span) = bucket_bounds(bucket);
            assert_eq!(low, next, "bucket {bucket}");
            assert_eq!(bucket_of(low), bucket);
            let high = low + (span - 1);
            assert_eq!(bucket_of(high), bucket);
            next = high.wrapping_add(1);
        }
        assert_eq!(next, 0, "the last bucket ends at u64::MAX");
    }

    #[test]
    fn a_bucket_spans_at_most_a_quarter_of_its_smallest_value() {
        for bucket in PER_GROUP..BUCKETS {
            let (low, span) = bucket_bounds(bucket);
            assert!(span * 4 <= low, "bucket {bucket}: [{low}, +{span})");
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::<()>::new();
        for v in [0, 1, 2, 3, 3, 3] {
            h.record(v);
        }
        let s = h.percentile_stats();
        // Nearest rank: the 3rd of 6 is the median.
        assert_eq!((s.samples, s.p0_1, s.p50, s.p99_9), (6, 0, 2, 3));
        assert_eq!(h.percentile(0.67), 3);
    }

    #[test]
    fn percentiles_of_a_uniform_spread_land_in_the_exact_values_bucket() {
        let mut h = Histogram::<()>::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (p, exact) in [(0.001, 100), (0.5, 50_000), (0.9, 90_000), (0.999, 99_900)] {
            let got = h.percentile(p);
            assert_eq!(
                bucket_of(got),
                bucket_of(exact),
                "p{p}: {got} against {exact}"
            );
        }
        // Where a bucket is full, spreading its values evenly gives the value itself.
        assert_eq!(h.percentile(0.001), 100);
    }

    #[test]
    fn record_n_counts_like_repeated_records() {
        let mut a = Histogram::<()>::new();
        let mut b = Histogram::<()>::new();
        a.record_n(700, 5);
        a.record_n(u64::MAX, 2);
        for _ in 0..5 {
            b.record(700);
        }
        b.record(u64::MAX);
        b.record(u64::MAX);
        assert_eq!(a, b);
        assert_eq!(a.total(), 7);
        assert!(a.percentile(1.0) >= 7 << 61);
        // Counts saturate rather than wrap, and percentiles of them still land in their bucket.
        let mut huge = Histogram::<()>::new();
        huge.record_n(5, u64::MAX);
        huge.record_n(900, u64::MAX);
        assert_eq!(huge.total(), u64::MAX);
        assert_eq!(huge.percentile(1.0), 5);
        let empty = Histogram::<()>::new();
        assert_eq!(empty.percentile_stats().samples, 0);
        assert_eq!(empty.percentile(0.5), 0);
    }
}
