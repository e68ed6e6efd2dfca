//! Success replies: small ones encoded whole, large lists and maps (`get_all_records` of
//! thousands of objects) streamed in chunks as the connection drains.
//!
//! A streamed reply is encoded a chunk at a time while the client is already reading the
//! previous one, so the encoding overlaps the transfer, and the daemon never holds the whole
//! encoded reply (80 MB of XML for 10,000 VMs): only the chunks in flight. It travels with
//! `Transfer-Encoding: chunked` (HTTP/1.0 clients, which cannot take it, get replies whole);
//! its bytes are exactly those of the whole reply. Chunks are encoded on a thread of their
//! own, one ahead of the connection ([`body`]).

use crate::jsonrpc::{self, Version};
use crate::xmlrpc;
use actix_web::web::Bytes;
use agent::value::{encoded_len_hint, write_json, write_json_entry, Encoding, Value};
use agent::xml::{write_map_member, write_value, ARRAY_CLOSE, ARRAY_OPEN, STRUCT_CLOSE, STRUCT_OPEN};
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::Value as Json;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

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

impl Chunks {
    /// Whether every chunk has been encoded.
    fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Encodes the next chunk into `out` (cleared first); `false` once the reply is complete.
    fn fill(&mut self, out: &mut String) -> bool {
        out.clear();
        if self.state == State::Done {
            return false;
        }
        if self.state == State::Head {
            self.open(out);
            self.state = State::Items;
        }
        let len = self.len();
        while self.next < len && out.len() < CHUNK {
            self.item(self.next, out);
            self.next += 1;
        }
        if self.next >= len {
            self.close(out);
            self.state = State::Done;
        }
        true
    }
}

/// A buffer for one chunk (its last item may run past [`CHUNK`]).
fn chunk_buffer() -> String {
    String::with_capacity(CHUNK + CHUNK / 4)
}

impl Iterator for Chunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let mut out = chunk_buffer();
        self.fill(&mut out).then(|| Bytes::from(out))
    }
}

/// Buffers an encoder thread cycles through: one being encoded, one queued, one being sent.
const BUFFERS: usize = 3;

/// Encoder threads running at once, at most (one per core); past that, replies are encoded
/// on the connection's own thread as it drains.
fn encoder_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

static ENCODERS: AtomicUsize = AtomicUsize::new(0);

/// One of the [`ENCODERS`], given back when the encoder ends (or never runs).
struct EncoderSlot;

impl Drop for EncoderSlot {
    fn drop(&mut self) {
        ENCODERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A chunk's buffer; dropped once the connection has copied it out, it goes back to its
/// encoder for the next chunk.
struct Pooled {
    buf: String,
    back: std::sync::mpsc::Sender<String>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_bytes()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // The encoder may be gone (the reply is complete or the client left): the buffer
        // is then simply freed.
        let _ = self.back.send(std::mem::take(&mut self.buf));
    }
}

/// The body of a streamed reply.
///
/// The chunks are encoded on a blocking thread one chunk ahead of the connection, so that
/// encoding one chunk overlaps sending the one before (on another core) instead of
/// alternating with it. The encoder writes into [`BUFFERS`] buffers allocated here, on the
/// connection's thread, and reused for every chunk: the encoder allocates no chunk memory
/// of its own. When every encoder thread is busy the reply is encoded on the connection's
/// thread as it drains, chunk by chunk, as it would be without one.
pub fn body(chunks: Chunks) -> BoxStream<'static, Result<Bytes, Infallible>> {
    let taken = ENCODERS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < encoder_limit()).then_some(n + 1)
    });
    if taken.is_err() {
        return futures_util::stream::iter(chunks.map(Ok)).boxed();
    }
    let (full_tx, mut full_rx) = tokio::sync::mpsc::channel::<Bytes>(BUFFERS);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<String>();
    for _ in 0..BUFFERS {
        let _ = empty_tx.send(chunk_buffer());
    }
    let mut chunks = chunks;
    let slot = EncoderSlot;
    actix_web::rt::task::spawn_blocking(move || {
        let _slot = slot;
        // The stream ends as soon as the last chunk is queued, not when a buffer comes back.
        while !chunks.done() {
            let Ok(mut buf) = empty_rx.recv() else { break };
            chunks.fill(&mut buf);
            let chunk = Bytes::from_owner(Pooled {
                buf,
                back: empty_tx.clone(),
            });
            if full_tx.blocking_send(chunk).is_err() {
                break;
            }
        }
    });
    futures_util::stream::poll_fn(move |cx| full_rx.poll_recv(cx).map(|c| c.map(Ok))).boxed()
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

    /// What a connection reads from [`body`], dropping each chunk once copied, as actix does.
    async fn drained(wire: Wire, v: Value) -> (String, usize) {
        let Reply::Streamed(chunks) = success_streaming_from(wire, v, 1) else {
            panic!("expected a streamed reply");
        };
        let mut stream = body(chunks);
        let (mut all, mut n) = (Vec::new(), 0);
        while let Some(Ok(chunk)) = stream.next().await {
            all.extend_from_slice(&chunk);
            n += 1;
        }
        (String::from_utf8(all).unwrap(), n)
    }

    /// Waits (a few seconds at most) for the encoder threads in use to come back to `n`.
    async fn encoders_back_to(n: usize) {
        for _ in 0..500 {
            if ENCODERS.load(Ordering::Acquire) == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "encoder threads in use: {}, expected {n}",
            ENCODERS.load(Ordering::Acquire)
        );
    }

    /// The body encoded ahead on its own thread is the whole reply, in three reused buffers;
    /// a client that leaves mid-reply stops its encoder; with every encoder busy the reply is
    /// encoded as it drains, the same bytes.
    #[actix_web::test]
    async fn encoding_ahead_sends_the_whole_reply_and_stops_when_the_client_leaves() {
        let id = serde_json::json!(4);
        for v in [big_map(3000), big_set(5000), big_map(0)] {
            let (xml, n) = drained(Wire::Xml, v.clone()).await;
            assert_eq!(xml, xmlrpc::success(&v));
            assert_eq!(n, streamed(Wire::Xml, v.clone()).1);
            let (json, _) = drained(Wire::Json(Version::V2, id.clone()), v.clone()).await;
            assert_eq!(json, jsonrpc::success(Version::V2, &id, &v));
        }
        encoders_back_to(0).await;

        // Chunks come from no more than BUFFERS distinct buffers.
        let Reply::Streamed(chunks) = success_streaming_from(Wire::Xml, big_map(20_000), 1) else {
            panic!("expected a streamed reply");
        };
        let mut stream = body(chunks);
        let mut buffers = std::collections::HashSet::new();
        let mut n = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            buffers.insert(chunk.as_ptr() as usize);
            n += 1;
        }
        assert!(n > 2 * BUFFERS, "{n} chunks");
        assert!(buffers.len() <= BUFFERS, "{} buffers for {n} chunks", buffers.len());
        encoders_back_to(0).await;

        // A client that reads one chunk and goes away.
        let Reply::Streamed(chunks) = success_streaming_from(Wire::Xml, big_map(20_000), 1) else {
            panic!("expected a streamed reply");
        };
        let mut stream = body(chunks);
        assert!(stream.next().await.is_some());
        assert_eq!(ENCODERS.load(Ordering::Acquire), 1);
        drop(stream);
        encoders_back_to(0).await;

        // Every encoder busy: encoded on the connection's side, same bytes.
        ENCODERS.fetch_add(encoder_limit(), Ordering::AcqRel);
        let v = big_map(3000);
        let (xml, _) = drained(Wire::Xml, v.clone()).await;
        assert_eq!(xml, xmlrpc::success(&v));
        assert_eq!(ENCODERS.load(Ordering::Acquire), encoder_limit());
        ENCODERS.fetch_sub(encoder_limit(), Ordering::AcqRel);
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
