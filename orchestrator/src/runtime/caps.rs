//! Linux capabilities: names, the default set, and applying a set to the
//! calling process (bounding set, then effective/permitted/inheritable).
//!
//! Must never import anything outside `runtime/`.

use std::io;

/// Capability names in kernel order (index = capability number).
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The default set: the one container engines commonly grant. Notably absent:
/// SYS_ADMIN, NET_ADMIN, SYS_PTRACE, SYS_MODULE, SYS_TIME, DAC_READ_SEARCH.
pub const DEFAULT: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Number of a capability given as `NET_ADMIN` or `CAP_NET_ADMIN`.
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let n = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|x| *x == n).map(|i| i as u32)
}

/// Default set with a container's `add` / `drop` lists applied
/// (`ALL` is understood in both, as in Kubernetes).
pub fn effective_set(add: &[String], drop: &[String]) -> Result<Vec<u32>, String> {
    let mut set: Vec<u32> = DEFAULT.iter().filter_map(|n| number(n)).collect();
    for d in drop {
        if d.eq_ignore_ascii_case("ALL") {
            set.clear();
        } else {
            let n = number(d).ok_or_else(|| format!("unknown capability {d:?}"))?;
            set.retain(|x| *x != n);
        }
    }
    for a in add {
        if a.eq_ignore_ascii_case("ALL") {
            set = (0..NAMES.len() as u32).collect();
        } else {
            let n = number(a).ok_or_else(|| format!("unknown capability {a:?}"))?;
            if !set.contains(&n) {
                set.push(n);
            }
        }
    }
    set.sort_unstable();
    Ok(set)
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drops every capability not in `keep` from the bounding set, so that no
/// later exec can regain it.
pub fn drop_bounding(keep: &[u32]) -> io::Result<()> {
    for cap in 0..=last_cap() {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            // Capabilities unknown to the running kernel are not an error.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Sets effective, permitted and inheritable to exactly `caps`, and clears
/// the ambient set.
pub fn set_process_caps(caps: &[u32]) -> io::Result<()> {
    let mut data = [CapData::default(); 2];
    for &c in caps {
        let (i, bit) = ((c / 32) as usize, 1u32 << (c % 32));
        data[i].effective |= bit;
        data[i].permitted |= bit;
        data[i].inheritable |= bit;
    }
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and data are repr(C) matching the kernel's
    // __user_cap_header_struct / __user_cap_data_struct; version 3 reads
    // exactly two data elements, which the array provides.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sets() {
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("net_raw"), Some(13));
        assert_eq!(number("NOPE"), None);
        let d = effective_set(&[], &[]).unwrap();
        assert_eq!(d.len(), DEFAULT.len());
        assert!(!d.contains(&21));
        let s = effective_set(&["NET_ADMIN".into()], &["NET_RAW".into()]).unwrap();
        assert!(s.contains(&12) && !s.contains(&13));
        assert!(effective_set(&[], &["ALL".into()]).unwrap().is_empty());
        assert!(effective_set(&["BOGUS".into()], &[]).is_err());
    }
}
