//! Reads a finished bbolt file: picks the current meta page, then walks a bucket's B+tree in key
//! order, one page at a time, so memory stays bounded by the largest page whatever the file's size.
//!
//! Nothing in the file is trusted: every page id is checked against the meta page's high-water
//! mark and the file's length, every element against its page, the depth of the walk is bounded
//! (a page that refers back up would otherwise loop forever) and keys must ascend.
//!
//! Must never import anything outside `bbolt/`.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{
    fnv64a, u16_at, u32_at, u64_at, BboltError, BRANCH_PAGE, BUCKET_ELEMENT, BUCKET_HEADER,
    ELEMENT, LEAF_PAGE, MAGIC, META_CHECKED, META_PAGE, PAGE_HEADER, VERSION,
};

/// Far deeper than any real tree (a depth of 10 already holds more keys than fit on a disk).
const MAX_DEPTH: usize = 32;

/// An open bbolt file, read through positioned reads.
pub(crate) struct Db {
    file: File,
    page_size: u64,
    /// The meta page's high-water mark: pages at or above it are not part of the database.
    pages: u64,
    root: u64,
}

/// One leaf element, borrowed from its page.
struct Element<'a> {
    flags: u32,
    key: &'a [u8],
    value: &'a [u8],
}

impl Db {
    /// Opens the database held in the first `len` bytes of `file` (a snapshot may carry more after
    /// it). Refuses a file whose meta pages are not both valid, or that is shorter than they say.
    pub fn open(file: File, len: u64) -> Result<Db, BboltError> {
        // The first meta page tells the page size; the second sits one page further.
        let mut first = [0u8; PAGE_HEADER + 64];
        if len < first.len() as u64 {
            return Err(BboltError::TooSmall(len));
        }
        file.read_exact_at(&mut first, 0)?;
        if u32_at(&first, PAGE_HEADER) != MAGIC {
            return Err(BboltError::NotBbolt);
        }
        let page_size = u32_at(&first, PAGE_HEADER + 8);
        if !page_size.is_power_of_two() || !(512..=1 << 20).contains(&page_size) {
            return Err(BboltError::PageSize(page_size));
        }
        let page_size = u64::from(page_size);
        if len < 2 * page_size {
            return Err(BboltError::TooSmall(len));
        }
        let mut current: Option<(u64, [u8; PAGE_HEADER + 64])> = None;
        for id in 0..2 {
            let mut page = [0u8; PAGE_HEADER + 64];
            file.read_exact_at(&mut page, id * page_size)?;
            let meta = &page[PAGE_HEADER..];
            if u32_at(meta, 0) != MAGIC {
                return Err(BboltError::NotBbolt);
            }
            if u32_at(meta, 4) != VERSION {
                return Err(BboltError::Version(u32_at(meta, 4)));
            }
            if u16_at(&page, 8) & META_PAGE == 0 {
                return Err(BboltError::BadPage {
                    page: id,
                    what: "not a meta page".into(),
                });
            }
            // Both must be valid: bbolt would fall back to the other one, but a file that was
            // copied whole (as a snapshot is) has no reason to hold a torn meta page.
            if fnv64a(&meta[..META_CHECKED]) != u64_at(meta, META_CHECKED) {
                return Err(BboltError::MetaChecksum(id));
            }
            let txid = u64_at(meta, 48);
            if current.as_ref().is_none_or(|(t, _)| txid > *t) {
                current = Some((txid, page));
            }
        }
        let (_, page) = current.expect("two meta pages were read");
        let meta = &page[PAGE_HEADER..];
        let pages = u64_at(meta, 40);
        let have = len / page_size;
        if pages > have {
            return Err(BboltError::Truncated { have, want: pages });
        }
        let db = Db {
            file,
            page_size,
            pages,
            root: u64_at(meta, 16),
        };
        db.check_id(db.root)?;
        Ok(db)
    }

    fn check_id(&self, page: u64) -> Result<(), BboltError> {
        // Pages 0 and 1 are meta pages; nothing in a tree may point at them.
        if page < 2 || page >= self.pages {
            return Err(BboltError::PageOutOfBounds {
                page,
                pages: self.pages,
            });
        }
        Ok(())
    }

    /// Reads a page with its overflow.
    fn page(&self, id: u64) -> Result<Vec<u8>, BboltError> {
        self.check_id(id)?;
        let mut header = [0u8; PAGE_HEADER];
        self.file.read_exact_at(&mut header, id * self.page_size)?;
        if u64_at(&header, 0) != id {
            return Err(BboltError::BadPage {
                page: id,
                what: format!("its header names page {}", u64_at(&header, 0)),
            });
        }
        let overflow = u64::from(u32_at(&header, 12));
        let end = id + overflow + 1;
        if end > self.pages {
            return Err(BboltError::PageOutOfBounds {
                page: end - 1,
                pages: self.pages,
            });
        }
        let mut buf = vec![0; ((overflow + 1) * self.page_size) as usize];
        self.file.read_exact_at(&mut buf, id * self.page_size)?;
        Ok(buf)
    }

    /// The top-level buckets' names, in order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>, BboltError> {
        let mut names = Vec::new();
        self.walk(self.root, 0, &mut |e: Element<'_>| {
            if e.flags & BUCKET_ELEMENT != 0 {
                names.push(e.key.to_vec());
            }
            Ok::<_, BboltError>(())
        })?;
        Ok(names)
    }

    /// Calls `each` with every key and value of the top-level bucket `name`, in key order; returns
    /// whether the bucket exists. Nested buckets inside it are refused: etcd keeps none.
    pub fn for_each<E: From<BboltError>>(
        &self,
        name: &[u8],
        mut each: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut header = None;
        self.walk(self.root, 0, &mut |e: Element<'_>| {
            if e.flags & BUCKET_ELEMENT != 0 && e.key == name {
                header = Some(e.value.to_vec());
            }
            Ok::<_, BboltError>(())
        })?;
        let Some(header) = header else {
            return Ok(false);
        };
        let bad = |what: &str| BboltError::BadPage {
            page: self.root,
            what: format!(
                "bucket {}: {what}",
                String::from_utf8_lossy(name).into_owned()
            ),
        };
        if header.len() < BUCKET_HEADER {
            return Err(bad("its header is cut short").into());
        }
        let root = u64_at(&header, 0);
        let mut last: Option<Vec<u8>> = None;
        let mut visit = |e: Element<'_>| -> Result<(), E> {
            if e.flags & BUCKET_ELEMENT != 0 {
                return Err(bad("it holds a nested bucket").into());
            }
            if last.as_deref().is_some_and(|l| l >= e.key) {
                return Err(bad("its keys are out of order").into());
            }
            last = Some(e.key.to_vec());
            each(e.key, e.value)
        };
        if root == 0 {
            // An inline bucket: its one leaf page follows the header.
            let page = &header[BUCKET_HEADER..];
            self.elements(self.root, page, &mut visit)?;
        } else {
            self.walk(root, 0, &mut visit)?;
        }
        Ok(true)
    }

    fn walk<E: From<BboltError>>(
        &self,
        id: u64,
        depth: usize,
        visit: &mut dyn FnMut(Element<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if depth > MAX_DEPTH {
            return Err(BboltError::TooDeep(id).into());
        }
        let page = self.page(id)?;
        let flags = u16_at(&page, 8);
        if flags & BRANCH_PAGE != 0 {
            for child in branch_children(id, &page)? {
                self.walk(child, depth + 1, visit)?;
            }
            Ok(())
        } else {
            self.elements(id, &page, visit)
        }
    }

    /// Visits the elements of a leaf page (`id` names it in errors).
    fn elements<E: From<BboltError>>(
        &self,
        id: u64,
        page: &[u8],
        visit: &mut dyn FnMut(Element<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let bad = |what: String| BboltError::BadPage { page: id, what };
        if page.len() < PAGE_HEADER {
            return Err(bad("cut short".into()).into());
        }
        let flags = u16_at(page, 8);
        if flags & LEAF_PAGE == 0 {
            return Err(bad(format!("not a branch or leaf page (flags {flags:#x})")).into());
        }
        let count = usize::from(u16_at(page, 10));
        for i in 0..count {
            let at = PAGE_HEADER + i * ELEMENT;
            if at + ELEMENT > page.len() {
                return Err(bad(format!("element {i} lies past the page's end")).into());
            }
            let pos = u32_at(page, at + 4) as usize;
            let ksize = u32_at(page, at + 8) as usize;
            let vsize = u32_at(page, at + 12) as usize;
            let key_at = at + pos;
            let end = key_at
                .checked_add(ksize)
                .and_then(|k| k.checked_add(vsize))
                .filter(|end| *end <= page.len())
                .ok_or_else(|| bad(format!("element {i} lies past the page's end")))?;
            visit(Element {
                flags: u32_at(page, at),
                key: &page[key_at..key_at + ksize],
                value: &page[key_at + ksize..end],
            })?;
        }
        Ok(())
    }
}

/// The child page ids of a branch page.
fn branch_children(id: u64, page: &[u8]) -> Result<Vec<u64>, BboltError> {
    let count = usize::from(u16_at(page, 10));
    if count == 0 || PAGE_HEADER + count * ELEMENT > page.len() {
        return Err(BboltError::BadPage {
            page: id,
            what: format!("a branch page with {count} elements"),
        });
    }
    Ok((0..count)
        .map(|i| u64_at(page, PAGE_HEADER + i * ELEMENT + 8))
        .collect())
}
