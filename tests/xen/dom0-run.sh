#!/bin/bash
# Runs inside the Xen dom0 booted by tests/xen/run.sh, from the payload
# disk mounted at /mnt/payload. Output goes to /dev/hvc0 (the serial log).
# Prints XAPID_NET_RESULT=PASS|FAIL for the network part, XAPID_XEN_RESULT=PASS|FAIL
# for the conformance suite, then XAPID_DOM0_DONE. With the end-to-end part to come, dom0 stays
# up (systemd starts xapid after this script); otherwise it powers off.
set -u
P=/mnt/payload
[ -r $P/env ] && . $P/env
step() { echo "XAPID_STEP $(cut -d' ' -f1 /proc/uptime)s $*"; }

step "dom0 $(uname -r), $(nproc) vcpus, $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) MiB"
# What the backend needs in dom0: the backend drivers, loop devices, the
# bridge the conformance suite plugs its VIF into, and the Xen daemons.
for m in xen-blkback xen-netback loop bridge tun; do
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
export XAPID_XEN_GUEST_MIB=${XAPID_XEN_GUEST_MIB:-128}
export XAPID_XEN_FILTER=${XAPID_XEN_FILTER:-}
export XAPID_XEN_LOG=${XAPID_XEN_LOG:-}
export XAPID_XEN_EVENT_TIMEOUT=${XAPID_XEN_EVENT_TIMEOUT:-180}
# quiet: under TCG every console line costs; /init still prints a line
# every 2 s, which is what the console check reads.
export XAPID_XEN_CMDLINE=${XAPID_XEN_CMDLINE:-console=hvc0 quiet}
export RUST_BACKTRACE=1
mkdir -p "$XAPID_XEN_SCRATCH"

# Integrity of the payload (the guest kernel is read by libxenguest).
(cd $P && sha256sum -c --quiet SHA256SUMS 2>&1 | sed 's/^/XAPID_WARN checksum before: /')

if [ -n "${XAPID_XEN_XL_PROBE:-}" ]; then
    # Reference experiment with Xen's own toolstack: while guest a runs,
    # build guest b (paused) with `xl create -p` XAPID_XEN_XL_PROBE times,
    # and meanwhile checksum the payload over and over.
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
    done
    xl create /tmp/probe-a.cfg >/dev/null 2>&1 && step "xl probe: guest a running"
    sleep 10
    touch /tmp/probe-running
    (
        n=0
        while [ -e /tmp/probe-running ]; do
            n=$((n + 1))
            (cd $P && sha256sum -c --quiet SHA256SUMS 2>&1 | sed "s/^/XAPID_XLPROBE checksum pass $n: /")
            sleep 1
        done
        echo "XAPID_XLPROBE $n checksum passes done"
    ) &
    fails=0
    for i in $(seq 1 "$XAPID_XEN_XL_PROBE"); do
        if xl create -p /tmp/probe-b.cfg >/tmp/probe-b.log 2>&1; then
            echo "XAPID_XLPROBE build $i ok"
        else
            fails=$((fails + 1))
            grep -E 'decompress|corrupt|panic' /tmp/probe-b.log | head -3 | sed "s/^/XAPID_XLPROBE build $i FAILED: /"
        fi
        xl destroy xlprobe-b >/dev/null 2>&1
    done
    rm -f /tmp/probe-running
    wait
    echo "XAPID_XLPROBE xl create -p while another guest runs: $fails of $XAPID_XEN_XL_PROBE builds failed"
    xl destroy xlprobe-a >/dev/null 2>&1
fi

if [ -n "${XAPID_XEN_XL_PVH:-}" ]; then
    # Reference experiment with Xen's own toolstack (docs/hypervisor.md, the PVH stall): the
    # test guest as PVH guests started by xl, with `tsc_mode="native"` as the harness's PVH
    # VMs have it: a with a NIC on xenbr0 and a 16 MiB disk, b with neither, c as a with its
    # vCPU pinned to CPU 0. Their consoles (xenconsoled's logs) are followed for
    # XAPID_XEN_XL_PVH seconds; a guest whose `alive` count stops is shown with Xen's timer
    # queues and vCPU state (debug keys a and q).
    truncate -s 16M /var/tmp/xlpvh-disk.img
    for g in a b c; do
        {
            echo "name=\"xlpvh-$g\""
            echo 'type="pvh"'
            echo "kernel=\"$XAPID_XEN_KERNEL\""
            echo "ramdisk=\"$XAPID_XEN_RAMDISK\""
            echo 'extra="console=hvc0"'
            echo 'memory=128'
            echo 'vcpus=1'
            echo 'tsc_mode="native"'
            case $g in
            a | c)
                echo "vif=['bridge=xenbr0']"
                echo "disk=['file:/var/tmp/xlpvh-disk.img,xvda,r']"
                ;;
            esac
            [ $g = c ] && echo 'cpus="0"'
        } >/tmp/xlpvh-$g.cfg
        if xl create /tmp/xlpvh-$g.cfg >/tmp/xlpvh-$g.log 2>&1; then
            step "xl pvh: guest $g created (domid $(xl domid xlpvh-$g))"
        else
            sed "s/^/XAPID_XLPVH $g create failed: /" /tmp/xlpvh-$g.log | tail -5
        fi
    done
    declare -A seen stuck
    t0=$(date +%s)
    while [ $(($(date +%s) - t0)) -lt "$XAPID_XEN_XL_PVH" ]; do
        sleep 20
        for g in a b c; do
            d=$(xl domid xlpvh-$g 2>/dev/null) || continue
            f=/var/log/xen/console/guest-xlpvh-$g.log
            n=$(grep -c 'XAPID_GUEST alive' "$f" 2>/dev/null)
            echo "XAPID_XLPVH $(($(date +%s) - t0))s $g d$d alive=${n:-0}" \
                "$(xl list "$d" 2>/dev/null | awk 'NR == 2 {print "state " $5 " cpu " $6 "s"}')" \
                "last: $(grep -a 'XAPID_GUEST' "$f" 2>/dev/null | tail -1 | tr -d '\r')"
            if [ "${n:-0}" = "${seen[$g]:-x}" ] && grep -q 'XAPID_GUEST loaded' "$f" 2>/dev/null &&
                [ -z "${stuck[$g]:-}" ]; then
                stuck[$g]=1
                echo "XAPID_XLPVH $g stopped: its console's last lines:"
                tail -8 "$f" | tr -d '\r' | sed "s/^/XAPID_XLPVH $g| /"
                xl dmesg -c >/dev/null
                xl debug-keys a
                xl debug-keys q
                xl dmesg | grep -E -A3 "singleshot|\(d$d\)|d${d}v0|d$d:|VCPU0|upcall|pending" |
                    head -80 | sed "s/^/XAPID_XLPVH $g xen| /"
            fi
            seen[$g]=${n:-0}
        done
    done
    for g in a b c; do
        sed -n 's/\r//; /XAPID_GUEST\|Xen\|blkfront\|clocksource\|tsc/p' \
            /var/log/xen/console/guest-xlpvh-$g.log 2>/dev/null | head -30 | sed "s/^/XAPID_XLPVH $g console| /"
        xl destroy xlpvh-$g >/dev/null 2>&1
    done
fi

PARTS=${XAPID_XEN_PARTS:-conformance network e2e}

# The network part: the Linux network backend's namespace tests (the same file the python
# suite runs on the host) in this dom0's Debian kernel, which has the 8021q, bonding, vxlan
# and gre drivers the test machine's kernel may lack; here a missing driver fails the test.
# XenAPI.py and pytest come from the host's client venv on the payload (pure Python).
case " $PARTS " in
*" network "*)
    step "network part: test_network_netns.py against /usr/local/bin/xapid (every driver required)"
    NSTART=$(date +%s)
    NDIR=/var/tmp/xapid-net
    mkdir -p $NDIR
    (cd $NDIR && env PYTHONPATH=$P/pylib:$P/py PYTHONDONTWRITEBYTECODE=1 XAPID_BIN=/usr/local/bin/xapid \
        XAPID_REPO=$NDIR XAPID_TEST_TMP=$NDIR XAPID_START_TIMEOUT=120 XAPID_NETNS_REQUIRE_DRIVERS=1 \
        python3 -m pytest -p no:cacheprovider -q -rA -c $P/py/pytest.ini --rootdir $P/py \
        $P/py/test_network_netns.py 2>&1) | sed 's/^/XAPID_NET /'
    NRC=${PIPESTATUS[0]}
    step "network tests exited with $NRC after $(($(date +%s) - NSTART))s"
    if [ "$NRC" = 0 ]; then echo "XAPID_NET_RESULT=PASS"; else echo "XAPID_NET_RESULT=FAIL"; fi
    ;;
esac

case " $PARTS " in
*" conformance "*) ;;
*)
    step "conformance suite not requested (parts: $PARTS)"
    case " $PARTS " in
    *" e2e "*)
        systemd-run --unit=xapid-dm-watch --collect -q $P/dm-watch.sh ||
            echo "XAPID_WARN cannot start dm-watch.sh"
        echo "XAPID_DOM0_DONE"
        exit 0
        ;;
    esac
    echo "XAPID_DOM0_DONE"
    sync
    systemctl poweroff -ff
    exit 0
    ;;
esac

step "running the conformance suite against XenBackend (guest ${XAPID_XEN_GUEST_MIB} MiB, filter '${XAPID_XEN_FILTER}')"
START=$(date +%s)
$P/agent-tests --ignored --exact hypervisor::xen::tests::conformance_on_real_xen \
    --nocapture --test-threads=1
RC=$?
step "conformance test exited with $RC after $(($(date +%s) - START))s"

# Also the backend's unit tests, which on a dom0 skip the no-Xen checks.
$P/agent-tests hypervisor::xen:: hypervisor::selection:: --test-threads=1 2>&1 | tail -3 |
    sed 's/^/XAPID_UNIT /'

xl list 2>&1 | sed 's/^/XAPID_XLLIST /'
free -m | sed 's/^/XAPID_FREE /'
if [ $RC != 0 ]; then
    (cd $P && sha256sum -c --quiet SHA256SUMS 2>&1 | sed 's/^/XAPID_WARN checksum after: /')
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
# Leave no domain behind for xapid, which starts next.
for d in $(xl list 2>/dev/null | awk 'NR > 2 {print $2}'); do
    xl destroy "$d" 2>/dev/null
done
case " $PARTS " in
*" e2e "*)
    # HVM guests' serial lines and whereabouts on the serial log (diagnostics).
    systemd-run --unit=xapid-dm-watch --collect -q $P/dm-watch.sh ||
        echo "XAPID_WARN cannot start dm-watch.sh"
    ;;
esac
echo "XAPID_DOM0_DONE"
case " $PARTS " in
*" e2e "*) ;;
*)
    # The root disk is a QEMU snapshot: no need for an orderly shutdown.
    sync
    systemctl poweroff -ff
    ;;
esac
