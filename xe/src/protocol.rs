//! The XenSource thin CLI protocol: the bytes `xe` and a host's `/cli` exchange after the
//! client's `POST /cli` request.
//!
//! Wire facts (protocol 0.2):
//!
//! - Handshake: the server writes the 27-byte prefix `XenSource thin CLI protocol`, then its
//!   major and minor version as two 32-bit little-endian integers; the client answers with
//!   the same 35 bytes for its own version. Only the major versions must agree.
//! - Every message after that is a frame: a 32-bit little-endian payload length, then the
//!   payload. A payload is a tag (an int) followed by the tag's fields; ints are 32-bit
//!   little-endian, strings an int length then the bytes, lists an int count then the items.
//! - Tags: message `Command` 9, `Response` 10, `Blob` 11; command `Print` 0, `Load` 1,
//!   `Prompt` 3, `Exit` 4, `HttpGet` 12, `HttpPut` 13, `Error` 14, `Debug` 15, `PrintStderr` 16,
//!   `HttpConnect` 17; response `OK` 5, `Failed` 6, `Wait` 18; blob `Chunk` 7 (with a 32-bit
//!   length), `End` 8.
//! - Blob data is not framed: a `Blob Chunk n` frame is followed by exactly `n` raw bytes, and
//!   a `Blob End` frame closes the stream of chunks.
//!
//! Nothing here does I/O: [`encode`] makes a frame, [`decode_frame`] takes one from the front
//! of a buffer (or says more bytes are needed), [`handshake`] and [`parse_handshake`] are the
//! version exchange.

use std::fmt;

/// The prefix both ends send first: tells a thin CLI server from any other HTTP server.
pub const PREFIX: &[u8; 27] = b"XenSource thin CLI protocol";
/// Protocol major version: a client and server must agree on it.
pub const MAJOR: i32 = 0;
/// Protocol minor version. From 0.2 on the client sends `Response Wait` heartbeats during
/// long transfers.
pub const MINOR: i32 = 2;
/// Length of the version exchange each side sends: the prefix and two ints.
pub const HANDSHAKE_LEN: usize = PREFIX.len() + 8;
/// The largest frame payload [`decode_frame`] accepts. Frames carry commands and replies
/// (blob data travels outside frames), so a larger length is garbage or an attack.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// What the server asks the client to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Print a line on standard output (the client adds the newline).
    Print(String),
    /// A debug message the client shows only with `--debug`.
    Debug(String),
    /// Send the named local file (answer `OK` and the file as blob chunks, or `Failed`).
    Load(String),
    /// Download the server path (second) into the local file (first; empty: standard
    /// output), then answer `OK` or `Failed`.
    HttpGet(String, String),
    /// Upload the local file (first) to the server path (second), then answer `OK` or
    /// `Failed`.
    HttpPut(String, String),
    /// Connect the terminal to the server path (a console) until the user leaves.
    HttpConnect(String),
    /// Read a line from the user and send it as blob chunks.
    Prompt,
    /// Exit with this status.
    Exit(i32),
    /// A XenAPI error: its code and parameters.
    Error(String, Vec<String>),
    /// Print on standard error (no newline added).
    PrintStderr(String),
}

/// The client's answer to a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// Done.
    Ok,
    /// Still working (a heartbeat during a long transfer).
    Wait,
    /// It failed.
    Failed,
}

/// Framing of a stream of raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blob {
    /// This many raw bytes follow the frame.
    Chunk(i32),
    /// The stream has ended.
    End,
}

/// One framed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Server to client.
    Command(Command),
    /// Client to server.
    Response(Response),
    /// A blob header, either way.
    Blob(Blob),
}

/// Why bytes are not a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload ends before a field does.
    Truncated,
    /// A tag no variant has (which of message, command, response or blob header, and the tag).
    UnknownTag(&'static str, i32),
    /// A string or list length below zero.
    NegativeLength(i32),
    /// A frame longer than [`MAX_FRAME`].
    TooLong(i32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "the message is truncated"),
            DecodeError::UnknownTag(what, t) => write!(f, "unknown {what} tag {t}"),
            DecodeError::NegativeLength(n) => write!(f, "negative length {n}"),
            DecodeError::TooLong(n) => write!(f, "a frame of {n} bytes is longer than allowed"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why the version exchange failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Fewer bytes than a handshake has.
    Truncated,
    /// The peer does not speak the thin CLI protocol (an ordinary HTTP server, say).
    NotCliServer,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Truncated => write!(f, "the version exchange is truncated"),
            HandshakeError::NotCliServer => write!(f, "the peer does not speak the thin CLI protocol"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// The version exchange for [`MAJOR`].[`MINOR`].
pub fn handshake() -> Vec<u8> {
    handshake_for(MAJOR, MINOR)
}

/// The version exchange for another version (tests, and peers that must claim one).
pub fn handshake_for(major: i32, minor: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HANDSHAKE_LEN);
    out.extend_from_slice(PREFIX);
    put_int(&mut out, major);
    put_int(&mut out, minor);
    out
}

/// Reads a peer's version exchange from the first [`HANDSHAKE_LEN`] bytes of `b`.
/// The prefix is checked first, as soon as there are enough bytes for it.
pub fn parse_handshake(b: &[u8]) -> Result<(i32, i32), HandshakeError> {
    let Some(prefix) = b.get(..PREFIX.len()) else {
        // A peer that already differs within the bytes it sent is no thin CLI server.
        return if PREFIX.starts_with(b) {
            Err(HandshakeError::Truncated)
        } else {
            Err(HandshakeError::NotCliServer)
        };
    };
    if prefix != PREFIX {
        return Err(HandshakeError::NotCliServer);
    }
    let mut r = Reader { b, pos: PREFIX.len() };
    let major = r.int().map_err(|_| HandshakeError::Truncated)?;
    let minor = r.int().map_err(|_| HandshakeError::Truncated)?;
    Ok((major, minor))
}

fn put_int(out: &mut Vec<u8>, x: i32) {
    out.extend_from_slice(&x.to_le_bytes());
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    // The protocol's lengths are 32-bit: a longer string cannot be sent whole, and the
    // reference truncates as this does.
    put_int(out, n as i32);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// The payload of a message (no length prefix).
pub fn encode_payload(m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    match m {
        Message::Command(c) => {
            put_int(&mut out, 9);
            match c {
                Command::Print(x) => {
                    put_int(&mut out, 0);
                    put_str(&mut out, x);
                }
                Command::Debug(x) => {
                    put_int(&mut out, 15);
                    put_str(&mut out, x);
                }
                Command::Load(x) => {
                    put_int(&mut out, 1);
                    put_str(&mut out, x);
                }
                Command::HttpGet(a, b) => {
                    put_int(&mut out, 12);
                    put_str(&mut out, a);
                    put_str(&mut out, b);
                }
                Command::HttpPut(a, b) => {
                    put_int(&mut out, 13);
                    put_str(&mut out, a);
                    put_str(&mut out, b);
                }
                Command::HttpConnect(a) => {
                    put_int(&mut out, 17);
                    put_str(&mut out, a);
                }
                Command::Prompt => put_int(&mut out, 3),
                Command::Exit(x) => {
                    put_int(&mut out, 4);
                    put_int(&mut out, *x);
                }
                Command::Error(code, params) => {
                    put_int(&mut out, 14);
                    put_str(&mut out, code);
                    put_len(&mut out, params.len());
                    for p in params {
                        put_str(&mut out, p);
                    }
                }
                Command::PrintStderr(x) => {
                    put_int(&mut out, 16);
                    put_str(&mut out, x);
                }
            }
        }
        Message::Response(r) => {
            put_int(&mut out, 10);
            put_int(
                &mut out,
                match r {
                    Response::Ok => 5,
                    Response::Wait => 18,
                    Response::Failed => 6,
                },
            );
        }
        Message::Blob(b) => {
            put_int(&mut out, 11);
            match b {
                Blob::Chunk(n) => {
                    put_int(&mut out, 7);
                    put_int(&mut out, *n);
                }
                Blob::End => put_int(&mut out, 8),
            }
        }
    }
    out
}

/// A whole frame: the payload's length, then the payload.
pub fn encode(m: &Message) -> Vec<u8> {
    let payload = encode_payload(m);
    let mut out = Vec::with_capacity(payload.len() + 4);
    put_len(&mut out, payload.len());
    out.extend_from_slice(&payload);
    out
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn int(&mut self) -> Result<i32, DecodeError> {
        let bytes = self.b.get(self.pos..self.pos + 4).ok_or(DecodeError::Truncated)?;
        self.pos += 4;
        let mut a = [0u8; 4];
        a.copy_from_slice(bytes);
        Ok(i32::from_le_bytes(a))
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.int()?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength(n))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.len()?;
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let bytes = self.b.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        // The protocol carries bytes; text that is not UTF-8 is shown with replacements.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// The message in a payload. Bytes after the message are ignored, as the reference does.
pub fn decode_payload(p: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { b: p, pos: 0 };
    let m = match r.int()? {
        9 => Message::Command(match r.int()? {
            0 => Command::Print(r.string()?),
            15 => Command::Debug(r.string()?),
            1 => Command::Load(r.string()?),
            12 => {
                let a = r.string()?;
                Command::HttpGet(a, r.string()?)
            }
            13 => {
                let a = r.string()?;
                Command::HttpPut(a, r.string()?)
            }
            3 => Command::Prompt,
            4 => Command::Exit(r.int()?),
            17 => Command::HttpConnect(r.string()?),
            14 => {
                let code = r.string()?;
                let n = r.len()?;
                // Each item takes at least its 4-byte length: a count larger than the bytes
                // left is truncated input, found before anything is allocated for it.
                if n > (p.len() - r.pos) / 4 {
                    return Err(DecodeError::Truncated);
                }
                let mut params = Vec::with_capacity(n);
                for _ in 0..n {
                    params.push(r.string()?);
                }
                Command::Error(code, params)
            }
            16 => Command::PrintStderr(r.string()?),
            t => return Err(DecodeError::UnknownTag("command", t)),
        }),
        10 => Message::Response(match r.int()? {
            5 => Response::Ok,
            18 => Response::Wait,
            6 => Response::Failed,
            t => return Err(DecodeError::UnknownTag("response", t)),
        }),
        11 => Message::Blob(match r.int()? {
            7 => Blob::Chunk(r.int()?),
            8 => Blob::End,
            t => return Err(DecodeError::UnknownTag("blob_header", t)),
        }),
        t => return Err(DecodeError::UnknownTag("message", t)),
    };
    Ok(m)
}

/// Takes one frame from the front of `buf`: the message and how many bytes it used, or
/// `None` when `buf` holds only part of a frame.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = frame_len(head)?;
    let Some(payload) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, 4 + len)))
}

/// The payload length a frame's 4-byte header announces, checked against [`MAX_FRAME`].
pub fn frame_len(head: &[u8]) -> Result<usize, DecodeError> {
    let mut r = Reader { b: head, pos: 0 };
    let n = r.int()?;
    let len = usize::try_from(n).map_err(|_| DecodeError::NegativeLength(n))?;
    if len > MAX_FRAME {
        return Err(DecodeError::TooLong(n));
    }
    Ok(len)
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Print(x) => write!(f, "Print {x}"),
            Command::Debug(x) => write!(f, "Debug {x}"),
            Command::Load(x) => write!(f, "Load {x}"),
            Command::HttpGet(file, path) => write!(f, "HttpGet {path} -> {file}"),
            Command::HttpPut(file, path) => write!(f, "HttpPut {path} -> {file}"),
            Command::HttpConnect(path) => write!(f, "HttpConnect {path}"),
            Command::Prompt => write!(f, "Prompt"),
            Command::Exit(x) => write!(f, "Exit {x}"),
            Command::Error(code, params) => write!(f, "Error {code} [ {}]", params.join("; ")),
            Command::PrintStderr(x) => write!(f, "PrintStderr {x}"),
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Command(c) => write!(f, "Command {c}"),
            Message::Response(Response::Ok) => write!(f, "Response OK"),
            Message::Response(Response::Wait) => write!(f, "Response Wait"),
            Message::Response(Response::Failed) => write!(f, "Response Failed"),
            Message::Blob(Blob::Chunk(n)) => write!(f, "Blob Chunk {n}"),
            Message::Blob(Blob::End) => write!(f, "Blob End"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Little-endian 32-bit ints, written out byte by byte as the published definition's
    /// `marshal_int32` does (lowest byte first).
    fn le(x: i32) -> Vec<u8> {
        let u = x as u32;
        vec![
            (u & 0xff) as u8,
            ((u >> 8) & 0xff) as u8,
            ((u >> 16) & 0xff) as u8,
            ((u >> 24) & 0xff) as u8,
        ]
    }

    fn s(x: &str) -> Vec<u8> {
        let mut v = le(x.len() as i32);
        v.extend_from_slice(x.as_bytes());
        v
    }

    fn frame(parts: &[Vec<u8>]) -> Vec<u8> {
        let payload: Vec<u8> = parts.concat();
        let mut v = le(payload.len() as i32);
        v.extend(payload);
        v
    }

    fn cmd(c: Command) -> Message {
        Message::Command(c)
    }

    #[test]
    fn handshake_bytes_are_the_prefix_and_version_0_2() {
        let h = handshake();
        assert_eq!(h.len(), 35);
        assert_eq!(&h[..27], b"XenSource thin CLI protocol");
        assert_eq!(&h[27..], &[0, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(parse_handshake(&h), Ok((0, 2)));
        assert_eq!(parse_handshake(&handshake_for(1, 7)), Ok((1, 7)));
    }

    #[test]
    fn handshake_from_an_http_server_is_refused_at_once() {
        assert_eq!(
            parse_handshake(b"HTTP/1.1 404 Not Found\r\n"),
            Err(HandshakeError::NotCliServer)
        );
        assert_eq!(parse_handshake(b"HTTP"), Err(HandshakeError::NotCliServer));
        assert_eq!(parse_handshake(b"XenSource"), Err(HandshakeError::Truncated));
        assert_eq!(parse_handshake(&handshake()[..30]), Err(HandshakeError::Truncated));
        assert_eq!(parse_handshake(b""), Err(HandshakeError::Truncated));
    }

    /// Every command, response and blob header against the byte layout the definition's
    /// marshal functions produce: frame length, message tag, variant tag, fields.
    #[test]
    fn every_message_encodes_to_the_published_bytes() {
        let cases: Vec<(Message, Vec<u8>)> = vec![
            (cmd(Command::Print("hi".into())), frame(&[le(9), le(0), s("hi")])),
            (cmd(Command::Debug("d".into())), frame(&[le(9), le(15), s("d")])),
            (cmd(Command::Load("/f".into())), frame(&[le(9), le(1), s("/f")])),
            (
                cmd(Command::HttpGet("out".into(), "/p?q".into())),
                frame(&[le(9), le(12), s("out"), s("/p?q")]),
            ),
            (
                cmd(Command::HttpPut("in".into(), "/u".into())),
                frame(&[le(9), le(13), s("in"), s("/u")]),
            ),
            (cmd(Command::HttpConnect("/c".into())), frame(&[le(9), le(17), s("/c")])),
            (cmd(Command::Prompt), frame(&[le(9), le(3)])),
            (cmd(Command::Exit(0)), frame(&[le(9), le(4), le(0)])),
            (cmd(Command::Exit(1)), frame(&[le(9), le(4), le(1)])),
            (cmd(Command::Exit(-1)), frame(&[le(9), le(4), le(-1)])),
            (
                cmd(Command::Error("CODE".into(), vec!["a".into(), "".into()])),
                frame(&[le(9), le(14), s("CODE"), le(2), s("a"), s("")]),
            ),
            (
                cmd(Command::Error("E".into(), vec![])),
                frame(&[le(9), le(14), s("E"), le(0)]),
            ),
            (
                cmd(Command::PrintStderr("e\n".into())),
                frame(&[le(9), le(16), s("e\n")]),
            ),
            (Message::Response(Response::Ok), frame(&[le(10), le(5)])),
            (Message::Response(Response::Wait), frame(&[le(10), le(18)])),
            (Message::Response(Response::Failed), frame(&[le(10), le(6)])),
            (Message::Blob(Blob::Chunk(65536)), frame(&[le(11), le(7), le(65536)])),
            (Message::Blob(Blob::End), frame(&[le(11), le(8)])),
        ];
        for (m, bytes) in cases {
            assert_eq!(encode(&m), bytes, "{m}");
            assert_eq!(decode_frame(&bytes), Ok(Some((m.clone(), bytes.len()))), "{m}");
        }
    }

    #[test]
    fn a_frame_written_out_in_full() {
        // Exit 0: payload 12 bytes = tag 9, tag 4, 0.
        assert_eq!(
            encode(&cmd(Command::Exit(0))),
            [12, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]
        );
        // Print "ok": payload 14 bytes.
        assert_eq!(
            encode(&cmd(Command::Print("ok".into()))),
            [14, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'o', b'k']
        );
        // Blob Chunk 258: the length's bytes lowest first.
        assert_eq!(
            encode(&Message::Blob(Blob::Chunk(258))),
            [12, 0, 0, 0, 11, 0, 0, 0, 7, 0, 0, 0, 2, 1, 0, 0]
        );
    }

    #[test]
    fn partial_frames_ask_for_more_and_frames_follow_each_other() {
        let mut two = encode(&cmd(Command::Print("a".into())));
        let first = two.len();
        two.extend(encode(&Message::Response(Response::Ok)));
        for cut in 0..first {
            assert_eq!(decode_frame(&two[..cut]), Ok(None), "cut at {cut}");
        }
        let (m, used) = decode_frame(&two).unwrap().unwrap();
        assert_eq!(m, cmd(Command::Print("a".into())));
        assert_eq!(used, first);
        assert_eq!(
            decode_frame(&two[used..]),
            Ok(Some((Message::Response(Response::Ok), two.len() - used)))
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(decode_payload(&le(12)), Err(DecodeError::UnknownTag("message", 12)));
        assert_eq!(
            decode_payload(&[le(9), le(2)].concat()),
            Err(DecodeError::UnknownTag("command", 2))
        );
        assert_eq!(
            decode_payload(&[le(10), le(7)].concat()),
            Err(DecodeError::UnknownTag("response", 7))
        );
        assert_eq!(
            decode_payload(&[le(11), le(5)].concat()),
            Err(DecodeError::UnknownTag("blob_header", 5))
        );
        assert_eq!(
            decode_payload(&[le(9), le(0), le(5), b"ab".to_vec()].concat()),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode_payload(&[le(9), le(0), le(-1)].concat()),
            Err(DecodeError::NegativeLength(-1))
        );
        assert_eq!(
            decode_payload(&[le(9), le(14), s("E"), le(1_000_000)].concat()),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode_payload(&[le(9), le(14), s("E"), le(-3)].concat()),
            Err(DecodeError::NegativeLength(-3))
        );
        assert_eq!(decode_frame(&le(-1)), Err(DecodeError::NegativeLength(-1)));
        assert_eq!(decode_frame(&le(i32::MAX)), Err(DecodeError::TooLong(i32::MAX)));
        assert_eq!(decode_payload(&[]), Err(DecodeError::Truncated));
    }

    #[test]
    fn trailing_payload_bytes_are_ignored_as_the_reference_does() {
        let p = [le(10), le(5), b"junk".to_vec()].concat();
        assert_eq!(decode_payload(&p), Ok(Message::Response(Response::Ok)));
    }

    #[test]
    fn debug_text_matches_the_definition() {
        assert_eq!(
            cmd(Command::HttpGet("f".into(), "/p".into())).to_string(),
            "Command HttpGet /p -> f"
        );
        assert_eq!(
            cmd(Command::Error("C".into(), vec!["a".into(), "b".into()])).to_string(),
            "Command Error C [ a; b]"
        );
        assert_eq!(Message::Blob(Blob::Chunk(3)).to_string(), "Blob Chunk 3");
        assert_eq!(Message::Response(Response::Wait).to_string(), "Response Wait");
    }
}
