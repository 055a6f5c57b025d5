//! Writes a new bbolt file from keys supplied in order, without holding the data: each bucket is
//! bulk-loaded bottom-up. Leaf pages are written as they fill; each full page hands its first key
//! to the level above, whose own pages are written as they fill in turn, so memory holds one page
//! per tree level. Finishing a bucket closes its levels from the bottom and returns its root (or,
//! for a bucket small enough, the whole bucket inline, as bbolt keeps small buckets).
//!
//! The file has no free pages: meta pages 0 and 1, an empty freelist at page 2, then every tree
//! page, so bbolt's own consistency check (which `etcdctl snapshot status` runs) finds every page
//! below the high-water mark in use exactly once. Both meta pages describe the finished tree, as
//! bbolt's own copy of a database (`Tx.WriteTo`) does.
//!
//! Must never import anything outside `bbolt/`.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::{
    fnv64a, BRANCH_PAGE, BUCKET_ELEMENT, BUCKET_HEADER, ELEMENT, FREELIST_PAGE, LEAF_PAGE, MAGIC,
    META_CHECKED, META_PAGE, PAGE_HEADER, VERSION,
};

/// The page size etcd's files have on Linux (the OS page size).
pub(crate) const PAGE_SIZE: usize = 4096;
const FIRST_TREE_PAGE: u64 = 3;
const FREELIST_ID: u64 = 2;

/// A bbolt file being written.
pub(crate) struct DbWriter {
    out: BufWriter<File>,
    page_size: usize,
    next_page: u64,
}

/// Where a finished bucket lives.
pub(crate) enum BucketRoot {
    Page(u64),
    /// A whole bucket as one leaf page stored in its parent (bbolt's inline bucket).
    Inline(Vec<u8>),
}

impl DbWriter {
    /// Starts a database in `file` (which must be empty) with pages of `page_size` bytes.
    pub fn new(file: File, page_size: usize) -> io::Result<DbWriter> {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // The meta and freelist pages are written last, over these.
        out.write_all(&vec![0; FIRST_TREE_PAGE as usize * page_size])?;
        Ok(DbWriter {
            out,
            page_size,
            next_page: FIRST_TREE_PAGE,
        })
    }

    /// Writes a page (with its overflow, if `body` needs more than one); returns its id.
    fn write_page(&mut self, flags: u16, count: usize, body: &[u8]) -> io::Result<u64> {
        let id = self.next_page;
        let pages = (PAGE_HEADER + body.len()).div_ceil(self.page_size);
        let header = page_header(id, flags, count, pages - 1)?;
        self.out.write_all(&header)?;
        self.out.write_all(body)?;
        let pad = pages * self.page_size - PAGE_HEADER - body.len();
        self.out.write_all(&vec![0; pad])?;
        self.next_page += pages as u64;
        Ok(id)
    }

    /// Writes the root bucket over `buckets` (sorted by name), the meta pages and the freelist;
    /// returns the file and its length.
    pub fn finish(mut self, buckets: Vec<(Vec<u8>, BucketRoot)>) -> io::Result<(File, u64)> {
        let mut root = BucketBuilder::new();
        for (name, bucket) in buckets {
            let value = match bucket {
                BucketRoot::Page(id) => bucket_header(id).to_vec(),
                BucketRoot::Inline(page) => [&bucket_header(0)[..], &page].concat(),
            };
            root.add(&mut self, BUCKET_ELEMENT, &name, &value)?;
        }
        let root = match root.finish_bucket(&mut self, false)? {
            BucketRoot::Page(id) => id,
            BucketRoot::Inline(_) => unreachable!("finish_bucket(.., false) writes a page"),
        };
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        let mut freelist = vec![0; self.page_size];
        freelist[..PAGE_HEADER].copy_from_slice(&page_header(FREELIST_ID, FREELIST_PAGE, 0, 0)?);
        file.write_all_at(&freelist, FREELIST_ID * self.page_size as u64)?;
        for id in 0..2 {
            let mut page = vec![0; self.page_size];
            page[..PAGE_HEADER].copy_from_slice(&page_header(id, META_PAGE, 0, 0)?);
            let meta = &mut page[PAGE_HEADER..PAGE_HEADER + META_CHECKED + 8];
            meta[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            meta[4..8].copy_from_slice(&VERSION.to_le_bytes());
            meta[8..12].copy_from_slice(&(self.page_size as u32).to_le_bytes());
            meta[16..32].copy_from_slice(&bucket_header(root));
            meta[32..40].copy_from_slice(&FREELIST_ID.to_le_bytes());
            meta[40..48].copy_from_slice(&self.next_page.to_le_bytes());
            meta[48..56].copy_from_slice(&1u64.to_le_bytes());
            let sum = fnv64a(&meta[..META_CHECKED]);
            meta[META_CHECKED..].copy_from_slice(&sum.to_le_bytes());
            file.write_all_at(&page, id * self.page_size as u64)?;
        }
        Ok((file, self.next_page * self.page_size as u64))
    }
}

fn page_header(id: u64, flags: u16, count: usize, overflow: usize) -> io::Result<[u8; 16]> {
    let count = u16::try_from(count).map_err(|_| io::Error::other("too many page elements"))?;
    let overflow = u32::try_from(overflow).map_err(|_| io::Error::other("value too large"))?;
    let mut h = [0u8; PAGE_HEADER];
    h[0..8].copy_from_slice(&id.to_le_bytes());
    h[8..10].copy_from_slice(&flags.to_le_bytes());
    h[10..12].copy_from_slice(&count.to_le_bytes());
    h[12..16].copy_from_slice(&overflow.to_le_bytes());
    Ok(h)
}

fn bucket_header(root: u64) -> [u8; BUCKET_HEADER] {
    let mut h = [0u8; BUCKET_HEADER];
    h[..8].copy_from_slice(&root.to_le_bytes());
    h
}

/// One level of a bucket's tree being built: the page being filled.
#[derive(Default)]
struct Level {
    /// (element flags, key, value); a branch element's value is its child's id.
    entries: Vec<(u32, Vec<u8>, Vec<u8>)>,
    bytes: usize,
    pages_written: u64,
}

/// Builds one bucket from keys given in ascending order; see the module comment.
pub(crate) struct BucketBuilder {
    /// Level 0 holds leaves; level `n + 1` the branches over level `n`'s pages.
    levels: Vec<Level>,
}

impl Default for BucketBuilder {
    fn default() -> Self {
        BucketBuilder::new()
    }
}

impl BucketBuilder {
    pub fn new() -> BucketBuilder {
        BucketBuilder {
            levels: vec![Level::default()],
        }
    }

    /// Adds a key and its value; keys must ascend strictly.
    pub fn put(&mut self, db: &mut DbWriter, key: &[u8], value: &[u8]) -> io::Result<()> {
        if let Some((_, last, _)) = self.levels[0].entries.last() {
            if last.as_slice() >= key {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "bbolt keys must be written in ascending order",
                ));
            }
        }
        self.add(db, 0, key, value)
    }

    fn add(&mut self, db: &mut DbWriter, flags: u32, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.add_at(db, 0, flags, key.to_vec(), value.to_vec())
    }

    fn add_at(
        &mut self,
        db: &mut DbWriter,
        level: usize,
        flags: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> io::Result<()> {
        let size = ELEMENT + key.len() + if level == 0 { value.len() } else { 0 };
        let l = &self.levels[level];
        // A page holds what fits; a leaf element too large for any page gets a page (with
        // overflow) of its own. A branch page takes at least two elements, with overflow if it
        // must, as bbolt's own pages do: a key larger than a page, alone on a branch page, would
        // be handed up alone again at every level, and the tree would never close.
        let least = if level == 0 { 1 } else { 2 };
        if l.entries.len() >= least && PAGE_HEADER + l.bytes + size > db.page_size {
            self.flush(db, level)?;
        }
        let l = &mut self.levels[level];
        l.bytes += size;
        l.entries.push((flags, key, value));
        Ok(())
    }

    /// The page body (elements, then keys and values) of a level's entries.
    fn body(&self, level: usize) -> Vec<u8> {
        let entries = &self.levels[level].entries;
        let mut elements = Vec::with_capacity(entries.len() * ELEMENT);
        let mut data = Vec::with_capacity(self.levels[level].bytes);
        let elements_len = entries.len() * ELEMENT;
        for (i, (flags, key, value)) in entries.iter().enumerate() {
            // Offsets count from the element itself to its key.
            let pos = (elements_len - i * ELEMENT + data.len()) as u32;
            if level == 0 {
                elements.extend_from_slice(&flags.to_le_bytes());
                elements.extend_from_slice(&pos.to_le_bytes());
                elements.extend_from_slice(&(key.len() as u32).to_le_bytes());
                elements.extend_from_slice(&(value.len() as u32).to_le_bytes());
                data.extend_from_slice(key);
                data.extend_from_slice(value);
            } else {
                elements.extend_from_slice(&pos.to_le_bytes());
                elements.extend_from_slice(&(key.len() as u32).to_le_bytes());
                elements.extend_from_slice(value);
                data.extend_from_slice(key);
            }
        }
        elements.extend_from_slice(&data);
        elements
    }

    /// Writes a level's page, returns its id and hands its first key up.
    fn write_level(&mut self, db: &mut DbWriter, level: usize) -> io::Result<(Vec<u8>, u64)> {
        let body = self.body(level);
        let flags = if level == 0 { LEAF_PAGE } else { BRANCH_PAGE };
        let count = self.levels[level].entries.len();
        let id = db.write_page(flags, count, &body)?;
        let l = &mut self.levels[level];
        l.pages_written += 1;
        l.bytes = 0;
        let first = l.entries.drain(..).next().map(|e| e.1).unwrap_or_default();
        Ok((first, id))
    }

    fn flush(&mut self, db: &mut DbWriter, level: usize) -> io::Result<()> {
        let (first, id) = self.write_level(db, level)?;
        if self.levels.len() == level + 1 {
            self.levels.push(Level::default());
        }
        self.add_at(db, level + 1, 0, first, id.to_le_bytes().to_vec())
    }

    /// Closes the bucket's levels from the bottom up and returns its root.
    pub fn finish(self, db: &mut DbWriter) -> io::Result<BucketRoot> {
        self.finish_bucket(db, true)
    }

    fn finish_bucket(mut self, db: &mut DbWriter, may_inline: bool) -> io::Result<BucketRoot> {
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            if top && self.levels[level].pages_written == 0 {
                // Everything left fits in this one page: it is the root.
                let body = self.body(level);
                let count = self.levels[level].entries.len();
                if may_inline && level == 0 && PAGE_HEADER + body.len() <= db.page_size / 4 {
                    let mut page = page_header(0, LEAF_PAGE, count, 0)?.to_vec();
                    page.extend_from_slice(&body);
                    return Ok(BucketRoot::Inline(page));
                }
                return Ok(BucketRoot::Page(self.write_level(db, level)?.1));
            }
            self.flush(db, level)?;
            level += 1;
        }
    }
}
