import XenAPI, subprocess, hashlib, os, sys, time
url = "http://127.0.0.1:18931"
pw = open("/tmp/dw/state/root-password").read().strip()
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
run("curl", "-sS", "-f", "-D", "/tmp/dw/headers", "-T", "/tmp/dw/rand.bin", f"{url}/import_raw_vdi?vdi={vdi}&session_id={sid}&format=raw")
task = [l.split(":", 1)[1].strip() for l in open("/tmp/dw/headers") if l.lower().startswith("task-id")][0]
print("import task:", task, x.task.get_status(task), x.task.get_progress(task), x.task.get_result(task))
run("curl", "-sS", "-f", "-o", "/tmp/dw/out.bin", f"{url}/export_raw_vdi?vdi={vdi}&session_id={sid}&format=raw")
print("sha256 in :", sha("/tmp/dw/rand.bin"))
print("sha256 out:", sha("/tmp/dw/out.bin"))
assert sha("/tmp/dw/rand.bin") == sha("/tmp/dw/out.bin")
snap = x.VDI.snapshot(vdi, {})
run("curl", "-sS", "-f", "-T", "/tmp/dw/rand2.bin", f"{url}/import_raw_vdi?vdi={vdi}&session_id={sid}")
run("curl", "-sS", "-f", "-o", "/tmp/dw/snap.bin", f"{url}/export_raw_vdi?vdi={snap}&session_id={sid}")
run("curl", "-sS", "-f", "-o", "/tmp/dw/now.bin", f"{url}/export_raw_vdi?vdi={vdi}&session_id={sid}")
print("snapshot sha256:", sha("/tmp/dw/snap.bin"), "(== original:", sha("/tmp/dw/snap.bin") == sha("/tmp/dw/rand.bin"), ")")
print("current  sha256:", sha("/tmp/dw/now.bin"), "(== overwrite:", sha("/tmp/dw/now.bin") == sha("/tmp/dw/rand2.bin"), ")")
assert sha("/tmp/dw/snap.bin") == sha("/tmp/dw/rand.bin") and sha("/tmp/dw/now.bin") == sha("/tmp/dw/rand2.bin")
print("snapshot record: is_a_snapshot=%s snapshot_of=%s" % (x.VDI.get_is_a_snapshot(snap), x.VDI.get_snapshot_of(snap) == vdi))
# ISO SR
os.makedirs("/tmp/dw/isos", exist_ok=True)
iso_sr = x.SR.create(x.host.get_all()[0], {"location": "/tmp/dw/isos"}, "0", "ISO library", "", "iso", "iso", False, {})
print("ISO SR VDIs before:", [x.VDI.get_name_label(v) for v in x.SR.get_VDIs(iso_sr)])
with open("/tmp/dw/isos/install.iso", "wb") as f: f.write(os.urandom(1 << 20))
x.SR.scan(iso_sr)
print("ISO SR VDIs after scan:", [(x.VDI.get_name_label(v), x.VDI.get_virtual_size(v), x.VDI.get_read_only(v)) for v in x.SR.get_VDIs(iso_sr)])
r = x.SR.get_record(sr)
print("default SR: physical_size=%s physical_utilisation=%s virtual_allocation=%s" % (r["physical_size"], r["physical_utilisation"], r["virtual_allocation"]))
