//! Log-linear histograms for openraft's runtime statistics, under the name and API of the
//! crates.io package `base2histogram` 0.2 that openraft 0.10 depends on.
//!
//! Why this crate exists: the published crate fills a process-wide table for all sixteen bucket
//! widths the first time any histogram is made, about 25 MiB of written, resident memory, while
//! openraft only ever uses the default width (252 buckets). openraft makes its histograms when a
//! Raft instance starts, so every member, and every application embedding one, paid those 25 MiB
//! before serving anything. Here the bucket of a value and the bounds of a bucket are computed
//! with a few bit operations, and a histogram is its 252 counters and nothing shared.
//!
//! What it owns: [`Histogram`], [`PercentileStats`] and [`AsciiChart`], with the methods openraft
//! calls (the build fails if openraft starts calling one that is missing). The bucket layout is
//! the one the published crate documents for its default width (three significant bits: four
//! buckets per power of two, at most 12.5 % relative error); percentiles interpolate uniformly
//! within a bucket. The sliding-window slots of the published API are not implemented: openraft
//! makes only single-period histograms, and the `T` parameter is kept for its type signatures.
//!
//! It must never import anything from Cairn or from openraft: it sits below both.

mod chart;
mod histogram;

pub use chart::AsciiChart;
pub use histogram::{Histogram, PercentileStats};
