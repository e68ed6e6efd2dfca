#!/usr/bin/env bash
# Backup throughput (XVA export/import of a 4 GiB VM, VHD export of 1 GiB full and with 10%
# changed) next to dd and qemu-img convert, same disk, same run. BENCHMARKS.md, "Backups".
#
#   RUNS=3 bash benches/backup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v qemu-img >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-utils; }
cargo build --release -q --bin xapid -p rpc
echo "machine: $(uname -srm); $(nproc) CPUs; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "disk: $(df -hT target | tail -1 | awk '{print $1, $2, $3}')"
work="target/bench-backup"
rm -rf "$work"
exec python3 benches/backup_bench.py target/release/xapid "$work"
