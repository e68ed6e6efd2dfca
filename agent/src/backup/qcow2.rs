//! qcow2 (version 3, 64 KiB clusters, 16-bit refcounts) laid out ahead of time for an export:
//! header · refcount table · refcount blocks · L1 table · L2 tables · data clusters, the data
//! clusters being those of the disk that hold data, in increasing order. All big-endian.

/// log2 of the cluster size.
pub const CLUSTER_BITS: u32 = 16;
/// The cluster size.
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// L2 entries per table (8 bytes each, one cluster).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Refcounts per refcount block (16 bits each).
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
/// "Refcount is exactly one": the entry may be written in place.
const COPIED: u64 = 1 << 63;

/// An export's layout.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The disk's size.
    pub size: u64,
    /// Data clusters held, increasing (cluster numbers of the disk).
    pub clusters: Vec<u64>,
    rt_clusters: u64,
    rb_clusters: u64,
    l1_entries: u64,
    l1_clusters: u64,
    /// L1 index of each L2 table written, increasing.
    l2_tables: Vec<u64>,
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b.max(1))
}

impl Layout {
    /// Lays out an image of `size` bytes holding `clusters` (increasing, deduplicated).
    pub fn new(size: u64, clusters: Vec<u64>) -> Layout {
        let l1_entries = div_ceil(div_ceil(size, CLUSTER), L2_ENTRIES);
        let l1_clusters = div_ceil(l1_entries * 8, CLUSTER).max(1);
        let mut l2_tables: Vec<u64> = clusters.iter().map(|c| c / L2_ENTRIES).collect();
        l2_tables.dedup();
        let fixed = 1 + l1_clusters + l2_tables.len() as u64 + clusters.len() as u64;
        let (mut rt, mut rb) = (1u64, 1u64);
        loop {
            let total = fixed + rt + rb;
            let rb2 = div_ceil(total, REFCOUNTS_PER_BLOCK);
            let rt2 = div_ceil(rb2 * 8, CLUSTER).max(1);
            if rb2 == rb && rt2 == rt {
                break;
            }
            rb = rb2;
            rt = rt2;
        }
        Layout {
            size,
            clusters,
            rt_clusters: rt,
            rb_clusters: rb,
            l1_entries,
            l1_clusters,
            l2_tables,
        }
    }

    fn rt_offset(&self) -> u64 {
        CLUSTER
    }
    fn rb_offset(&self) -> u64 {
        self.rt_offset() + self.rt_clusters * CLUSTER
    }
    fn l1_offset(&self) -> u64 {
        self.rb_offset() + self.rb_clusters * CLUSTER
    }
    fn l2_offset(&self) -> u64 {
        self.l1_offset() + self.l1_clusters * CLUSTER
    }
    /// Where the first data cluster starts (everything before is [`Layout::head`]).
    pub fn data_offset(&self) -> u64 {
        self.l2_offset() + self.l2_tables.len() as u64 * CLUSTER
    }
    /// The whole file's size.
    pub fn file_size(&self) -> u64 {
        self.data_offset() + self.clusters.len() as u64 * CLUSTER
    }

    /// The header and every table.
    pub fn head(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.data_offset() as usize];
        let put32 = |b: &mut Vec<u8>, at: u64, v: u32| {
            if let Some(s) = b.get_mut(at as usize..at as usize + 4) {
                s.copy_from_slice(&v.to_be_bytes());
            }
        };
        let put64 = |b: &mut Vec<u8>, at: u64, v: u64| {
            if let Some(s) = b.get_mut(at as usize..at as usize + 8) {
                s.copy_from_slice(&v.to_be_bytes());
            }
        };
        if let Some(s) = out.get_mut(0..4) {
            s.copy_from_slice(b"QFI\xfb");
        }
        put32(&mut out, 4, 3);
        put32(&mut out, 20, CLUSTER_BITS);
        put64(&mut out, 24, self.size);
        put32(&mut out, 36, self.l1_entries as u32);
        put64(&mut out, 40, self.l1_offset());
        put64(&mut out, 48, self.rt_offset());
        put32(&mut out, 56, self.rt_clusters as u32);
        put32(&mut out, 96, 4);
        put32(&mut out, 100, 104);
        // Refcount table and blocks: every cluster of the file is used once.
        let total = self.file_size() / CLUSTER;
        for i in 0..self.rb_clusters {
            put64(&mut out, self.rt_offset() + i * 8, self.rb_offset() + i * CLUSTER);
        }
        for c in 0..total {
            let at = self.rb_offset() + c * 2;
            if let Some(s) = out.get_mut(at as usize..at as usize + 2) {
                s.copy_from_slice(&1u16.to_be_bytes());
            }
        }
        // L1 → L2 tables → data clusters.
        for (i, l1) in self.l2_tables.iter().enumerate() {
            put64(
                &mut out,
                self.l1_offset() + l1 * 8,
                (self.l2_offset() + i as u64 * CLUSTER) | COPIED,
            );
        }
        let mut table = 0usize;
        for (i, c) in self.clusters.iter().enumerate() {
            while self.l2_tables.get(table).is_some_and(|t| *t < c / L2_ENTRIES) {
                table += 1;
            }
            let at = self.l2_offset() + table as u64 * CLUSTER + (c % L2_ENTRIES) * 8;
            put64(&mut out, at, (self.data_offset() + i as u64 * CLUSTER) | COPIED);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a cluster of the virtual disk back through the tables.
    fn read(img: &[u8], vaddr: u64) -> Option<u64> {
        let be64 = |at: u64| u64::from_be_bytes(img[at as usize..at as usize + 8].try_into().unwrap());
        let l1 = be64(40);
        let c = vaddr / CLUSTER;
        let l2 = be64(l1 + (c / L2_ENTRIES) * 8) & !COPIED;
        if l2 == 0 {
            return None;
        }
        let d = be64(l2 + (c % L2_ENTRIES) * 8) & !COPIED;
        (d != 0).then_some(d)
    }

    #[test]
    fn tables_point_at_the_data() {
        let size = 3 << 30;
        let clusters = vec![0, 5, 8192, 8193, (2 << 30) / CLUSTER];
        let l = Layout::new(size, clusters.clone());
        let head = l.head();
        assert_eq!(&head[..4], b"QFI\xfb");
        for (i, c) in clusters.iter().enumerate() {
            assert_eq!(read(&head, c * CLUSTER), Some(l.data_offset() + i as u64 * CLUSTER));
        }
        assert_eq!(read(&head, 6 * CLUSTER), None);
        assert_eq!(read(&head, (1 << 30) + 7), None);
    }
}
