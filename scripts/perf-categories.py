#!/usr/bin/env python3
"""Splits a system-wide `perf record -g` of a cluster bench run into CPU categories, separately for
the Cairn members (samples in the release `cairn` binary) and the bench's load generator.

A sample counts toward the first category that matches one of its innermost 12 frames, innermost
first, so time in the kernel or the allocator is charged to what it was doing rather than to its
caller. Frames the unwinder could not name fall into "other".
"""
import collections
import re
import subprocess
import sys

RULES = [
    ("disk: log pwrite/fdatasync, sled IO", r"fdatasync|fsync|sync_file_range|pwrite|ext4_|blk_|iowrite|write_to_log|sled::pagecache::iobuf"),
    ("network: TCP send/receive incl. loopback softirq", r"tcp_|sock_|__libc_recv|writev|readv|recvfrom|sendto|__sys_recv|__sys_send|net_rx|ip_"),
    ("scheduling: futex, wake-ups, epoll, context switches", r"futex|schedule|try_to_wake_up|epoll|finish_task_switch|park|_raw_spin_unlock_irq|Condvar|__lll_lock"),
    ("allocator and memcpy", r"mi_|_mi_|malloc|free|memmove|memcpy|memset|realloc|_int_"),
    ("HTTP/2 and gRPC (h2, hyper, tonic, prost)", r"h2::|hyper::|tonic::|prost::|http::|hpack|bytes::"),
    ("openraft", r"openraft::"),
    ("sled (state machine rows)", r"sled::"),
    ("apply, MVCC index, watch hub, leases", r"cairn_server::(storage::apply|mvcc|watch|lease)"),
    ("encoding entries (bincode/serde)", r"bincode|serde"),
    ("tokio runtime", r"tokio::"),
]


def samples(path):
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "pid,ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout
    current = None
    for line in out.splitlines():
        if not line.strip():
            if current:
                yield current
            current = None
        elif not line.startswith("\t"):
            if current:
                yield current
            current = (int(line.split()[0]), [])
        elif current:
            parts = line.strip().split(None, 1)
            current[1].append(parts[1] if len(parts) > 1 else "")
    if current:
        yield current


def category(frames):
    for frame in frames[:12]:
        for name, pattern in RULES:
            if re.search(pattern, frame):
                return name
    return "other"


def main():
    all_samples = list(samples(sys.argv[1]))
    members, generator = set(), set()
    for pid, frames in all_samples:
        joined = " ".join(frames)
        if "release/cairn)" in joined:
            members.add(pid)
        if "deps/cluster-" in joined:
            generator.add(pid)
    for label, pids in (("members", members), ("load generator", generator)):
        counts = collections.Counter(category(f) for p, f in all_samples if p in pids)
        total = sum(counts.values()) or 1
        print(f"{label}: {total} samples")
        for name, n in counts.most_common():
            print(f"  {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
