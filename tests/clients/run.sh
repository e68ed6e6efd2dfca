#!/usr/bin/env bash
# End-to-end tests of xapid driven by unmodified published XenAPI clients.
#
#   tests/clients/run.sh              # every suite (python, node, ansible)
#   tests/clients/run.sh python       # one suite
#   tests/clients/run.sh node python  # several, in that order
#   tests/clients/run.sh --python-venv  # only install the Python client; print its venv's path
#   tests/clients/run.sh --node-prefix  # only install Xen Orchestra's client; print its prefix
#                                       # (tests/pool/run.sh drives a pool with both)
#                                       # (tests/xen/run.sh drives a dom0's xapid with it)
#
# Environment:
#   XAPID_BIN          daemon binary to test (default: <repo>/target/release/xapid,
#                      built with `cargo build --release --bin xapid` first)
#   XAPID_TEST_CACHE   where the clients are installed
#                      (default: $HOME/.cache/xapid-tests; never inside the repo)
#   PYTEST_ADDOPTS     extra pytest options (python and ansible suites), e.g. PYTEST_ADDOPTS="-k wire -x"
#   XAPID_GOLDEN_UPDATE=1  re-record tests/clients/golden/ (python suite, test_golden.py)
#   XAPID_NODE_TEST_ARGS  extra `node --test` options, e.g. "--test-name-pattern=json"
#   XAPID_KEEP=1       keep each daemon's temp dir (state, log) after the run
#
# A client that cannot be installed fails the run (non-zero exit); nothing is skipped.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${XAPID_TEST_CACHE:-$HOME/.cache/xapid-tests}"

# Pinned client versions.
XENAPI_VERSION="26.21.1"   # newest on PyPI when pinned (`pip index versions xenapi`)
PYTEST_VERSION="9.2.0"
XXHASH_VERSION="3.5.0"     # the python tests check XVA chunk checksums (.xxhash) with it
XEN_API_VERSION="4.7.6"    # Xen Orchestra's client; exact tree pinned by node/package-lock.json
# Ansible: the community.general collection comes from the PyPI `ansible` package, which
# bundles it (Ansible Galaxy is not reachable from the dev/CI machines; PyPI is). ansible 14.5.0
# bundles community.general 13.5.0 and requires ansible-core 2.21.x.
ANSIBLE_VERSION="14.5.0"
ANSIBLE_CORE_VERSION="2.21.5"
COMMUNITY_GENERAL_VERSION="13.5.0"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '\nrun.sh: FATAL: %s\n' "$*" >&2; exit 2; }

case "$CACHE" in
  "$REPO"|"$REPO"/*) die "XAPID_TEST_CACHE ($CACHE) must be outside the repository ($REPO)";;
esac

sha() { sha256sum "$@" | sha256sum | cut -c1-16; }

# --------------------------------------------------------------------------
# Python >= 3.12: pyenv's 3.12.x (newest), else any pyenv >= 3.12, else python3.
pick_python() {
  local root cand best=""
  if command -v pyenv >/dev/null 2>&1 && root="$(pyenv root 2>/dev/null)"; then
    for cand in $(ls -d "$root"/versions/3.12.*/ 2>/dev/null | sort -V); do
      [ -x "$cand/bin/python3" ] && best="$cand/bin/python3"
    done
    if [ -z "$best" ]; then
      for cand in $(ls -d "$root"/versions/3.*/ 2>/dev/null | sort -V); do
        if [ -x "$cand/bin/python3" ] && "$cand/bin/python3" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
          best="$cand/bin/python3"; break
        fi
      done
    fi
  fi
  if [ -z "$best" ]; then
    best="$(command -v python3 || true)"
    [ -n "$best" ] || die "no python3 found"
  fi
  printf '%s\n' "$best"
}

setup_python() {
  local py pyver key venv
  py="$(pick_python)"
  pyver="$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
  key="$(printf '%s %s %s %s' "$pyver" "$XENAPI_VERSION" "$PYTEST_VERSION" "$XXHASH_VERSION" | sha256sum | cut -c1-12)"
  venv="$CACHE/py-$pyver-$key"
  if [ ! -f "$venv/.installed" ]; then
    log "installing xenapi==$XENAPI_VERSION pytest==$PYTEST_VERSION xxhash==$XXHASH_VERSION into $venv (python $pyver: $py)"
    rm -rf "$venv"
    mkdir -p "$CACHE"
    "$py" -m venv "$venv" || die "cannot create a venv with $py"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "xenapi==$XENAPI_VERSION" "pytest==$PYTEST_VERSION" "xxhash==$XXHASH_VERSION" \
      || die "cannot install xenapi==$XENAPI_VERSION / pytest==$PYTEST_VERSION / xxhash==$XXHASH_VERSION from PyPI"
    touch "$venv/.installed"
  fi
  "$venv/bin/python" - "$XENAPI_VERSION" <<'EOF' || die "installed xenapi client is unusable"
import sys, importlib.metadata as md
import XenAPI  # the published client, unmodified
v = md.version("xenapi")
assert v == sys.argv[1], f"xenapi {v} installed, {sys.argv[1]} pinned"
EOF
  PY_VENV="$venv"
}

setup_node() {
  local key prefix
  command -v node >/dev/null 2>&1 || die "node is not installed"
  command -v npm >/dev/null 2>&1 || die "npm is not installed"
  key="$(sha "$HERE/node/package.json" "$HERE/node/package-lock.json")"
  prefix="$CACHE/npm-xen-api-$XEN_API_VERSION-$key"
  if [ ! -f "$prefix/.installed" ]; then
    log "installing xen-api@$XEN_API_VERSION into $prefix (npm ci, lockfile tests/clients/node/package-lock.json)"
    rm -rf "$prefix"
    mkdir -p "$prefix"
    cp "$HERE/node/package.json" "$HERE/node/package-lock.json" "$prefix/"
    (cd "$prefix" && npm ci --no-audit --no-fund --loglevel=error) \
      || die "cannot install xen-api@$XEN_API_VERSION from the npm registry"
    touch "$prefix/.installed"
  fi
  node -e '
    const { createRequire } = require("module");
    const r = createRequire(process.argv[1] + "/package.json");
    const v = r("xen-api/package.json").version;
    if (v !== process.argv[2]) { console.error(`xen-api ${v} installed, ${process.argv[2]} pinned`); process.exit(1); }
  ' "$prefix" "$XEN_API_VERSION" || die "installed xen-api client is unusable"
  NODE_PREFIX="$prefix"
}

setup_ansible() {
  local py pyver key venv
  py="$(pick_python)"
  pyver="$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))' \
    || die "ansible-core $ANSIBLE_CORE_VERSION needs Python >= 3.12 ($py is $pyver)"
  key="$(printf '%s %s %s %s %s' "$pyver" "$ANSIBLE_VERSION" "$ANSIBLE_CORE_VERSION" "$XENAPI_VERSION" "$PYTEST_VERSION" | sha256sum | cut -c1-12)"
  venv="$CACHE/ansible-$ANSIBLE_VERSION-py-$pyver-$key"
  if [ ! -f "$venv/.installed" ]; then
    log "installing ansible==$ANSIBLE_VERSION ansible-core==$ANSIBLE_CORE_VERSION xenapi==$XENAPI_VERSION pytest==$PYTEST_VERSION into $venv (python $pyver: $py)"
    rm -rf "$venv"
    mkdir -p "$CACHE"
    "$py" -m venv "$venv" || die "cannot create a venv with $py"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "ansible==$ANSIBLE_VERSION" "ansible-core==$ANSIBLE_CORE_VERSION" \
        "xenapi==$XENAPI_VERSION" "pytest==$PYTEST_VERSION" \
      || die "cannot install ansible==$ANSIBLE_VERSION / ansible-core==$ANSIBLE_CORE_VERSION / xenapi / pytest from PyPI"
    touch "$venv/.installed"
  fi
  "$venv/bin/python" - "$ANSIBLE_VERSION" "$ANSIBLE_CORE_VERSION" "$COMMUNITY_GENERAL_VERSION" "$XENAPI_VERSION" <<'EOF' \
    || die "installed Ansible is unusable"
import json, sys, importlib.metadata as md, importlib.util
want_ansible, want_core, want_cg, want_xenapi = sys.argv[1:]
for dist, want in (("ansible", want_ansible), ("ansible-core", want_core), ("xenapi", want_xenapi)):
    v = md.version(dist)
    assert v == want, f"{dist} {v} installed, {want} pinned"
import XenAPI  # noqa: F401  (the modules import it)
spec = importlib.util.find_spec("ansible_collections.community.general")
assert spec and spec.submodule_search_locations, "community.general is not in the ansible bundle"
root = list(spec.submodule_search_locations)[0]
v = json.load(open(f"{root}/MANIFEST.json"))["collection_info"]["version"]
assert v == want_cg, f"community.general {v} bundled, {want_cg} pinned"
for m in ("xenserver_guest", "xenserver_guest_info", "xenserver_guest_powerstate"):
    assert importlib.util.find_spec(f"ansible_collections.community.general.plugins.modules.{m}"), m
EOF
  ANSIBLE_VENV="$venv"
}

# --------------------------------------------------------------------------
setup_daemon() {
  if [ -n "${XAPID_BIN:-}" ]; then
    [ -x "$XAPID_BIN" ] || die "XAPID_BIN=$XAPID_BIN is not an executable file"
  else
    log "cargo build --release --bin xapid"
    (cd "$REPO" && cargo build --release --bin xapid) || die "cannot build xapid"
    XAPID_BIN="$REPO/target/release/xapid"
    [ -x "$XAPID_BIN" ] || die "$XAPID_BIN missing after the build"
  fi
  XAPID_BIN="$(cd "$(dirname "$XAPID_BIN")" && pwd)/$(basename "$XAPID_BIN")"
  export XAPID_BIN
}

run_python() {
  setup_python
  log "python suite: $("$PY_VENV/bin/python" -c 'import importlib.metadata as m, sys; print("xenapi", m.version("xenapi"), "| pytest", m.version("pytest"), "| python", sys.version.split()[0])')"
  (
    cd "$HERE/python"
    export PYTHONDONTWRITEBYTECODE=1 XAPID_REPO="$REPO"
    # -p no:cacheprovider: write nothing into the work tree.
    "$PY_VENV/bin/python" -m pytest -p no:cacheprovider -c "$HERE/python/pytest.ini" --rootdir "$HERE/python" .
  )
}

run_node() {
  setup_node
  log "node suite: xen-api $(node -p 'require(require("module").createRequire(process.argv[1] + "/package.json").resolve("xen-api/package.json")).version' "$NODE_PREFIX") | node $(node --version)"
  (
    cd "$HERE/node"
    export XAPID_NODE_PREFIX="$NODE_PREFIX" XAPID_REPO="$REPO"
    # shellcheck disable=SC2086
    node --test --test-reporter=spec ${XAPID_NODE_TEST_ARGS:-} ./*.test.mjs
  )
}

run_ansible() {
  setup_ansible
  (
    cd "$HERE/ansible"
    export PATH="$ANSIBLE_VENV/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 XAPID_REPO="$REPO"
    local ver
    ver="$(ansible --version)" || die "ansible --version failed"
    log "ansible suite: ${ver%%$'\n'*} | community.general $COMMUNITY_GENERAL_VERSION (bundled in ansible $ANSIBLE_VERSION) | $("$ANSIBLE_VENV/bin/python" -c 'import importlib.metadata as m, sys; print("xenapi", m.version("xenapi"), "| pytest", m.version("pytest"), "| python", sys.version.split()[0])')"
    "$ANSIBLE_VENV/bin/python" -m pytest -p no:cacheprovider -c "$HERE/ansible/pytest.ini" --rootdir "$HERE/ansible" .
  )
}

# --------------------------------------------------------------------------
if [ "${1:-}" = --node-prefix ]; then
  setup_node
  printf '%s\n' "$NODE_PREFIX"
  exit 0
fi
if [ "${1:-}" = --python-venv ]; then
  setup_python
  printf '%s\n' "$PY_VENV"
  exit 0
fi
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(python node ansible)
for s in "${suites[@]}"; do
  case "$s" in python|node|ansible) ;; *) die "unknown suite '$s' (known: python node ansible)";; esac
done

# Install every requested client before running anything: an install failure is fatal.
for s in "${suites[@]}"; do
  case "$s" in python) setup_python;; node) setup_node;; ansible) setup_ansible;; esac
done
setup_daemon
log "daemon under test: $XAPID_BIN"

failed=()
summary=()
run_start=$SECONDS
for s in "${suites[@]}"; do
  log "suite: $s"
  t0=$SECONDS
  if "run_$s"; then
    summary+=("$s: PASSED in $((SECONDS - t0))s")
  else
    summary+=("$s: FAILED in $((SECONDS - t0))s")
    failed+=("$s")
  fi
  log "suite ${summary[-1]}"
done

log "summary ($((SECONDS - run_start))s in all):"
printf '    %s\n' "${summary[@]}" >&2
if [ ${#failed[@]} -gt 0 ]; then
  log "failed suites: ${failed[*]}"
  exit 1
fi
log "all suites passed: ${suites[*]}"
