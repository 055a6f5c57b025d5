//! Raft snapshot files: the state machine's rows written one after another, so a snapshot is built,
//! sent in chunks, received and installed without ever being held in memory whole.
//!
//! Layout: [`MAGIC`], then per row the key length (u32 LE), the key, the value length (u32 LE) and
//! the value, then [`END`] in place of a key length, so a file cut short is refused rather than read
//! as a smaller store.
//!
//! Must never import anything above `storage/`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8] = b"CAIRN-RAFT-SNAPSHOT-1\n";
const END: u32 = u32::MAX;
/// Snapshot files end in this; anything else in the directory (`.tmp`) is unfinished.
pub(crate) const EXTENSION: &str = "snap";

/// Bytes a file's start takes before its first row.
pub(crate) const START_LEN: u64 = MAGIC.len() as u64;

/// Bytes a row of this key and value takes in a file.
pub(crate) fn row_len(key: &[u8], value: &[u8]) -> u64 {
    (8 + key.len() + value.len()) as u64
}

/// Writes rows in the layout above to any byte sink.
pub(crate) struct RowWriter<W: Write> {
    out: W,
}

impl RowWriter<BufWriter<File>> {
    pub fn create(path: &Path) -> io::Result<Self> {
        RowWriter::new(BufWriter::with_capacity(1 << 20, File::create(path)?))
    }

    /// Ends the file and makes it durable.
    pub fn finish_file(self) -> io::Result<()> {
        let file = self.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

impl<W: Write> RowWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(RowWriter { out })
    }

    pub fn row(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        for part in [key, value] {
            let len = u32::try_from(part.len())
                .ok()
                .filter(|&n| n != END)
                .ok_or_else(|| io::Error::other("row too large for a snapshot file"))?;
            self.out.write_all(&len.to_le_bytes())?;
            self.out.write_all(part)?;
        }
        Ok(())
    }

    /// Hands what was written so far to the sink's file, so readers of the file see it.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Writes the end marker and hands the sink back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&END.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads rows in the layout above from any byte source.
pub(crate) struct RowReader<R: Read> {
    input: R,
}

impl RowReader<BufReader<File>> {
    /// Reads a whole snapshot file, from its start.
    pub fn open(mut file: File) -> io::Result<Self> {
        use std::io::Seek;
        file.rewind()?;
        RowReader::new(BufReader::with_capacity(1 << 20, file))
    }
}

impl RowReader<BufReader<SharedFile>> {
    /// Reads a whole snapshot file that others may be reading at the same time, from its start.
    pub fn shared(file: Arc<File>) -> io::Result<Self> {
        RowReader::new(BufReader::with_capacity(
            1 << 20,
            SharedFile { file, at: 0 },
        ))
    }
}

/// Reads the rows in a file's first `len` bytes, which rows are still being added after: the
/// rows a writer had flushed when it wrote `len` bytes, as if the file ended there.
pub(crate) fn shared_prefix(file: Arc<File>, len: u64) -> io::Result<RowReader<impl Read>> {
    let rows = SharedFile { file, at: 0 }.take(len);
    RowReader::new(BufReader::with_capacity(
        1 << 20,
        rows.chain(io::Cursor::new(END.to_le_bytes())),
    ))
}

/// Reads a file by position: readers sharing one open file would move each other's offset.
pub(crate) struct SharedFile {
    file: Arc<File>,
    at: u64,
}

impl Read for SharedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl<R: Read> RowReader<R> {
    pub fn new(mut input: R) -> io::Result<Self> {
        let mut magic = vec![0; MAGIC.len()];
        input.read_exact(&mut magic).map_err(cut_short)?;
        if magic != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a Cairn Raft snapshot file",
            ));
        }
        Ok(RowReader { input })
    }

    fn len(&mut self) -> io::Result<u32> {
        let mut raw = [0; 4];
        self.input.read_exact(&mut raw).map_err(cut_short)?;
        Ok(u32::from_le_bytes(raw))
    }

    fn bytes(&mut self, n: u32) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n as usize];
        self.input.read_exact(&mut buf).map_err(cut_short)?;
        Ok(buf)
    }

    /// The next row, or `None` at the end marker.
    pub fn next_row(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let n = self.len()?;
        if n == END {
            return Ok(None);
        }
        let key = self.bytes(n)?;
        let n = self.len()?;
        let value = self.bytes(n)?;
        Ok(Some((key, value)))
    }
}

fn cut_short(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(io::ErrorKind::InvalidData, "snapshot file is cut short")
    } else {
        e
    }
}

/// A file name for a snapshot (its position carries a leader id, whose text is not ours to trust
/// as a name).
pub(crate) fn file_name(snapshot: &str) -> String {
    let safe: String = snapshot
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{safe}.{EXTENSION}")
}

/// Makes a rename or removal in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes every file in `dir` but `keep`: older snapshots (a transfer still reading one keeps its
/// open handle) and, when `unfinished` is set, leftovers of builds and receptions cut short.
pub(crate) fn remove_others(dir: &Path, keep: Option<&str>, unfinished: bool) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if Some(name.as_ref()) == keep {
            continue;
        }
        let finished = name.ends_with(&format!(".{EXTENSION}"));
        if finished || unfinished {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    sync_dir(dir)
}

/// A fresh temporary path in `dir`.
pub(crate) fn temp_path(dir: &Path, what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("{what}-{}-{n}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_a_cut_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.snap");
        let rows: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"k1".to_vec(), b"v1".to_vec()),
            (b"".to_vec(), vec![9; 100_000]),
            (b"k3".to_vec(), Vec::new()),
        ];
        let mut w = RowWriter::create(&path).unwrap();
        for (k, v) in &rows {
            w.row(k, v).unwrap();
        }
        w.finish_file().unwrap();
        let mut r = RowReader::open(File::open(&path).unwrap()).unwrap();
        let mut read = Vec::new();
        while let Some(row) = r.next_row().unwrap() {
            read.push(row);
        }
        assert_eq!(read, rows);

        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 4).unwrap();
        let mut r = RowReader::open(File::open(&path).unwrap()).unwrap();
        let err = loop {
            match r.next_row() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a cut file read as complete"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(RowReader::open(File::open(dir.path()).unwrap()).is_err());
    }

    #[test]
    fn ids_become_plain_file_names() {
        assert_eq!(file_name("T1-N2-10-0"), "T1_N2_10_0.snap");
        assert_eq!(file_name("../x"), "___x.snap");
    }
}
