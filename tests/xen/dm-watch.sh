#!/bin/bash
# Harness diagnostics for HVM guests, run in dom0 (as a transient systemd
# unit, started by dom0-run.sh before xapid) for the end-to-end part. Every
# few seconds it copies to /dev/hvc0 (the serial log):
#   XAPID_HVMSERIAL d<domid>| ...   new bytes of each device model's serial
#       log (xapid runs with XAPID_DM_SERIAL_LOG=1 here): what the guest wrote
#       on its first serial line, whether or not a console client read it;
#       likewise for every guest's xenconsoled log (xenconsoled runs with
#       --log=guest): what a PV guest wrote on its console;
#   XAPID_HVMCTX ...  every 30 s, each guest domain's state, CPU time and
#       console pty: whether a guest that prints nothing runs.
exec >/dev/hvc0 2>&1
declare -A off
n=0
while :; do
    for f in /run/xapid/dm/*/serial.log /var/log/xen/console/guest-*.log; do
        [ -f "$f" ] || continue
        case $f in
        /run/*) d=$(basename "$(dirname "$f")") ;;
        *) d=$(basename "$f" .log) ;;
        esac
        size=$(stat -c %s "$f" 2>/dev/null || echo 0)
        o=${off[$f]:-0}
        [ "$size" -lt "$o" ] && o=0
        if [ "$size" -gt "$o" ]; then
            tail -c +$((o + 1)) "$f" | head -c $((size - o)) | tr -d '\r' |
                sed "s/^/XAPID_HVMSERIAL $(cut -d' ' -f1 /proc/uptime)s d$d| /"
            echo
            off[$f]=$size
        fi
    done
    n=$((n + 1))
    if [ $((n % 6)) = 0 ]; then
        # Every guest's state and CPU time (not xenctx, which pauses the domain while it
        # reads it: the pause/unpause checks would see a third party's pause).
        for d in $(xl list 2>/dev/null | awk 'NR > 2 {print $2}'); do
            echo "XAPID_HVMCTX $(cut -d' ' -f1 /proc/uptime)s d$d: $(xl list "$d" 2>/dev/null |
                awk 'NR == 2 {print "state " $5 " cpu " $6 "s"}') tty $(xenstore-read "/local/domain/$d/console/tty" 2>&1)"
        done
    fi
    sleep 5
done
