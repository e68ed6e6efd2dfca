#!/usr/bin/env bash
# Pools of xapid hosts (issue 19), driven by XenAPI.py: N standalone daemons with the simulator,
# each on its own loopback address (127.0.0.2, 127.0.0.3, …) port 80 with its own state dir,
# joined into one pool, then members, events, forwarding, placement, a new master, eject and
# rejoin checked (tests/pool/test_pool.py), and Xen Orchestra's xen-api client pointed at a member
# (tests/pool/xo_pool.mjs).
#
#   tests/pool/run.sh            # a pool of 4
#   XAPID_POOL_HOSTS=2 tests/pool/run.sh
#
# Environment: XAPID_BIN (default: <repo>/target/release/xapid, built first), XAPID_TEST_CACHE
# (where tests/clients/run.sh keeps the Python client), PYTEST_ADDOPTS, XAPID_KEEP=1 (keep
# each host's state dir and log). Needs root (port 80) and the etcd program (etcd-server).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

die() { printf '\npool/run.sh: FATAL: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "the pool test binds port 80 on 127.0.0.N: run it as root"
command -v etcd >/dev/null 2>&1 || die "the etcd program is missing: install the etcd-server package"

if [ -z "${XAPID_BIN:-}" ]; then
  (cd "$REPO" && cargo build --release --bin xapid)
  XAPID_BIN="$REPO/target/release/xapid"
fi
[ -x "$XAPID_BIN" ] || die "XAPID_BIN=$XAPID_BIN is not an executable file"
export XAPID_BIN

# The Python client, installed (or found in its cache) as the client tests do.
VENV="$(bash "$REPO/tests/clients/run.sh" --python-venv | tail -n 1)"
[ -x "$VENV/bin/python" ] || die "no Python venv for XenAPI.py at '$VENV'"

# Xen Orchestra's xen-api client, likewise.
XAPID_NODE_PREFIX="$(bash "$REPO/tests/clients/run.sh" --node-prefix | tail -n 1)"
[ -d "$XAPID_NODE_PREFIX/node_modules/xen-api" ] || die "no xen-api client at '$XAPID_NODE_PREFIX'"
export XAPID_NODE_PREFIX

cd "$HERE"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -v test_pool.py
