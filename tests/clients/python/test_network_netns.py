"""The Linux network backend driven by XenAPI.py, in network namespaces this test makes.

The daemon runs in namespace A (`ip netns exec`, `--network-backend linux`) and is reached
over its unix socket; veth pairs stand in for NICs: eth0..eth3 in A, their peers in B. What
the XenAPI calls made is read back with `ip -d -j link` and `ip -j addr` in A, and so is its
removal. Nothing outside the two namespaces is touched.

Needs root and iproute2 (CI runs as root). A kernel without a driver (8021q, bonding, gre)
runs the refusal test for that object instead of the creation test: the daemon answers
PIF_CONFIGURATION_ERROR and leaves no record and no device behind. The Xen harness also runs
this file inside its Debian dom0 (tests/xen/dom0-run.sh), whose kernel has every driver, with
XAPID_NETNS_REQUIRE_DRIVERS=1: there a creation test fails rather than skips.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time

import pytest
import XenAPI

from xapid_harness import Daemon, DaemonError, LIVE, START_TIMEOUT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to make network namespaces")

PORT = 8080

# Set where the kernel is known to have every driver (tests/xen/dom0-run.sh runs this file in
# Debian's dom0): a missing driver then fails its creation test instead of skipping it.
REQUIRE_DRIVERS = os.environ.get("XAPID_NETNS_REQUIRE_DRIVERS") == "1"


def no_driver(what: str, instead: str = "") -> None:
    """Skips (or, under XAPID_NETNS_REQUIRE_DRIVERS=1, fails) a test needing a driver this kernel lacks."""
    if REQUIRE_DRIVERS:
        pytest.fail(f"this kernel has no {what} driver, and XAPID_NETNS_REQUIRE_DRIVERS=1 says it has")
    pytest.skip(f"this kernel has no {what} driver" + (f" ({instead} runs instead)" if instead else ""))


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Namespaces:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.a = f"xapidnet{tag}"
        self.b = f"xapidpeer{tag}"

    def make(self) -> None:
        ip("netns", "add", self.a)
        ip("netns", "add", self.b)
        ip("-n", self.a, "link", "set", "lo", "up")
        for i in range(4):
            ip("-n", self.a, "link", "add", f"eth{i}", "type", "veth", "peer", "name", f"peer{i}", "netns", self.b)
            ip("-n", self.b, "link", "set", f"peer{i}", "up")

    def remove(self) -> None:
        for ns in (self.a, self.b):
            ip("netns", "del", ns, check=False)

    def links(self) -> dict[str, dict]:
        out = ip("-n", self.a, "-d", "-j", "link", "show").stdout
        return {link["ifname"]: link for link in json.loads(out)}

    def addresses(self, dev: str) -> list[str]:
        out = ip("-n", self.a, "-j", "addr", "show", "dev", dev).stdout
        return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out) for a in link.get("addr_info", [])]

    def supports(self, *kind: str) -> bool:
        """Whether this kernel can make a device of this kind (tried in A, then removed)."""
        r = ip("-n", self.a, "link", "add", *kind, check=False)
        if r.returncode == 0:
            ip("-n", self.a, "link", "del", kind[kind.index("name") + 1] if "name" in kind else kind[0], check=False)
        return r.returncode == 0


def kind(link: dict) -> str | None:
    return link.get("linkinfo", {}).get("info_kind")


class NetnsDaemon(Daemon):
    """A daemon started inside namespace `ns`, reached over its unix socket."""

    def __init__(self, ns: str) -> None:
        super().__init__(extra_args=["--network-backend", "linux"])
        self.ns = ns

    def start(self, port: int | None = None) -> "NetnsDaemon":
        self.port = PORT
        self.starts += 1
        cmd = ["ip", "netns", "exec", self.ns, self.binary,
               "--listen", f"127.0.0.1:{PORT}", "--socket", self.sock_path,
               "--state-dir", str(self.state_dir), "--backend", "simulator",
               "--root-password-file", str(self.password_file), *self.extra_args]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        if self not in LIVE:
            LIVE.append(self)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise DaemonError(f"xapid exited with status {rc} during startup\n{self.log_tail()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock_path)
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise DaemonError(f"xapid did not accept on {self.sock_path}\n{self.log_tail()}")
            time.sleep(0.05)
        return self


@pytest.fixture(scope="module")
def ns():
    n = Namespaces()
    try:
        n.make()
        yield n
    finally:
        n.remove()


@pytest.fixture(scope="module")
def netd(ns):
    d = NetnsDaemon(ns.a)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def xapi(netd):
    s = XenAPI.Session(netd.uds_url, transport=XenAPI.UDSTransport())
    s.xenapi.login_with_password("root", netd.password, "2.0", "xapid-netns-tests")
    s.xenapi.PIF.scan(s.xenapi.host.get_all()[0])
    yield s.xenapi
    try:
        s.xenapi.session.logout()
    except Exception:
        pass


def failure(fn, *args) -> list[str]:
    with pytest.raises(XenAPI.Failure) as e:
        fn(*args)
    return e.value.details


def pif_of(xapi, device: str) -> str:
    for ref, rec in xapi.PIF.get_all_records().items():
        if rec["device"] == device and rec["VLAN_master_of"] == "OpaqueRef:NULL" and rec["physical"]:
            return ref
    raise AssertionError(f"no PIF {device}")


def new_network(xapi, label: str) -> str:
    return xapi.network.create({"name_label": label, "name_description": "", "MTU": "1500",
                                "other_config": {}, "tags": []})


def test_scan_introduces_the_namespace_nics(ns, xapi):
    links = ns.links()
    for i in range(1, 4):
        rec = xapi.PIF.get_record(pif_of(xapi, f"eth{i}"))
        assert rec["MAC"] == links[f"eth{i}"]["address"]
        assert xapi.network.get_bridge(rec["network"]) == f"xenbr{i}"
        assert rec["currently_attached"] is False
    devices = [r["device"] for r in xapi.PIF.get_all_records().values()]
    assert not any(d.startswith("peer") for d in devices), devices


def test_plug_makes_the_bridge_and_reconfigure_ip_addresses_it(ns, xapi):
    eth1 = pif_of(xapi, "eth1")
    xapi.PIF.plug(eth1)
    links = ns.links()
    assert kind(links["xenbr1"]) == "bridge"
    assert links["eth1"]["master"] == "xenbr1"
    xapi.PIF.reconfigure_ip(eth1, "Static", "10.77.0.1", "255.255.255.0", "", "")
    assert "10.77.0.1/24" in ns.addresses("xenbr1")
    xapi.PIF.reconfigure_ip(eth1, "Static", "10.77.0.2", "255.255.255.0", "", "")
    assert [a for a in ns.addresses("xenbr1") if a.startswith("10.77.")] == ["10.77.0.2/24"]
    xapi.PIF.reconfigure_ip(eth1, "None", "", "", "", "")
    assert not [a for a in ns.addresses("xenbr1") if a.startswith("10.77.")]
    xapi.PIF.unplug(eth1)
    links = ns.links()
    assert "xenbr1" not in links
    assert "master" not in links["eth1"]


def test_vlan_is_an_8021q_sub_interface_in_the_network_bridge(ns, xapi):
    if not ns.supports("link", "eth3", "name", "eth3.9", "type", "vlan", "id", "9"):
        no_driver("8021q", "test_vlan_refused_without_8021q")
    net = new_network(xapi, "vlan 100")
    bridge = xapi.network.get_bridge(net)
    vlan = xapi.VLAN.create(pif_of(xapi, "eth1"), "100", net)
    link = ns.links()["eth1.100"]
    assert kind(link) == "vlan"
    assert link["linkinfo"]["info_data"]["id"] == 100
    assert link["linkinfo"]["info_data"]["protocol"] == "802.1Q"
    assert link["master"] == bridge
    xapi.VLAN.destroy(vlan)
    links = ns.links()
    assert "eth1.100" not in links and bridge not in links
    xapi.network.destroy(net)


def test_vlan_refused_without_8021q(ns, xapi):
    if ns.supports("link", "eth3", "name", "eth3.9", "type", "vlan", "id", "9"):
        pytest.skip("this kernel has 8021q (test_vlan_is_an_8021q_sub_interface_in_the_network_bridge runs)")
    net = new_network(xapi, "vlan 100")
    eth1 = pif_of(xapi, "eth1")
    details = failure(xapi.VLAN.create, eth1, "100", net)
    assert details[0] == "PIF_CONFIGURATION_ERROR", details
    assert "vlan eth1.100" in details[2], details
    assert xapi.network.get_PIFs(net) == [] and xapi.VLAN.get_all() == []
    assert "eth1.100" not in ns.links()
    xapi.network.destroy(net)


def test_bond_is_the_bonding_driver_with_its_members(ns, xapi):
    if not ns.supports("probebond", "type", "bond"):
        no_driver("bonding", "test_bond_refused_without_bonding")
    net = new_network(xapi, "bond")
    bridge = xapi.network.get_bridge(net)
    bond = xapi.Bond.create(net, [pif_of(xapi, "eth2"), pif_of(xapi, "eth3")], "", "active-backup", {})
    links = ns.links()
    assert kind(links["bond0"]) == "bond"
    assert links["bond0"]["linkinfo"]["info_data"]["mode"] == "active-backup"
    assert links["eth2"]["master"] == "bond0" and links["eth3"]["master"] == "bond0"
    assert links["bond0"]["master"] == bridge
    xapi.Bond.destroy(bond)
    links = ns.links()
    assert "bond0" not in links and bridge not in links
    # The bond was plugged: its members are plugged again, each in its own network's bridge
    # (as the reference's Bond.destroy does).
    for dev in ("eth2", "eth3"):
        own = xapi.network.get_bridge(xapi.PIF.get_network(pif_of(xapi, dev)))
        assert links[dev].get("master") == own, (dev, own, links[dev].get("master"))
    xapi.network.destroy(net)


def test_bond_refused_without_bonding(ns, xapi):
    if ns.supports("probebond", "type", "bond"):
        pytest.skip("this kernel has bonding (test_bond_is_the_bonding_driver_with_its_members runs)")
    net = new_network(xapi, "bond")
    eth2, eth3 = pif_of(xapi, "eth2"), pif_of(xapi, "eth3")
    details = failure(xapi.Bond.create, net, [eth2, eth3], "", "active-backup", {})
    assert details[0] == "PIF_CONFIGURATION_ERROR", details
    assert xapi.Bond.get_all() == []
    assert xapi.PIF.get_bond_slave_of(eth2) == "OpaqueRef:NULL"
    assert "bond0" not in ns.links()
    xapi.network.destroy(net)


def test_vxlan_tunnel_rides_on_the_transport_bridge(ns, xapi):
    if not ns.supports("probevx", "type", "vxlan", "id", "9", "dstport", "4789"):
        no_driver("vxlan")
    eth2 = pif_of(xapi, "eth2")
    xapi.PIF.reconfigure_ip(eth2, "Static", "10.78.0.1", "255.255.255.0", "", "")
    net = new_network(xapi, "private")
    bridge = xapi.network.get_bridge(net)
    tunnel = xapi.tunnel.create(eth2, net, "vxlan")
    access = xapi.tunnel.get_access_PIF(tunnel)
    assert xapi.PIF.get_device(access) == "tunnel0"
    links = ns.links()
    assert kind(links["tunnel0"]) == "vxlan"
    assert links["tunnel0"]["linkinfo"]["info_data"]["port"] == 4789
    assert links["tunnel0"]["master"] == bridge
    assert links["eth2"]["master"] == "xenbr2", "the transport PIF was plugged first"
    assert "10.78.0.1/24" in ns.addresses("xenbr2")
    xapi.tunnel.destroy(tunnel)
    links = ns.links()
    assert "tunnel0" not in links and bridge not in links
    xapi.network.destroy(net)


def test_gre_tunnel(ns, xapi):
    if not ns.supports("probegre", "type", "gretap", "key", "9"):
        no_driver("gre")
    eth2 = pif_of(xapi, "eth2")
    xapi.PIF.reconfigure_ip(eth2, "Static", "10.78.0.1", "255.255.255.0", "", "")
    net = new_network(xapi, "gre")
    tunnel = xapi.tunnel.create(eth2, net, "gre")
    assert kind(ns.links()["tunnel0"]) == "gretap"
    xapi.tunnel.destroy(tunnel)
    assert "tunnel0" not in ns.links()
    xapi.network.destroy(net)


def dhclient() -> str | None:
    return shutil.which("dhclient") or next(
        (p for p in ("/sbin/dhclient", "/usr/sbin/dhclient") if os.path.exists(p)), None)


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox's udhcpd as the DHCP server")
def test_dhcp_gets_the_bridge_an_address_from_the_network(ns, xapi, tmp_path):
    """eth2 configured by DHCP: the daemon runs the bridge's DHCP client, which gets an
    address from a DHCP server on the other side (busybox's udhcpd in the peer namespace);
    configured otherwise, the client stops and its address goes."""
    if dhclient() is None:
        pytest.fail("dhclient (isc-dhcp-client) is missing: the test command installs it")
    ip("-n", ns.b, "addr", "add", "10.80.0.1/24", "dev", "peer2")
    conf = tmp_path / "udhcpd.conf"
    conf.write_text("start 10.80.0.100\nend 10.80.0.120\ninterface peer2\n"
                    f"lease_file {tmp_path}/udhcpd.leases\npidfile {tmp_path}/udhcpd.pid\n"
                    "opt subnet 255.255.255.0\nopt lease 600\n")
    (tmp_path / "udhcpd.leases").touch()
    server = subprocess.Popen(["ip", "netns", "exec", ns.b, "busybox", "udhcpd", "-f", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eth2 = pif_of(xapi, "eth2")
        xapi.PIF.plug(eth2)
        xapi.PIF.reconfigure_ip(eth2, "DHCP", "", "", "", "")
        leased = []
        deadline = time.monotonic() + 60
        while not leased and time.monotonic() < deadline:
            leased = [a for a in ns.addresses("xenbr2") if a.startswith("10.80.0.")]
            time.sleep(0.5)
        assert leased and 100 <= int(leased[0].split("/")[0].split(".")[-1]) <= 120, ns.addresses("xenbr2")
        assert leased[0].endswith("/24")
        xapi.PIF.reconfigure_ip(eth2, "None", "", "", "", "")
        assert not [a for a in ns.addresses("xenbr2") if a.startswith("10.80.0.")]
        running = subprocess.run(["pgrep", "-f", "dhclient.*xenbr2"], capture_output=True, text=True)
        assert running.stdout.strip() == "", f"a DHCP client still runs: {running.stdout}"
        xapi.PIF.unplug(eth2)
    finally:
        server.terminate()
        server.wait(timeout=10)
        ip("-n", ns.b, "addr", "del", "10.80.0.1/24", "dev", "peer2", check=False)


def test_management_reconfigure_moves_the_interface_and_keeps_the_session(ns, netd, xapi):
    host = xapi.host.get_all()[0]
    eth3 = pif_of(xapi, "eth3")
    xapi.PIF.reconfigure_ip(eth3, "Static", "10.79.0.1", "255.255.255.0", "", "")
    xapi.host.management_reconfigure(eth3)
    assert xapi.host.get_management_interface(host) == eth3
    assert xapi.host.get_address(host) == "10.79.0.1"
    links = ns.links()
    assert links["eth3"]["master"] == "xenbr3"
    assert "10.79.0.1/24" in ns.addresses("xenbr3")
    assert failure(xapi.PIF.unplug, eth3) == ["PIF_IS_MANAGEMENT_INTERFACE", eth3]

    # The API listens on the new management address (the daemon's port), reached from the
    # other namespace as a remote client would, with the session made over the unix socket.
    ip("-n", ns.b, "addr", "add", "10.79.0.2/24", "dev", "peer3")
    local = XenAPI.Session(netd.uds_url, transport=XenAPI.UDSTransport())
    local.xenapi.login_with_password("root", netd.password, "2.0", "xapid-netns-tests")
    ref = local._session
    url = f"http://10.79.0.1:{PORT}/"
    served = remote_call(ns.b, url, "session.get_this_host", ref, ref, until=lambda o: o[0] != "Refused")
    assert served == ["Success", host]
    # Turned off, it no longer listens there; the unix socket still serves the session.
    xapi.host.management_disable()
    refused = remote_call(ns.b, url, "session.get_this_host", ref, ref, until=lambda o: o[0] == "Refused")
    assert refused == ["Refused"]
    assert local.xenapi.session.get_this_host(ref) == host
    local.xenapi.session.logout()


def remote_call(netns: str, url: str, method: str, *args: str, until, wait: float = 10.0) -> list:
    """`method(*args)` over XML-RPC at `url` from namespace `netns`: ["Success", value],
    ["Failure", code], or ["Refused"] when nothing listens there. The listeners move just
    after the call that moves them returns: asked again until `until(answer)` holds or
    `wait` seconds have passed; the last answer is returned."""
    script = (
        "import json, sys, xmlrpc.client\n"
        "try:\n"
        "    r = getattr(xmlrpc.client.ServerProxy(sys.argv[1]), sys.argv[2])(*sys.argv[3:])\n"
        "    out = ['Success', r['Value']] if r['Status'] == 'Success' else ['Failure', r['ErrorDescription'][0]]\n"
        "except ConnectionRefusedError:\n"
        "    out = ['Refused']\n"
        "print(json.dumps(out))\n"
    )
    deadline = time.monotonic() + wait
    while True:
        r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script, url, method, *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        if until(out) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def test_a_restarted_daemon_brings_back_the_attached_pifs(ns, netd):
    """After a reboot the bridges and addresses are gone while the records say attached: the
    daemon's start brings them back (eth3 carries the management address of the test above,
    eth1 a static address plugged here)."""
    local = XenAPI.Session(netd.uds_url, transport=XenAPI.UDSTransport())
    local.xenapi.login_with_password("root", netd.password, "2.0", "xapid-netns-tests")
    x = local.xenapi
    eth1 = pif_of(x, "eth1")
    x.PIF.plug(eth1)
    x.PIF.reconfigure_ip(eth1, "Static", "10.77.0.5", "255.255.255.0", "", "")
    assert "10.77.0.5/24" in ns.addresses("xenbr1")
    local.xenapi.session.logout()
    netd.stop()
    # The host as after a reboot: what the daemon made is gone.
    for bridge in ("xenbr1", "xenbr3"):
        ip("-n", ns.a, "link", "del", bridge)
    assert not {"xenbr1", "xenbr3"} & set(ns.links())
    netd.start()
    links = ns.links()
    assert kind(links["xenbr1"]) == "bridge" and links["eth1"]["master"] == "xenbr1"
    assert "10.77.0.5/24" in ns.addresses("xenbr1")
    assert kind(links["xenbr3"]) == "bridge" and links["eth3"]["master"] == "xenbr3"
    assert "10.79.0.1/24" in ns.addresses("xenbr3")
