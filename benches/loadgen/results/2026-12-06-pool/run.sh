#!/bin/bash
# Same-run before/after of the one-host path: alternated runs of the two binaries.
set -u
out=/tmp/pool-bench; mkdir -p $out
LG=/work/wt/pool/target/release/xapid-loadgen
for i in 4 5 6 7 8; do
  for b in base head; do
    $LG run --xapid /tmp/xapid-$b --phases lifecycle --protocols json --concurrency 16,64 --vms 500 --warmup 10 --json $out/$b-$i.json > $out/$b-$i.log 2>&1
    echo "$b $i rc=$?"
  done
done
