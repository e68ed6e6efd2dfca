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

/// Random-access bytes (a spooled upload, or memory).
pub trait ReadAt {
    /// Fills `buf` from `at`; reading past the end is an error.
    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<(), super::BackupError>;
}

impl ReadAt for [u8] {
    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<(), super::BackupError> {
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        let src = self
            .get(at..at.saturating_add(buf.len()))
            .ok_or(super::BackupError::PrematureEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for std::fs::File {
    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<(), super::BackupError> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, at).map_err(super::BackupError::from_io)
    }
}

/// Where a qcow2 image's clusters are: the disk's size and, per cluster, where its data is.
#[derive(Clone, Debug)]
pub struct Map {
    /// The disk's size.
    pub size: u64,
    /// Bytes per cluster.
    pub cluster: u64,
    /// (disk cluster number, offset in the image) of every cluster holding data, increasing.
    pub data: Vec<(u64, u64)>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b.get(at..at + 4).unwrap_or(&[0; 4]));
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b.get(at..at + 8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(a)
}

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
const ZERO_FLAG: u64 = 1;

/// Reads a qcow2 image's header and tables (version 2 or 3; no backing file, encryption,
/// compressed clusters or extended L2 entries: those are refused).
pub fn map<R: ReadAt + ?Sized>(r: &R, file_len: u64) -> Result<Map, super::BackupError> {
    use super::BackupError::Archive;
    let mut h = [0u8; 104];
    r.read_at(0, &mut h[..72])?;
    if h.get(0..4) != Some(b"QFI\xfb".as_slice()) {
        return Err(Archive("not a qcow2 image: no magic".into()));
    }
    let version = be32(&h, 4);
    if version != 2 && version != 3 {
        return Err(Archive(format!("qcow2 version {version} unsupported")));
    }
    if be64(&h, 8) != 0 {
        return Err(Archive("qcow2 images with a backing file are not accepted".into()));
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(Archive(format!("qcow2 cluster_bits {cluster_bits} invalid")));
    }
    let size = be64(&h, 24);
    if be32(&h, 32) != 0 {
        return Err(Archive("encrypted qcow2 images are not accepted".into()));
    }
    if version == 3 {
        r.read_at(72, &mut h[72..104])?;
        let incompatible = be64(&h, 72);
        if incompatible & !1 != 0 {
            return Err(Archive(format!(
                "qcow2 incompatible features {incompatible:#x} unsupported"
            )));
        }
    }
    let cluster = 1u64 << cluster_bits;
    let l2_entries = cluster / 8;
    let l1_size = u64::from(be32(&h, 36));
    let l1_offset = be64(&h, 40);
    let needed = size.div_ceil(cluster).div_ceil(l2_entries);
    if l1_size < needed || l1_size > (1 << 25) {
        return Err(Archive(format!(
            "qcow2 L1 table of {l1_size} entries does not fit the disk"
        )));
    }
    if l1_offset.saturating_add(l1_size * 8) > file_len {
        return Err(super::BackupError::PrematureEof);
    }
    let mut l1 = vec![0u8; (needed * 8) as usize];
    r.read_at(l1_offset, &mut l1)?;
    let clusters = size.div_ceil(cluster);
    let mut data = Vec::new();
    let mut l2 = vec![0u8; cluster as usize];
    for (i, e) in l1.chunks_exact(8).enumerate() {
        let e = be64(e, 0);
        let l2_off = e & OFFSET_MASK;
        if l2_off == 0 {
            continue;
        }
        if l2_off.saturating_add(cluster) > file_len {
            return Err(Archive(format!("qcow2 L2 table at {l2_off} lies beyond the image")));
        }
        r.read_at(l2_off, &mut l2)?;
        for (j, x) in l2.chunks_exact(8).enumerate() {
            let c = i as u64 * l2_entries + j as u64;
            if c >= clusters {
                break;
            }
            let x = be64(x, 0);
            if x & COMPRESSED != 0 {
                return Err(Archive("compressed qcow2 clusters are not accepted".into()));
            }
            let off = x & OFFSET_MASK;
            if x & ZERO_FLAG != 0 || off == 0 {
                continue;
            }
            if off.saturating_add(cluster.min(size - c * cluster)) > file_len {
                return Err(Archive(format!("qcow2 data cluster at {off} lies beyond the image")));
            }
            data.push((c, off));
        }
    }
    Ok(Map { size, cluster, data })
}

/// Writes the image `r` maps onto `dst`: data clusters copied, every other cluster zeroed.
pub async fn apply<R: ReadAt + ?Sized, T: super::vhd::Target>(
    r: &R,
    m: &Map,
    dst: &mut T,
) -> Result<u64, super::BackupError> {
    if m.size > dst.capacity() {
        return Err(super::BackupError::Archive(format!(
            "the qcow2 image's disk ({} bytes) is larger than the VDI ({} bytes)",
            m.size,
            dst.capacity()
        )));
    }
    let mut buf = vec![0u8; m.cluster as usize];
    let mut next = 0u64;
    for (c, off) in &m.data {
        let at = c * m.cluster;
        if at > next {
            dst.zero(next, at - next).await?;
        }
        let n = m.cluster.min(m.size - at) as usize;
        let b = buf.get_mut(..n).unwrap_or(&mut []);
        r.read_at(*off, b)?;
        dst.write_at(at, b).await?;
        next = at + n as u64;
    }
    if m.size > next {
        dst.zero(next, m.size - next).await?;
    }
    Ok(m.size)
}

#[cfg(test)]
mod read_tests {
    use super::super::vhd::{block_on_ready, MemTarget};
    use super::*;

    #[test]
    fn reads_back_what_the_export_writes() {
        let size = 3 * CLUSTER + 1000;
        let mut disk = vec![0u8; size as usize];
        disk[5] = 1;
        disk[(2 * CLUSTER + 9) as usize] = 2;
        disk[(size - 1) as usize] = 3;
        let l = Layout::new(size, vec![0, 2, 3]);
        let mut img = l.head();
        for c in [0u64, 2, 3] {
            let from = (c * CLUSTER) as usize;
            let mut d = disk[from..(from + CLUSTER as usize).min(disk.len())].to_vec();
            d.resize(CLUSTER as usize, 0);
            img.extend_from_slice(&d);
        }
        let m = map(img.as_slice(), img.len() as u64).unwrap();
        assert_eq!(m.data.len(), 3);
        let mut out = MemTarget(vec![0xEE; size as usize]);
        block_on_ready(apply(img.as_slice(), &m, &mut out)).unwrap().unwrap();
        assert!(out.0 == disk);
        for cut in [0usize, 50, 70000, img.len() - CLUSTER as usize + 500] {
            assert!(map(&img[..cut], cut as u64).is_err(), "cut at {cut}");
        }
    }
}
