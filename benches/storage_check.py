"""Done-when checks of the storage work against a running xapid, with XenAPI.py and curl.

    xapid --state-dir /tmp/dw/state --listen 127.0.0.1:18931 --backend simulator &
    python3 benches/storage_check.py [http://127.0.0.1:18931] [/tmp/dw]

WORK is where the state dir is (WORK/state) and where scratch files go.
"""
import XenAPI, subprocess, hashlib, os, sys, time
url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18931"
work = sys.argv[2] if len(sys.argv) > 2 else "/tmp/dw"
pw = open(f"{work}/state/root-password").read().strip()
for name in ("rand.bin", "rand2.bin"):
    with open(f"{work}/{name}", "wb") as f:
        f.write(os.urandom(64 << 20))
s = XenAPI.Session(url)
s.xenapi.login_with_password("root", pw, "2.21", "done-when")
sid = s._session
x = s.xenapi
pool = x.pool.get_all()[0]
sr = x.pool.get_default_SR(pool)
vdi = x.VDI.create({"name_label": "dw", "name_description": "", "SR": sr, "virtual_size": str(64 << 20),
                    "type": "user", "sharable": False, "read_only": False, "other_config": {}})
def sha(p): return hashlib.sha256(open(p, "rb").read()).hexdigest()
def run(*a): print("$", " ".join(a)); subprocess.run(a, check=True)
run("curl", "-sS", "-f", "-D", f"{work}/headers", "-T", f"{work}/rand.bin", f"{url}/import_raw_vdi?vdi={vdi}&session_id={sid}&format=raw")
task = [l.split(":", 1)[1].strip() for l in open(f"{work}/headers") if l.lower().startswith("task-id")][0]
print("import task:", task, x.task.get_status(task), x.task.get_progress(task), x.task.get_result(task))
run("curl", "-sS", "-f", "-o", f"{work}/out.bin", f"{url}/export_raw_vdi?vdi={vdi}&session_id={sid}&format=raw")
print("sha256 in :", sha(f"{work}/rand.bin"))
print("sha256 out:", sha(f"{work}/out.bin"))
assert sha(f"{work}/rand.bin") == sha(f"{work}/out.bin")
snap = x.VDI.snapshot(vdi, {})
run("curl", "-sS", "-f", "-T", f"{work}/rand2.bin", f"{url}/import_raw_vdi?vdi={vdi}&session_id={sid}")
run("curl", "-sS", "-f", "-o", f"{work}/snap.bin", f"{url}/export_raw_vdi?vdi={snap}&session_id={sid}")
run("curl", "-sS", "-f", "-o", f"{work}/now.bin", f"{url}/export_raw_vdi?vdi={vdi}&session_id={sid}")
print("snapshot sha256:", sha(f"{work}/snap.bin"), "(== original:", sha(f"{work}/snap.bin") == sha(f"{work}/rand.bin"), ")")
print("current  sha256:", sha(f"{work}/now.bin"), "(== overwrite:", sha(f"{work}/now.bin") == sha(f"{work}/rand2.bin"), ")")
assert sha(f"{work}/snap.bin") == sha(f"{work}/rand.bin") and sha(f"{work}/now.bin") == sha(f"{work}/rand2.bin")
print("snapshot record: is_a_snapshot=%s snapshot_of=%s" % (x.VDI.get_is_a_snapshot(snap), x.VDI.get_snapshot_of(snap) == vdi))
# ISO SR
os.makedirs(f"{work}/isos", exist_ok=True)
iso_sr = x.SR.create(x.host.get_all()[0], {"location": f"{work}/isos"}, "0", "ISO library", "", "iso", "iso", False, {})
print("ISO SR VDIs before:", [x.VDI.get_name_label(v) for v in x.SR.get_VDIs(iso_sr)])
with open(f"{work}/isos/install.iso", "wb") as f: f.write(os.urandom(1 << 20))
x.SR.scan(iso_sr)
print("ISO SR VDIs after scan:", [(x.VDI.get_name_label(v), x.VDI.get_virtual_size(v), x.VDI.get_read_only(v)) for v in x.SR.get_VDIs(iso_sr)])
r = x.SR.get_record(sr)
print("default SR: physical_size=%s physical_utilisation=%s virtual_allocation=%s" % (r["physical_size"], r["physical_utilisation"], r["virtual_allocation"]))
