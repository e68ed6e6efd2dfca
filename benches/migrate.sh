#!/usr/bin/env bash
# Issue 20's figures (BENCHMARKS.md, "Live migration and HA"), one run:
#   1. live VM.pool_migrate of a simulated guest between two hosts, memory 64 MiB to 16 GiB,
#      dirty rate 0, 64, 512 MiB/s: time of the call, downtime, rounds, MiB sent while it ran;
#   2. HA: SIGKILL of the xapid of a host with 10 protected VMs, until all run elsewhere;
#   3. host.evacuate of a host with 20, then 100 VMs (128 MiB each, live moves, 10 at a time).
#
#   bash benches/migrate.sh        # ~6 min on 2 cores after the build
#   OUT=dir REPS=3 SIZES=64,1024 RATES=0,64 HA_VMS=10 bash benches/migrate.sh
#
# Hosts are xapid processes with the simulator on 127.0.0.2, .3, … (as tests/pool/): root and the
# etcd program (etcd-server) are needed. XAPID_BIN reuses a build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

OUT="${OUT:-benches/results/migrate-$(date -u +%Y-%m-%d)}"
mkdir -p "$OUT"
[ "$(id -u)" -eq 0 ] || { echo "migrate.sh: binds port 80 on 127.0.0.N: run it as root" >&2; exit 2; }
command -v etcd >/dev/null || { echo "migrate.sh: install etcd-server" >&2; exit 2; }
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
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "started: $(date -u +%FT%TZ), loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt" >&2
"$PY" benches/pool_bench.py migrate --reps "${REPS:-3}" --sizes "${SIZES:-64,1024,4096,16384}" \
    --rates "${RATES:-0,64,512}" --json "$OUT/migrate.json"
"$PY" benches/pool_bench.py ha --vms "${HA_VMS:-10}" --json "$OUT/ha.json"
"$PY" benches/pool_bench.py evacuate --sizes "${EVACUATE:-20,100}" --json "$OUT/evacuate.json"
echo "finished: $(date -u +%FT%TZ), loadavg $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2
echo "results in $OUT" >&2
