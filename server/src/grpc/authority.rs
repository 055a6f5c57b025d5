//! Tolerates the `:authority` that etcdctl 3.4 sends when it is given endpoints as URLs.
//!
//! etcdctl 3.4 dials `passthrough:///http://host:port` for its per-endpoint commands (`endpoint
//! status|health|hashkv`, `--cluster` ones and `snapshot save`), and its gRPC library then sends
//! `http://host:port` as the HTTP/2 `:authority`. etcd's Go server ignores the field; the Rust HTTP/2
//! stack rejects it as malformed and resets every such stream. So client connections pass through
//! this reader, which looks at the first request's header block: when its authority is a URL, it
//! re-encodes every header block of the connection with the authority reduced to `host:port`;
//! otherwise (every other client) it steps aside and the connection is read directly.
//!
//! Re-encoding needs the connection's HPACK state: a decoder that follows the client's encoder and
//! an encoder whose table the server's decoder follows. Both start at the 4096-byte table the
//! server advertises by default.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The server's SETTINGS_MAX_FRAME_SIZE (HTTP/2's default, which the server keeps).
const MAX_FRAME: usize = 16_384;

enum Mode {
    /// Waiting for the HTTP/2 preface (anything else, such as HTTP/1.1, passes untouched).
    Preface,
    /// Reading frames until the first header block shows which kind of client this is.
    Deciding,
    /// Re-encoding header blocks.
    Rewriting,
    /// Out of the way: the connection is read directly.
    Direct,
}

/// A header block split over HEADERS and CONTINUATION frames, being gathered.
struct Block {
    stream: [u8; 4],
    flags: u8,
    priority: Vec<u8>,
    fragment: Vec<u8>,
    /// The frames as received, to forward unchanged when nothing needs fixing.
    raw: Vec<u8>,
}

/// A client connection whose header blocks are fixed up as described in the module docs.
pub(crate) struct AuthorityFix<T> {
    io: T,
    mode: Mode,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    block: Option<Block>,
    decoder: hpack::Decoder<'static>,
    encoder: hpack::Encoder<'static>,
}

impl<T> AuthorityFix<T> {
    pub(crate) fn new(io: T) -> Self {
        AuthorityFix {
            io,
            mode: Mode::Preface,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            block: None,
            decoder: hpack::Decoder::new(),
            encoder: hpack::Encoder::new(),
        }
    }

    /// Moves what can be handled from `input` to `output`; false when more input is needed.
    fn process(&mut self) -> bool {
        match self.mode {
            Mode::Direct => {
                let input = std::mem::take(&mut self.input);
                self.output.extend_from_slice(&input);
                !input.is_empty()
            }
            Mode::Preface => {
                let n = self.input.len().min(PREFACE.len());
                if self.input[..n] != PREFACE[..n] {
                    self.mode = Mode::Direct;
                    return true;
                }
                if n < PREFACE.len() {
                    return false;
                }
                self.output.extend(self.input.drain(..PREFACE.len()));
                self.mode = Mode::Deciding;
                true
            }
            Mode::Deciding | Mode::Rewriting => self.process_frame(),
        }
    }

    fn process_frame(&mut self) -> bool {
        if self.input.len() < FRAME_HEADER {
            return false;
        }
        let len = usize::from(self.input[0]) << 16
            | usize::from(self.input[1]) << 8
            | usize::from(self.input[2]);
        if self.input.len() < FRAME_HEADER + len {
            return false;
        }
        let frame: Vec<u8> = self.input.drain(..FRAME_HEADER + len).collect();
        let (kind, flags) = (frame[3], frame[4]);
        let mut stream = [0u8; 4];
        stream.copy_from_slice(&frame[5..9]);
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let mut body = payload;
                let mut pad = 0;
                if flags & PADDED != 0 && !body.is_empty() {
                    pad = usize::from(body[0]);
                    body = &body[1..];
                }
                let mut priority = Vec::new();
                if flags & PRIORITY != 0 && body.len() >= 5 {
                    priority = body[..5].to_vec();
                    body = &body[5..];
                }
                let fragment = body[..body.len().saturating_sub(pad)].to_vec();
                self.block = Some(Block {
                    stream,
                    flags,
                    priority,
                    fragment,
                    raw: frame.clone(),
                });
            }
            (CONTINUATION, Some(block)) => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
                block.flags |= flags & END_HEADERS;
            }
            _ => {
                self.output.extend_from_slice(&frame);
                return true;
            }
        }
        if self
            .block
            .as_ref()
            .is_some_and(|b| b.flags & END_HEADERS != 0)
        {
            if let Some(block) = self.block.take() {
                self.finish_block(block);
            }
        }
        true
    }

    fn finish_block(&mut self, block: Block) {
        let headers = match self.decoder.decode(&block.fragment) {
            Ok(h) => h,
            Err(e) => {
                // Let the server's own decoder report the broken block.
                tracing::debug!(error = ?e, "undecodable header block; passing the connection through");
                self.output.extend_from_slice(&block.raw);
                self.mode = Mode::Direct;
                return;
            }
        };
        let needs_fix = headers
            .iter()
            .any(|(name, value)| name == b":authority" && fixed_authority(value).is_some());
        if matches!(self.mode, Mode::Deciding) {
            if !needs_fix {
                self.output.extend_from_slice(&block.raw);
                self.mode = Mode::Direct;
                return;
            }
            tracing::debug!("client sends URLs as :authority; rewriting its header blocks");
            self.mode = Mode::Rewriting;
        }
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(name, value)| {
                let value = match (name.as_slice(), fixed_authority(&value)) {
                    (b":authority", Some(fixed)) => fixed,
                    _ => value,
                };
                (name, value)
            })
            .collect();
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut payload = block.priority;
        payload.extend_from_slice(&encoded);
        let mut first = true;
        let mut rest = payload.as_slice();
        loop {
            let take = rest.len().min(MAX_FRAME);
            let (chunk, tail) = rest.split_at(take);
            let last = tail.is_empty();
            let (kind, mut flags) = if first {
                (HEADERS, block.flags & (END_STREAM | PRIORITY))
            } else {
                (CONTINUATION, 0)
            };
            if last {
                flags |= END_HEADERS;
            }
            let len = chunk.len();
            self.output.extend_from_slice(&[
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                kind,
                flags,
            ]);
            self.output.extend_from_slice(&block.stream);
            self.output.extend_from_slice(chunk);
            if last {
                break;
            }
            first = false;
            rest = tail;
        }
    }
}

/// `host:port` for an authority given as a URL; None when it is fine as it is.
fn fixed_authority(value: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(value).ok()?;
    let (_, rest) = s.split_once("://")?;
    let host = rest.split('/').next().unwrap_or(rest);
    Some(host.as_bytes().to_vec())
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.written < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.written);
                buf.put_slice(&this.output[this.written..this.written + n]);
                this.written += n;
                if this.written == this.output.len() {
                    this.output.clear();
                    this.written = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Direct) && this.input.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if this.process() {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // End of stream: hand over whatever partial data is left and end.
                    let input = std::mem::take(&mut this.input);
                    this.output.extend_from_slice(&input);
                    this.mode = Mode::Direct;
                    if this.output.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => this.input.extend_from_slice(read.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T: Connected> Connected for AuthorityFix<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn request(enc: &mut hpack::Encoder<'_>, authority: &[u8]) -> Vec<u8> {
        enc.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ])
    }

    /// Splits the server-side byte stream back into header blocks, decoded.
    fn header_blocks(mut bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut decoder = hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut pending = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let (kind, flags) = (bytes[3], bytes[4]);
            let payload = &bytes[9..9 + len];
            if kind == HEADERS || kind == CONTINUATION {
                pending.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&pending).expect("valid block"));
                    pending.clear();
                }
            }
            bytes = &bytes[9 + len..];
        }
        blocks
    }

    async fn through_fix(input: Vec<u8>) -> Vec<u8> {
        let mut fixed = AuthorityFix::new(std::io::Cursor::new(input));
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn url_authorities_are_reduced_to_host_port_on_every_request() {
        let mut enc = hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for stream in [1u32, 3, 5] {
            let block = request(&mut enc, b"http://127.0.0.1:2379");
            // The first request's block is split over a CONTINUATION frame.
            let (a, b) = block.split_at(block.len() / 2);
            input.extend(frame(HEADERS, 0, stream, a));
            input.extend(frame(CONTINUATION, END_HEADERS, stream, b));
            input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        let out = through_fix(input).await;
        let blocks = header_blocks(&out);
        assert_eq!(blocks.len(), 3);
        for block in blocks {
            let authority = block.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"127.0.0.1:2379");
            let path = block.iter().find(|(n, _)| n == b":path").unwrap();
            assert_eq!(path.1, b"/etcdserverpb.Maintenance/Status");
        }
    }

    #[tokio::test]
    async fn well_formed_clients_and_http1_pass_untouched() {
        let mut enc = hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &request(&mut enc, b"127.0.0.1:2379"),
        ));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        assert_eq!(through_fix(input.clone()).await, input);
        let http1 = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through_fix(http1.clone()).await, http1);
    }
}
