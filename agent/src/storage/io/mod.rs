//! The disk I/O engine (io_uring, with a `pread`/`pwrite` fallback) and its buffer pool.

pub mod buffers;
pub mod engine;
mod fallback;
mod uring;

pub use buffers::{BufferPool, IoBuf, BUF_SIZE};
pub use engine::{Completion, EngineChoice, EngineKind, IoEngine, IoError};

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::sync::Arc;

    async fn exercise(engine: &IoEngine) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(8 * BUF_SIZE as u64).unwrap();
        let file = Arc::new(f);
        // Several writes in flight at once.
        let mut pending = Vec::new();
        for i in [1u64, 3, 4] {
            let mut b = engine.buffer().await;
            b.set_len(BUF_SIZE);
            b.as_full_mut().fill(i as u8);
            pending.push(engine.write_at(&file, i * BUF_SIZE as u64, b));
        }
        for p in pending {
            p.await.unwrap();
        }
        engine.sync_data(&file).await.unwrap();
        let b = engine.buffer().await;
        let b = engine
            .read_at(&file, 3 * BUF_SIZE as u64 + 10, BUF_SIZE, b)
            .await
            .unwrap();
        assert_eq!(b.len(), BUF_SIZE);
        assert!(b.as_slice()[..BUF_SIZE - 10].iter().all(|x| *x == 3));
        assert!(b.as_slice()[BUF_SIZE - 10..].iter().all(|x| *x == 4));
        drop(b);
        // Short read at the end of the file.
        let b = engine.buffer().await;
        let b = engine
            .read_at(&file, 8 * BUF_SIZE as u64 - 5, BUF_SIZE, b)
            .await
            .unwrap();
        assert_eq!(b.len(), 5);
        drop(b);
        // Data segments (ext4, xfs, btrfs and tmpfs know holes).
        let seg = engine.next_data(&file, 0).await.unwrap().unwrap();
        assert!(seg.0 <= BUF_SIZE as u64 && seg.1 >= 2 * BUF_SIZE as u64, "{seg:?}");
        engine
            .punch_hole(&file, 3 * BUF_SIZE as u64, BUF_SIZE as u64)
            .await
            .unwrap();
        let b = engine.buffer().await;
        let b = engine.read_at(&file, 3 * BUF_SIZE as u64, BUF_SIZE, b).await.unwrap();
        assert!(b.is_all_zero());
        assert!(engine
            .next_data(&file, 5 * BUF_SIZE as u64)
            .await
            .unwrap()
            .is_none_or(|(s, _)| s >= 5 * BUF_SIZE as u64));
        // Errors come back as values: writing to a read-only descriptor.
        let ro = Arc::new(std::fs::File::open(&path).unwrap());
        let mut b = engine.buffer().await;
        b.fill_from(b"x");
        assert!(engine.write_at(&ro, 0, b).await.is_err());
    }

    /// Operations `exercise` hands the engine that io_uring runs: 3 writes, a sync, 2 reads, a
    /// hole punch, a read of the hole and the refused write (the seeks are plain `lseek`s).
    const RING_OPS_OF_EXERCISE: u64 = 9;

    /// With this set (scripts/test.sh sets it; docs/testing.md, "Skips") a machine without a
    /// usable io_uring fails the io_uring test instead of skipping it.
    const REQUIRE_IO_URING: &str = "XAPID_REQUIRE_IO_URING";

    #[tokio::test]
    async fn uring_engine_reads_writes_and_finds_holes() {
        let engine = IoEngine::start(EngineChoice::Auto, 4);
        if let Some(why) = engine.fallback_reason() {
            let why = format!("io_uring is unavailable here, the engine fell back to pread/pwrite: {why}");
            assert!(
                std::env::var_os(REQUIRE_IO_URING).is_none(),
                "{why}; {REQUIRE_IO_URING} is set, so this test may not be skipped"
            );
            // Past the test harness's output capture, so that `cargo test` shows it.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {why} (set {REQUIRE_IO_URING}=1 to make this a failure)"
            );
            return;
        }
        assert!(
            matches!(engine.kind(), EngineKind::Uring | EngineKind::UringFixed),
            "{:?}",
            engine.kind()
        );
        assert_eq!(engine.ring_completions(), 0);
        exercise(&engine).await;
        // Every read, write, punch and sync went through the ring, none through a fallback.
        assert_eq!(
            engine.ring_completions(),
            RING_OPS_OF_EXERCISE,
            "{}",
            engine.kind().name()
        );
    }

    #[tokio::test]
    async fn fallback_engine_does_the_same() {
        let engine = IoEngine::start(EngineChoice::Fallback, 4);
        assert_eq!(engine.kind(), EngineKind::Fallback);
        assert_eq!(engine.fallback_reason(), Some("the fallback engine was asked for"));
        exercise(&engine).await;
        assert_eq!(engine.ring_completions(), 0);
    }
}
