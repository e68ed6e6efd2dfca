//! JSON-RPC 1.0 and 2.0 as XenAPI speaks them: results unwrapped, v2 errors as
//! `{code: 1, message: CODE, data: [params]}`, v1 errors as `[CODE, params…]`.

use agent::value::{write_json, write_json_str, Value};
use serde_json::Value as Json;

/// Why a body is not a JSON-RPC request.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JsonRpcError {
    /// Not JSON.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// JSON, but not a request.
    #[error("not a JSON-RPC request: {0}")]
    Structure(&'static str),
}

/// Protocol version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 1.0: `{result, error, id}`.
    V1,
    /// 2.0: `{jsonrpc, result | error, id}`.
    V2,
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    /// Method name.
    pub method: String,
    /// Untyped parameters.
    pub params: Vec<Json>,
    /// The id to echo.
    pub id: Json,
    /// Protocol version.
    pub version: Version,
}

/// Decodes a request body.
pub fn decode(body: &[u8]) -> Result<Request, JsonRpcError> {
    let j: Json = serde_json::from_slice(body).map_err(|e| JsonRpcError::Malformed(e.to_string()))?;
    let Json::Object(mut m) = j else {
        return Err(JsonRpcError::Structure("the body is not an object"));
    };
    let version = match m.get("jsonrpc").and_then(Json::as_str) {
        Some("2.0") => Version::V2,
        _ => Version::V1,
    };
    let method = match m.remove("method") {
        Some(Json::String(s)) => s,
        _ => return Err(JsonRpcError::Structure("method must be a string")),
    };
    let params = match m.remove("params") {
        Some(Json::Array(a)) => a,
        None | Some(Json::Null) => Vec::new(),
        Some(_) => return Err(JsonRpcError::Structure("params must be an array")),
    };
    let id = m.remove("id").unwrap_or(Json::Null);
    Ok(Request {
        method,
        params,
        id,
        version,
    })
}

fn write_id(id: &Json, out: &mut String) {
    out.push_str(&id.to_string());
}

/// A success response. A `void` result travels as `""`, as it does in XML-RPC.
pub fn success(version: Version, id: &Json, v: &Value) -> String {
    success_sized(
        version,
        id,
        v,
        agent::value::encoded_len_hint(v, agent::value::Encoding::Json),
    )
}

/// [`success`] with the result's encoded size already estimated.
pub(crate) fn success_sized(version: Version, id: &Json, v: &Value, hint: usize) -> String {
    let empty = Value::empty_str();
    let v = if matches!(v, Value::None) { &empty } else { v };
    let mut out = String::with_capacity(96 + hint);
    success_head(version, &mut out);
    write_json(v, &mut out);
    success_tail(version, id, &mut out);
    out
}

/// What comes before the result in a success response.
pub(crate) fn success_head(version: Version, out: &mut String) {
    out.push_str(match version {
        Version::V2 => "{\"jsonrpc\":\"2.0\",\"result\":",
        Version::V1 => "{\"result\":",
    });
}

/// What comes after the result in a success response.
pub(crate) fn success_tail(version: Version, id: &Json, out: &mut String) {
    if version == Version::V1 {
        out.push_str(",\"error\":null");
    }
    out.push_str(",\"id\":");
    write_id(id, out);
    out.push('}');
}

/// An error response.
pub fn failure(version: Version, id: &Json, code: &str, params: &[String]) -> String {
    let mut out = String::with_capacity(256);
    let write_list = |out: &mut String, items: &mut dyn Iterator<Item = &str>| {
        out.push('[');
        for (i, s) in items.enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_str(s, out);
        }
        out.push(']');
    };
    match version {
        Version::V2 => {
            out.push_str("{\"jsonrpc\":\"2.0\",\"error\":{\"code\":1,\"message\":");
            write_json_str(code, &mut out);
            out.push_str(",\"data\":");
            write_list(&mut out, &mut params.iter().map(String::as_str));
            out.push('}');
        }
        Version::V1 => {
            out.push_str("{\"result\":null,\"error\":");
            write_list(
                &mut out,
                &mut std::iter::once(code).chain(params.iter().map(String::as_str)),
            );
        }
    }
    out.push_str(",\"id\":");
    write_id(id, &mut out);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_shape_replies() {
        let r = decode(br#"{"jsonrpc":"2.0","method":"pool.get_all","params":["s"],"id":7}"#).unwrap();
        assert_eq!(r.version, Version::V2);
        let ok: Json = serde_json::from_str(&success(r.version, &r.id, &Value::Int(3))).unwrap();
        assert_eq!(ok, json!({"jsonrpc":"2.0","result":3,"id":7}));
        let err: Json = serde_json::from_str(&failure(Version::V2, &json!("a"), "X", &["p".into()])).unwrap();
        assert_eq!(
            err,
            json!({"jsonrpc":"2.0","error":{"code":1,"message":"X","data":["p"]},"id":"a"})
        );
        let v1: Json = serde_json::from_str(&failure(Version::V1, &json!(1), "X", &[])).unwrap();
        assert_eq!(v1, json!({"result":null,"error":["X"],"id":1}));
    }

    /// Found by the `jsonrpc_decode` fuzz target: without serde_json's `float_roundtrip`
    /// feature this id was read 1 ULP off, and the reply's id was not the request's.
    #[test]
    fn ids_are_echoed_exactly() {
        for id in ["-92233720368547805791", "9007199254740993.0", "1.5e300", "7", "\"a\""] {
            let body = format!(r#"{{"jsonrpc":"2.0","method":"m","params":[],"id":{id}}}"#);
            let r = decode(body.as_bytes()).unwrap();
            let reply: Json = serde_json::from_str(&success(r.version, &r.id, &Value::None)).unwrap();
            assert_eq!(reply["id"], r.id, "{id}");
        }
    }

    #[test]
    fn rejects_non_requests() {
        assert!(decode(b"[1,2]").is_err());
        assert!(decode(b"{\"method\":3}").is_err());
        assert!(decode(b"{\"method\":\"x\",\"params\":{}}").is_err());
        assert!(decode(b"{\"method\":").is_err());
    }
}
