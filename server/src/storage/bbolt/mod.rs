//! bbolt's file format, read and written directly: the page-structured B+tree files etcd keeps its
//! data in (and so what `etcdctl snapshot save` writes). Only what moving data in and out needs:
//! [`reader`] walks a finished file's buckets in key order with bounds on every page it touches;
//! [`writer`] builds a new, compact file from keys supplied in order, page by page.
//!
//! No maintained Rust crate reads bbolt files (the one port on crates.io is a whole database,
//! unlicensed, that maps the file and needs it writable); this module is a few hundred lines.
//!
//! The layout, as bbolt 1.3 writes it (all integers little-endian, `page_size` usually 4096):
//! - every page starts with a 16-byte header: page id (u64), flags (u16: 0x01 branch, 0x02 leaf,
//!   0x04 meta, 0x10 freelist), element count (u16) and overflow (u32): how many further pages
//!   the page spills into, so a page and its overflow are `overflow + 1` contiguous pages;
//! - pages 0 and 1 are meta pages: magic `0xED0CDAED`, version 2, page size, flags, the root
//!   bucket (root page id, sequence), the freelist page id, the high-water page id (pages at or
//!   above it are not part of the database), the transaction id and an FNV-1a 64 checksum of the
//!   preceding 56 bytes. The valid one with the higher transaction id is current;
//! - branch pages hold 16-byte elements (key offset relative to the element, key size, child
//!   page id), each keyed by the first key of its child; leaf pages hold 16-byte elements
//!   (flags, key offset relative to the element, key size, value size), the value right after the
//!   key. Element flag 0x01 marks a nested bucket, whose value is its header (root page id,
//!   sequence) and, when the root id is 0, an inline leaf page holding the whole bucket;
//! - the root bucket's leaf elements are the top-level buckets, by name.
//!
//! Must never import anything else of the crate: it knows files, not etcd or Cairn.

pub(crate) mod reader;
pub(crate) mod writer;

/// Identifies a bbolt file (at byte 16 of each meta page).
pub(crate) const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
/// Bytes of the meta page body the checksum covers.
const META_CHECKED: usize = 56;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
/// On a leaf element: the value is a nested bucket.
const BUCKET_ELEMENT: u32 = 0x01;
/// A bucket header: root page id and sequence.
const BUCKET_HEADER: usize = 16;

/// Why a file cannot be read as a bbolt database.
#[derive(Debug, thiserror::Error)]
pub enum BboltError {
    #[error("reading the database file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the database file is too small ({0} bytes) to hold its meta pages")]
    TooSmall(u64),
    #[error("not a bbolt database (no magic number in the meta page)")]
    NotBbolt,
    #[error("unsupported bbolt version {0}")]
    Version(u32),
    #[error("meta page {0} is corrupt: its checksum does not match")]
    MetaChecksum(u64),
    #[error("unsupported page size {0}")]
    PageSize(u32),
    #[error("the database file is truncated: it holds {have} pages, its meta page says {want}")]
    Truncated { have: u64, want: u64 },
    #[error("page {page} is out of bounds: the database has {pages} pages")]
    PageOutOfBounds { page: u64, pages: u64 },
    #[error("page {page} is corrupt: {what}")]
    BadPage { page: u64, what: String },
    #[error("the tree below page {0} is deeper than any real database: a page refers back up")]
    TooDeep(u64),
}

/// FNV-1a, 64 bits: what bbolt checksums meta pages with.
fn fnv64a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests;
