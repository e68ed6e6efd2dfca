//! Success replies: small ones encoded whole, large lists and maps (`get_all_records` of
//! thousands of objects) streamed in chunks as the connection drains.
//!
//! A streamed reply is encoded a chunk at a time while the client is already reading the
//! previous one, so the encoding overlaps the transfer, and the daemon never holds the whole
//! encoded reply (80 MB of XML for 10,000 VMs): only the chunks in flight. It travels with
//! `Transfer-Encoding: chunked` (HTTP/1.0 clients, which cannot take it, get replies whole);
//! its bytes are exactly those of the whole reply.

use crate::jsonrpc::{self, Version};
use crate::xmlrpc;
use actix_web::web::Bytes;
use agent::value::{encoded_len_hint, write_json, write_json_entry, Encoding, Value};
use agent::xml::{write_map_member, write_value, ARRAY_CLOSE, ARRAY_OPEN, STRUCT_CLOSE, STRUCT_OPEN};
use serde_json::Value as Json;

/// Replies whose estimated size reaches this are streamed.
pub const STREAM_FROM: usize = 256 * 1024;

/// Bytes encoded per chunk (at least; an item is never split).
const CHUNK: usize = 256 * 1024;

/// The wire form of a reply.
#[derive(Clone, Debug)]
pub enum Wire {
    /// XML-RPC.
    Xml,
    /// JSON-RPC, with the request's version and id.
    Json(Version, Json),
}

impl Wire {
    fn encoding(&self) -> Encoding {
        match self {
            Wire::Xml => Encoding::Xml,
            Wire::Json(..) => Encoding::Json,
        }
    }
}

/// A success reply, ready to send.
pub enum Reply {
    /// Encoded whole.
    Whole(String),
    /// Encoded chunk by chunk.
    Streamed(Chunks),
}

/// The success reply carrying `v`, streamed when it is a large list or map.
pub fn success(wire: Wire, v: Value) -> Reply {
    success_streaming_from(wire, v, STREAM_FROM)
}

/// [`success`] with the streaming threshold given (`usize::MAX`: never streamed).
pub fn success_streaming_from(wire: Wire, v: Value, threshold: usize) -> Reply {
    let hint = encoded_len_hint(&v, wire.encoding());
    if hint >= threshold && matches!(v, Value::Set(_) | Value::Map(_)) {
        return Reply::Streamed(Chunks {
            wire,
            value: v,
            next: 0,
            state: State::Head,
        });
    }
    Reply::Whole(match &wire {
        Wire::Xml => xmlrpc::success_sized(&v, hint),
        Wire::Json(version, id) => jsonrpc::success_sized(*version, id, &v, hint),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Items,
    Done,
}

/// The chunks of a streamed reply, in order.
pub struct Chunks {
    wire: Wire,
    value: Value,
    next: usize,
    state: State,
}

impl Chunks {
    fn len(&self) -> usize {
        match &self.value {
            Value::Set(items) => items.len(),
            Value::Map(pairs) => pairs.len(),
            _ => 0,
        }
    }

    fn open(&self, out: &mut String) {
        match &self.wire {
            Wire::Xml => {
                xmlrpc::success_head(out);
                out.push_str(if matches!(self.value, Value::Map(_)) {
                    STRUCT_OPEN
                } else {
                    ARRAY_OPEN
                });
            }
            Wire::Json(version, _) => {
                jsonrpc::success_head(*version, out);
                out.push(if matches!(self.value, Value::Map(_)) { '{' } else { '[' });
            }
        }
    }

    fn item(&self, i: usize, out: &mut String) {
        let json = matches!(self.wire, Wire::Json(..));
        if json && i > 0 {
            out.push(',');
        }
        match (&self.value, json) {
            (Value::Set(items), true) => items.get(i).into_iter().for_each(|v| write_json(v, out)),
            (Value::Set(items), false) => items.get(i).into_iter().for_each(|v| write_value(v, out)),
            (Value::Map(pairs), true) => pairs.get(i).into_iter().for_each(|(k, v)| write_json_entry(k, v, out)),
            (Value::Map(pairs), false) => pairs.get(i).into_iter().for_each(|(k, v)| write_map_member(k, v, out)),
            _ => {}
        }
    }

    fn close(&self, out: &mut String) {
        let map = matches!(self.value, Value::Map(_));
        match &self.wire {
            Wire::Xml => {
                out.push_str(if map { STRUCT_CLOSE } else { ARRAY_CLOSE });
                xmlrpc::success_tail(out);
            }
            Wire::Json(version, id) => {
                out.push(if map { '}' } else { ']' });
                jsonrpc::success_tail(*version, id, out);
            }
        }
    }
}

impl Iterator for Chunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.state == State::Done {
            return None;
        }
        let mut out = String::with_capacity(CHUNK + CHUNK / 4);
        if self.state == State::Head {
            self.open(&mut out);
            self.state = State::Items;
        }
        let len = self.len();
        while self.next < len && out.len() < CHUNK {
            self.item(self.next, &mut out);
            self.next += 1;
        }
        if self.next >= len {
            self.close(&mut out);
            self.state = State::Done;
        }
        Some(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_map(n: usize) -> Value {
        Value::Map(
            (0..n)
                .map(|i| {
                    (
                        Value::Ref(format!("OpaqueRef:{i:08}").into()),
                        Value::Struct(
                            vec![
                                ("name".to_owned(), Value::str(format!("vm <{i}> & \"co\""))),
                                ("n".to_owned(), Value::Int(i as i64)),
                                (
                                    "tags".to_owned(),
                                    Value::Set(vec![Value::str("a"), Value::Bool(true)].into()),
                                ),
                            ]
                            .into(),
                        ),
                    )
                })
                .collect(),
        )
    }

    fn big_set(n: usize) -> Value {
        Value::Set(
            (0..n)
                .map(|i| Value::Ref(format!("OpaqueRef:{i:036}").into()))
                .collect(),
        )
    }

    fn streamed(wire: Wire, v: Value) -> (String, usize) {
        match success_streaming_from(wire, v, 1) {
            Reply::Streamed(chunks) => {
                let parts: Vec<Bytes> = chunks.collect();
                let n = parts.len();
                let all: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
                (String::from_utf8(all).unwrap(), n)
            }
            Reply::Whole(_) => panic!("expected a streamed reply"),
        }
    }

    #[test]
    fn streamed_bytes_are_the_whole_reply() {
        let id = serde_json::json!({"n": [1, "x"]});
        for v in [big_map(0), big_map(1), big_map(3000), big_set(0), big_set(5000)] {
            let (xml, xml_chunks) = streamed(Wire::Xml, v.clone());
            assert_eq!(xml, xmlrpc::success(&v));
            for version in [Version::V1, Version::V2] {
                let (json, _) = streamed(Wire::Json(version, id.clone()), v.clone());
                assert_eq!(json, jsonrpc::success(version, &id, &v));
            }
            if v.as_map().len() == 3000 {
                assert!(
                    xml_chunks > 3,
                    "a large map goes out in several chunks, got {xml_chunks}"
                );
            }
        }
    }

    #[test]
    fn small_and_scalar_replies_are_whole() {
        let id = Json::from(7);
        for v in [Value::None, Value::Int(3), big_map(2), Value::str("x".repeat(1 << 20))] {
            match success(Wire::Json(Version::V2, id.clone()), v.clone()) {
                Reply::Whole(s) => assert_eq!(s, jsonrpc::success(Version::V2, &id, &v)),
                Reply::Streamed(_) => panic!("a small or scalar reply is encoded whole"),
            }
        }
        assert!(matches!(success(Wire::Xml, big_map(20_000)), Reply::Streamed(_)));
    }
}
