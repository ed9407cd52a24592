#!/usr/bin/env bash
# Warren's "offers" quality bars (SPEC §8), measured and printed beside their targets:
#   * time until every node holds every offer, for 100 and 1,000 in-process nodes
#     (target: 1,000 nodes within 10 s);
#   * idle resident memory of one `warren node` process on loopback (target: <= 30 MiB);
#   * blob fetch throughput beside a raw libp2p stream between in-process nodes on
#     127.0.0.1 (1 GiB blobs in $TMPDIR; target: fetch >= 80 % of raw);
#   * proxy throughput and time to first byte beside shadowsocks-libev and direct, and
#     `warren connect` to first byte (bench/proxy.sh, which installs shadowsocks-libev).
#
# Usage: bench/run.sh [bench-offers flags for the offers mode, e.g. --nodes 100,1000]
# Honours CARGO_TARGET_DIR. Only loopback and the in-process memory transport are used.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

echo "== building (release) into $target_dir"
cargo build --release -p warren-bench -p warren

bench="$target_dir/release/bench-offers"
warren="$target_dir/release/warren"

echo "== machine: $(nproc) cores, $(uname -sr), $(rustc --version)"
echo "== git: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"

status=0
echo "== idle memory of one warren node"
"$bench" idle-memory --warren "$warren" --idle 10 || status=1

echo "== offers reach every node"
# Each N is bounded by --timeout (120 s), so the whole run stays within a few minutes.
"$bench" offers --timeout 120 "$@" || status=1

echo "== hub: promises verified and settled per second (SQLite, one core when taskset exists)"
hub="$target_dir/release/bench-hub"
if command -v taskset >/dev/null 2>&1; then
  taskset -c 0 "$hub" || status=1
else
  "$hub" || status=1
fi

echo "== content: blob fetch vs a raw libp2p stream (QUIC and TCP, 1 and 3 holders)"
"$target_dir/release/bench-content" || status=1

echo "== proxy: warren vs shadowsocks-libev vs direct (bench/proxy.sh)"
WARREN_BENCH_BUILT=1 "$root/bench/proxy.sh" || status=1

exit "$status"
