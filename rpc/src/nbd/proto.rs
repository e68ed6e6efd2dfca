//! The NBD wire format (fixed newstyle negotiation, simple and structured replies): constants,
//! and the parsers for what a client sends. Pure functions over bytes, so they can be fuzzed
//! (`fuzz/fuzz_targets/nbd_proto.rs`).

/// `NBDMAGIC`, first of the server's greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle greeting, and the prefix of every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags the server sends.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// The server can leave out the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flags: it speaks fixed newstyle.
pub const C_FIXED_NEWSTYLE: u32 = 1;
/// Client flags: it wants no zeroes.
pub const C_NO_ZEROES: u32 = 2;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`.
pub const REP_META_CONTEXT: u32 = 4;
/// `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
/// `NBD_REP_ERR_POLICY`.
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
/// `NBD_REP_ERR_INVALID`.
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
/// `NBD_REP_ERR_TLS_REQD`.
pub const REP_ERR_TLS_REQD: u32 = 0x8000_0005;
/// `NBD_REP_ERR_UNKNOWN`.
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
/// `NBD_REP_ERR_TOO_BIG`.
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

/// Info types (`NBD_OPT_INFO`/`GO`).
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1;
/// The export is read-only.
pub const TF_READ_ONLY: u16 = 2;
/// Several connections see the same data (safe: the export is read-only).
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;

/// Commands.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// Command flag: one extent is enough.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Structured reply chunk types and flags.
pub const REPLY_FLAG_DONE: u16 = 1;
/// `NBD_REPLY_TYPE_NONE`.
pub const REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// `NBD_REPLY_TYPE_ERROR`.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// `base:allocation` extent flags.
pub const STATE_HOLE: u32 = 1;
/// The extent reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// Error numbers on the wire.
pub const EPERM: u32 = 1;
/// `NBD_EIO`.
pub const EIO: u32 = 5;
/// `NBD_EINVAL`.
pub const EINVAL: u32 = 22;

/// The one metadata context served, and its id.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id `base:allocation` is given.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// The largest option payload read (names are at most 4 KiB; a few queries besides).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// The largest read (or discarded write payload) one command may ask for.
pub const MAX_REQUEST_LEN: u32 = 32 * 1024 * 1024;
/// The largest string the protocol allows in names and queries.
const MAX_STRING: usize = 4096;

/// Why a client's bytes cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The payload is shorter than what it says it holds, or longer.
    #[error("malformed {0} payload")]
    Malformed(&'static str),
    /// A name or query is not UTF-8, or too long.
    #[error("bad string in {0}")]
    BadString(&'static str),
    /// A request header without the request magic.
    #[error("bad request magic {0:#x}")]
    BadMagic(u32),
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export asked for.
    pub name: String,
    /// The info types asked for.
    pub requests: Vec<u16>,
}

/// The payload of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// The export.
    pub name: String,
    /// The queries.
    pub queries: Vec<String>,
}

/// A transmission request's header (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// The command.
    pub kind: u16,
    /// The client's handle, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.data.len() < n {
            return Err(ProtoError::Malformed(self.what));
        }
        let (a, b) = self.data.split_at(n);
        self.data = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, ProtoError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, ProtoError> {
        let n = self.u32()? as usize;
        if n > MAX_STRING {
            return Err(ProtoError::BadString(self.what));
        }
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtoError::BadString(self.what))
    }
    fn end(&self) -> Result<(), ProtoError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Malformed(self.what))
        }
    }
}

/// Parses the payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub fn parse_info(data: &[u8]) -> Result<InfoRequest, ProtoError> {
    let mut r = Reader {
        data,
        what: "NBD_OPT_GO",
    };
    let name = r.string()?;
    let n = r.u16()?;
    let mut requests = Vec::with_capacity(usize::from(n).min(16));
    for _ in 0..n {
        requests.push(r.u16()?);
    }
    r.end()?;
    Ok(InfoRequest { name, requests })
}

/// Parses the payload of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
pub fn parse_meta(data: &[u8]) -> Result<MetaRequest, ProtoError> {
    let mut r = Reader {
        data,
        what: "NBD_OPT_*_META_CONTEXT",
    };
    let name = r.string()?;
    let n = r.u32()?;
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(r.string()?);
    }
    r.end()?;
    Ok(MetaRequest { name, queries })
}

/// Parses the payload of `NBD_OPT_EXPORT_NAME` (the whole payload is the name).
pub fn parse_export_name_option(data: &[u8]) -> Result<String, ProtoError> {
    if data.len() > MAX_STRING {
        return Err(ProtoError::BadString("NBD_OPT_EXPORT_NAME"));
    }
    String::from_utf8(data.to_vec()).map_err(|_| ProtoError::BadString("NBD_OPT_EXPORT_NAME"))
}

/// Which of the queries name `base:allocation`: an empty list (for LIST) or `base:` or the
/// full name. Returns whether `base:allocation` is selected.
pub fn selects_base_allocation(queries: &[String], listing: bool) -> bool {
    if listing && queries.is_empty() {
        return true;
    }
    queries
        .iter()
        .any(|q| q == BASE_ALLOCATION || (listing && q == "base:"))
}

/// Parses a transmission request header.
pub fn parse_request(b: &[u8; 28]) -> Result<Request, ProtoError> {
    let mut r = Reader {
        data: b,
        what: "request",
    };
    let magic = r.u32()?;
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic(magic));
    }
    let flags = r.u16()?;
    let kind = r.u16()?;
    let cookie = u64::from(r.u32()?) << 32 | u64::from(r.u32()?);
    let offset = u64::from(r.u32()?) << 32 | u64::from(r.u32()?);
    let length = r.u32()?;
    Ok(Request {
        flags,
        kind,
        cookie,
        offset,
        length,
    })
}

/// An export name as the reference names exports: `/<vdi uuid>?session_id=<session ref>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportName {
    /// The VDI's uuid.
    pub vdi_uuid: String,
    /// The session that authorises the connection.
    pub session: String,
}

/// Parses an export name (the uuid may also come without its leading `/`; the query may hold
/// other parameters; `%xx` escapes in the session are decoded).
pub fn parse_export_name(name: &str) -> Option<ExportName> {
    let (path, query) = name.split_once('?')?;
    let vdi_uuid = path.strip_prefix('/').unwrap_or(path);
    if vdi_uuid.is_empty() || vdi_uuid.contains('/') {
        return None;
    }
    let session = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("session_id="))
        .map(percent_decode)?
        .filter(|s| !s.is_empty())?;
    Some(ExportName {
        vdi_uuid: vdi_uuid.to_owned(),
        session,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An option reply: magic, option, type, length, data.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    v[4..8].copy_from_slice(&error.to_be_bytes());
    v[8..16].copy_from_slice(&cookie.to_be_bytes());
    v
}

/// A structured reply chunk header for a payload of `length` bytes.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    v[4..6].copy_from_slice(&flags.to_be_bytes());
    v[6..8].copy_from_slice(&kind.to_be_bytes());
    v[8..16].copy_from_slice(&cookie.to_be_bytes());
    v[16..20].copy_from_slice(&length.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_payload_round_trip() {
        let mut p = Vec::new();
        p.extend_from_slice(&3u32.to_be_bytes());
        p.extend_from_slice(b"abc");
        p.extend_from_slice(&2u16.to_be_bytes());
        p.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        p.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        assert_eq!(
            parse_info(&p),
            Ok(InfoRequest {
                name: "abc".into(),
                requests: vec![3, 0]
            })
        );
        assert!(parse_info(&p[..p.len() - 1]).is_err());
        let mut longer = p.clone();
        longer.push(0);
        assert!(parse_info(&longer).is_err());
        // A name length past the payload.
        assert!(parse_info(&[0, 0, 1, 0, b'a']).is_err());
    }

    #[test]
    fn meta_queries() {
        let mut p = Vec::new();
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&2u32.to_be_bytes());
        for q in ["qemu:dirty-bitmap:x", "base:allocation"] {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q.as_bytes());
        }
        let m = parse_meta(&p).unwrap();
        assert_eq!(m.queries.len(), 2);
        assert!(selects_base_allocation(&m.queries, false));
        assert!(!selects_base_allocation(&["base:".into()], false));
        assert!(selects_base_allocation(&["base:".into()], true));
        assert!(selects_base_allocation(&[], true));
        assert!(!selects_base_allocation(&[], false));
        // A huge query count with nothing behind it fails without allocating for it.
        let mut q = 0u32.to_be_bytes().to_vec();
        q.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta(&q).is_err());
    }

    #[test]
    fn export_names_as_the_reference_makes_them() {
        let n = parse_export_name("/0b3e6a0c-1c51-4c1e-9d8d-2bd2d8c0c3f1?session_id=OpaqueRef:abc-1").unwrap();
        assert_eq!(n.vdi_uuid, "0b3e6a0c-1c51-4c1e-9d8d-2bd2d8c0c3f1");
        assert_eq!(n.session, "OpaqueRef:abc-1");
        assert_eq!(
            parse_export_name("/u?x=1&session_id=OpaqueRef%3Aa").map(|n| n.session),
            Some("OpaqueRef:a".into())
        );
        assert_eq!(parse_export_name("/u"), None);
        assert_eq!(parse_export_name("/u?session_id="), None);
        assert_eq!(parse_export_name("/a/b?session_id=s"), None);
        assert_eq!(parse_export_name("/u?session_id=%zz"), None);
    }

    #[test]
    fn request_header() {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&CMD_FLAG_REQ_ONE.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_BLOCK_STATUS.to_be_bytes());
        b[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        b[16..24].copy_from_slice(&(5u64 << 32 | 7).to_be_bytes());
        b[24..28].copy_from_slice(&4096u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!(
            r,
            Request {
                flags: CMD_FLAG_REQ_ONE,
                kind: CMD_BLOCK_STATUS,
                cookie: 0x0102_0304_0506_0708,
                offset: 5u64 << 32 | 7,
                length: 4096
            }
        );
        b[0] = 0;
        assert!(matches!(parse_request(&b), Err(ProtoError::BadMagic(_))));
    }
}
