#!/usr/bin/env bash
# Regenerate xen-sys/src/bindings.rs from the Xen headers installed by
# Debian's libxen-dev. Never run by build.rs: the output is checked in.
#
#   xen-sys/scripts/gen-bindings.sh [OUTPUT]     (default: xen-sys/src/bindings.rs)
#
# Needs: bindgen-cli (pinned below) and libclang; the Xen headers in /usr/include.
# Install bindgen with:
#   cargo install bindgen-cli --version "$BINDGEN_VERSION" --locked
set -euo pipefail

BINDGEN_VERSION=0.73.2
# Rust language level of the generated code (matches workspace rust-version).
RUST_TARGET=1.85
# The bindings describe the x86_64 Linux ABI (XenServer dom0 is x86_64 only).
CLANG_TARGET=x86_64-unknown-linux-gnu

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crate=$(dirname "$here")
out=${1:-$crate/src/bindings.rs}

BINDGEN=${BINDGEN:-bindgen}
have=$("$BINDGEN" --version 2>/dev/null || true)
if [ "$have" != "bindgen $BINDGEN_VERSION" ]; then
    echo "gen-bindings: need 'bindgen $BINDGEN_VERSION', found '${have:-nothing}'." >&2
    echo "  cargo install bindgen-cli --version $BINDGEN_VERSION --locked" >&2
    exit 1
fi
for h in xenctrl.h xenguest.h xenstore.h xentoollog.h; do
    if [ ! -f "/usr/include/$h" ]; then
        echo "gen-bindings: /usr/include/$h missing: apt-get install libxen-dev" >&2
        exit 1
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

common=(
    --rust-target "$RUST_TARGET"
    --rust-edition 2021
    --no-doc-comments
    --constified-enum-module '.*'
    --formatter none
)
clang_args=(-- "--target=$CLANG_TARGET")

# Join arguments with '|' into one anchored regex.
alt() { local IFS='|'; echo "^($*)\$"; }

# ---------------------------------------------------------------- types
# Every type the functions below mention, plus the constants a toolstack
# needs. Dependencies of these roots are pulled in by bindgen.
types=(
    xc_interface xc_interface_core xs_handle xs_transaction_t
    xentoollog_logger xentoollog_level xentoollog_logger_stdiostream
    xc_open_flags xc_error_code
    xen_domctl_createdomain xen_domctl_getdomaininfo xc_domaininfo_t
    xen_sysctl_physinfo xc_physinfo_t
    xen_extraversion_t xen_domain_handle_t domid_t evtchn_port_t
    xc_evtchn_port_or_error_t xen_pfn_t
    xs_permissions xs_watch_type
    xc_dom_image
    save_callbacks restore_callbacks xc_stream_type_t
    va_list __va_list_tag FILE
)
vars=(
    '_?XEN_DOMINF_.*'
    '_?XEN_DOMCTL_CDF_.*'
    '_?XEN_DOMCTL_IOMMU_.*'
    XEN_DOMCTL_GRANT_version_mask
    XEN_DOMCTL_INTERFACE_VERSION
    XEN_INVALID_MAX_VCPU_ID
    'SHUTDOWN_.*'
    'XENVER_.*' XEN_EXTRAVERSION_LEN
    '_?XEN_X86_EMU_.*' XEN_X86_MSR_RELAXED
    XC_PAGE_SHIFT XC_PAGE_SIZE
    'XS_PERM_.*' 'XS_OPEN_.*' XS_UNWATCH_FILTER XBT_NULL
    'XTL_STDIOSTREAM_.*'
    'XCFLAGS_.*'
    HVM_PARAM_TIMER_MODE 'HVMPTM_.*'
    X86_HVM_NR_SPECIAL_PAGES X86_HVM_END_SPECIAL_REGION
)
"$BINDGEN" "$here/wrapper.h" "${common[@]}" \
    --ignore-functions \
    --with-derive-default \
    --opaque-type _IO_FILE \
    --allowlist-type "$(alt "${types[@]}")" \
    --allowlist-var "$(alt "${vars[@]}")" \
    -o "$tmp/types.rs" "${clang_args[@]}"

# ----------------------------------------------- libc (linked normally)
# vsnprintf formats the va_list libxentoollog hands to our logger.
"$BINDGEN" "$here/wrapper.h" "${common[@]}" \
    --blocklist-type '.*' \
    --allowlist-function '^vsnprintf$' \
    -o "$tmp/libc.rs" "${clang_args[@]}"

# ------------------------------------ one run-time-loaded struct per library
# gen NAME FUNCTION...: struct NAME holding a pointer to every FUNCTION,
# resolved from one shared object with libloading. --dynamic-link-require-all
# makes loading fail (naming the symbol) if any is absent.
gen() {
    local name=$1
    shift
    "$BINDGEN" "$here/wrapper.h" "${common[@]}" \
        --blocklist-type '.*' \
        --dynamic-loading "$name" \
        --dynamic-link-require-all \
        --allowlist-function "$(alt "$@")" \
        -o "$tmp/$name.rs" "${clang_args[@]}"
}

gen XenToolLog \
    xtl_createlogger_stdiostream xtl_stdiostream_set_minlevel \
    xtl_logger_destroy xtl_level_to_string xtl_log

gen XenCtrl \
    xc_interface_open xc_interface_close \
    xc_domain_create xc_domain_getinfolist \
    xc_domain_pause xc_domain_unpause xc_domain_shutdown xc_domain_destroy \
    xc_domain_setmaxmem xc_domain_max_vcpus \
    xc_physinfo xc_version \
    xc_evtchn_alloc_unbound \
    xc_domain_set_memory_map xc_set_paging_mempool_size \
    xc_domain_set_tsc_info xc_hvm_param_set

gen XenGuest \
    xc_dom_allocate xc_dom_release \
    xc_dom_kernel_file xc_dom_module_file \
    xc_dom_boot_xen_init xc_dom_parse_image xc_dom_mem_init \
    xc_dom_boot_mem_init xc_dom_build_image xc_dom_boot_image \
    xc_dom_gnttab_init xc_dom_translated \
    xc_domain_save xc_domain_restore xc_domain_resume

gen XenStore \
    xs_open xs_close \
    xs_read xs_write xs_mkdir xs_rm xs_directory \
    xs_get_permissions xs_set_permissions \
    xs_get_domain_path xs_introduce_domain xs_release_domain \
    xs_is_domain_introduced \
    xs_watch xs_unwatch xs_read_watch xs_check_watch xs_fileno \
    xs_transaction_start xs_transaction_end

{
    echo "// Generated by xen-sys/scripts/gen-bindings.sh with bindgen $BINDGEN_VERSION"
    echo "// from the Xen 4.17 headers of Debian's libxen-dev. DO NOT EDIT:"
    echo "// run the script instead (xen-sys/scripts/check-bindings.sh verifies it)."
    for part in types libc XenToolLog XenCtrl XenGuest XenStore; do
        echo
        cat "$tmp/$part.rs"
    done
} > "$tmp/bindings.rs"
rustfmt --edition 2021 "$tmp/bindings.rs"
mv "$tmp/bindings.rs" "$out"
echo "gen-bindings: wrote $out" >&2
