//! Text charts of several named histograms over a shared scale, for openraft's runtime
//! statistics display.
//!
//! Must never import anything outside this crate.

use std::fmt;

use crate::histogram::{bucket_bounds, Histogram};

/// Named histograms drawn one under another, so their distributions line up.
pub struct AsciiChart<T = ()> {
    series: Vec<(String, Histogram<T>)>,
}

impl<T> AsciiChart<T> {
    pub fn new() -> Self {
        Self { series: Vec::new() }
    }

    /// Adds a series below the ones already added.
    pub fn add(mut self, name: &str, hist: Histogram<T>) -> Self {
        self.series.push((name.to_owned(), hist));
        self
    }

    /// One line per series: its name, sample count and a bar of block characters, one per bucket
    /// from the lowest to the highest bucket any series uses.
    pub fn compact(&self) -> Compact<'_, T> {
        Compact(self)
    }

    /// Per series, one line per bucket in the shared range, with its bounds, count and a bar.
    pub fn detailed(&self) -> Detailed<'_, T> {
        Detailed(self)
    }

    /// The lowest and highest bucket any series holds a value in.
    fn range(&self) -> Option<(usize, usize)> {
        let buckets = self
            .series
            .iter()
            .flat_map(|(_, h)| h.occupied().map(|(b, _)| b));
        buckets.fold(None, |range, b| match range {
            None => Some((b, b)),
            Some((low, high)) => Some((low.min(b), high.max(b))),
        })
    }

    fn name_width(&self) -> usize {
        self.series
            .iter()
            .map(|(name, _)| name.chars().count())
            .max()
            .unwrap_or(0)
    }
}

impl<T> Default for AsciiChart<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Display for AsciiChart<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.compact().fmt(f)
    }
}

/// Counts of one series per bucket of `low..=high`.
fn counts<T>(hist: &Histogram<T>, low: usize, high: usize) -> Vec<u64> {
    let mut counts = vec![0; high - low + 1];
    for (bucket, count) in hist.occupied() {
        counts[bucket - low] = count;
    }
    counts
}

const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// See [`AsciiChart::compact`].
pub struct Compact<'a, T>(&'a AsciiChart<T>);

impl<T> fmt::Display for Compact<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chart = self.0;
        let Some((low, high)) = chart.range() else {
            return writeln!(f, "(no samples)");
        };
        let width = chart.name_width();
        for (name, hist) in &chart.series {
            let counts = counts(hist, low, high);
            let peak = counts.iter().copied().max().unwrap_or(0).max(1);
            let bar: String = counts
                .iter()
                .map(|&c| {
                    // Any non-zero count shows at least the lowest block.
                    let level = (c * 8).div_ceil(peak) as usize;
                    LEVELS[level]
                })
                .collect();
            writeln!(f, "{name:<width$} n={:<8} |{bar}|", hist.total())?;
        }
        let (from, _) = bucket_bounds(low);
        let (last, span) = bucket_bounds(high);
        writeln!(
            f,
            "{:<width$} {:10} {from} .. {}",
            "",
            "",
            last + (span - 1)
        )
    }
}

/// See [`AsciiChart::detailed`].
pub struct Detailed<'a, T>(&'a AsciiChart<T>);

impl<T> fmt::Display for Detailed<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BAR: u64 = 40;
        let chart = self.0;
        let Some((low, high)) = chart.range() else {
            return writeln!(f, "(no samples)");
        };
        for (name, hist) in &chart.series {
            writeln!(f, "{name}: {}", hist.percentile_stats())?;
            let counts = counts(hist, low, high);
            let peak = counts.iter().copied().max().unwrap_or(0).max(1);
            for (i, &count) in counts.iter().enumerate() {
                let (from, span) = bucket_bounds(low + i);
                let bar = "#".repeat((count * BAR).div_ceil(peak) as usize);
                writeln!(
                    f,
                    "  {from:>12} .. {:<12} {count:>10} {bar}",
                    from + (span - 1)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_share_one_range_across_series() {
        let mut fast = Histogram::<()>::new();
        let mut slow = Histogram::<()>::new();
        fast.record_n(10, 100);
        slow.record_n(1000, 3);
        let chart = AsciiChart::new().add("fast", fast).add("slow", slow);
        let compact = chart.compact().to_string();
        let lines: Vec<&str> = compact.lines().collect();
        assert!(lines[0].starts_with("fast n=100"), "{compact}");
        assert!(
            lines[0].contains("|█") && lines[1].ends_with("█|"),
            "{compact}"
        );
        assert!(lines[2].trim_end().ends_with("10 .. 1023"), "{compact}");
        let detailed = chart.detailed().to_string();
        assert!(detailed.contains("slow: n=3 p0.1=917"), "{detailed}");
        assert!(detailed
            .lines()
            .any(|l| l.contains("896 .. 1023") && l.contains(" 3 #")));
        assert_eq!(AsciiChart::<()>::new().to_string(), "(no samples)\n");
    }
}
