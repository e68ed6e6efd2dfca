//! placeholder: filled by the hypervisor-core work.
