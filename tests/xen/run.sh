#!/bin/bash
# Tests xapid on real Xen 4.17, booted with a Debian bookworm dom0 under
# QEMU TCG on this machine, in three parts:
#   1. the hypervisor backend conformance suite against the real Xen backend
#      (agent/src/hypervisor/xen/), run inside dom0;
#   2. the network part: the python suite's namespace tests of the Linux
#      network backend (tests/clients/python/test_network_netns.py), run in
#      dom0, whose Debian kernel has the 8021q, bonding, vxlan and gre drivers
#      (a missing one fails the part there);
#   3. end to end: xapid installed in dom0 as a user installs it (the
#      project's systemd unit dist/xapid.service, /etc/xapid/xapid.toml,
#      backend "xen", HTTPS on port 443), started at boot by systemd, and
#      driven from this host with XenAPI.py through QEMU's port forwarding
#      (tests/xen/e2e.py): host facts, a PV guest from a kernel and
#      initramfs, its boot lines read through /console, pause/unpause,
#      clean and hard shutdown, and a guest powering itself off; a PV guest
#      through pygrub; PVH guests from a kernel and through pygrub, each
#      running on with its devices; live moves to the same host; an HVM guest (qemu-system-xen + SeaBIOS in dom0)
#      booting an isolinux ISO from an `iso` SR, its serial line read
#      through /console and its VNC console through the same path (a real
#      RFB handshake and one framebuffer update); an HVM guest on UEFI
#      (Debian's OVMF) reaching the UEFI shell on its serial line.
#
#   tests/xen/run.sh              build what is missing, boot, run, report
#   tests/xen/run.sh --prepare    only install tools and build the cached image
#   tests/xen/run.sh --rebuild    throw the cached image away first
#
# Everything large lives outside the repository, in
# ${XAPID_XEN_CACHE:-$HOME/.cache/xapid-xen}:
#   rootfs/        debootstrap'ed dom0 (Xen 4.17 hypervisor + tools, Debian kernel)
#   runs/<time>/dom0.img  ext4 image of rootfs with this run's xapid
#                  installed (QEMU runs it with -snapshot; deleted after the run)
#   xen.elf vmlinuz initrd.img    what QEMU boots (Xen, dom0 kernel + initrd)
#   guest-vmlinuz guest-initrd.gz the PV test guest: Debian kernel + busybox initramfs
#   guest-v<N>-<kernel>.iso  the HVM test guest: the same on a BIOS-bootable ISO (isolinux)
#   runs/<time>/   per-run payload disk, serial.log, qemu.log
#
# The run: the agent's test binary and the domain-build helper
# xapid-xenguest are built on the host (same bookworm libraries as dom0)
# and put on a small second disk with
# tests/xen/dom0-run.sh and the guest kernel; dom0 mounts it at boot and
# runs the ignored test hypervisor::xen::tests::conformance_on_real_xen,
# which runs conformance::run_all against XenBackend. Everything dom0
# prints goes to /dev/hvc0, which Xen forwards to QEMU's serial port, which
# is the file runs/<time>/serial.log. Results are read from there.
# The release xapid and xapid-xenguest ($XAPID_BIN, else built here) are
# installed into the dom0 image under /usr/local/bin with the unit and a
# config; systemd starts xapid once the conformance run has finished (a
# harness-only drop-in orders it after xapid-test.service and copies its
# log to the serial console). Then tests/xen/e2e.py runs on this host.
#
# Exit status: 0 every part passed; 1 a part ran and failed; 2 the
# harness could not run them (tools, image, build, boot, client).
#
# Environment: XAPID_XEN_CACHE (see above), XAPID_XEN_TIMEOUT (seconds
# QEMU may run, default 1380: the Xen part stays under 25 minutes), XAPID_XEN_GUEST_MIB (test guest memory,
# default 128: the Debian kernel's image alone takes ~58 MiB),
# XAPID_XEN_SMP (QEMU CPUs, default 2), XAPID_XEN_CPU (QEMU -cpu, default
# max,-smap,-xsave: see docs/hypervisor.md, "Testing on real Xen"), XAPID_XEN_ACCEL (QEMU
# -accel, default tcg; tcg,thread=single runs the vCPUs on one thread),
# XAPID_XEN_FILTER (run only the conformance checks whose name contains
# this), XAPID_XEN_PARTS (default "conformance network e2e"; any of them
# alone for a quicker run while developing), XAPID_XEN_E2E_ONLY=pv,disk,hvm (the end-to-end
# part runs only those of its parts; the report says so), XAPID_XEN_LOG=debug (libxenguest's detailed domain builder log in
# the serial log), XAPID_XEN_XL_PROBE=N (first build a guest N times with
# xl while another runs, as a reference), XAPID_XEN_XL_PVH=S (first start the test guest
# as PVH guests with xl and follow them S seconds: docs/hypervisor.md), XAPID_XEN_EVENT_TIMEOUT (seconds
# the suite waits for guests, default 180).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${XAPID_XEN_CACHE:-$HOME/.cache/xapid-xen}
TIMEOUT=${XAPID_XEN_TIMEOUT:-1380}
SMP=${XAPID_XEN_SMP:-2}
CPU=${XAPID_XEN_CPU:-max,-smap,-xsave}
ACCEL=${XAPID_XEN_ACCEL:-tcg}
GUEST_MIB=${XAPID_XEN_GUEST_MIB:-128}
FILTER=${XAPID_XEN_FILTER:-}
# Bump when the dom0 customisation below changes (not a new debootstrap).
IMAGE_VERSION=6
# Bump when the test guest below changes.
GUEST_VERSION=5
PARTS=${XAPID_XEN_PARTS:-conformance network e2e}
PACKAGES=linux-image-amd64,xen-hypervisor-4.17-amd64,xen-utils-4.17,xen-utils-common,systemd-sysv,udev,kmod,iproute2,procps,initramfs-tools,util-linux,e2fsprogs

T0=$(date +%s)
say() { printf '[xen-harness %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() {
    printf '\n*** xen-harness FAILED: %s ***\n\n' "$*" >&2
    exit 2
}

MODE=run
for arg in "$@"; do
    case $arg in
    --prepare) MODE=prepare ;;
    --rebuild) rm -rf "$CACHE/rootfs" "$CACHE/rootfs.partial" "$CACHE"/*.stamp ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument $arg (try --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mkfs, apt-get)"
mkdir -p "$CACHE/runs"
exec 9>"$CACHE/lock"
flock -n 9 || {
    say "another run holds $CACHE/lock; waiting"
    flock 9
}

# ---------------------------------------------------------------- tools
need_tools() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ -x /bin/busybox ] && file_is_static /bin/busybox || missing+=(busybox-static)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    command -v xz >/dev/null || missing+=(xz-utils)
    # The HVM test guest's ISO (isolinux, BIOS boot).
    command -v xorriso >/dev/null || missing+=(xorriso)
    [ -f /usr/lib/ISOLINUX/isolinux.bin ] || missing+=(isolinux)
    [ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || missing+=(syslinux-common)
    echo "${missing[@]:-}"
}
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }

missing=$(need_tools)
if [ -n "$missing" ]; then
    say "installing $missing with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 $missing >/dev/null ||
        die "apt-get install $missing failed"
    missing=$(need_tools)
    [ -z "$missing" ] || die "still missing after apt-get: $missing"
fi
qemu-system-x86_64 --version | head -1 | sed 's/^/[xen-harness] /' >&2

# ---------------------------------------------------------------- dom0 rootfs
mirror() {
    local m
    m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$m" ] || m=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${m:-http://deb.debian.org/debian}"
}

R=$CACHE/rootfs
if [ ! -f "$CACHE/rootfs.stamp" ]; then
    say "debootstrap bookworm dom0 into $R (first run: a few minutes)"
    rm -rf "$CACHE/rootfs.partial" "$R"
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$CACHE/rootfs.partial" "$(mirror)" \
        >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $CACHE/debootstrap.log"
    rm -f "$CACHE/rootfs.partial"/var/cache/apt/archives/*.deb
    mv "$CACHE/rootfs.partial" "$R"
    date -u >"$CACHE/rootfs.stamp"
    rm -f "$CACHE/image.stamp"
fi
[ -x "$R/usr/sbin/xl" ] || die "$R has no xl: broken rootfs, rerun with --rebuild"

KVER=$(ls "$R/lib/modules" | sort -V | tail -1)
[ -n "$KVER" ] || die "no kernel in $R/lib/modules"

if [ "$(cat "$CACHE/image.stamp" 2>/dev/null)" != "$IMAGE_VERSION $KVER" ]; then
    say "customising the dom0 rootfs"
    # HVM guests: Debian's device model, BIOS and UEFI firmware (hvmloader comes with Xen's
    # own package).
    if [ ! -x "$R/usr/libexec/xen-qemu-system-i386" ] || [ ! -f "$R/usr/share/seabios/bios-256k.bin" ] ||
        [ ! -f "$R/usr/share/ovmf/OVMF.fd" ]; then
        say "installing qemu-system-xen, seabios and ovmf into the dom0 rootfs"
        DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get update -qq >"$CACHE/dom0-apt.log" 2>&1 ||
            die "apt-get update in the dom0 rootfs failed (log: $CACHE/dom0-apt.log)"
        DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get install -y -qq --no-install-recommends \
            -o DPkg::Lock::Timeout=300 qemu-system-xen seabios ovmf >>"$CACHE/dom0-apt.log" 2>&1 ||
            die "apt-get install qemu-system-xen seabios ovmf in the dom0 rootfs failed (log: $CACHE/dom0-apt.log)"
        rm -f "$R"/var/cache/apt/archives/*.deb
    fi
    echo xapid-xen-dom0 >"$R/etc/hostname"
    echo '/dev/vda / ext4 rw 0 1' >"$R/etc/fstab"
    grep -q '^XENCONSOLED_ARGS=' "$R/etc/default/xen" 2>/dev/null ||
        echo 'XENCONSOLED_ARGS="--log=guest"' >>"$R/etc/default/xen"
    mkdir -p "$R/var/log/xen/console" "$R/mnt/payload"
    # agetty's vhangup would cut off output on hvc0, where the results go.
    ln -sf /dev/null "$R/etc/systemd/system/serial-getty@hvc0.service"
    ln -sf /dev/null "$R/etc/systemd/system/getty@tty1.service"
    # The test entry point: mount the per-run payload disk and run its script.
    cat >"$R/usr/local/sbin/xapid-test-entry" <<'EOF'
#!/bin/bash
exec >/dev/hvc0 2>&1
echo "XAPID_DOM0_UP uptime=$(cut -d' ' -f1 /proc/uptime)s"
if mount -o ro /dev/vdb /mnt/payload && [ -x /mnt/payload/dom0-run.sh ]; then
    /mnt/payload/dom0-run.sh
else
    echo "XAPID_XEN_RESULT=NOPAYLOAD"
    sync
    systemctl poweroff --force
fi
EOF
    chmod +x "$R/usr/local/sbin/xapid-test-entry"
    cat >"$R/etc/systemd/system/xapid-test.service" <<'EOF'
[Unit]
Description=xapid Xen backend conformance run
After=xen.service xenstored.service xenconsoled.service xen-init-dom0.service proc-xen.mount network.target
Wants=xen.service xenstored.service xenconsoled.service xen-init-dom0.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/xapid-test-entry
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
EOF
    ln -sf /etc/systemd/system/xapid-test.service \
        "$R/etc/systemd/system/multi-user.target.wants/xapid-test.service"
    # dom0's network: QEMU's user-mode NIC by DHCP (systemd-networkd); the
    # host reaches xapid's port 443 through QEMU's port forwarding.
    mkdir -p "$R/etc/systemd/network" "$R/etc/systemd/system/sockets.target.wants"
    printf '[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n' >"$R/etc/systemd/network/20-qemu.network"
    ln -sf /lib/systemd/system/systemd-networkd.service \
        "$R/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    ln -sf /lib/systemd/system/systemd-networkd.socket \
        "$R/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
    cp "$R/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"
    cp "$R/boot/initrd.img-$KVER" "$CACHE/initrd.img"
    zcat "$R"/boot/xen-4.17-amd64.gz >"$CACHE/xen.elf" # multiboot ELF for qemu -kernel
    rm -f "$CACHE/dom0.img" "$CACHE/guest.stamp"
    echo "$IMAGE_VERSION $KVER" >"$CACHE/image.stamp"
fi

# ---------------------------------------------------------------- PV test guest
if [ "$(cat "$CACHE/guest.stamp" 2>/dev/null)" != "$GUEST_VERSION $KVER" ]; then
    say "building the PV test guest (Debian kernel $KVER + busybox initramfs)"
    G=$(mktemp -d)
    mkdir -p "$G"/{bin,sbin,proc,sys,dev,tmp,lib/modules}
    cp /bin/busybox "$G/bin/busybox"
    # Xen PV block/net frontends, so plugged devices really connect.
    for m in drivers/block/xen-blkfront drivers/net/xen-netfront; do
        for ext in .ko .ko.xz .ko.zst; do
            f="$R/lib/modules/$KVER/kernel/$m$ext"
            [ -f "$f" ] || continue
            case $ext in
            .ko) cp "$f" "$G/lib/modules/" ;;
            .ko.xz) xz -dc "$f" >"$G/lib/modules/$(basename "$m").ko" ;;
            .ko.zst) zstd -qdc "$f" >"$G/lib/modules/$(basename "$m").ko" ;;
            esac
        done
    done
    # The kernel runs /sbin/poweroff and /sbin/reboot when the toolstack
    # writes control/shutdown; make them act at once (no init system here),
    # and without needing /bin/sh (which /init creates only once it runs).
    for a in poweroff reboot halt; do
        f=$a
        [ $a = halt ] && f=poweroff
        printf '#!/bin/busybox sh\n/bin/busybox echo "XAPID_GUEST %s"\nexec /bin/busybox %s -f\n' "$a" "$f" >"$G/sbin/$a"
        chmod +x "$G/sbin/$a"
    done
    cat >"$G/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev 2>/dev/null
# The kernel's own word on the kind of guest it is (a KERN_INFO line, which a guest booted
# with a low loglevel does not print on its console).
echo "XAPID_GUEST up: $(uname -r) $(grep -o 'Xen[^ ]*' /sys/hypervisor/type 2>/dev/null) ($(dmesg | grep -o 'Hypervisor detected: .*' | head -1))"
for m in /lib/modules/*.ko; do insmod "$m" 2>/dev/null && echo "XAPID_GUEST loaded $m"; done
sleep 1
echo "XAPID_GUEST disks: $(awk 'NR > 2 {printf "%s(%s KiB) ", $4, $3}' /proc/partitions)"
echo "XAPID_GUEST nics: $(ls /sys/class/net | tr '\n' ' ')"
# xapid.poweroff_after=N on the kernel command line: power off on our own
# after N lines (the end-to-end test's guest-initiated shutdown).
after=$(sed -n 's/.*xapid\.poweroff_after=\([0-9]*\).*/\1/p' /proc/cmdline)
n=0
while :; do
    n=$((n + 1))
    echo "XAPID_GUEST alive $n uptime=$(cut -d' ' -f1 /proc/uptime)"
    if [ -n "$after" ] && [ "$n" -ge "$after" ]; then
        echo "XAPID_GUEST powering itself off"
        poweroff -f
    fi
    sleep 2
done
EOF
    chmod +x "$G/init"
    (cd "$G" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$CACHE/guest-initrd.gz"
    rm -rf "$G"
    cp "$CACHE/vmlinuz" "$CACHE/guest-vmlinuz"
    echo "$GUEST_VERSION $KVER" >"$CACHE/guest.stamp"
fi

# The test guest's own boot disk, for the guests that boot through their
# bootloader (pygrub, PV and PVH): an ext2 file system, no partition table,
# holding the same kernel and initramfs and a GRUB 2 menu naming them.
# e2e.py uploads it into a VDI with /import_raw_vdi. Its name is its cache key.
DISK_VERSION=2
DISK=$CACHE/guest-disk-v$DISK_VERSION-$KVER.img
if [ ! -s "$DISK" ]; then
    say "building the test guest's boot disk $DISK"
    D=$(mktemp -d)
    mkdir -p "$D/boot/grub"
    cp "$CACHE/guest-vmlinuz" "$D/boot/vmlinuz"
    cp "$CACHE/guest-initrd.gz" "$D/boot/initrd.gz"
    printf '%s\n' 'set default=0' 'set timeout=0' \
        "menuentry 'xapid test guest (from its disk)' {" \
        '	linux /boot/vmlinuz console=hvc0 xapid.booted_from=disk' \
        '	initrd /boot/initrd.gz' '}' >"$D/boot/grub/grub.cfg"
    rm -f "$DISK.partial"
    truncate -s 32M "$DISK.partial"
    mkfs.ext2 -q -F -L guestboot -d "$D" "$DISK.partial" || die "mkfs.ext2 of the guest boot disk failed"
    mv "$DISK.partial" "$DISK"
    rm -rf "$D"
fi

# The HVM test guest's install medium: a BIOS-bootable ISO (isolinux) holding the same
# kernel and initramfs, console on the first serial line. loglevel=6: every character on
# an emulated UART is a round trip to the device model in dom0 (seconds per line under
# QEMU TCG), so the kernel prints only its notices and above (its banner and command
# line among them), not its ~400 informational boot lines. e2e.py boots it from an `iso` SR
# whose directory is on the payload disk.
ISO_VERSION=2
ISO=$CACHE/guest-v$ISO_VERSION-$KVER.iso
if [ ! -s "$ISO" ]; then
    say "building the HVM test guest's ISO $ISO"
    D=$(mktemp -d)
    cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$D/"
    cp "$CACHE/guest-vmlinuz" "$D/vmlinuz"
    cp "$CACHE/guest-initrd.gz" "$D/initrd.gz"
    printf '%s\n' 'SERIAL 0 115200' 'DEFAULT xapid' 'PROMPT 0' 'TIMEOUT 1' 'LABEL xapid' \
        '  KERNEL /vmlinuz' '  INITRD /initrd.gz' \
        '  APPEND console=ttyS0,115200 loglevel=6 xapid.booted_from=iso' >"$D/isolinux.cfg"
    rm -f "$ISO.partial"
    xorriso -as mkisofs -quiet -o "$ISO.partial" -V XAPID_TEST -b isolinux.bin -c boot.cat \
        -no-emul-boot -boot-load-size 4 -boot-info-table "$D" >"$CACHE/iso.log" 2>&1 ||
        die "xorriso failed (log: $CACHE/iso.log)"
    mv "$ISO.partial" "$ISO"
    rm -rf "$D"
fi

say "dom0 rootfs and test guest ready, kernel $KVER"
[ "$MODE" = prepare ] && exit 0

# ---------------------------------------------------------------- host build
say "building the agent test binary on the host"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
# --workspace: the same features as `cargo test --workspace` (scripts/test.sh), so after that
# step nothing is rebuilt; `-p agent` alone would build every dependency a second time.
BIN=$(cd "$REPO" && cargo test --workspace --lib --no-run --message-format=json 2>"$CACHE/cargo.log" |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "agent" and m["profile"]["test"]:
        print(m["executable"])
') || true
[ -n "$BIN" ] && [ -x "$BIN" ] || {
    tail -30 "$CACHE/cargo.log" >&2
    die "cargo test --workspace --lib --no-run failed (log: $CACHE/cargo.log)"
}
say "test binary: $BIN"
if [ -z "${XAPID_BIN:-}" ]; then
    say "building the release daemon (xapid, xapid-xenguest)"
    (cd "$REPO" && cargo build --release --bin xapid --bin xapid-xenguest 2>>"$CACHE/cargo.log") ||
        die "cargo build --release --bin xapid --bin xapid-xenguest failed (log: $CACHE/cargo.log)"
    XAPID_BIN=$TARGET_DIR/release/xapid
fi
# The conformance suite in dom0 and the daemon share the release domain-build helper.
REL_HELPER=$(dirname "$XAPID_BIN")/xapid-xenguest
[ -x "$XAPID_BIN" ] && [ -x "$REL_HELPER" ] || die "no $XAPID_BIN or $REL_HELPER (build both with cargo build --release)"
case " $PARTS " in
*" e2e "* | *" network "*)
    PY_VENV=$(bash "$REPO/tests/clients/run.sh" --python-venv) || die "cannot install XenAPI.py (tests/clients/run.sh --python-venv)"
    ;;
esac

RUN=$CACHE/runs/$(date -u +%Y%m%dT%H%M%S)
mkdir -p "$RUN/payload"
cp "$BIN" "$RUN/payload/agent-tests"
cp "$REL_HELPER" "$RUN/payload/xapid-xenguest"
cp "$REPO/tests/xen/dom0-run.sh" "$RUN/payload/dom0-run.sh"
cp "$REPO/tests/xen/dm-watch.sh" "$RUN/payload/dm-watch.sh"
chmod +x "$RUN/payload/dom0-run.sh" "$RUN/payload/dm-watch.sh"
cp "$CACHE/guest-vmlinuz" "$CACHE/guest-initrd.gz" "$RUN/payload/"
mkdir -p "$RUN/payload/iso"
cp "$ISO" "$RUN/payload/iso/xapid-test.iso"
(cd "$RUN/payload" && sha256sum xapid-xenguest guest-vmlinuz guest-initrd.gz >SHA256SUMS)
cat >"$RUN/payload/env" <<EOF
XAPID_XEN_GUEST_MIB=$GUEST_MIB
XAPID_XEN_FILTER=$FILTER
XAPID_XEN_LOG=${XAPID_XEN_LOG:-}
XAPID_XEN_XL_PROBE=${XAPID_XEN_XL_PROBE:-}
XAPID_XEN_XL_PVH=${XAPID_XEN_XL_PVH:-}
XAPID_XEN_EVENT_TIMEOUT=${XAPID_XEN_EVENT_TIMEOUT:-}
EOF
echo "XAPID_XEN_PARTS='$PARTS'" >>"$RUN/payload/env"
# The network part runs the python suite's namespace tests in dom0 (dom0-run.sh): the test
# files, and XenAPI.py with pytest from the client venv (pure Python, read by dom0's python3).
case " $PARTS " in
*" network "*)
    mkdir -p "$RUN/payload/pylib" "$RUN/payload/py"
    SITE=$("$PY_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for d in "$SITE"/*; do
        case ${d##*/} in
        pip | pip-* | setuptools* | _distutils_hack | distutils-precedence.pth | __pycache__) ;;
        *) cp -r "$d" "$RUN/payload/pylib/" ;;
        esac
    done
    for f in conftest.py pytest.ini xapid_harness.py xapi_model.py test_network_netns.py; do
        cp "$REPO/tests/clients/python/$f" "$RUN/payload/py/"
    done
    ;;
esac
# Sized from what it holds (the debug test binary alone is over 150 MB), with room for ext4's own.
payload_mib=$(( $(du -sm "$RUN/payload" | cut -f1) * 5 / 4 + 64 ))
truncate -s "${payload_mib}M" "$RUN/payload.img"
mkfs.ext4 -q -F -L payload -d "$RUN/payload" "$RUN/payload.img" || die "mkfs.ext4 of the payload failed"
rm -rf "$RUN/payload"
# Old runs keep their logs only.
find "$CACHE/runs" -mindepth 2 -maxdepth 2 -name '*.img' ! -path "$RUN/*" -delete
ln -sfn "$RUN" "$CACHE/runs/latest"

# xapid installed into dom0 the way dist/xapid.service says, with a config
# file: the shipped one plus HTTPS on every address (the host connects from
# QEMU's user network) and this run's root password.
say "installing xapid into the dom0 image (unit, /etc/xapid/xapid.toml)"
install -m 0755 "$XAPID_BIN" "$R/usr/local/bin/xapid"
install -m 0755 "$REL_HELPER" "$R/usr/local/bin/xapid-xenguest"
install -m 0644 "$REPO/dist/xapid.service" "$R/etc/systemd/system/xapid.service"
ln -sf /etc/systemd/system/xapid.service "$R/etc/systemd/system/multi-user.target.wants/xapid.service"
mkdir -p "$R/etc/xapid" "$R/etc/systemd/system/xapid.service.d"
{
    cat "$REPO/dist/xapid.toml"
    echo
    echo '# tests/xen/run.sh: the host reaches dom0 through QEMU port forwarding.'
    echo 'tls_listen = ["0.0.0.0:443"]'
} >"$R/etc/xapid/xapid.toml"
PASSWORD=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$PASSWORD" >"$R/etc/xapid/root-password"
chmod 0600 "$R/etc/xapid/root-password"
printf '%s\n' "$PASSWORD" >"$RUN/root-password"
# Harness only: start xapid once the conformance run is over (both drive
# Xen), and copy its log to the serial console.
printf '%s\n' '[Unit]' 'After=xapid-test.service' '[Service]' 'Environment=RUST_LOG=info' \
    'Environment=XAPID_DM_SERIAL_LOG=1' \
    'StandardOutput=journal+console' 'StandardError=journal+console' \
    >"$R/etc/systemd/system/xapid.service.d/harness.conf"
rm -rf "$R/var/lib/xapid"
truncate -s 3G "$RUN/dom0.img"
mkfs.ext4 -q -F -L dom0 -d "$R" "$RUN/dom0.img" || die "mkfs.ext4 of dom0.img failed"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# ---------------------------------------------------------------- boot
say "booting Xen + dom0 under QEMU TCG (-smp $SMP, timeout ${TIMEOUT}s); serial log: $RUN/serial.log"
T_BOOT=$(date +%s)
set +e
timeout --foreground "$TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -cpu "$CPU" -m 2048 -smp "$SMP" -machine q35 \
    -display none -monitor none -no-reboot -snapshot -serial "file:$RUN/serial.log" \
    -kernel "$CACHE/xen.elf" \
    -append "console=com1 com1=115200,8n1 dom0_mem=768M,max:768M dom0_max_vcpus=$SMP loglvl=all guest_loglvl=all" \
    -initrd "$CACHE/vmlinuz root=/dev/vda rw console=hvc0 systemd.show_status=0,$CACHE/initrd.img" \
    -drive "file=$RUN/dom0.img,if=virtio,format=raw" \
    -drive "file=$RUN/payload.img,if=virtio,format=raw,readonly=on" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:443" -device virtio-net-pci,netdev=n0 \
    >"$RUN/qemu.log" 2>&1 9>&- &
QPID=$!
# Progress: echo the harness's marker lines, and xapid's warnings, as they
# appear (tail stops when QEMU does).
tail -n +1 -F --pid=$QPID "$RUN/serial.log" 2>/dev/null 9>&- | grep --line-buffered -a -E \
    '^(XAPID_(STEP|CHECK|HOST|WARN|XEN|DOM0|XLPROBE|NET|HVM[A-Z]+)|conformance of|  [a-z_0-9]+ +(ok|FAILED|skipped) )|checks passed|\(XEN\) Xen version|panic| (WARN|ERROR) ' 9>&- &
S=$RUN/serial.log
# dom0's part ends with XAPID_DOM0_DONE (then, for the end-to-end part,
# systemd starts xapid).
while kill -0 $QPID 2>/dev/null && ! grep -a -q XAPID_DOM0_DONE "$S" 2>/dev/null; do
    sleep 2
done
E2E=not-run
case " $PARTS " in
*" e2e "*)
    if kill -0 $QPID 2>/dev/null; then
        say "end to end: XenAPI.py on this host -> https://127.0.0.1:$PORT -> xapid in dom0 (log: $RUN/e2e.log)"
        set -o pipefail
        # The client gives up when QEMU's time is up (a console wait would outlive it).
        if timeout --foreground $((TIMEOUT - ($(date +%s) - T_BOOT) + 10)) \
            "$PY_VENV/bin/python" -u "$REPO/tests/xen/e2e.py" --url "https://127.0.0.1:$PORT" \
            --password-file "$RUN/root-password" --serial-log "$S" \
            --kernel /mnt/payload/guest-vmlinuz --ramdisk /mnt/payload/guest-initrd.gz \
            --boot-disk "$DISK" --iso-dir /mnt/payload/iso --iso xapid-test.iso 2>&1 9>&- |
            tee "$RUN/e2e.log"; then
            E2E=PASS
        else
            E2E=FAIL
        fi
        set +o pipefail
    else
        E2E=FAIL
        say "QEMU stopped before the end-to-end part could run"
    fi
    kill $QPID 2>/dev/null
    ;;
esac
wait $QPID
QRC=$?
set -e
wait
T_END=$(date +%s)
say "QEMU exited with $QRC after $((T_END - T_BOOT))s"

[ -s "$S" ] || die "no serial output at all; qemu log: $(tail -5 "$RUN/qemu.log")"
grep -a -q 'Xen version 4.17' "$S" || die "Xen did not start (see $S)"
grep -a -q XAPID_DOM0_UP "$S" || die "dom0 did not reach the test service (see $S)"
[ $QRC = 124 ] && say "QEMU was killed by the ${TIMEOUT}s timeout"
rm -f "$RUN/dom0.img"

# A dom0 part's report and result: prints the lines the sed script picks, then the value
# of the part's last RESULT marker (PASS, FAIL), or not-run when the part was not asked for.
dom0_part() { # part title sed-script marker
    case " $PARTS " in
    *" $1 "*)
        echo "=== $2 (from $S) ===" >&2
        sed -n "$3" "$S" | tr -d '\r' >&2 || true
        { grep -a -o "$4=[A-Z]*" "$S" || true; } | tail -1 | cut -d= -f2
        ;;
    *) echo not-run ;;
    esac
}
echo
CONF=$(dom0_part conformance "conformance report" '/^conformance of the /,/checks passed/p' XAPID_XEN_RESULT)
NET=$(dom0_part network "network part in dom0" 's/^XAPID_NET //p' XAPID_NET_RESULT)
echo "=== timings: boot to dom0 test start $(grep -a -o 'XAPID_DOM0_UP uptime=[0-9.]*s' "$S" | head -1 | cut -d= -f2), total QEMU $((T_END - T_BOOT))s, harness $((T_END - T0))s ==="
echo "=== conformance in dom0: ${CONF:-no result}; network in dom0: ${NET:-no result}; end to end with XenAPI.py: $E2E ==="
for part in $PARTS; do
    case $part in
    conformance) r=$CONF ;;
    network) r=$NET ;;
    e2e) r=$E2E ;;
    *) die "unknown part $part in XAPID_XEN_PARTS" ;;
    esac
    case $r in
    PASS) ;;
    FAIL)
        echo "XAPID_XEN_RESULT=FAIL ($part; serial log: $S)"
        exit 1
        ;;
    *) die "no result for $part ('${r:-none}'); see $S" ;;
    esac
done
echo "XAPID_XEN_RESULT=PASS"
exit 0
