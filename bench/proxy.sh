#!/usr/bin/env bash
# Warren's proxy quality bars (SPEC §8), measured in one run on this machine beside
# shadowsocks-libev and a direct download, and printed beside their targets:
#   * single-stream download throughput through Warren's SOCKS5, through ss-local/ss-server
#     (chacha20-ietf-poly1305) and direct (target: warren/shadowsocks >= 1.0);
#   * time to first byte (target: <= direct + 2 ms);
#   * from `warren connect` to the first byte carried (target: < 500 ms).
#
# Usage: bench/proxy.sh [bench-proxy flags, e.g. --size-mib 512 --runs 5 --client curl]
# Installs shadowsocks-libev with apt-get (as root) if ss-server is missing. Honours
# CARGO_TARGET_DIR. Every listener and connection is on 127.0.0.1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

if ! command -v ss-server >/dev/null 2>&1 || ! command -v ss-local >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "bench/proxy.sh: ss-server/ss-local not found; install the Debian package" \
            "shadowsocks-libev (as root: apt-get install shadowsocks-libev), or pass" \
            "--paths direct,warren" >&2
        exit 1
    fi
    echo "== installing shadowsocks-libev"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends shadowsocks-libev >/dev/null
    # The package enables a system-wide ss-server; the benchmark starts its own, so do not
    # leave the packaged one running where systemd started it.
    if command -v systemctl >/dev/null 2>&1 &&
        systemctl is-active --quiet shadowsocks-libev.service 2>/dev/null; then
        systemctl disable --now shadowsocks-libev.service >/dev/null 2>&1 || true
        echo "== stopped and disabled the packaged shadowsocks-libev.service"
    fi
fi

# bench/run.sh has built already (and sets WARREN_BENCH_BUILT=1), so every section
# measures the same binaries.
if [ "${WARREN_BENCH_BUILT:-}" != 1 ]; then
    echo "== building (release) into $target_dir"
    cargo build --release -p warren-bench -p warren
fi

echo "== machine: $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(uname -sr), $(rustc --version)"
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg); git: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "== peer: $(ss-server -h 2>&1 | sed -n 's/^[[:space:]]*\(shadowsocks-libev [0-9.]*\).*/\1/p' | head -1)"

echo "== proxy throughput, time to first byte, connect to first byte"
exec "$target_dir/release/bench-proxy" --warren "$target_dir/release/warren" "$@"
