//! The seam between the namespace code (`init`) and the kernel: every namespace, mount and root
//! switch goes through [`Syscall`], so that code can be unit-tested without root against
//! [`testing::Recorder`], which records the calls (and can fail one), as youki's `Syscall` trait
//! allows. [`Linux`] is the real thing.
//!
//! Must never import anything outside `runtime/`.

use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// The kernel calls the namespace code makes.
pub(crate) trait Syscall {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;
    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> nix::Result<()>;
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    fn chdir(&self, dir: &Path) -> nix::Result<()>;
}

/// The kernel's own calls.
pub(crate) struct Linux;

impl Syscall for Linux {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> nix::Result<()> {
        nix::sched::setns(fd, kind)
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn mount(
        &self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(src, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&self, dir: &Path) -> nix::Result<()> {
        nix::unistd::chdir(dir)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::cell::RefCell;
    use std::path::PathBuf;

    use super::*;

    /// One call, as [`Recorder`] saw it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Call {
        Unshare(CloneFlags),
        Setns(CloneFlags),
        Sethostname(String),
        Mount {
            src: Option<PathBuf>,
            target: PathBuf,
            fstype: Option<String>,
            flags: MsFlags,
            data: Option<String>,
        },
        Umount(PathBuf, MntFlags),
        PivotRoot(PathBuf, PathBuf),
        Chdir(PathBuf),
    }

    /// Picks the call a [`Recorder`] fails.
    pub(crate) type Picks = fn(&Call) -> bool;

    /// Records every call and succeeds, except a call `fail` picks, which fails with its errno.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub calls: RefCell<Vec<Call>>,
        pub fail: Option<(Picks, nix::errno::Errno)>,
    }

    impl Recorder {
        fn record(&self, call: Call) -> nix::Result<()> {
            let failed = self.fail.filter(|(picks, _)| picks(&call));
            self.calls.borrow_mut().push(call);
            match failed {
                Some((_, errno)) => Err(errno),
                None => Ok(()),
            }
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }
    }

    impl Syscall for Recorder {
        fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
            self.record(Call::Unshare(flags))
        }

        fn setns(&self, _fd: BorrowedFd<'_>, kind: CloneFlags) -> nix::Result<()> {
            self.record(Call::Setns(kind))
        }

        fn sethostname(&self, name: &str) -> nix::Result<()> {
            self.record(Call::Sethostname(name.to_string()))
        }

        fn mount(
            &self,
            src: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> nix::Result<()> {
            self.record(Call::Mount {
                src: src.map(Path::to_path_buf),
                target: target.to_path_buf(),
                fstype: fstype.map(str::to_string),
                flags,
                data: data.map(str::to_string),
            })
        }

        fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
            self.record(Call::Umount(target.to_path_buf(), flags))
        }

        fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
            self.record(Call::PivotRoot(
                new_root.to_path_buf(),
                put_old.to_path_buf(),
            ))
        }

        fn chdir(&self, dir: &Path) -> nix::Result<()> {
            self.record(Call::Chdir(dir.to_path_buf()))
        }
    }
}
