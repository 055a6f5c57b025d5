#!/usr/bin/env bash
# Runs Cairn's full test suite. Installs what the tests need first when it is missing:
# protoc (the etcd-client crate used as a test client compiles etcd's protos with it),
# etcdctl (compatibility tests), etcd (the reference server for benchmarks), and for the node's
# tests: a local OCI registry (docker-registry), image tools (umoci, skopeo), a static busybox to
# build test images from, nftables (the service proxy) and iproute2 (test hosts in namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v umoci >/dev/null 2>&1 || missing+=(umoci)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx nslookup || missing+=(busybox-static)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: missing ${missing[*]} and cannot install them (need root and apt-get); dependent tests will skip" >&2
  fi
fi

# Every target but binaries marked `test = false` (which `--all-targets` would build as a test
# harness anyway): libraries, binaries' unit tests, integration tests, benches (built, and run
# without measuring) and examples.
cargo test --workspace --tests --benches --examples "$@"
