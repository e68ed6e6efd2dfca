"""Processes of the pool tests' hosts, found through /proc."""
from __future__ import annotations

import os


def etcd_pids(needle: str) -> list[int]:
    """The pids of etcd processes with `needle` in one of their arguments (a client URL, a
    data dir under a host's state dir)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and os.path.basename(args[0]) == b"etcd" and any(needle.encode() in a for a in args):
            pids.append(int(pid))
    return pids
