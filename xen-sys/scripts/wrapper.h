/*
 * Input header for scripts/gen-bindings.sh.
 *
 * Pulls in every public Xen toolstack header xen-sys binds. xenctrl.h
 * defines __XEN_TOOLS__ itself, which exposes the domctl/sysctl ABI.
 */
#include <stdio.h>
#include <stdarg.h>
#include <xenctrl.h>
#include <xenguest.h>
#include <xenstore.h>
#include <xentoollog.h>
