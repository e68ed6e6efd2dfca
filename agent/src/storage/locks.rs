//! Per-VDI locks: operations that change a VDI's bytes or size (import, resize, destroy,
//! data_destroy, set_on_boot) take it exclusively; those that only read the bytes (export,
//! snapshot, clone, copy) share it. A snapshot therefore never sees half an import.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

fn table() -> &'static Mutex<HashMap<String, Arc<RwLock<()>>>> {
    static T: OnceLock<Mutex<HashMap<String, Arc<RwLock<()>>>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock_of(vdi: &str) -> Arc<RwLock<()>> {
    let mut t = table().lock();
    // Forget locks nobody holds, so the table does not grow with every VDI ever seen.
    if t.len() > 1024 {
        t.retain(|_, l| Arc::strong_count(l) > 1);
    }
    t.entry(vdi.to_owned()).or_default().clone()
}

/// Waits for shared use of the VDI's bytes.
pub async fn read(vdi: &str) -> OwnedRwLockReadGuard<()> {
    lock_of(vdi).read_owned().await
}

/// Waits for exclusive use of the VDI's bytes.
pub async fn write(vdi: &str) -> OwnedRwLockWriteGuard<()> {
    lock_of(vdi).write_owned().await
}
