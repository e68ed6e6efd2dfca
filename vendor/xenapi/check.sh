#!/bin/sh
# Re-run every generator in this directory (gen_*.py) into a temporary
# directory and compare each file it writes with the checked-in copy.
# Exits 1, printing a unified diff, if any checked-in output is stale or
# missing. Then runs check_facts.py (consistency of the facts).
set -u
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
status=0

for gen in "$here"/gen_*.py; do
    if ! python3 -B "$gen" "$tmp"; then
        echo "check.sh: $(basename "$gen") failed" >&2
        status=1
    fi
done

for out in "$tmp"/*; do
    [ -e "$out" ] || continue
    name=$(basename "$out")
    if [ ! -f "$here/$name" ]; then
        echo "check.sh: $name is generated but not checked in" >&2
        status=1
    elif ! diff -u "$here/$name" "$out"; then
        echo "check.sh: $name differs from its generator's output" >&2
        status=1
    fi
done

if ! python3 -B "$here/check_facts.py"; then
    status=1
fi

[ "$status" -eq 0 ] && echo "check.sh: OK"
exit "$status"
