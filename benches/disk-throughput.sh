#!/usr/bin/env bash
# Disk throughput of xapid's raw VDI data paths next to dd, on the same disk, in the same run.
#
#   bash benches/disk-throughput.sh [--size-mib 1024] [--runs 3] [--dir DIR] [--port 18941]
#
# Builds the release daemon and the benchmark, then runs benches/src/bin/disk_throughput.rs:
# for each run, PUT /import_raw_vdi of a 1 GiB random file into a fresh VDI (answered after
# fdatasync) and GET /export_raw_vdi after dropping the page cache, against
# `dd bs=1M conv=fdatasync` and `dd of=/dev/null` on the same file system. Prints the medians
# and the ratios (BENCHMARKS.md records them). Run as root so the page cache can be dropped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q --bin xapid -p rpc
cargo build --release -q -p xapid-benches --bin disk-throughput
echo "machine: $(uname -srm); $(nproc) CPUs; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "disk: $(df -hT target | tail -1 | awk '{print $1, $2, $3}')"
exec target/release/disk-throughput --xapid target/release/xapid "$@"
