//! Image garbage collection as the kubelet does it: when the filesystem holding the images is
//! fuller than the high threshold (`--image-gc-high-threshold`, 85%), images no container on the
//! node uses are removed, least recently used first and none younger than the minimum age
//! (`--image-minimum-gc-age`, 2 min), until usage would be at the low threshold
//! (`--image-gc-low-threshold`, 80%). A high threshold of 100 turns it off.

use std::time::Duration;

use super::store::{now_ms, Store};
use super::{ImageError, InUse};

#[derive(Debug, Clone)]
pub struct GcPolicy {
    /// Percent of the filesystem in use at which collection starts.
    pub high: u8,
    /// Percent to free down to.
    pub low: u8,
    pub min_age: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            high: 85,
            low: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcReport {
    /// Percent of the filesystem in use before collection.
    pub usage_percent: u64,
    /// IDs of the images removed.
    pub removed: Vec<String>,
    /// Bytes of blobs deleted.
    pub freed: u64,
}

/// (capacity, used) of the filesystem holding `store`.
fn usage(store: &Store) -> Result<(u64, u64), ImageError> {
    let st = nix::sys::statvfs::statvfs(&store.dir).map_err(|e| ImageError::Io {
        context: format!("statfs {}", store.dir.display()),
        source: e.into(),
    })?;
    let frsize = st.fragment_size() as u64;
    let capacity = st.blocks() as u64 * frsize;
    let available = st.blocks_available() as u64 * frsize;
    Ok((capacity, capacity.saturating_sub(available)))
}

pub fn collect(store: &Store, policy: &GcPolicy, in_use: &InUse) -> Result<GcReport, ImageError> {
    let (capacity, used) = usage(store)?;
    let mut report = GcReport {
        usage_percent: (used * 100).checked_div(capacity).unwrap_or(0),
        ..Default::default()
    };
    if policy.high >= 100 || capacity == 0 || report.usage_percent < policy.high as u64 {
        return Ok(report);
    }
    let target = capacity * policy.low as u64 / 100;
    let to_free = used.saturating_sub(target);
    tracing::info!(
        usage = report.usage_percent,
        high = policy.high,
        to_free,
        "disk usage above the image GC high threshold"
    );
    let now = now_ms();
    let min_age = policy.min_age.as_millis() as u64;
    let removed = store.update(|index| {
        let mut candidates: Vec<(u64, String, u64)> = index
            .images
            .iter()
            .filter(|(id, rec)| {
                !in_use.ids.contains(*id) && now.saturating_sub(rec.created_ms) >= min_age
            })
            .map(|(id, rec)| (rec.last_used_ms, id.clone(), rec.size))
            .collect();
        candidates.sort();
        let mut freed = 0;
        let mut removed = Vec::new();
        for (_, id, size) in candidates {
            if freed >= to_free {
                break;
            }
            index.images.remove(&id);
            index.refs.retain(|_, d| *d != id);
            freed += size;
            removed.push(id);
        }
        Ok(removed)
    })?;
    report.freed = store.sweep(&in_use.layers)?;
    for id in &removed {
        tracing::info!(id = %id, "image garbage-collected");
    }
    report.removed = removed;
    Ok(report)
}
