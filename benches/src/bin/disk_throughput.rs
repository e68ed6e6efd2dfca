//! `disk-throughput`: imports and exports a VDI over HTTP through a release `xapid` and puts
//! the MB/s next to `dd` on the same file system in the same run.
//!
//! ```text
//! disk-throughput [--xapid PATH] [--dir DIR] [--size-mib N] [--runs N] [--port P]
//! ```
//!
//! Each run: a fresh VDI is filled by `PUT /import_raw_vdi` from a source file (the server
//! answers after `fdatasync`), then read back with `GET /export_raw_vdi` after the page cache
//! is dropped; `dd if=source of=DIR/dd.img bs=1M conv=fdatasync` and, after dropping the
//! cache again, `dd if=DIR/dd.img of=/dev/null bs=1M` do the same on the same disk.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use xapid_benches::{dd, default_xapid, download, drop_caches, median, request, xmlrpc, BenchError, Daemon, Param};

struct Args {
    xapid: PathBuf,
    dir: PathBuf,
    size_mib: u64,
    runs: usize,
    port: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        xapid: default_xapid(),
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-disk"),
        size_mib: 1024,
        runs: 3,
        port: 18941,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--xapid" => a.xapid = PathBuf::from(v),
            "--dir" => a.dir = PathBuf::from(v),
            "--size-mib" => a.size_mib = v.parse().map_err(|e| format!("--size-mib: {e}"))?,
            "--runs" => a.runs = v.parse().map_err(|e| format!("--runs: {e}"))?,
            "--port" => a.port = v.parse().map_err(|e| format!("--port: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        what: what.to_owned(),
        source,
    }
}

/// A source file of incompressible bytes (kept between runs of the benchmark).
fn make_source(path: &PathBuf, size: u64) -> Result<(), BenchError> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let mut f = File::create(path).map_err(io_err("creating the source file"))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).map_err(io_err("writing the source file"))?;
        left -= n as u64;
    }
    f.sync_all().map_err(io_err("syncing the source file"))
}

fn first_ref(s: &str) -> Option<String> {
    let i = s.find("OpaqueRef:")?;
    Some(s[i..].split('<').next()?.trim().to_owned())
}

fn mbs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

fn run(a: &Args) -> Result<(), BenchError> {
    std::fs::create_dir_all(&a.dir).map_err(io_err("creating the benchmark directory"))?;
    let size = a.size_mib << 20;
    let source = a.dir.join("source.bin");
    let dd_img = a.dir.join("dd.img");
    let state = a.dir.join("state");
    let _ = std::fs::remove_dir_all(&state);
    make_source(&source, size)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], a.port));
    let daemon = Daemon::start(&a.xapid, &state, addr)?;
    let pw = daemon.password.clone();
    let session = xmlrpc(
        addr,
        "session.login_with_password",
        &[Param::Str("root"), Param::Str(&pw)],
    )?;
    let pools = xmlrpc_raw(addr, "pool.get_all", &session)?;
    let pool = first_ref(&pools).ok_or_else(|| BenchError::Protocol("no pool".into()))?;
    let sr = xmlrpc(addr, "pool.get_default_SR", &[Param::Str(&session), Param::Str(&pool)])?;
    let cache_dropped = drop_caches();
    if !cache_dropped {
        eprintln!("note: cannot drop the page cache (not root?); read figures include cached data");
    }
    let (mut imp, mut exp, mut ddw, mut ddr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=a.runs {
        let rec = format!(
            "<struct><member><name>name_label</name><value>bench</value></member>\
             <member><name>name_description</name><value></value></member>\
             <member><name>SR</name><value>{sr}</value></member>\
             <member><name>virtual_size</name><value>{size}</value></member>\
             <member><name>type</name><value>user</value></member>\
             <member><name>sharable</name><value><boolean>0</boolean></value></member>\
             <member><name>read_only</name><value><boolean>0</boolean></value></member>\
             <member><name>other_config</name><value><struct></struct></value></member></struct>"
        );
        let vdi = xmlrpc(addr, "VDI.create", &[Param::Str(&session), Param::Raw(&rec)])?;
        let mut src = File::open(&source).map_err(io_err("opening the source"))?;
        let t = Instant::now();
        let r = request(
            addr,
            "PUT",
            &format!("/import_raw_vdi?vdi={vdi}&session_id={session}&format=raw"),
            &mut src,
            size,
        )?;
        let t_imp = t.elapsed().as_secs_f64();
        if r.status != 200 {
            return Err(BenchError::Protocol(format!(
                "import: {} {}",
                r.head,
                String::from_utf8_lossy(&r.body)
            )));
        }
        drop_caches();
        let t = Instant::now();
        let (status, got) = download(addr, &format!("/export_raw_vdi?vdi={vdi}&session_id={session}"))?;
        let t_exp = t.elapsed().as_secs_f64();
        if status != 200 || got != size {
            return Err(BenchError::Protocol(format!("export: status {status}, {got} bytes")));
        }
        xmlrpc(addr, "VDI.destroy", &[Param::Str(&session), Param::Str(&vdi)])?;
        let _ = std::fs::remove_file(&dd_img);
        let t_ddw = dd(&[
            format!("if={}", source.display()),
            format!("of={}", dd_img.display()),
            "bs=1M".into(),
            "conv=fdatasync".into(),
        ])?;
        drop_caches();
        let t_ddr = dd(&[
            format!("if={}", dd_img.display()),
            "of=/dev/null".into(),
            "bs=1M".into(),
        ])?;
        let _ = std::fs::remove_file(&dd_img);
        println!(
            "run {run}: import {:.0} MB/s, export {:.0} MB/s, dd write {:.0} MB/s, dd read {:.0} MB/s",
            mbs(size, t_imp),
            mbs(size, t_exp),
            mbs(size, t_ddw),
            mbs(size, t_ddr)
        );
        imp.push(mbs(size, t_imp));
        exp.push(mbs(size, t_exp));
        ddw.push(mbs(size, t_ddw));
        ddr.push(mbs(size, t_ddr));
    }
    drop(daemon);
    let (mi, me, mw, mr) = (median(&mut imp), median(&mut exp), median(&mut ddw), median(&mut ddr));
    println!();
    println!(
        "| {} MiB, median of {} runs | xapid (MB/s) | dd (MB/s) | xapid / dd |",
        a.size_mib, a.runs
    );
    println!("|---|---|---|---|");
    println!(
        "| write: PUT /import_raw_vdi vs dd conv=fdatasync | {mi:.0} | {mw:.0} | {:.0}% |",
        100.0 * mi / mw
    );
    println!(
        "| read: GET /export_raw_vdi vs dd of=/dev/null | {me:.0} | {mr:.0} | {:.0}% |",
        100.0 * me / mr
    );
    if !cache_dropped {
        println!("(page cache not dropped: read figures are from memory)");
    }
    Ok(())
}

fn xmlrpc_raw(addr: SocketAddr, method: &str, session: &str) -> Result<String, BenchError> {
    let body = format!(
        "<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params><param><value>{session}</value></param></params></methodCall>"
    );
    let r = request(addr, "POST", "/", &mut body.as_bytes(), body.len() as u64)?;
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("disk-throughput: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(s) = cur {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                cur = s.source();
            }
            eprintln!("disk-throughput: {msg}");
            ExitCode::FAILURE
        }
    }
}
