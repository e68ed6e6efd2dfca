//! What `host.call_plugin` and `host.call_extension` read back from programs on the host, and
//! the other host texts the daemon reads: `agent::host::plugins::read_plugin_output` and
//! `read_extension_output` (a plugin's or an extension's stdout), `parse_extension_call` (a
//! client's JSON-RPC call for an extension), `admin::format_kmsg_record` (a kernel log
//! record) and `admin::first_certificate` (a PEM file) on arbitrary text.
//!
//! None may panic. A plugin answer that reads as a string, written back in a success
//! response, reads back as the same string; an extension call that reads can be written as
//! the `methodCall` the extension gets.
#![no_main]

use agent::host::admin::{first_certificate, format_kmsg_record};
use agent::host::plugins::{parse_extension_call, read_extension_output, read_plugin_output, PluginReply};
use agent::host::xmlrpc::{extension_call, write_string};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(PluginReply::Success(s)) = read_plugin_output(&text) {
        let mut doc = String::from(
            "<methodResponse><params><param><value><struct><member><name>Status</name>\
             <value>Success</value></member><member><name>Value</name>",
        );
        write_string(&s, &mut doc);
        doc.push_str("</member></struct></value></param></params></methodResponse>");
        // Characters XML cannot carry are written as U+FFFD.
        let expected: String = s
            .chars()
            .map(|c| if agent::xml::forbidden_in_xml(c) { '\u{fffd}' } else { c })
            .collect();
        match read_plugin_output(&doc) {
            Ok(PluginReply::Success(again)) => assert_eq!(again, expected),
            other => panic!("{s:?} written back reads as {other:?}"),
        }
    }
    let _ = read_extension_output(&text);
    if let Ok((method, params)) = parse_extension_call(&text) {
        let call = extension_call(&method, &params);
        assert!(call.starts_with("<?xml"), "{call}");
    }
    for line in text.lines() {
        let _ = format_kmsg_record(line);
    }
    if let Some(pem) = first_certificate(&text) {
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----") && pem.ends_with("-----END CERTIFICATE-----\n"));
    }
});
