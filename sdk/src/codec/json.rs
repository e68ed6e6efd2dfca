//! JSON-RPC as XenAPI speaks it: version 2.0 requests; results unwrapped; errors as
//! `{code, message: CODE, data: [params]}` (2.0) or `[CODE, params…]` (1.0).

use crate::error::api_failure;
use crate::Error;
use serde_json::Value as Json;

/// A request document.
pub(crate) fn write_call(method: &str, params: Vec<Json>, id: u64) -> Result<Vec<u8>, Error> {
    let doc = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
    serde_json::to_vec(&doc).map_err(|e| Error::Encode(e.to_string()))
}

fn strings(items: &[Json]) -> Vec<String> {
    items
        .iter()
        .map(|j| match j {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// Reads a response document into the result, or the failure it carries.
pub(crate) fn read_reply(body: &[u8]) -> Result<Json, Error> {
    let doc: Json = serde_json::from_slice(body).map_err(|e| Error::Protocol(format!("JSON-RPC: not JSON: {e}")))?;
    let Json::Object(mut m) = doc else {
        return Err(Error::Protocol("JSON-RPC: the reply is not an object".into()));
    };
    match m.remove("error") {
        None | Some(Json::Null) => {}
        Some(Json::Object(mut err)) => {
            let code = match err.remove("message") {
                Some(Json::String(s)) => s,
                _ => return Err(Error::Protocol("JSON-RPC: an error without a message".into())),
            };
            let mut description = vec![code];
            if let Some(Json::Array(data)) = err.get("data") {
                description.extend(strings(data));
            }
            return Err(api_failure(description));
        }
        Some(Json::Array(items)) => return Err(api_failure(strings(&items))),
        Some(other) => return Err(Error::Protocol(format!("JSON-RPC: unexpected error {other}"))),
    }
    m.remove("result")
        .ok_or_else(|| Error::Protocol("JSON-RPC: neither result nor error".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enums::ErrorCode;
    use serde_json::json;

    #[test]
    fn requests_are_json_rpc_2() {
        let doc: Json =
            serde_json::from_slice(&write_call("VM.get_all", vec![json!("OpaqueRef:s")], 7).unwrap()).unwrap();
        assert_eq!(
            doc,
            json!({"jsonrpc": "2.0", "method": "VM.get_all", "params": ["OpaqueRef:s"], "id": 7})
        );
    }

    #[test]
    fn results_and_both_versions_of_errors_are_read() {
        assert_eq!(
            read_reply(br#"{"jsonrpc":"2.0","result":["a"],"id":1}"#).unwrap(),
            json!(["a"])
        );
        assert_eq!(read_reply(br#"{"result":"","error":null,"id":1}"#).unwrap(), json!(""));
        let v2 = read_reply(br#"{"jsonrpc":"2.0","error":{"code":1,"message":"VM_BAD_POWER_STATE","data":["OpaqueRef:v","halted","running"]},"id":1}"#);
        let Err(Error::Api(e)) = v2 else { panic!("{v2:?}") };
        assert_eq!(e.code, ErrorCode::VmBadPowerState);
        assert_eq!(e.param("expected"), Some("halted"));
        let v1 = read_reply(br#"{"result":null,"error":["SESSION_INVALID","OpaqueRef:s"],"id":1}"#);
        let Err(Error::Api(e)) = v1 else { panic!("{v1:?}") };
        assert_eq!(e.code, ErrorCode::SessionInvalid);
        assert_eq!(e.param("handle"), Some("OpaqueRef:s"));
        for bad in [&b"[1]"[..], b"{\"id\":1}", b"nope", b"{\"error\":{\"code\":1}}"] {
            assert!(
                matches!(read_reply(bad), Err(Error::Protocol(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
