#!/usr/bin/env bash
# CI check: regenerate the Xen bindings into a temporary file and fail if
# they differ from the checked-in xen-sys/src/bindings.rs.
#
# Installs what it needs when missing: libxen-dev and libclang-dev (apt, as
# root) and the pinned bindgen-cli (cargo install --locked).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crate=$(dirname "$here")
BINDGEN_VERSION=$(sed -n 's/^BINDGEN_VERSION=//p' "$here/gen-bindings.sh")

need_apt=()
dpkg -s libxen-dev >/dev/null 2>&1 || need_apt+=(libxen-dev)
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "check-bindings: installing ${need_apt[*]}" >&2
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${need_apt[@]}"
fi

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if [ "$(bindgen --version 2>/dev/null || true)" != "bindgen $BINDGEN_VERSION" ]; then
    echo "check-bindings: installing bindgen-cli $BINDGEN_VERSION" >&2
    cargo install bindgen-cli --version "$BINDGEN_VERSION" --locked
fi

echo "check-bindings: libxen-dev $(dpkg-query -W -f='${Version}' libxen-dev)," \
    "$(bindgen --version)" >&2

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$here/gen-bindings.sh" "$tmp"
if ! diff -u "$crate/src/bindings.rs" "$tmp"; then
    echo "check-bindings: xen-sys/src/bindings.rs is stale: run xen-sys/scripts/gen-bindings.sh" >&2
    exit 1
fi
echo "check-bindings: bindings.rs is up to date" >&2
