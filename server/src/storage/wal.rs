//! The Raft log's own write-ahead file: entries appended to segment files and made durable with one
//! `fdatasync`, away from sled.
//!
//! Through sled every append cost a tree insert, a wake-up of sled's IO thread, a `pwrite` with a
//! `sync_file_range` (one device round trip) and then the `fdatasync` that makes it durable (a
//! second one), plus a scan of sled's blob directory. Here an append is one `pwrite` into the page
//! cache and the flush one `fdatasync`, on the thread that asked for it.
//!
//! Layout: the directory holds segment files named after the index of their first entry
//! (`{index:020}.wal`). A segment is a run of records, each a 16-byte header (payload length u32
//! LE, CRC-32C u32 LE over the index and the payload, index u64 LE) and the payload. Indexes are
//! consecutive within the log. A segment is closed once it passes [`SEGMENT_BYTES`]; it is synced
//! before the next one is created, so only the newest segment can end in a torn record.
//!
//! Opening reads every segment and keeps the longest valid prefix: a record cut short, failing its
//! checksum or out of sequence ends the log there, the rest of its segment is cut off and later
//! segments are removed. Truncation (a follower dropping entries that conflict with a new leader's)
//! is made durable before it returns, so dropped entries never reappear after a crash behind newer
//! ones. Purging removes whole segments; the caller records the purge point durably first.
//!
//! Entries are opaque bytes here: what they mean is consensus' business. Must never import `raft/`
//! or `grpc/`, and never names sled.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A segment is closed once it holds this many bytes (etcd's WAL segment size).
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 16;
/// Larger payloads are taken for damage, not entries (a batch is bounded well below this).
const MAX_PAYLOAD: usize = 256 << 20;
const EXTENSION: &str = "wal";
/// Zeros written ahead of the records, this much at a time. An `fdatasync` that must also commit a
/// new file size costs a journal commit: on ext4 a small append that grows the file syncs in about
/// 0.16 ms, one into already written blocks in about 0.12 ms. The zeros read as the end of the log.
const PREALLOCATE: u64 = 4 << 20;

/// Where one entry lives.
#[derive(Clone, Copy)]
struct Slot {
    /// The first index of the segment holding it (its file name).
    segment: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    first: u64,
    file: Arc<File>,
    /// Bytes of records.
    len: u64,
    /// Bytes in the file: `len` plus zeros written ahead of the records (see [`PREALLOCATE`]).
    size: u64,
}

struct Inner {
    dir: PathBuf,
    /// Oldest first; never empty once the log has been written to.
    segments: VecDeque<Segment>,
    /// Index of `slots[0]`; meaningful only while `slots` is not empty.
    first: u64,
    slots: VecDeque<Slot>,
    /// The index the next append must carry, once any entry was written (gaps are allowed only
    /// into an empty log: after a snapshot install purged everything).
    next: Option<u64>,
}

/// The write-ahead log. Cheap to share: appends, truncation and purges come from one task, reads
/// from any.
#[derive(Clone)]
pub(crate) struct Wal {
    inner: Arc<Mutex<Inner>>,
}

/// What opening found, for the caller to report.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub entries: u64,
    /// Bytes cut off the end because they did not form valid records (a torn last write).
    pub dropped_bytes: u64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.{EXTENSION}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&index.to_le_bytes()), payload)
}

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one segment's valid records; stops at the first that is not. Returns the slots and the
/// length of the valid prefix.
fn scan(
    file: &File,
    first: u64,
    expect: Option<u64>,
    slots: &mut Vec<(u64, Slot)>,
) -> io::Result<u64> {
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut next = expect.unwrap_or(first);
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    loop {
        if !read_full(&mut input, &mut header)? {
            return Ok(offset);
        }
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let index = u64::from_le_bytes(header[8..16].try_into().unwrap());
        if len as usize > MAX_PAYLOAD || index != next {
            return Ok(offset);
        }
        payload.resize(len as usize, 0);
        if !read_full(&mut input, &mut payload)? || checksum(index, &payload) != crc {
            return Ok(offset);
        }
        slots.push((
            index,
            Slot {
                segment: first,
                offset,
                len,
            },
        ));
        offset += (HEADER + len as usize) as u64;
        next += 1;
    }
}

/// Whether the file holds only zeros from `from` to `to`: space written ahead of the records.
fn zeros_from(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Fills `buf`; false if the input ended first (a torn record reads as the end).
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, keeping its longest valid prefix.
    pub fn open(dir: &Path) -> io::Result<(Wal, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
                continue;
            }
            let first = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| corrupt(format!("unexpected log segment {}", path.display())))?;
            names.push(first);
        }
        names.sort_unstable();

        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segments: VecDeque::new(),
            first: 0,
            slots: VecDeque::new(),
            next: None,
        };
        let mut recovered = Recovered::default();
        let mut found = Vec::new();
        let mut ended = false;
        let mut removed = false;
        for &first in &names {
            let path = segment_path(dir, first);
            if ended {
                // After a torn segment nothing later can be part of the log.
                std::fs::remove_file(&path)?;
                removed = true;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let size = file.metadata()?.len();
            // A segment starting past the end of the previous one follows a purge of everything
            // before it (a snapshot install): the older entries are all purged, so the log
            // restarts here.
            let expect = match inner.next {
                Some(next) if next == first => Some(next),
                _ => {
                    found.clear();
                    for old in inner.segments.drain(..) {
                        std::fs::remove_file(segment_path(dir, old.first))?;
                        removed = true;
                    }
                    None
                }
            };
            let valid = scan(&file, first, expect, &mut found)?;
            let mut kept = size;
            if valid < size && !zeros_from(&file, valid, size)? {
                // A torn write: its bytes go, and so does everything after it.
                recovered.dropped_bytes += size - valid;
                file.set_len(valid)?;
                file.sync_all()?;
                kept = valid;
                ended = true;
            }
            inner.next = Some(found.last().map(|(i, _)| i + 1).unwrap_or(first));
            inner.segments.push_back(Segment {
                first,
                file: Arc::new(file),
                len: valid,
                size: kept,
            });
        }
        if removed || names.is_empty() {
            sync_dir(dir)?;
        }
        if let Some((first, _)) = found.first() {
            inner.first = *first;
        }
        recovered.entries = found.len() as u64;
        inner.slots = found.into_iter().map(|(_, s)| s).collect();
        if inner.slots.is_empty() {
            // An empty log accepts any next index (the caller knows its purge point).
            inner.next = None;
        }
        Ok((
            Wal {
                inner: Arc::new(Mutex::new(inner)),
            },
            recovered,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// First and last index held, if any.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let inner = self.lock();
        let n = inner.slots.len() as u64;
        (n > 0).then(|| (inner.first, inner.first + n - 1))
    }

    /// Appends entries with consecutive indexes, written (readable) but not yet durable: see
    /// [`Wal::sync`].
    pub fn append<'a>(&self, entries: impl IntoIterator<Item = (u64, &'a [u8])>) -> io::Result<()> {
        let entries: Vec<(u64, &[u8])> = entries.into_iter().collect();
        let mut inner = self.lock();
        // Checked before anything is written: only the first entry written into an empty log may
        // jump (past a purge of everything); every other follows its predecessor.
        let mut expect = if inner.slots.is_empty() {
            None
        } else {
            inner.next
        };
        for &(index, payload) in &entries {
            if expect.is_some_and(|next| next != index) {
                return Err(corrupt(format!(
                    "log append out of order: index {index}, expected {}",
                    expect.unwrap_or_default()
                )));
            }
            if payload.len() > MAX_PAYLOAD {
                return Err(io::Error::other("log entry too large"));
            }
            expect = Some(index + 1);
        }
        let mut buf = Vec::new();
        let mut pending: Vec<(u64, u64, u32)> = Vec::new();
        for (index, payload) in entries {
            let may_jump = inner.slots.is_empty() && pending.is_empty();
            let starts_fresh = may_jump && inner.next != Some(index);
            let segment_full = inner
                .segments
                .back()
                .is_none_or(|s| s.len + buf.len() as u64 >= SEGMENT_BYTES);
            if starts_fresh || segment_full {
                inner.write_out(&mut buf, &mut pending)?;
                inner.roll(index, starts_fresh)?;
            }
            let offset = inner.segments.back().map(|s| s.len).unwrap_or(0) + buf.len() as u64;
            let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&checksum(index, payload).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(payload);
            pending.push((index, offset, len));
            inner.next = Some(index + 1);
        }
        inner.write_out(&mut buf, &mut pending)
    }

    /// Makes every append so far durable.
    pub fn sync(&self) -> io::Result<()> {
        // Older segments were synced when they were closed.
        let file = self.lock().segments.back().map(|s| s.file.clone());
        match file {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// Payloads of the entries with indexes in `start..end` (`end` None: to the last).
    pub fn read(&self, start: u64, end: Option<u64>) -> io::Result<Vec<Vec<u8>>> {
        let wanted: Vec<(Arc<File>, Slot)> = {
            let inner = self.lock();
            let n = inner.slots.len() as u64;
            if n == 0 {
                return Ok(Vec::new());
            }
            let from = start.max(inner.first);
            let to = end.unwrap_or(u64::MAX).min(inner.first + n);
            let mut wanted = Vec::new();
            let mut seg = 0;
            for index in from..to {
                let slot = inner.slots[(index - inner.first) as usize];
                while inner.segments[seg].first != slot.segment {
                    seg += 1;
                }
                wanted.push((inner.segments[seg].file.clone(), slot));
            }
            wanted
        };
        let mut out = Vec::with_capacity(wanted.len());
        for (file, slot) in wanted {
            // The header was checked when the record was written or recovered.
            let mut payload = vec![0u8; slot.len as usize];
            file.read_exact_at(&mut payload, slot.offset + HEADER as u64)?;
            out.push(payload);
        }
        Ok(out)
    }

    /// Removes the entries from `index` on, durably.
    pub fn truncate_from(&self, index: u64) -> io::Result<()> {
        let mut inner = self.lock();
        let n = inner.slots.len() as u64;
        if n == 0 || index >= inner.first + n {
            return Ok(());
        }
        let keep = index.saturating_sub(inner.first) as usize;
        let cut = inner.slots[keep];
        inner.slots.truncate(keep);
        let mut removed = false;
        while inner.segments.back().is_some_and(|s| s.first > cut.segment) {
            let gone = inner.segments.pop_back().expect("checked");
            std::fs::remove_file(segment_path(&inner.dir, gone.first))?;
            removed = true;
        }
        let seg = inner.segments.back_mut().expect("the cut's segment");
        seg.file.set_len(cut.offset)?;
        seg.file.sync_all()?;
        seg.len = cut.offset;
        seg.size = cut.offset;
        if removed {
            sync_dir(&inner.dir)?;
        }
        inner.next = if inner.slots.is_empty() {
            None
        } else {
            Some(index)
        };
        Ok(())
    }

    /// Forgets the entries up to `index`, inclusive, removing segments that hold nothing newer.
    /// The caller must have recorded the purge point durably: removed segments are gone.
    pub fn purge_to(&self, index: u64) -> io::Result<()> {
        let mut inner = self.lock();
        let n = inner.slots.len() as u64;
        if n == 0 || index < inner.first {
            return Ok(());
        }
        let drop = ((index - inner.first + 1) as usize).min(n as usize);
        inner.slots.drain(..drop);
        // `next` stays: the next append continues from it, or starts a fresh segment after a gap.
        inner.first = index + 1;
        let oldest_needed = inner.slots.front().map(|s| s.segment);
        let mut removed = false;
        while inner.segments.len() > 1 {
            let second = inner.segments[1].first;
            // The front segment is needed if a kept entry lives in it.
            if oldest_needed.is_some_and(|needed| needed < second) {
                break;
            }
            let gone = inner.segments.pop_front().expect("checked");
            std::fs::remove_file(segment_path(&inner.dir, gone.first))?;
            removed = true;
        }
        if removed {
            sync_dir(&inner.dir)?;
        }
        Ok(())
    }
}

impl Inner {
    /// Writes the buffered records at the end of the newest segment and records their slots.
    fn write_out(
        &mut self,
        buf: &mut Vec<u8>,
        pending: &mut Vec<(u64, u64, u32)>,
    ) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let seg = self.segments.back_mut().expect("a segment to write to");
        seg.file.write_all_at(buf, seg.len)?;
        seg.len += buf.len() as u64;
        seg.size = seg.size.max(seg.len);
        if seg.size - seg.len < PREALLOCATE / 4 {
            // Written now, synced with these records: the syncs of the next few MiB of records
            // then leave the file's size alone.
            let zeros = vec![0u8; (seg.len + PREALLOCATE - seg.size) as usize];
            seg.file.write_all_at(&zeros, seg.size)?;
            seg.size = seg.len + PREALLOCATE;
        }
        let segment = seg.first;
        for (index, offset, len) in pending.drain(..) {
            if self.slots.is_empty() {
                self.first = index;
            }
            self.slots.push_back(Slot {
                segment,
                offset,
                len,
            });
        }
        buf.clear();
        Ok(())
    }

    /// Closes the newest segment (synced, so only the newest can be torn) and starts one whose
    /// first entry is `first`. `fresh`: the log restarts at `first` after a purge of everything,
    /// so older segments hold only purged entries and go.
    fn roll(&mut self, first: u64, fresh: bool) -> io::Result<()> {
        if let Some(last) = self.segments.back() {
            if last.len == 0 && (fresh || last.first == first) {
                // An empty segment: reuse it under the right name.
                let old = self.segments.pop_back().expect("checked");
                if old.first != first {
                    std::fs::rename(
                        segment_path(&self.dir, old.first),
                        segment_path(&self.dir, first),
                    )?;
                }
                self.segments.push_back(Segment { first, ..old });
                if fresh {
                    self.drop_older_than_newest()?;
                }
                return sync_dir(&self.dir);
            }
        }
        if let Some(last) = self.segments.back_mut() {
            // Closed at its records' end: only the newest segment has zeros after its records.
            if last.size > last.len {
                last.file.set_len(last.len)?;
                last.size = last.len;
            }
            last.file.sync_data()?;
        }
        let path = segment_path(&self.dir, first);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        self.segments.push_back(Segment {
            first,
            file: Arc::new(file),
            len: 0,
            size: 0,
        });
        if fresh {
            self.drop_older_than_newest()?;
        }
        sync_dir(&self.dir)
    }

    fn drop_older_than_newest(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 {
            let gone = self.segments.pop_front().expect("checked");
            std::fs::remove_file(segment_path(&self.dir, gone.first))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry {i} {}", "x".repeat((i % 7) as usize * 100)).into_bytes()
    }

    fn append_range(wal: &Wal, from: u64, to: u64) {
        let entries: Vec<(u64, Vec<u8>)> = (from..to).map(|i| (i, payload(i))).collect();
        wal.append(entries.iter().map(|(i, p)| (*i, p.as_slice())))
            .unwrap();
    }

    fn all(wal: &Wal) -> Vec<Vec<u8>> {
        wal.read(0, None).unwrap()
    }

    #[test]
    fn appends_survive_reopening_and_read_by_range() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, rec) = Wal::open(dir.path()).unwrap();
            assert_eq!(rec, Recovered::default());
            append_range(&wal, 1, 50);
            append_range(&wal, 50, 101);
            wal.sync().unwrap();
        }
        let (wal, rec) = Wal::open(dir.path()).unwrap();
        assert_eq!(rec.entries, 100);
        // The zeros written ahead of the records are not mistaken for a torn write.
        assert_eq!(rec.dropped_bytes, 0);
        let size = std::fs::metadata(segment_path(dir.path(), 1))
            .unwrap()
            .len();
        assert!(size >= PREALLOCATE, "{size}");
        assert_eq!(wal.bounds(), Some((1, 100)));
        assert_eq!(
            wal.read(10, Some(13)).unwrap(),
            vec![payload(10), payload(11), payload(12)]
        );
        assert_eq!(wal.read(99, None).unwrap(), vec![payload(99), payload(100)]);
        assert!(wal.read(101, None).unwrap().is_empty());
        let err = wal.append([(7, b"late".as_slice())]).unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let (fresh, _) = Wal::open(empty.path()).unwrap();
        let err = fresh
            .append([(5, b"a".as_slice()), (7, b"b".as_slice())])
            .unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
        append_range(&wal, 101, 102);
        assert_eq!(wal.bounds(), Some((1, 101)));
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_log_continues() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path()).unwrap();
            append_range(&wal, 1, 21);
            wal.sync().unwrap();
        }
        let path = segment_path(dir.path(), 1);
        let end = {
            let (wal, _) = Wal::open(dir.path()).unwrap();
            let inner = wal.lock();
            let last = inner.slots[19];
            last.offset + HEADER as u64 + last.len as u64
        };
        // A write torn part way through entry 20, then a flipped byte inside entry 19's payload.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(end - 3).unwrap();
        let (wal, rec) = Wal::open(dir.path()).unwrap();
        assert_eq!(rec.entries, 19);
        assert!(rec.dropped_bytes > 0);
        drop(wal);
        let slot19 = {
            let (wal, _) = Wal::open(dir.path()).unwrap();
            let inner = wal.lock();
            inner.slots[18]
        };
        file.write_all_at(b"!", slot19.offset + HEADER as u64 + 2)
            .unwrap();
        let (wal, rec) = Wal::open(dir.path()).unwrap();
        assert_eq!(rec.entries, 18);
        assert_eq!(all(&wal), (1..19).map(payload).collect::<Vec<_>>());
        append_range(&wal, 19, 25);
        wal.sync().unwrap();
        drop(wal);
        let (wal, _) = Wal::open(dir.path()).unwrap();
        assert_eq!(all(&wal), (1..25).map(payload).collect::<Vec<_>>());
    }

    #[test]
    fn truncation_is_durable_and_new_entries_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path()).unwrap();
            append_range(&wal, 1, 31);
            wal.truncate_from(21).unwrap();
            assert_eq!(wal.bounds(), Some((1, 20)));
            wal.append([(21, b"new 21".as_slice())]).unwrap();
            wal.sync().unwrap();
        }
        let (wal, _) = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.bounds(), Some((1, 21)));
        assert_eq!(
            wal.read(20, None).unwrap(),
            vec![payload(20), b"new 21".to_vec()]
        );
        wal.truncate_from(1).unwrap();
        assert_eq!(wal.bounds(), None);
        drop(wal);
        let (wal, _) = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.bounds(), None);
    }

    #[test]
    fn segments_roll_over_and_purges_remove_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; (SEGMENT_BYTES / 4) as usize];
        {
            let (wal, _) = Wal::open(dir.path()).unwrap();
            for i in 1..=10 {
                wal.append([(i, big.as_slice())]).unwrap();
            }
            wal.sync().unwrap();
            let segments = |dir: &Path| std::fs::read_dir(dir).unwrap().count();
            assert_eq!(segments(dir.path()), 3, "4 + 4 + 2 entries");
            // Truncating into the middle segment removes the newest.
            wal.truncate_from(6).unwrap();
            assert_eq!(segments(dir.path()), 2);
            wal.append([(6, b"six".as_slice())]).unwrap();
            wal.purge_to(4).unwrap();
            assert_eq!(segments(dir.path()), 1, "the first segment held only 1..=4");
            assert_eq!(wal.bounds(), Some((5, 6)));
            wal.sync().unwrap();
        }
        let (wal, rec) = Wal::open(dir.path()).unwrap();
        assert_eq!(rec.entries, 2);
        assert_eq!(
            wal.read(0, None).unwrap(),
            vec![big.clone(), b"six".to_vec()]
        );
    }

    #[test]
    fn after_everything_is_purged_the_log_restarts_at_any_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path()).unwrap();
            append_range(&wal, 1, 11);
            wal.purge_to(10).unwrap();
            assert_eq!(wal.bounds(), None);
            // A snapshot install moved the log on to 500.
            append_range(&wal, 500, 503);
            wal.sync().unwrap();
            assert_eq!(wal.bounds(), Some((500, 502)));
        }
        let (wal, rec) = Wal::open(dir.path()).unwrap();
        assert_eq!(rec.entries, 3);
        assert_eq!(all(&wal), (500..503).map(payload).collect::<Vec<_>>());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
