//! A pool of fixed-size, page-aligned I/O buffers allocated once and registered with the
//! io_uring instance (so `READ_FIXED`/`WRITE_FIXED` skip per-request page pinning).
//!
//! Each buffer is owned by exactly one [`IoBuf`] at a time: taking one removes its index from
//! the free list, dropping the `IoBuf` puts it back. That single-owner rule is what makes the
//! `unsafe` slice accessors below sound.

use parking_lot::Mutex;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Bytes in one buffer.
pub const BUF_SIZE: usize = 1 << 20;

/// Alignment of every buffer (a page; also what `O_DIRECT` would need).
const ALIGN: usize = 4096;

/// The pool's memory and its free list.
pub struct BufferPool {
    base: NonNull<u8>,
    layout: Layout,
    count: usize,
    free: Mutex<Vec<u16>>,
    available: Semaphore,
}

// SAFETY: the pool only hands out disjoint regions of `base` (one per index, one owner per
// index, enforced by the free list under its mutex); the pointer itself is never written
// through by the pool, so sharing the pool between threads is sound.
unsafe impl Send for BufferPool {}
// SAFETY: as above; `&BufferPool` only gives access to the free list (a mutex) and the
// semaphore, both thread safe.
unsafe impl Sync for BufferPool {}

impl BufferPool {
    /// Allocates `count` buffers of [`BUF_SIZE`] bytes, zero-filled.
    pub fn new(count: usize) -> std::io::Result<Arc<BufferPool>> {
        let count = count.clamp(1, usize::from(u16::MAX));
        let layout =
            Layout::from_size_align(count * BUF_SIZE, ALIGN).map_err(|e| std::io::Error::other(e.to_string()))?;
        // SAFETY: the layout has a non-zero size (count >= 1) and a valid power-of-two alignment.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let base =
            NonNull::new(raw).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::OutOfMemory, "I/O buffer pool"))?;
        Ok(Arc::new(BufferPool {
            base,
            layout,
            count,
            free: Mutex::new((0..count as u16).rev().collect()),
            available: Semaphore::new(count),
        }))
    }

    /// How many buffers the pool has.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The iovecs to register with io_uring, one per buffer, in index order.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|i| libc::iovec {
                // SAFETY: `i * BUF_SIZE` is inside the allocation of `count * BUF_SIZE` bytes.
                iov_base: unsafe { self.base.as_ptr().add(i * BUF_SIZE) }.cast(),
                iov_len: BUF_SIZE,
            })
            .collect()
    }

    /// Takes a free buffer, waiting until one is returned if all are in use.
    pub async fn acquire(self: &Arc<Self>) -> IoBuf {
        // The semaphore is never closed, so acquiring only fails in theory.
        if let Ok(permit) = self.available.acquire().await {
            permit.forget();
        }
        self.take()
    }

    /// Takes a free buffer if there is one now.
    pub fn try_acquire(self: &Arc<Self>) -> Option<IoBuf> {
        let permit = self.available.try_acquire().ok()?;
        permit.forget();
        Some(self.take())
    }

    fn take(self: &Arc<Self>) -> IoBuf {
        // A permit guarantees a free index: permits and free indices move together.
        let index = self.free.lock().pop().unwrap_or(0);
        IoBuf {
            pool: self.clone(),
            index,
            len: 0,
        }
    }

    fn give_back(&self, index: u16) {
        self.free.lock().push(index);
        self.available.add_permits(1);
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed` with exactly this layout and is freed once.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// One buffer of the pool, owned until dropped. `len` is how many bytes of it hold data.
pub struct IoBuf {
    pool: Arc<BufferPool>,
    index: u16,
    len: usize,
}

impl IoBuf {
    /// The buffer's index in the registered table.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Bytes of data in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left after the data.
    pub fn remaining(&self) -> usize {
        BUF_SIZE - self.len
    }

    /// Sets how many bytes hold data (at most [`BUF_SIZE`]).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(BUF_SIZE);
    }

    /// Start of this buffer's memory. The engine passes it to the kernel while it owns the
    /// `IoBuf`.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: `index < count`, so the offset stays inside the allocation.
        unsafe { self.pool.base.as_ptr().add(usize::from(self.index) * BUF_SIZE) }
    }

    /// The data.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: this `IoBuf` is the only owner of region `index` (see the module docs), the
        // region is BUF_SIZE bytes inside a live allocation (the `Arc` keeps the pool alive),
        // and `len <= BUF_SIZE`. No kernel operation runs on it while user code holds `&self`:
        // the engine takes the `IoBuf` by value for the duration of an operation.
        unsafe {
            std::slice::from_raw_parts(
                self.pool.base.as_ptr().add(usize::from(self.index) * BUF_SIZE),
                self.len,
            )
        }
    }

    /// The whole buffer, data and room, for filling.
    pub fn as_full_mut(&mut self) -> &mut [u8] {
        let ptr = self.as_mut_ptr();
        // SAFETY: as for `as_slice`, and `&mut self` makes this the only live reference.
        unsafe { std::slice::from_raw_parts_mut(ptr, BUF_SIZE) }
    }

    /// Appends as much of `data` as fits; returns how many bytes were taken.
    pub fn fill_from(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.remaining());
        let start = self.len;
        self.as_full_mut()[start..start + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// Whether every data byte is zero.
    pub fn is_all_zero(&self) -> bool {
        let s = self.as_slice();
        let (head, words, tail) = {
            // SAFETY: `align_to` only reinterprets the aligned middle part; u64 has no invalid
            // bit patterns.
            unsafe { s.align_to::<u64>() }
        };
        head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
    }
}

impl AsRef<[u8]> for IoBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        self.pool.give_back(self.index);
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("index", &self.index)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buffers_cycle_through_the_pool() {
        let pool = BufferPool::new(2).unwrap();
        let mut a = pool.acquire().await;
        let b = pool.acquire().await;
        assert_ne!(a.index(), b.index());
        assert!(pool.try_acquire().is_none());
        assert_eq!(a.fill_from(b"hello"), 5);
        assert_eq!(a.as_slice(), b"hello");
        assert!(!a.is_all_zero());
        drop(b);
        let c = pool.try_acquire().unwrap();
        assert!(c.is_empty());
        assert_eq!(pool.iovecs().len(), 2);
    }

    #[test]
    fn zero_detection() {
        let pool = BufferPool::new(1).unwrap();
        let mut a = pool.try_acquire().unwrap();
        a.set_len(BUF_SIZE);
        a.as_full_mut().fill(0);
        assert!(a.is_all_zero());
        a.as_full_mut()[BUF_SIZE - 1] = 1;
        assert!(!a.is_all_zero());
    }
}
