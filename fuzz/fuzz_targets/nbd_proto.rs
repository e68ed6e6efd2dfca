//! The NBD server's parsers (`rpc/src/nbd/proto.rs`) on arbitrary client bytes: the first
//! byte picks what the rest is read as (an `NBD_OPT_GO`/`INFO` payload, a meta-context
//! payload, an export name, a request header). Whatever parses must hold what it claims:
//! a GO payload's name is at most 4 KiB, an export name's uuid has no `/`, a request header
//! carries the request magic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpc::nbd::proto;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(r) = proto::parse_info(rest) {
                assert!(r.name.len() <= 4096);
                assert_eq!(4 + r.name.len() + 2 + 2 * r.requests.len(), rest.len());
            }
        }
        1 => {
            if let Ok(m) = proto::parse_meta(rest) {
                let _ = proto::selects_base_allocation(&m.queries, true);
                let _ = proto::selects_base_allocation(&m.queries, false);
            }
        }
        2 => {
            if let Ok(name) = proto::parse_export_name_option(rest) {
                if let Some(n) = proto::parse_export_name(&name) {
                    assert!(!n.vdi_uuid.is_empty() && !n.vdi_uuid.contains('/'));
                    assert!(!n.session.is_empty());
                }
            }
        }
        3 => {
            if let Ok(h) = <&[u8; 28]>::try_from(rest) {
                if let Ok(r) = proto::parse_request(h) {
                    assert_eq!(&rest[0..4], &proto::REQUEST_MAGIC.to_be_bytes());
                    assert_eq!(&rest[24..28], &r.length.to_be_bytes());
                }
            }
        }
        _ => {
            let reply = proto::option_reply(proto::OPT_GO, proto::REP_INFO, rest);
            assert_eq!(reply.len(), 20 + rest.len());
        }
    }
});
