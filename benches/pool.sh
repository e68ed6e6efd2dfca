#!/usr/bin/env bash
# The pool figures of issue 19 (BENCHMARKS.md, "Pools on etcd"), one run each:
#   1. the lifecycle load (7 calls per VM, as xapid-loadgen's) on one host on redb, then on a
#      pool of 4 hosts on etcd: ops/s, daemon CPU per op summed over every xapid and etcd member;
#   2. event.from delivery latency, a write through a member to a listener on the master;
#   3. pool-wide VM.get_all_records with 10,000 VMs made through 16 hosts, and each xapid's RSS.
#
#   bash benches/pool.sh                 # ~6 min on 2 cores after the build
#   OUT=dir CLIENTS=16 VMS=400 SCALE_VMS=10000 SCALE_HOSTS=16 bash benches/pool.sh
#
# Hosts are xapid processes with the simulator on 127.0.0.2, .3, … port 80 (as tests/pool/), so
# it needs root and the etcd program (etcd-server). XAPID_BIN reuses a build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

OUT="${OUT:-benches/results/pool-$(date -u +%Y-%m-%d)}"
CLIENTS="${CLIENTS:-16}"
VMS="${VMS:-400}"
SCALE_VMS="${SCALE_VMS:-10000}"
SCALE_HOSTS="${SCALE_HOSTS:-16}"
mkdir -p "$OUT"

[ "$(id -u)" -eq 0 ] || { echo "pool.sh: binds port 80 on 127.0.0.N: run it as root" >&2; exit 2; }
command -v etcd >/dev/null || { echo "pool.sh: install etcd-server" >&2; exit 2; }
if [ -z "${XAPID_BIN:-}" ]; then
    cargo build --release --bin xapid
    XAPID_BIN="$root/target/release/xapid"
fi
export XAPID_BIN
VENV="$(bash tests/clients/run.sh --python-venv | tail -n 1)"
PY="$VENV/bin/python"

{
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "etcd: $(etcd --version | head -1)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "xapid: $XAPID_BIN"
    echo "started: $(date -u +%FT%TZ), loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt" >&2

"$PY" benches/pool_bench.py lifecycle --hosts 1 --clients "$CLIENTS" --vms "$VMS" --json "$OUT/lifecycle-1-redb.json"
"$PY" benches/pool_bench.py lifecycle --hosts 4 --clients "$CLIENTS" --vms "$VMS" --json "$OUT/lifecycle-4-etcd.json"
"$PY" benches/pool_bench.py events --hosts 4 --samples 200 --json "$OUT/events-4.json"
"$PY" benches/pool_bench.py scale --hosts "$SCALE_HOSTS" --vms "$SCALE_VMS" --json "$OUT/scale-$SCALE_HOSTS.json"

echo "finished: $(date -u +%FT%TZ), loadavg $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2
echo "results in $OUT" >&2
