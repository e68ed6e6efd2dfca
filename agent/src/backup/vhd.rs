//! VHD (Microsoft's Virtual Hard Disk format, as XenServer and Xen Orchestra use it): the
//! footer, the dynamic-disk header, the block allocation table (BAT) and the per-block sector
//! bitmaps, written for an export laid out ahead of time and read from a stream for an import.
//!
//! A dynamic VHD: footer copy (512) · header (1024) · BAT · [parent locator] · blocks
//! (bitmap sector + 2 MiB of data each) · footer. A differencing VHD is the same with
//! disk type 4 and its parent's uuid in the header; its absent blocks (and unset bitmap
//! sectors) are the parent's, where a dynamic VHD's are zeros. All fields are big-endian.

use super::BackupError;

/// The block size written (the reference's and Xen Orchestra's).
pub const BLOCK_SIZE: u32 = 2 << 20;
/// Sectors are 512 bytes.
pub const SECTOR: u64 = 512;
/// A BAT entry of a block not in the file.
pub const UNUSED: u32 = 0xFFFF_FFFF;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01T00:00:00Z).
const VHD_EPOCH: u64 = 946_684_800;
/// The largest block size accepted on import.
const MAX_BLOCK_SIZE: u32 = 64 << 20;
/// The largest BAT accepted on import (entries).
const MAX_BAT_ENTRIES: u32 = 1 << 24;

/// Disk types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskType {
    /// Fixed (raw data then a footer).
    Fixed,
    /// Dynamic (sparse).
    Dynamic,
    /// Differencing (a delta on a parent).
    Differencing,
}

impl DiskType {
    fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }
    fn from_code(c: u32) -> Option<DiskType> {
        match c {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }
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

fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// One's complement of the byte sum, the checksum field counted as zero.
fn checksum(b: &[u8], field: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |s, (_, x)| s.wrapping_add(u32::from(*x)));
    !sum
}

/// CHS geometry from the disk size, as the VHD specification computes it.
pub fn geometry(size: u64) -> u32 {
    let mut sectors = (size / SECTOR).min(65535 * 16 * 255);
    let (mut spt, mut heads, cyl_x_heads);
    if sectors >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cyl_x_heads = sectors / spt;
    } else {
        spt = 17;
        let mut c = sectors / spt;
        heads = c.div_ceil(1024).max(4);
        if c >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            c = sectors / spt;
        }
        if c >= heads * 1024 {
            spt = 63;
            heads = 16;
            c = sectors / spt;
        }
        cyl_x_heads = c;
    }
    let cylinders = (cyl_x_heads / heads.max(1)).min(65535);
    sectors = spt;
    ((cylinders as u32) << 16) | ((heads as u32) << 8) | sectors as u32
}

/// The footer's fields that matter here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Offset of the dynamic header (none for a fixed disk).
    pub data_offset: u64,
    /// The disk's size in bytes.
    pub current_size: u64,
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// The image's uuid.
    pub uuid: [u8; 16],
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
}

impl Footer {
    /// The 512-byte footer.
    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(b"conectix");
        put32(&mut b, 8, 2);
        put32(&mut b, 12, 0x0001_0000);
        put64(&mut b, 16, self.data_offset);
        put32(&mut b, 24, self.timestamp.saturating_sub(VHD_EPOCH) as u32);
        // Creator "tap\0": XenServer's, which readers take to mean the size is current_size.
        b[28..32].copy_from_slice(b"tap\0");
        put32(&mut b, 32, 0x0001_0003);
        b[36..40].copy_from_slice(b"Wi2k");
        put64(&mut b, 40, self.current_size);
        put64(&mut b, 48, self.current_size);
        put32(&mut b, 56, geometry(self.current_size));
        put32(&mut b, 60, self.disk_type.code());
        b[68..84].copy_from_slice(&self.uuid);
        let c = checksum(&b, 64);
        put32(&mut b, 64, c);
        b
    }

    /// Parses and checks a footer.
    pub fn decode(b: &[u8]) -> Result<Footer, BackupError> {
        if b.len() < 512 || b.get(0..8) != Some(b"conectix".as_slice()) {
            return Err(BackupError::Archive("not a VHD: no footer cookie".into()));
        }
        let b = &b[..512];
        if checksum(b, 64) != be32(b, 64) {
            return Err(BackupError::Archive("VHD footer checksum mismatch".into()));
        }
        let disk_type = DiskType::from_code(be32(b, 60))
            .ok_or_else(|| BackupError::Archive(format!("VHD disk type {} unknown", be32(b, 60))))?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[68..84]);
        Ok(Footer {
            data_offset: be64(b, 16),
            current_size: be64(b, 48),
            disk_type,
            uuid,
            timestamp: u64::from(be32(b, 24)) + VHD_EPOCH,
        })
    }
}

/// The dynamic-disk header's fields that matter here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Offset of the BAT.
    pub table_offset: u64,
    /// BAT entries.
    pub max_table_entries: u32,
    /// Bytes per block.
    pub block_size: u32,
    /// The parent's uuid (differencing disks).
    pub parent_uuid: [u8; 16],
    /// The parent's file name (differencing disks), and where a locator for it is written.
    pub parent_name: String,
    /// Offset of the parent locator's data (0: none).
    pub locator_offset: u64,
}

/// The parent locator's text: a relative file URL, as the reference's tools write it.
pub fn locator_text(parent_name: &str) -> Vec<u8> {
    format!("./{parent_name}").into_bytes()
}

impl Header {
    /// The 1024-byte header.
    pub fn encode(&self) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        b[0..8].copy_from_slice(b"cxsparse");
        put64(&mut b, 8, u64::MAX);
        put64(&mut b, 16, self.table_offset);
        put32(&mut b, 24, 0x0001_0000);
        put32(&mut b, 28, self.max_table_entries);
        put32(&mut b, 32, self.block_size);
        b[40..56].copy_from_slice(&self.parent_uuid);
        if !self.parent_name.is_empty() {
            let name: Vec<u16> = self.parent_name.encode_utf16().take(256).collect();
            for (i, c) in name.iter().enumerate() {
                if let Some(s) = b.get_mut(64 + 2 * i..66 + 2 * i) {
                    s.copy_from_slice(&c.to_be_bytes());
                }
            }
        }
        if self.locator_offset != 0 {
            // One "MacX" locator (a file URL), in the first of the eight entries.
            let text = locator_text(&self.parent_name);
            b[576..580].copy_from_slice(b"MacX");
            put32(&mut b, 580, SECTOR as u32);
            put32(&mut b, 584, text.len() as u32);
            put64(&mut b, 592, self.locator_offset);
        }
        let c = checksum(&b, 36);
        put32(&mut b, 36, c);
        b
    }

    /// Parses and checks a header.
    pub fn decode(b: &[u8]) -> Result<Header, BackupError> {
        if b.len() < 1024 || b.get(0..8) != Some(b"cxsparse".as_slice()) {
            return Err(BackupError::Archive("VHD: no dynamic header cookie".into()));
        }
        let b = &b[..1024];
        if checksum(b, 36) != be32(b, 36) {
            return Err(BackupError::Archive("VHD header checksum mismatch".into()));
        }
        let block_size = be32(b, 32);
        if block_size == 0 || !block_size.is_multiple_of(SECTOR as u32) || block_size > MAX_BLOCK_SIZE {
            return Err(BackupError::Archive(format!("VHD block size {block_size} unsupported")));
        }
        let max_table_entries = be32(b, 28);
        if max_table_entries > MAX_BAT_ENTRIES {
            return Err(BackupError::Archive(format!(
                "VHD BAT of {max_table_entries} entries is too large"
            )));
        }
        let mut parent_uuid = [0u8; 16];
        parent_uuid.copy_from_slice(&b[40..56]);
        let units: Vec<u16> = b[64..576]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        Ok(Header {
            table_offset: be64(b, 16),
            max_table_entries,
            block_size,
            parent_uuid,
            parent_name: String::from_utf16_lossy(&units),
            locator_offset: 0,
        })
    }

    /// Bytes of a block's sector bitmap (rounded up to a sector).
    pub fn bitmap_size(&self) -> u64 {
        let sectors = u64::from(self.block_size) / SECTOR;
        sectors.div_ceil(8).div_ceil(SECTOR) * SECTOR
    }
}

/// Bytes of a BAT of `entries` (rounded up to a sector).
pub fn bat_size(entries: u32) -> u64 {
    (u64::from(entries) * 4).div_ceil(SECTOR) * SECTOR
}

/// The layout of an export: where each present block goes.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The footer (also written first).
    pub footer: Footer,
    /// The header.
    pub header: Header,
    /// The BAT, in order of virtual blocks.
    pub bat: Vec<u32>,
    /// The present blocks, in file order (= increasing virtual order).
    pub blocks: Vec<u32>,
    /// Where the first block starts.
    pub data_start: u64,
}

impl Layout {
    /// Lays out a VHD of `size` bytes holding `blocks` (increasing block numbers); with a
    /// parent (its uuid and file name) it is a differencing VHD.
    pub fn new(
        size: u64,
        blocks: Vec<u32>,
        uuid: [u8; 16],
        parent: Option<([u8; 16], String)>,
        timestamp: u64,
    ) -> Layout {
        let entries = size.div_ceil(u64::from(BLOCK_SIZE)) as u32;
        let table_offset = 512 + 1024;
        let mut data_start = table_offset + bat_size(entries);
        let (parent_uuid, parent_name, locator_offset) = match parent {
            Some((u, name)) => {
                let at = data_start;
                data_start += SECTOR;
                (u, name, at)
            }
            None => ([0; 16], String::new(), 0),
        };
        let header = Header {
            table_offset,
            max_table_entries: entries,
            block_size: BLOCK_SIZE,
            parent_uuid,
            parent_name,
            locator_offset,
        };
        let per_block = header.bitmap_size() + u64::from(BLOCK_SIZE);
        let mut bat = vec![UNUSED; entries as usize];
        for (i, b) in blocks.iter().enumerate() {
            if let Some(e) = bat.get_mut(*b as usize) {
                *e = ((data_start + i as u64 * per_block) / SECTOR) as u32;
            }
        }
        let footer = Footer {
            data_offset: 512,
            current_size: size,
            disk_type: if locator_offset != 0 {
                DiskType::Differencing
            } else {
                DiskType::Dynamic
            },
            uuid,
            timestamp,
        };
        Layout {
            footer,
            header,
            bat,
            blocks,
            data_start,
        }
    }

    /// Everything before the first block: footer copy, header, BAT, parent locator.
    pub fn head(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data_start as usize);
        out.extend_from_slice(&self.footer.encode());
        out.extend_from_slice(&self.header.encode());
        for e in &self.bat {
            out.extend_from_slice(&e.to_be_bytes());
        }
        out.resize((512 + 1024 + bat_size(self.header.max_table_entries)) as usize, 0);
        if self.header.locator_offset != 0 {
            let mut sector = locator_text(&self.header.parent_name);
            sector.resize(SECTOR as usize, 0);
            out.extend_from_slice(&sector);
        }
        out
    }

    /// A present block's bitmap: every sector present.
    pub fn bitmap(&self) -> Vec<u8> {
        vec![0xFF; self.header.bitmap_size() as usize]
    }

    /// The whole file's size.
    pub fn file_size(&self) -> u64 {
        self.data_start + self.blocks.len() as u64 * (self.header.bitmap_size() + u64::from(BLOCK_SIZE)) + 512
    }
}

/// Where an import's bytes come from.
pub trait Source {
    /// Fills `buf` (an early end is [`BackupError::PrematureEof`]).
    fn read_exact(&mut self, buf: &mut [u8]) -> impl std::future::Future<Output = Result<(), BackupError>>;
    /// Discards `n` bytes.
    fn skip(&mut self, n: u64) -> impl std::future::Future<Output = Result<(), BackupError>>;
}

/// Where an import's bytes go.
pub trait Target {
    /// The disk's size.
    fn capacity(&self) -> u64;
    /// Writes `data` at `at`.
    fn write_at(&mut self, at: u64, data: &[u8]) -> impl std::future::Future<Output = Result<(), BackupError>>;
    /// Makes `len` bytes at `at` read as zeros.
    fn zero(&mut self, at: u64, len: u64) -> impl std::future::Future<Output = Result<(), BackupError>>;
}

/// Applies a dynamic or differencing VHD read from `src` onto `dst`: present sectors are
/// written; absent ones are zeroed (dynamic) or left as they are (differencing). Returns the
/// disk's size.
pub async fn apply<S: Source, T: Target>(src: &mut S, dst: &mut T) -> Result<u64, BackupError> {
    let mut pos: u64 = 0;
    let mut buf = vec![0u8; 512];
    src.read_exact(&mut buf).await?;
    pos += 512;
    let footer = Footer::decode(&buf)?;
    if footer.disk_type == DiskType::Fixed {
        return Err(BackupError::Archive(
            "fixed VHDs are not accepted here: send raw data instead".into(),
        ));
    }
    if footer.current_size > dst.capacity() {
        return Err(BackupError::Archive(format!(
            "the VHD's disk ({} bytes) is larger than the VDI ({} bytes)",
            footer.current_size,
            dst.capacity()
        )));
    }
    if footer.data_offset < pos {
        return Err(BackupError::Archive("VHD header offset lies before the header".into()));
    }
    src.skip(footer.data_offset - pos).await?;
    pos = footer.data_offset;
    let mut hb = vec![0u8; 1024];
    src.read_exact(&mut hb).await?;
    pos += 1024;
    let header = Header::decode(&hb)?;
    let needed = footer.current_size.div_ceil(u64::from(header.block_size));
    if u64::from(header.max_table_entries) < needed {
        return Err(BackupError::Archive("VHD BAT is too small for its disk".into()));
    }
    if header.table_offset < pos {
        return Err(BackupError::Archive("VHD BAT lies before the header's end".into()));
    }
    src.skip(header.table_offset - pos).await?;
    pos = header.table_offset;
    let mut bat_bytes = vec![0u8; (u64::from(header.max_table_entries) * 4) as usize];
    src.read_exact(&mut bat_bytes).await?;
    pos += bat_bytes.len() as u64;
    let mut present: Vec<(u64, u64)> = bat_bytes
        .chunks_exact(4)
        .enumerate()
        .filter_map(|(i, c)| {
            let e = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            (e != UNUSED && (i as u64) < needed).then_some((u64::from(e) * SECTOR, i as u64))
        })
        .collect();
    present.sort_unstable();
    let bs = u64::from(header.block_size);
    let bitmap_len = header.bitmap_size();
    let differencing = footer.disk_type == DiskType::Differencing;
    let mut bitmap = vec![0u8; bitmap_len as usize];
    let mut data = vec![0u8; bs as usize];
    let mut seen = vec![false; needed as usize];
    for (at, block) in present {
        if at < pos {
            return Err(BackupError::Archive(format!(
                "VHD block {block} overlaps what precedes it"
            )));
        }
        src.skip(at - pos).await?;
        src.read_exact(&mut bitmap).await?;
        src.read_exact(&mut data).await?;
        pos = at + bitmap_len + bs;
        if let Some(s) = seen.get_mut(block as usize) {
            *s = true;
        }
        let base = block * bs;
        let end = (base + bs).min(footer.current_size);
        let sectors = (end - base).div_ceil(SECTOR);
        let mut s = 0u64;
        while s < sectors {
            let set = bitmap.get((s / 8) as usize).is_some_and(|b| b & (0x80 >> (s % 8)) != 0);
            let mut e = s + 1;
            while e < sectors && bitmap.get((e / 8) as usize).is_some_and(|b| b & (0x80 >> (e % 8)) != 0) == set {
                e += 1;
            }
            let from = base + s * SECTOR;
            let to = (base + e * SECTOR).min(end);
            if set {
                let slice = data
                    .get((s * SECTOR) as usize..(to - base) as usize)
                    .ok_or_else(|| BackupError::Archive("VHD block shorter than its bitmap".into()))?;
                dst.write_at(from, slice).await?;
            } else if !differencing {
                dst.zero(from, to - from).await?;
            }
            s = e;
        }
    }
    if !differencing {
        for (block, was) in seen.iter().enumerate() {
            if !was {
                let from = block as u64 * bs;
                let to = (from + bs).min(footer.current_size);
                dst.zero(from, to - from).await?;
            }
        }
    }
    Ok(footer.current_size)
}

/// An in-memory source (tests, fuzzing).
pub struct SliceSource<'a>(pub &'a [u8]);

impl Source for SliceSource<'_> {
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        if self.0.len() < buf.len() {
            return Err(BackupError::PrematureEof);
        }
        let (a, b) = self.0.split_at(buf.len());
        buf.copy_from_slice(a);
        self.0 = b;
        Ok(())
    }
    async fn skip(&mut self, n: u64) -> Result<(), BackupError> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if self.0.len() < n {
            return Err(BackupError::PrematureEof);
        }
        self.0 = self.0.get(n..).unwrap_or(&[]);
        Ok(())
    }
}

/// An in-memory disk (tests, fuzzing).
pub struct MemTarget(pub Vec<u8>);

impl Target for MemTarget {
    fn capacity(&self) -> u64 {
        self.0.len() as u64
    }
    async fn write_at(&mut self, at: u64, data: &[u8]) -> Result<(), BackupError> {
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        let dst = self
            .0
            .get_mut(at..at.saturating_add(data.len()))
            .ok_or_else(|| BackupError::Archive("write beyond the disk".into()))?;
        dst.copy_from_slice(data);
        Ok(())
    }
    async fn zero(&mut self, at: u64, len: u64) -> Result<(), BackupError> {
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.0
            .get_mut(at..at.saturating_add(len))
            .ok_or_else(|| BackupError::Archive("zeroing beyond the disk".into()))?
            .fill(0);
        Ok(())
    }
}

/// Runs a future whose I/O never waits (in-memory sources and targets); `None` if it did.
pub fn block_on_ready<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        block_on_ready(f).unwrap()
    }

    fn image(disk: &[u8], blocks: Vec<u32>, parent: Option<([u8; 16], String)>) -> Vec<u8> {
        let l = Layout::new(disk.len() as u64, blocks.clone(), [7; 16], parent, 1_700_000_000);
        let mut out = l.head();
        for b in &blocks {
            out.extend_from_slice(&l.bitmap());
            let from = *b as usize * BLOCK_SIZE as usize;
            let mut d = disk[from..(from + BLOCK_SIZE as usize).min(disk.len())].to_vec();
            d.resize(BLOCK_SIZE as usize, 0);
            out.extend_from_slice(&d);
        }
        out.extend_from_slice(&l.footer.encode());
        assert_eq!(out.len() as u64, l.file_size());
        out
    }

    #[test]
    fn dynamic_and_differencing_round_trip() {
        let size = 5 * BLOCK_SIZE as usize + 4096;
        let mut disk = vec![0u8; size];
        disk[10] = 1;
        disk[4 * BLOCK_SIZE as usize + 77] = 9;
        disk[size - 1] = 3;
        let full = image(&disk, vec![0, 4, 5], None);
        let mut out = MemTarget(vec![0xAA; size]);
        assert_eq!(block_on(apply(&mut SliceSource(&full), &mut out)).unwrap(), size as u64);
        assert!(out.0 == disk, "a dynamic VHD restores the disk, zeros included");

        let mut next = disk.clone();
        next[2 * BLOCK_SIZE as usize + 5] = 42;
        let delta = image(&next, vec![2], Some(([7; 16], "parent.vhd".into())));
        let mut out2 = MemTarget(disk.clone());
        block_on(apply(&mut SliceSource(&delta), &mut out2)).unwrap();
        assert!(out2.0 == next, "a differencing VHD changes only its blocks");
        let h = Header::decode(&delta[512..1536]).unwrap();
        assert_eq!(h.parent_name, "parent.vhd");
        assert_eq!(Footer::decode(&delta[..512]).unwrap().disk_type, DiskType::Differencing);
    }

    #[test]
    fn damaged_images_are_refused() {
        let disk = vec![1u8; BLOCK_SIZE as usize];
        let full = image(&disk, vec![0], None);
        for cut in [0, 100, 511, 600, 1536, 2000, full.len() - 600] {
            let mut out = MemTarget(vec![0; disk.len()]);
            assert!(
                block_on(apply(&mut SliceSource(&full[..cut]), &mut out)).is_err(),
                "cut at {cut}"
            );
        }
        for at in [3usize, 70, 520, 1537] {
            let mut bad = full.clone();
            bad[at] ^= 0x10;
            let mut out = MemTarget(vec![0; disk.len()]);
            assert!(
                block_on(apply(&mut SliceSource(&bad), &mut out)).is_err(),
                "flip at {at}"
            );
        }
        let mut small = MemTarget(vec![0; 512]);
        assert!(block_on(apply(&mut SliceSource(&full), &mut small)).is_err());
    }

    #[test]
    fn geometry_matches_the_specification() {
        // 1 GiB: 2080 cylinders, 16 heads, 63 sectors (qemu-img and vhd-util agree).
        assert_eq!(geometry(1 << 30), (2080 << 16) | (16 << 8) | 63);
    }
}
