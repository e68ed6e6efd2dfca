//! `xapid-xenguest`: runs one PV domain build for xapid's Xen backend in a
//! process of its own (see `agent::hypervisor::xen::xenguest`).

fn main() {
    std::process::exit(agent::hypervisor::xen::xenguest::helper_main());
}
