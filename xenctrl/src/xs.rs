//! [`XsHandle`]: an owned libxenstore connection.

use std::ffi::{c_char, c_uint, CStr, CString};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use xen_sys as sys;

use crate::error::{Result, XenctrlError};
use crate::libs::StoreLibrary;

/// How many times [`XsHandle::with_transaction`] retries a transaction
/// that conflicted with another writer before giving up with `EAGAIN`.
const TRANSACTION_RETRIES: usize = 64;

/// A xenstore transaction id. [`Transaction::NONE`] means "outside any
/// transaction" (`XBT_NULL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transaction(u32);

impl Transaction {
    /// No transaction: each operation is applied on its own.
    pub const NONE: Transaction = Transaction(sys::XBT_NULL);

    /// The raw `xs_transaction_t`.
    pub fn id(self) -> u32 {
        self.0
    }
}

/// One entry of a node's permission list. The first entry names the
/// owner and sets the access of every domain not listed after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XsPermission {
    /// The domain this entry is about.
    pub domid: u32,
    /// It may read the node.
    pub read: bool,
    /// It may write the node.
    pub write: bool,
}

impl XsPermission {
    fn from_raw(raw: &sys::xs_permissions) -> Self {
        XsPermission {
            domid: raw.id,
            read: raw.perms & sys::XS_PERM_READ != 0,
            write: raw.perms & sys::XS_PERM_WRITE != 0,
        }
    }

    fn to_raw(self) -> sys::xs_permissions {
        let mut perms = sys::XS_PERM_NONE;
        if self.read {
            perms |= sys::XS_PERM_READ;
        }
        if self.write {
            perms |= sys::XS_PERM_WRITE;
        }
        sys::xs_permissions { id: self.domid, perms }
    }
}

/// A fired watch: the path that changed and the token given to
/// [`XsHandle::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed (at or below the watched path).
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// Memory libxenstore allocated with malloc(3) for us to free.
struct Malloced<T>(NonNull<T>);

impl<T> Malloced<T> {
    /// Takes ownership of `p`, or returns `None` if it is NULL.
    ///
    /// # Safety
    ///
    /// `p` is NULL or a malloc(3) allocation nobody else frees.
    unsafe fn new(p: *mut T) -> Option<Self> {
        NonNull::new(p).map(Malloced)
    }

    fn as_ptr(&self) -> *mut T {
        self.0.as_ptr()
    }
}

impl<T> Drop for Malloced<T> {
    fn drop(&mut self) {
        // SAFETY: owned malloc(3) memory (see `new`), freed once.
        unsafe { libc::free(self.0.as_ptr().cast()) }
    }
}

fn c_string(call: &'static str, what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| XenctrlError::InvalidArgument {
        call,
        reason: format!("{what} {s:?} contains a NUL byte"),
    })
}

/// Copies a C string libxenstore returned into a `String`.
///
/// # Safety
///
/// `p` points to a NUL-terminated string valid for the call.
unsafe fn owned_str(call: &'static str, p: *const c_char) -> Result<String> {
    // SAFETY: per this function's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(str::to_owned).map_err(|_| XenctrlError::InvalidData {
        call,
        reason: format!("{s:?} is not UTF-8"),
    })
}

/// Copies the `num` strings of a `char **` array libxenstore returned.
///
/// # Safety
///
/// `vec` points to at least `num` pointers to NUL-terminated strings.
unsafe fn owned_strs(call: &'static str, vec: *mut *mut c_char, num: c_uint) -> Result<Vec<String>> {
    (0..num as usize)
        .map(|i| {
            // SAFETY: `i < num`, and each entry is a C string, per contract.
            unsafe { owned_str(call, *vec.add(i)) }
        })
        .collect()
}

/// An open connection to xenstored (`struct xs_handle *`), closed on drop.
///
/// Every method returns [`XenctrlError::Call`] naming the libxenstore
/// function and carrying `errno` when it fails (`ENOENT` for a missing
/// node, `EACCES` for a permission error, `EAGAIN` for a transaction
/// conflict, ...).
///
/// `XsHandle` is `Send` but not `Sync`; open one per thread, e.g. one
/// that blocks in [`XsHandle::read_watch`] and others that read and write.
pub struct XsHandle {
    xsh: NonNull<sys::xs_handle>,
    lib: Arc<StoreLibrary>,
}

// SAFETY: an xs_handle has no thread affinity: libxenstore serialises use
// of its socket internally, and its watch thread only touches state behind
// its own locks. The library table is `Send + Sync`.
unsafe impl Send for XsHandle {}

impl std::fmt::Debug for XsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XsHandle")
            .field("xsh", &self.xsh)
            .finish_non_exhaustive()
    }
}

impl XsHandle {
    /// Connects to xenstored through the system's libxenstore (its Unix
    /// socket, else `/dev/xen/xenbus`).
    ///
    /// Fails with [`XenctrlError::LibraryMissing`] if libxenstore.so.4 is
    /// not installed, or a [`XenctrlError::Call`] for `xs_open` when no
    /// xenstored can be reached.
    pub fn open() -> Result<Self> {
        Self::open_with(StoreLibrary::system()?)
    }

    /// Connects to xenstored through the given library.
    pub fn open_with(lib: Arc<StoreLibrary>) -> Result<Self> {
        // SAFETY: plain flags argument; 0 means read-write, any transport.
        let raw = unsafe { lib.store.xs_open(0) };
        let Some(xsh) = NonNull::new(raw) else {
            return Err(XenctrlError::last("xs_open"));
        };
        Ok(XsHandle { xsh, lib })
    }

    fn raw(&self) -> *mut sys::xs_handle {
        self.xsh.as_ptr()
    }

    fn store(&self) -> &sys::XenStore {
        &self.lib.store
    }

    /// Maps a libxenstore `bool` result to a `Result`, reading `errno`
    /// straight away on failure.
    fn check(call: &'static str, ok: bool) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(XenctrlError::last(call))
        }
    }

    /// Reads a node's value.
    pub fn read(&self, tx: Transaction, path: &str) -> Result<Vec<u8>> {
        let cpath = c_string("xs_read", "path", path)?;
        let mut len: c_uint = 0;
        // SAFETY: handle open; `cpath` is a C string; `len` is writable.
        let p = unsafe { self.store().xs_read(self.raw(), tx.0, cpath.as_ptr(), &mut len) };
        // SAFETY: xs_read returns NULL or a malloc'd buffer the caller frees.
        let Some(buf) = (unsafe { Malloced::new(p.cast::<u8>()) }) else {
            return Err(XenctrlError::last("xs_read"));
        };
        // SAFETY: the buffer holds `len` bytes (plus a NUL we ignore).
        let data = unsafe { std::slice::from_raw_parts(buf.as_ptr(), len as usize) };
        Ok(data.to_vec())
    }

    /// Reads a node's value as UTF-8 text.
    pub fn read_string(&self, tx: Transaction, path: &str) -> Result<String> {
        String::from_utf8(self.read(tx, path)?).map_err(|e| XenctrlError::InvalidData {
            call: "xs_read",
            reason: format!("value of {path} is not UTF-8: {e}"),
        })
    }

    /// Writes a node's value, creating the node (and its parents) if
    /// needed.
    pub fn write(&self, tx: Transaction, path: &str, data: &[u8]) -> Result<()> {
        let cpath = c_string("xs_write", "path", path)?;
        let len = c_uint::try_from(data.len()).map_err(|_| XenctrlError::InvalidArgument {
            call: "xs_write",
            reason: format!("value of {} bytes is too long", data.len()),
        })?;
        // SAFETY: handle open; `cpath` is a C string; `data` is readable
        // for `len` bytes.
        let ok = unsafe {
            self.store()
                .xs_write(self.raw(), tx.0, cpath.as_ptr(), data.as_ptr().cast(), len)
        };
        Self::check("xs_write", ok)
    }

    /// Creates a node with an empty value (no error if it exists).
    pub fn mkdir(&self, tx: Transaction, path: &str) -> Result<()> {
        let cpath = c_string("xs_mkdir", "path", path)?;
        // SAFETY: handle open; `cpath` is a C string.
        let ok = unsafe { self.store().xs_mkdir(self.raw(), tx.0, cpath.as_ptr()) };
        Self::check("xs_mkdir", ok)
    }

    /// Removes a node and everything below it.
    pub fn rm(&self, tx: Transaction, path: &str) -> Result<()> {
        let cpath = c_string("xs_rm", "path", path)?;
        // SAFETY: handle open; `cpath` is a C string.
        let ok = unsafe { self.store().xs_rm(self.raw(), tx.0, cpath.as_ptr()) };
        Self::check("xs_rm", ok)
    }

    /// The names of a node's children.
    pub fn directory(&self, tx: Transaction, path: &str) -> Result<Vec<String>> {
        let cpath = c_string("xs_directory", "path", path)?;
        let mut num: c_uint = 0;
        // SAFETY: handle open; `cpath` is a C string; `num` is writable.
        let p = unsafe { self.store().xs_directory(self.raw(), tx.0, cpath.as_ptr(), &mut num) };
        // SAFETY: xs_directory returns NULL or one malloc'd block holding
        // the pointer array and the strings, freed by the caller.
        let Some(block) = (unsafe { Malloced::new(p) }) else {
            return Err(XenctrlError::last("xs_directory"));
        };
        // SAFETY: the block starts with `num` string pointers into itself.
        unsafe { owned_strs("xs_directory", block.as_ptr(), num) }
    }

    /// A node's permissions.
    pub fn get_permissions(&self, tx: Transaction, path: &str) -> Result<Vec<XsPermission>> {
        let cpath = c_string("xs_get_permissions", "path", path)?;
        let mut num: c_uint = 0;
        // SAFETY: handle open; `cpath` is a C string; `num` is writable.
        let p = unsafe {
            self.store()
                .xs_get_permissions(self.raw(), tx.0, cpath.as_ptr(), &mut num)
        };
        // SAFETY: NULL or a malloc'd array the caller frees.
        let Some(perms) = (unsafe { Malloced::new(p) }) else {
            return Err(XenctrlError::last("xs_get_permissions"));
        };
        // SAFETY: the array holds `num` initialised entries.
        let perms = unsafe { std::slice::from_raw_parts(perms.as_ptr(), num as usize) };
        Ok(perms.iter().map(XsPermission::from_raw).collect())
    }

    /// Replaces a node's permissions. The first entry is the owner and
    /// the default for unlisted domains.
    pub fn set_permissions(&self, tx: Transaction, path: &str, perms: &[XsPermission]) -> Result<()> {
        let cpath = c_string("xs_set_permissions", "path", path)?;
        if perms.is_empty() {
            return Err(XenctrlError::InvalidArgument {
                call: "xs_set_permissions",
                reason: "a node needs at least an owner entry".into(),
            });
        }
        let mut raw: Vec<sys::xs_permissions> = perms.iter().map(|p| p.to_raw()).collect();
        let num = c_uint::try_from(raw.len()).map_err(|_| XenctrlError::InvalidArgument {
            call: "xs_set_permissions",
            reason: "too many permission entries".into(),
        })?;
        // SAFETY: handle open; `cpath` is a C string; `raw` holds `num`
        // entries (libxenstore only reads them).
        let ok = unsafe {
            self.store()
                .xs_set_permissions(self.raw(), tx.0, cpath.as_ptr(), raw.as_mut_ptr(), num)
        };
        Self::check("xs_set_permissions", ok)
    }

    /// Watches `path` and everything below it; changes are reported by
    /// [`XsHandle::read_watch`] with `token`. A watch fires once when set.
    pub fn watch(&self, path: &str, token: &str) -> Result<()> {
        let cpath = c_string("xs_watch", "path", path)?;
        let ctoken = c_string("xs_watch", "token", token)?;
        // SAFETY: handle open; both are C strings.
        let ok = unsafe { self.store().xs_watch(self.raw(), cpath.as_ptr(), ctoken.as_ptr()) };
        Self::check("xs_watch", ok)
    }

    /// Removes a watch set with the same `path` and `token`.
    pub fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        let cpath = c_string("xs_unwatch", "path", path)?;
        let ctoken = c_string("xs_unwatch", "token", token)?;
        // SAFETY: handle open; both are C strings.
        let ok = unsafe { self.store().xs_unwatch(self.raw(), cpath.as_ptr(), ctoken.as_ptr()) };
        Self::check("xs_unwatch", ok)
    }

    /// Converts a watch vector (`char *[]` with path and token) to an event.
    ///
    /// # Safety
    ///
    /// `vec` is the malloc'd result of xs_read_watch/xs_check_watch with
    /// `num` entries.
    unsafe fn watch_event(call: &'static str, vec: Malloced<*mut c_char>, num: c_uint) -> Result<WatchEvent> {
        let path_i = sys::xs_watch_type::XS_WATCH_PATH as usize;
        let token_i = sys::xs_watch_type::XS_WATCH_TOKEN as usize;
        if (num as usize) <= path_i.max(token_i) {
            return Err(XenctrlError::InvalidData {
                call,
                reason: format!("watch event has {num} fields"),
            });
        }
        // SAFETY: `vec` holds `num` C strings, per contract; indices checked.
        unsafe {
            Ok(WatchEvent {
                path: owned_str(call, *vec.as_ptr().add(path_i))?,
                token: owned_str(call, *vec.as_ptr().add(token_i))?,
            })
        }
    }

    /// Blocks until a watch fires and returns it.
    pub fn read_watch(&self) -> Result<WatchEvent> {
        let mut num: c_uint = 0;
        // SAFETY: handle open; `num` is writable.
        let p = unsafe { self.store().xs_read_watch(self.raw(), &mut num) };
        // SAFETY: NULL or one malloc'd block the caller frees.
        let Some(vec) = (unsafe { Malloced::new(p) }) else {
            return Err(XenctrlError::last("xs_read_watch"));
        };
        // SAFETY: a read_watch result with `num` entries.
        unsafe { Self::watch_event("xs_read_watch", vec, num) }
    }

    /// Returns a fired watch if one is pending, without blocking. Use with
    /// [`XsHandle::fileno`] in a poll loop.
    pub fn check_watch(&self) -> Result<Option<WatchEvent>> {
        // SAFETY: handle open.
        let p = unsafe { self.store().xs_check_watch(self.raw()) };
        // SAFETY: NULL or one malloc'd block the caller frees.
        let Some(vec) = (unsafe { Malloced::new(p) }) else {
            return match XenctrlError::last("xs_check_watch") {
                XenctrlError::Call {
                    errno: libc::EAGAIN, ..
                } => Ok(None),
                e => Err(e),
            };
        };
        // xs_check_watch guarantees at least path and token.
        // SAFETY: a check_watch result with (at least) 2 entries.
        unsafe { Self::watch_event("xs_check_watch", vec, 2) }.map(Some)
    }

    /// A file descriptor that becomes readable when a watch fires. Owned
    /// by the handle: do not close it.
    pub fn fileno(&self) -> Result<RawFd> {
        // SAFETY: handle open.
        let fd = unsafe { self.store().xs_fileno(self.raw()) };
        if fd < 0 {
            return Err(XenctrlError::last("xs_fileno"));
        }
        Ok(fd)
    }

    /// Starts a transaction.
    pub fn transaction_start(&self) -> Result<Transaction> {
        // SAFETY: handle open.
        let t = unsafe { self.store().xs_transaction_start(self.raw()) };
        if t == sys::XBT_NULL {
            return Err(XenctrlError::last("xs_transaction_start"));
        }
        Ok(Transaction(t))
    }

    /// Ends a transaction, committing it unless `abort`. Returns `false`
    /// if the commit conflicted with another writer (`EAGAIN`): nothing
    /// was applied and the caller should run the transaction again.
    pub fn transaction_end(&self, tx: Transaction, abort: bool) -> Result<bool> {
        // SAFETY: handle open; `tx` is a plain id.
        let ok = unsafe { self.store().xs_transaction_end(self.raw(), tx.0, abort) };
        match Self::check("xs_transaction_end", ok) {
            Ok(()) => Ok(true),
            Err(XenctrlError::Call {
                errno: libc::EAGAIN, ..
            }) if !abort => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs `f` in a transaction and commits it, re-running `f` when the
    /// commit conflicts (up to a bound). An error from `f` aborts the
    /// transaction and is returned.
    pub fn with_transaction<T>(&self, mut f: impl FnMut(Transaction) -> Result<T>) -> Result<T> {
        for _ in 0..TRANSACTION_RETRIES {
            let tx = self.transaction_start()?;
            match f(tx) {
                Ok(value) => {
                    if self.transaction_end(tx, false)? {
                        return Ok(value);
                    }
                }
                Err(e) => {
                    if let Err(abort) = self.transaction_end(tx, true) {
                        tracing::warn!(error = %abort, "aborting xenstore transaction failed");
                    }
                    return Err(e);
                }
            }
        }
        Err(XenctrlError::Call {
            call: "xs_transaction_end",
            errno: libc::EAGAIN,
        })
    }

    /// The xenstore path of a domain's directory, e.g.
    /// `/local/domain/5`.
    pub fn get_domain_path(&self, domid: u32) -> Result<String> {
        // SAFETY: handle open; plain integer argument.
        let p = unsafe { self.store().xs_get_domain_path(self.raw(), domid) };
        // SAFETY: NULL or a malloc'd C string the caller frees.
        let Some(s) = (unsafe { Malloced::new(p) }) else {
            return Err(XenctrlError::last("xs_get_domain_path"));
        };
        // SAFETY: a NUL-terminated string.
        unsafe { owned_str("xs_get_domain_path", s.as_ptr()) }
    }

    /// Tells xenstored about a new domain: its xenstore ring's machine
    /// frame and the (guest-side) event channel port.
    pub fn introduce_domain(&self, domid: u32, mfn: u64, evtchn: u32) -> Result<()> {
        // SAFETY: handle open; plain integer arguments.
        let ok = unsafe { self.store().xs_introduce_domain(self.raw(), domid, mfn, evtchn) };
        Self::check("xs_introduce_domain", ok)
    }

    /// Tells xenstored a domain is gone (releases its connection/watches).
    pub fn release_domain(&self, domid: u32) -> Result<()> {
        // SAFETY: handle open; plain integer argument.
        let ok = unsafe { self.store().xs_release_domain(self.raw(), domid) };
        Self::check("xs_release_domain", ok)
    }

    /// Sets a domain's memory target (what its balloon driver aims for),
    /// in KiB, by writing `<domain path>/memory/target`.
    pub fn set_memory_target(&self, domid: u32, target_kib: u64) -> Result<()> {
        let path = format!("{}/memory/target", self.get_domain_path(domid)?);
        self.write(Transaction::NONE, &path, target_kib.to_string().as_bytes())
    }
}

impl Drop for XsHandle {
    fn drop(&mut self) {
        // SAFETY: `xsh` came from xs_open and is closed once, here.
        unsafe { self.store().xs_close(self.raw()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_round_trip() {
        let p = XsPermission {
            domid: 3,
            read: true,
            write: false,
        };
        let raw = p.to_raw();
        assert_eq!((raw.id, raw.perms), (3, sys::XS_PERM_READ));
        assert_eq!(XsPermission::from_raw(&raw), p);
        let rw = sys::xs_permissions {
            id: 0,
            perms: sys::XS_PERM_READ | sys::XS_PERM_WRITE | sys::XS_PERM_OWNER,
        };
        assert_eq!(
            XsPermission::from_raw(&rw),
            XsPermission {
                domid: 0,
                read: true,
                write: true
            }
        );
    }

    #[test]
    fn transaction_none_is_xbt_null() {
        assert_eq!(Transaction::NONE.id(), 0);
    }

    #[test]
    fn owned_strs_reads_array() {
        let a = CString::new("backend").unwrap();
        let b = CString::new("device").unwrap();
        let mut v = [a.as_ptr().cast_mut(), b.as_ptr().cast_mut()];
        // SAFETY: two valid C strings.
        let out = unsafe { owned_strs("xs_directory", v.as_mut_ptr(), 2) }.unwrap();
        assert_eq!(out, ["backend", "device"]);
    }
}
