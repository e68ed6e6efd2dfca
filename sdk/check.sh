#!/bin/sh
# Regenerates the SDK's Rust sources (gen_sdk.py, from ../vendor/xenapi/) into a temporary
# directory and compares them with the checked-in src/generated/. Exits 1 with a unified
# diff if any file is stale, missing or no longer generated.
set -u
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

if ! python3 -B "$here/gen_sdk.py" "$tmp"; then
    echo "sdk/check.sh: gen_sdk.py failed" >&2
    exit 1
fi
if ! diff -ru "$here/src/generated" "$tmp"; then
    echo "sdk/check.sh: src/generated differs from gen_sdk.py's output (run: python3 sdk/gen_sdk.py)" >&2
    exit 1
fi
echo "sdk/check.sh: OK"
