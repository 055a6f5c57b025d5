//! Container logs: the size-capped file the monitor writes (and its one rotated predecessor),
//! read whole, tailed or followed.
//!
//! Must never import anything outside `runtime/`.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::{Result, Runtime};

/// The suffix of `data` holding its last `n` lines.
pub fn tail_lines(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

impl Runtime {
    pub(super) fn log_paths(&self, pod: &str, container: &str) -> (PathBuf, PathBuf) {
        let p = self.container_dir(pod, container).join("container.log");
        let mut rotated = p.clone().into_os_string();
        rotated.push(".1");
        (PathBuf::from(rotated), p)
    }

    /// The container's combined stdout/stderr; with `tail`, only the last
    /// that many lines.
    pub fn logs(&self, pod: &str, container: &str, tail: Option<usize>) -> Result<Vec<u8>> {
        self.load(pod)?;
        let (old, cur) = self.log_paths(pod, container);
        let mut data = fs::read(&old).unwrap_or_default();
        data.extend(fs::read(&cur).unwrap_or_default());
        Ok(match tail {
            Some(n) => tail_lines(&data, n).to_vec(),
            None => data,
        })
    }

    /// Sends the log (last `tail` lines first) and then new output as it is
    /// written, until the container has exited and everything was sent or
    /// the receiver is dropped.
    pub fn follow_logs(
        &self,
        pod: &str,
        container: &str,
        tail: Option<usize>,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>> {
        let initial = self.logs(pod, container, tail)?;
        let (_, cur) = self.log_paths(pod, container);
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&cur).ok();
        let mut offset = meta.as_ref().map(|m| m.len()).unwrap_or(0);
        let mut inode = meta.map(|m| m.ino()).unwrap_or(0);
        let cdir = self.container_dir(pod, container);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            if !initial.is_empty() && tx.send(initial).await.is_err() {
                return;
            }
            loop {
                let exited = cdir.join("exit.json").exists() || !cdir.exists();
                let meta = fs::metadata(&cur).ok();
                let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
                let ino = meta.map(|m| m.ino()).unwrap_or(0);
                if ino != inode || len < offset {
                    // Rotated: the new file starts from zero.
                    inode = ino;
                    offset = 0;
                }
                if len > offset {
                    if let Ok(mut f) = fs::File::open(&cur) {
                        use std::io::{Read, Seek, SeekFrom};
                        let mut buf = vec![];
                        if f.seek(SeekFrom::Start(offset)).is_ok()
                            && f.read_to_end(&mut buf).is_ok()
                        {
                            offset += buf.len() as u64;
                            if tx.send(buf).await.is_err() {
                                return;
                            }
                        }
                    }
                    continue;
                }
                if exited {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\n", 5), b"a\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
    }
}
