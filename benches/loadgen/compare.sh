#!/usr/bin/env bash
# Same-run comparison of xapid with the libvirt peer (libvirtd + its "test" driver).
#
#   bash benches/loadgen/compare.sh            # one run (~8 min on 2 cores after the build)
#   RUNS=3 bash benches/loadgen/compare.sh     # three back-to-back runs, medians and per-run ratios
#
# Each run: the peer (N=1000 VMs, C=1,16,64, over TCP) and then xapid's phases
# (xapid-loadgen run: lifecycle C=1,16,64,256; get_all_records at 1,000 and 10,000 VMs;
# 1 and 1,000 event.from long-polls; RPC calls/s vs POST /bench/noop), each against a fresh
# daemon it starts itself. Results land in $OUT (default target/bench-compare/<timestamp>):
# peer-N.json, xapid-N.json, report.md (the table), summary.json.
#
# Environment: RUNS (1), OUT, PEER_SCRIPT (../shared/bench/peer_libvirt.py beside the project),
# LOADGEN_ARGS (extra arguments for `xapid-loadgen run`, e.g. "--phases lifecycle").
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

RUNS="${RUNS:-1}"
OUT="${OUT:-target/bench-compare/$(date +%Y%m%d-%H%M%S)}"
PEER_SCRIPT="${PEER_SCRIPT:-$root/../shared/bench/peer_libvirt.py}"
LOADGEN_ARGS="${LOADGEN_ARGS:-}"
mkdir -p "$OUT"

say() { printf '# %s\n' "$*" >&2; }

if [ ! -f "$PEER_SCRIPT" ]; then
    say "peer script not found at $PEER_SCRIPT (set PEER_SCRIPT)"
    exit 1
fi

# The peer's packages (Debian): libvirtd, and the Python binding for /usr/bin/python3.
if ! { [ -x /usr/sbin/libvirtd ] || command -v libvirtd >/dev/null; } ||
    ! /usr/bin/python3 -c 'import libvirt' 2>/dev/null; then
    say "installing the peer's packages"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq --no-install-recommends libvirt-daemon libvirt-clients python3-libvirt
fi

say "building xapid and xapid-loadgen (release)"
cargo build --release -q --bin xapid -p rpc
cargo build --release -q -p xapid-loadgen

{
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "kernel: $(uname -r)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "started: $(date -u +%FT%TZ), loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt" >&2

peers=()
xapids=()
for i in $(seq 1 "$RUNS"); do
    say "run $i/$RUNS: peer (libvirtd test driver, N=1000, C=1,16,64, TCP)"
    /usr/bin/python3 "$PEER_SCRIPT" --start-daemon --transport tcp --vms 1000 --concurrency 1,16,64 \
        --workdir "$OUT/peer-work-$i" --json "$OUT/peer-$i.json" >/dev/null
    say "run $i/$RUNS: xapid"
    # shellcheck disable=SC2086
    target/release/xapid-loadgen run --xapid target/release/xapid --json "$OUT/xapid-$i.json" $LOADGEN_ARGS >/dev/null
    peers+=(--peer "$OUT/peer-$i.json")
    xapids+=(--xapid "$OUT/xapid-$i.json")
done
echo "finished: $(date -u +%FT%TZ), loadavg $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2

target/release/xapid-loadgen report "${peers[@]}" "${xapids[@]}" --json "$OUT/summary.json" | tee "$OUT/report.md"
say "results in $OUT"
