//! Streaming exec: a command started in a running container (its namespaces, cgroup, root,
//! identity, capabilities, environment and working directory, as `Runtime::exec`) whose
//! standard streams stay open to the caller while it runs: pipes, or a terminal from the
//! container's own devpts that the command has as its controlling terminal and whose window
//! size the caller sets. The helper's `__exec_stream` does the namespace work and hands the
//! caller's ends of the streams back over a Unix socket (`SCM_RIGHTS`); its exit code is the
//! command's.
//!
//! Dropping the session's [`ExecExit`] kills the helper, and with it the command (its
//! parent-death signal). Must never import anything outside `runtime/`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, Interest, ReadBuf};
use tokio::net::unix::pipe;

use super::init::{self, Streams, STREAM_ERR, STREAM_OK};
use super::records::ContainerState;
use super::{ioc, Result, Runtime, RuntimeError};

/// Writes to the command's standard input; dropping it closes that input (the command reads
/// EOF). With a terminal it writes to the terminal, as typing does.
pub type ExecInput = pipe::Sender;

/// The command's standard output or error. A terminal's end reads EOF once every process
/// holding the terminal has exited (the kernel's EIO there is no error).
#[derive(Debug)]
pub struct ExecReader(pipe::Receiver);

impl AsyncRead for ExecReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.raw_os_error() == Some(libc::EIO) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// The terminal's master side, kept to change its window size.
#[derive(Debug)]
pub struct Terminal(OwnedFd);

impl Terminal {
    /// TIOCSWINSZ: the command (the terminal's foreground process group) gets SIGWINCH.
    pub fn resize(&self, columns: u16, rows: u16) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the fd is a terminal's master owned by self; the kernel reads a winsize from
        // a pointer valid for the call.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The running command's exit, awaited once.
#[derive(Debug)]
pub struct ExecExit {
    helper: tokio::process::Child,
}

impl ExecExit {
    /// The command's exit code (128 + the signal's number if a signal ended it).
    pub async fn wait(mut self) -> Result<i32> {
        let status = self
            .helper
            .wait()
            .await
            .map_err(ioc("wait for exec helper"))?;
        Ok(status.code().unwrap_or(128))
    }
}

/// A started command's streams (each `None` when not asked for; `stderr` always `None` with a
/// terminal, whose output is all on `stdout`), its terminal, and its exit.
#[derive(Debug)]
pub struct ExecSession {
    pub stdin: Option<ExecInput>,
    pub stdout: Option<ExecReader>,
    pub stderr: Option<ExecReader>,
    pub terminal: Option<Terminal>,
    pub exit: ExecExit,
}

/// How long the helper may take to join the container and start the command.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Runtime {
    /// Starts `argv` in a running container with the asked-for streams wired to the caller.
    /// A command that cannot be started (not found, not executable, a bad working directory)
    /// is [`RuntimeError::Start`] with the reason.
    pub async fn exec_stream(
        &self,
        pod: &str,
        container: &str,
        argv: &[String],
        streams: Streams,
    ) -> Result<ExecSession> {
        let st = self.container_status(pod, container)?;
        let (ContainerState::Running, Some(pid)) = (&st.state, st.pid) else {
            return Err(RuntimeError::InvalidState(format!(
                "container {pod}/{container} is not running"
            )));
        };
        if argv.is_empty() {
            return Err(RuntimeError::InvalidState("exec needs a command".into()));
        }
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(ioc("socketpair"))?;
        ours.set_nonblocking(true).map_err(ioc("socketpair"))?;
        let control = tokio::net::UnixStream::from_std(ours).map_err(ioc("socketpair"))?;
        let mut helper = tokio::process::Command::new(&self.cfg.helper)
            .arg(init::EXEC_STREAM)
            .arg(self.container_dir(pod, container).join("init.json"))
            .arg(pid.to_string())
            .arg(streams.encode())
            .args(argv)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(ioc(format!("spawn helper {}", self.cfg.helper.display())))?;
        let what = || format!("exec in container {pod}/{container}");
        let (text, mut fds) =
            match tokio::time::timeout(START_TIMEOUT, read_control(&control)).await {
                Ok(r) => r.map_err(ioc("read from exec helper"))?,
                Err(_) => {
                    return Err(RuntimeError::Start {
                        what: what(),
                        message: format!("the command did not start within {START_TIMEOUT:?}"),
                    })
                }
            };
        drop(control);
        if text == STREAM_OK {
            return session(streams, &mut fds, helper);
        }
        let message = match text.strip_prefix(STREAM_ERR) {
            Some(m) => m.to_string(),
            None => {
                // The helper failed before it could answer; it said why on stderr.
                let mut err = String::new();
                if let Some(mut e) = helper.stderr.take() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), e.read_to_string(&mut err))
                            .await;
                }
                let _ = helper.wait().await;
                err.trim().to_string()
            }
        };
        Err(RuntimeError::Start {
            what: what(),
            message,
        })
    }
}

fn session(
    streams: Streams,
    fds: &mut Vec<OwnedFd>,
    helper: tokio::process::Child,
) -> Result<ExecSession> {
    let bad = |what: &str| RuntimeError::InvalidState(format!("exec helper: {what}"));
    let mut next = || {
        fds.drain(..1)
            .next()
            .ok_or_else(|| bad("too few streams passed"))
    };
    let exit = ExecExit { helper };
    if streams.tty {
        let master = next()?;
        nix::fcntl::fcntl(
            &master,
            nix::fcntl::FcntlArg::F_SETFL(
                nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NONBLOCK,
            ),
        )
        .map_err(|e| bad(&format!("terminal: {e}")))?;
        let dup = |f: &OwnedFd| f.try_clone().map_err(ioc("dup terminal"));
        let stdin = if streams.stdin {
            Some(pipe::Sender::from_owned_fd_unchecked(dup(&master)?).map_err(ioc("terminal"))?)
        } else {
            None
        };
        let stdout = ExecReader(
            pipe::Receiver::from_owned_fd_unchecked(dup(&master)?).map_err(ioc("terminal"))?,
        );
        return Ok(ExecSession {
            stdin,
            stdout: Some(stdout),
            stderr: None,
            terminal: Some(Terminal(master)),
            exit,
        });
    }
    let stdin = match streams.stdin {
        true => Some(pipe::Sender::from_owned_fd(next()?).map_err(ioc("stdin pipe"))?),
        false => None,
    };
    let mut reader = |on: bool| -> Result<Option<ExecReader>> {
        if !on {
            return Ok(None);
        }
        let fd = next()?;
        Ok(Some(ExecReader(
            pipe::Receiver::from_owned_fd(fd).map_err(ioc("output pipe"))?,
        )))
    };
    let stdout = reader(streams.stdout)?;
    let stderr = reader(streams.stderr)?;
    Ok(ExecSession {
        stdin,
        stdout,
        stderr,
        terminal: None,
        exit,
    })
}

/// Reads the helper's one control line and the descriptors that came with it. EOF before a
/// full line gives what was read (empty if nothing).
async fn read_control(sock: &tokio::net::UnixStream) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut text = Vec::new();
    let mut fds = Vec::new();
    loop {
        let (data, got) = sock
            .async_io(Interest::READABLE, || recv_with_fds(sock.as_raw_fd()))
            .await?;
        fds.extend(got);
        if data.is_empty() {
            break;
        }
        text.extend_from_slice(&data);
        if text.ends_with(b"\n") {
            text.pop();
            break;
        }
    }
    Ok((String::from_utf8_lossy(&text).into_owned(), fds))
}

fn recv_with_fds(fd: RawFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (n, raw) = {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        let mut raw = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                raw.extend(fds);
            }
        }
        (msg.bytes, raw)
    };
    // SAFETY: SCM_RIGHTS installed these descriptors in this process just now; nothing else
    // owns them.
    let owned = raw
        .into_iter()
        .map(|f| unsafe { OwnedFd::from_raw_fd(f) })
        .collect();
    buf.truncate(n);
    Ok((buf, owned))
}
