//! The writer and the reader against each other, and files damaged in the ways a copy can be.

use std::fs::File;
use std::path::Path;

use super::reader::Db;
use super::writer::{BucketBuilder, DbWriter, PAGE_SIZE};
use super::*;

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Buckets: "big" (values larger than a page among small ones), "empty", "keys" (enough keys for
/// two branch levels), "small" (inline).
fn sample() -> Vec<(Vec<u8>, Rows)> {
    let keys = (0..20_000u32)
        .map(|i| {
            let key = format!("key/{i:08}/{}", "x".repeat((i % 40) as usize));
            (key.into_bytes(), vec![(i % 251) as u8; (i % 90) as usize])
        })
        .collect();
    let big = (0..40u32)
        .map(|i| {
            let len = if i % 3 == 0 {
                3 * PAGE_SIZE + i as usize
            } else {
                10
            };
            (format!("b{i:03}").into_bytes(), vec![i as u8; len])
        })
        .collect();
    let small = vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())];
    vec![
        (b"big".to_vec(), big),
        (b"empty".to_vec(), Vec::new()),
        (b"keys".to_vec(), keys),
        (b"small".to_vec(), small),
    ]
}

fn write(path: &Path, buckets: &[(Vec<u8>, Rows)]) -> u64 {
    let mut db = DbWriter::new(File::create(path).unwrap(), PAGE_SIZE).unwrap();
    let mut roots = Vec::new();
    for (name, rows) in buckets {
        let mut b = BucketBuilder::new();
        for (k, v) in rows {
            b.put(&mut db, k, v).unwrap();
        }
        roots.push((name.clone(), b.finish(&mut db).unwrap()));
    }
    let (_, len) = db.finish(roots).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), len);
    len
}

fn open(path: &Path) -> Result<Db, BboltError> {
    let len = std::fs::metadata(path).unwrap().len();
    Db::open(File::open(path).unwrap(), len)
}

fn read_all(db: &Db, name: &[u8]) -> Result<Rows, BboltError> {
    let mut rows = Vec::new();
    let found = db.for_each(name, |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        Ok::<_, BboltError>(())
    })?;
    assert!(found, "bucket {name:?}");
    Ok(rows)
}

/// Page ids of every page with `flag`, by their headers.
fn pages_with(file: &[u8], flag: u16) -> Vec<usize> {
    (0..file.len() / PAGE_SIZE)
        .filter(|p| {
            let at = p * PAGE_SIZE;
            u64_at(file, at) == *p as u64 && u16_at(file, at + 8) == flag
        })
        .collect()
}

#[test]
fn what_the_writer_writes_the_reader_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let buckets = sample();
    let len = write(&path, &buckets);
    let db = open(&path).unwrap();
    let names: Vec<Vec<u8>> = buckets.iter().map(|b| b.0.clone()).collect();
    assert_eq!(db.bucket_names().unwrap(), names);
    for (name, rows) in &buckets {
        assert_eq!(&read_all(&db, name).unwrap(), rows, "bucket {name:?}");
    }
    assert!(!db
        .for_each(b"absent", |_, _| Ok::<_, BboltError>(()))
        .unwrap());

    // The shapes bbolt itself produces: branches over branches, overflow pages, an inline bucket.
    let file = std::fs::read(&path).unwrap();
    assert_eq!(len % PAGE_SIZE as u64, 0);
    let branches = pages_with(&file, BRANCH_PAGE);
    let over_branches = branches.iter().filter(|p| {
        let at = *p * PAGE_SIZE;
        let child = u64_at(&file, at + PAGE_HEADER + 8) as usize;
        u16_at(&file, child * PAGE_SIZE + 8) == BRANCH_PAGE
    });
    assert!(over_branches.count() >= 1, "a tree three levels deep");
    let overflowing = pages_with(&file, LEAF_PAGE)
        .into_iter()
        .filter(|p| u32_at(&file, p * PAGE_SIZE + 12) > 0)
        .count();
    assert!(overflowing >= 10, "{overflowing} overflowing leaves");
    assert_eq!(pages_with(&file, META_PAGE), vec![0, 1]);
    assert_eq!(pages_with(&file, FREELIST_PAGE), vec![2]);
}

#[test]
fn damaged_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let buckets = sample();
    write(&path, &buckets);
    let good = std::fs::read(&path).unwrap();
    let refused = |file: &[u8]| -> String {
        std::fs::write(&path, file).unwrap();
        match open(&path) {
            Err(e) => e.to_string(),
            Ok(db) => {
                let mut errors = Vec::new();
                for (name, _) in &buckets {
                    if let Err(e) = read_all(&db, name) {
                        errors.push(e.to_string());
                    }
                }
                errors.first().cloned().expect("a damaged file was read")
            }
        }
    };

    let mut meta = good.clone();
    meta[PAGE_SIZE + PAGE_HEADER + 40] ^= 1;
    let err = refused(&meta);
    assert!(
        err.contains("meta page 1") && err.contains("checksum"),
        "{err}"
    );

    let err = refused(&good[..good.len() / 2]);
    assert!(err.contains("truncated"), "{err}");
    let err = refused(&good[..100]);
    assert!(err.contains("too small"), "{err}");

    let mut foreign = good.clone();
    foreign[PAGE_HEADER] = 0;
    let err = refused(&foreign);
    assert!(err.contains("not a bbolt database"), "{err}");

    // A branch that points past the end of the database.
    let branch = pages_with(&good, BRANCH_PAGE)[0] * PAGE_SIZE;
    let mut past = good.clone();
    past[branch + PAGE_HEADER + 8..branch + PAGE_HEADER + 16]
        .copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = refused(&past);
    assert!(err.contains("out of bounds"), "{err}");

    // A branch that points back at itself.
    let mut cycle = good.clone();
    let id = (branch / PAGE_SIZE) as u64;
    cycle[branch + PAGE_HEADER + 8..branch + PAGE_HEADER + 16].copy_from_slice(&id.to_le_bytes());
    let err = refused(&cycle);
    assert!(err.contains("deeper than any real database"), "{err}");

    // A leaf whose element claims more bytes than the page holds.
    let leaf = pages_with(&good, LEAF_PAGE)[0] * PAGE_SIZE;
    let mut long = good.clone();
    long[leaf + PAGE_HEADER + 12..leaf + PAGE_HEADER + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = refused(&long);
    assert!(err.contains("past the page's end"), "{err}");

    // A page whose header names another page.
    let mut moved = good.clone();
    moved[leaf] ^= 0x40;
    let err = refused(&moved);
    assert!(err.contains("its header names page"), "{err}");
}

#[test]
fn keys_must_be_written_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = DbWriter::new(File::create(dir.path().join("db")).unwrap(), PAGE_SIZE).unwrap();
    let mut b = BucketBuilder::new();
    b.put(&mut db, b"b", b"").unwrap();
    assert!(b.put(&mut db, b"a", b"").is_err());
    assert!(b.put(&mut db, b"b", b"").is_err());
}

/// Keys larger than a page, among small ones and at every position, as the auth buckets hold long
/// user and role names. Written on a thread: a tree that does not close keeps writing pages, and
/// the test must fail rather than fill the disk.
#[test]
fn keys_larger_than_a_page_close_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let key = |i: u32, len: usize| {
        let mut k = format!("k{i:05}").into_bytes();
        k.resize(len, b'x');
        k
    };
    let mut huge = Vec::new();
    for i in 0..200u32 {
        let len = match i % 7 {
            _ if i % 50 == 10 => 2 * 1024 * 1024 + 70,
            3 => PAGE_SIZE + 1,
            5 => 3 * PAGE_SIZE,
            _ => 8,
        };
        huge.push((key(i, len), vec![i as u8; (i % 5) as usize]));
    }
    let pair = vec![
        (b"a".to_vec(), b"1".to_vec()),
        (key(1, 2 * PAGE_SIZE), b"2".to_vec()),
    ];
    let lone = vec![(key(0, 5 * PAGE_SIZE), b"v".to_vec())];
    let buckets = vec![
        (b"huge".to_vec(), huge),
        (b"lone".to_vec(), lone),
        (b"pair".to_vec(), pair),
    ];
    let (done, wait) = std::sync::mpsc::channel();
    let (written, target) = (buckets.clone(), path.clone());
    std::thread::spawn(move || {
        write(&target, &written);
        let _ = done.send(());
    });
    wait.recv_timeout(std::time::Duration::from_secs(20))
        .expect("the writer finished");
    let db = open(&path).unwrap();
    for (name, rows) in &buckets {
        assert_eq!(&read_all(&db, name).unwrap(), rows, "bucket {name:?}");
    }
}
