//! The engine without io_uring: the same requests, carried out one at a time with
//! `pread`/`pwrite` on the engine thread (never on an async worker).

use super::engine::{prefetch, punch_hole, seek, IoError, Request};
use std::os::unix::fs::FileExt;

/// Serves requests until every sender is gone.
pub(super) fn run(rx: crossbeam_channel::Receiver<Request>) {
    while let Ok(req) = rx.recv() {
        match req {
            Request::Read {
                file,
                offset,
                len,
                mut buf,
                reply,
            } => {
                let r = read_full(&file, offset, len, &mut buf).map(|()| buf);
                let _ = reply.send(r);
            }
            Request::Write {
                file,
                offset,
                buf,
                reply,
            } => {
                let r = file
                    .write_all_at(buf.as_slice(), offset)
                    .map_err(|source| IoError::Os {
                        op: "pwrite",
                        offset,
                        source,
                    })
                    .map(|()| buf);
                let _ = reply.send(r);
            }
            Request::PunchHole {
                file,
                offset,
                len,
                reply,
            } => {
                let _ = reply.send(punch_hole(&file, offset, len));
            }
            Request::Prefetch { file, offset, len } => prefetch(&file, offset, len),
            Request::Sync { file, reply } => {
                let r = file.sync_data().map_err(|source| IoError::Os {
                    op: "fdatasync",
                    offset: 0,
                    source,
                });
                let _ = reply.send(r);
            }
            Request::Seek {
                file,
                offset,
                to,
                reply,
            } => {
                let _ = reply.send(seek(&file, offset, to));
            }
        }
    }
}

fn read_full(file: &std::fs::File, offset: u64, len: usize, buf: &mut super::buffers::IoBuf) -> Result<(), IoError> {
    let mut done = 0;
    let dst = buf.as_full_mut();
    while done < len {
        match file.read_at(&mut dst[done..len], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(IoError::Os {
                    op: "pread",
                    offset: offset + done as u64,
                    source,
                })
            }
        }
    }
    buf.set_len(done);
    Ok(())
}
