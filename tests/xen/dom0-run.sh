#!/bin/bash
# Runs inside the Xen dom0 booted by tests/xen/run.sh, from the payload
# disk mounted at /mnt/payload. Output goes to /dev/hvc0 (the serial log).
# Prints XAPID_XEN_RESULT=PASS or XAPID_XEN_RESULT=FAIL at the end.
set -u
P=/mnt/payload
[ -r $P/env ] && . $P/env
step() { echo "XAPID_STEP $(cut -d' ' -f1 /proc/uptime)s $*"; }

step "dom0 $(uname -r), $(nproc) vcpus, $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) MiB"
# What the backend needs in dom0: the backend drivers, loop devices, the
# bridge the conformance suite plugs its VIF into, and the Xen daemons.
for m in xen-blkback xen-netback loop bridge; do
    modprobe "$m" || echo "XAPID_WARN modprobe $m failed"
done
ip link add xenbr0 type bridge 2>/dev/null
ip link set xenbr0 up
pgrep -f 'xenstored' >/dev/null || echo "XAPID_WARN xenstored is not running"
if ! pgrep -f xenconsoled >/dev/null; then
    echo "XAPID_WARN xenconsoled is not running"
    /usr/lib/xen-4.17/bin/xenconsoled --log=guest && step "started xenconsoled"
fi
[ -e /dev/xen/privcmd ] || echo "XAPID_WARN no /dev/xen/privcmd"
xl info 2>&1 | grep -E '^(xen_version|total_memory|free_memory|nr_cpus)' | sed 's/^/XAPID_XLINFO /'

export XAPID_XENGUEST=$P/xapid-xenguest
export XAPID_XEN_KERNEL=$P/guest-vmlinuz
export XAPID_XEN_RAMDISK=$P/guest-initrd.gz
export XAPID_XEN_SCRATCH=/var/tmp/xapid-conformance
export XAPID_XEN_GUEST_MIB=${XAPID_XEN_GUEST_MIB:-64}
export XAPID_XEN_FILTER=${XAPID_XEN_FILTER:-}
export XAPID_XEN_LOG=${XAPID_XEN_LOG:-}
export RUST_BACKTRACE=1
mkdir -p "$XAPID_XEN_SCRATCH"

# Integrity of the payload (the guest kernel is read by libxenguest).
(cd $P && sha256sum -c --quiet SHA256SUMS 2>&1 | sed 's/^/XAPID_WARN checksum before: /')

if [ -n "${XAPID_XEN_XL_PROBE:-}" ]; then
    # Reference: two guests started with xl (libxl) from the same kernel.
    for g in a b; do
        cat >/tmp/probe-$g.cfg <<EOF2
name="xlprobe-$g"
type="pv"
kernel="$XAPID_XEN_KERNEL"
ramdisk="$XAPID_XEN_RAMDISK"
extra="console=hvc0"
memory=128
vcpus=1
EOF2
        xl create /tmp/probe-$g.cfg 2>&1 | tail -2 | sed "s/^/XAPID_XLPROBE $g: /"
        sleep 5
    done
    xl list | sed 's/^/XAPID_XLPROBE /'
    xl destroy xlprobe-a; xl destroy xlprobe-b
fi

step "running the conformance suite against XenBackend (guest ${XAPID_XEN_GUEST_MIB} MiB, filter '${XAPID_XEN_FILTER}')"
START=$(date +%s)
$P/agent-tests --ignored --exact hypervisor::xen::tests::conformance_on_real_xen \
    --nocapture --test-threads=1
RC=$?
step "conformance test exited with $RC after $(($(date +%s) - START))s"

# Also the backend's unit tests, which on a dom0 skip the no-Xen checks.
$P/agent-tests hypervisor::xen:: hypervisor::selection:: --test-threads=1 2>&1 | tail -3 |
    sed 's/^/XAPID_UNIT /'

(cd $P && sha256sum -c --quiet SHA256SUMS 2>&1 | sed 's/^/XAPID_WARN checksum after: /')
sync; echo 3 >/proc/sys/vm/drop_caches
(cd $P && sha256sum -c --quiet SHA256SUMS 2>&1 | sed 's/^/XAPID_WARN checksum after dropping caches: /')
xl list 2>&1 | sed 's/^/XAPID_XLLIST /'
free -m | sed 's/^/XAPID_FREE /'
if [ $RC != 0 ]; then
    echo "XAPID_DIAG xenstore:"
    xenstore-ls -f /local/domain 2>/dev/null | grep -v '^/local/domain/0/' | head -80 | sed 's/^/XAPID_DIAG /'
    for f in /var/log/xen/console/guest-*.log; do
        [ -f "$f" ] || continue
        echo "XAPID_DIAG $f:"
        tail -15 "$f" | sed 's/^/XAPID_DIAG   /'
    done
    dmesg | tail -30 | sed 's/^/XAPID_DMESG /'
fi
if [ $RC = 0 ]; then echo "XAPID_XEN_RESULT=PASS"; else echo "XAPID_XEN_RESULT=FAIL"; fi
