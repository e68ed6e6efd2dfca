#!/usr/bin/env bash
# Pools of xapid hosts (issue 19), driven by XenAPI.py: N standalone daemons with the simulator,
# each on its own loopback address (127.0.0.2, 127.0.0.3, …) port 80 with its own state dir,
# joined into one pool, then members, events, forwarding, placement, a new master, eject and
# rejoin checked (tests/pool/test_pool.py), and Xen Orchestra's xen-api client pointed at a member
# (tests/pool/xo_pool.mjs). Then storage motion (tests/pool/test_migrate_send.py, a pool of two and
# a lone host of its own): VM.migrate_send inside the pool and to another pool, VDI.pool_migrate.
# Then HA (tests/pool/test_ha.py, a fresh pool): planning, a member killed
# and one frozen past its lease (its VMs restarted elsewhere, the frozen one fencing itself), the
# master killed and a new one elected. Then the fault runs (tests/pool/test_pool_faults.py, a fresh pool):
# kill -9 of a member's xapid and of an etcd member during a mixed write load, a member cut off
# from etcd; no acknowledged write lost, views equal to etcd's.
#
#   tests/pool/run.sh            # a pool of 4
#   XAPID_POOL_HOSTS=2 tests/pool/run.sh   # (the fault runs need 3 or more: skipped below)
#   XAPID_POOL_TESTS=test_pool_faults.py tests/pool/run.sh   # only the fault runs
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
if [ -n "${XAPID_POOL_TESTS:-}" ]; then
  TESTS=($XAPID_POOL_TESTS)
elif [ "${XAPID_POOL_HOSTS:-4}" -ge 3 ]; then
  TESTS=(test_pool.py test_migrate_send.py test_ha.py test_pool_faults.py)
else
  echo "pool/run.sh: NOT RUN: test_pool_faults.py (needs XAPID_POOL_HOSTS >= 3 for 3 etcd members)" >&2
  TESTS=(test_pool.py)
fi
# -s: the fault runs print their report lines (acknowledged / present / lost).
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -v -s "${TESTS[@]}"
