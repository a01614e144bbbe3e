//! Apple's MIL blob storage file (`weights/weight.bin`, "blob v2"), written and read.
//!
//! Layout: a 64-byte header {u32 count, u32 version = 2, 7 x u64 reserved}, then per
//! blob a 64-byte metadata record {u32 sentinel 0xDEADBEEF, u32 data type, u64 size in
//! bytes, u64 data offset, 5 x u64 reserved} followed by the data; metadata and data
//! both start on 64-byte boundaries. The program refers to a blob by the offset of its
//! metadata record. All little-endian.

pub const ALIGNMENT: usize = 64;
pub const SENTINEL: u32 = 0xDEAD_BEEF;
pub const VERSION: u32 = 2;

/// Blob data types (MILBlob `BlobDataType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BlobType {
    Float16 = 1,
    Float32 = 2,
    UInt8 = 3,
    Int8 = 4,
}

impl BlobType {
    pub fn from_u32(v: u32) -> Option<BlobType> {
        Some(match v {
            1 => BlobType::Float16,
            2 => BlobType::Float32,
            3 => BlobType::UInt8,
            4 => BlobType::Int8,
            _ => return None,
        })
    }
    pub fn element_bytes(self) -> usize {
        match self {
            BlobType::Float16 => 2,
            BlobType::Float32 => 4,
            BlobType::UInt8 | BlobType::Int8 => 1,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BlobError {
    #[error("weight.bin is {0} bytes, shorter than its 64-byte header")]
    Short(usize),
    #[error("weight.bin header says version {0}, only version 2 is known")]
    Version(u32),
    #[error("weight.bin: no blob metadata at offset {offset}: {reason}")]
    Metadata { offset: u64, reason: String },
}

/// Builds a weight.bin in memory.
pub struct BlobWriter {
    bytes: Vec<u8>,
    count: u32,
}

impl Default for BlobWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BlobWriter {
    pub fn new() -> Self {
        let mut bytes = vec![0u8; ALIGNMENT];
        bytes[4..8].copy_from_slice(&VERSION.to_le_bytes());
        BlobWriter { bytes, count: 0 }
    }

    /// Appends one blob; returns the offset of its metadata (what `BlobFileValue`
    /// stores).
    pub fn add(&mut self, dtype: BlobType, data: &[u8]) -> u64 {
        let meta_offset = self.bytes.len().next_multiple_of(ALIGNMENT);
        self.bytes.resize(meta_offset, 0);
        let data_offset = meta_offset + ALIGNMENT;
        let mut meta = [0u8; ALIGNMENT];
        meta[0..4].copy_from_slice(&SENTINEL.to_le_bytes());
        meta[4..8].copy_from_slice(&(dtype as u32).to_le_bytes());
        meta[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        meta[16..24].copy_from_slice(&(data_offset as u64).to_le_bytes());
        self.bytes.extend_from_slice(&meta);
        self.bytes.extend_from_slice(data);
        self.count += 1;
        self.bytes[0..4].copy_from_slice(&self.count.to_le_bytes());
        meta_offset as u64
    }

    pub fn finish(mut self) -> Vec<u8> {
        // Pad the file itself to the alignment, as Apple's writer does.
        let len = self.bytes.len().next_multiple_of(ALIGNMENT);
        self.bytes.resize(len, 0);
        self.bytes
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A parsed weight.bin.
pub struct BlobFile<'a> {
    bytes: &'a [u8],
    pub count: u32,
}

impl<'a> BlobFile<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BlobError> {
        if bytes.len() < ALIGNMENT {
            return Err(BlobError::Short(bytes.len()));
        }
        let version = u32_at(bytes, 4);
        if version != VERSION {
            return Err(BlobError::Version(version));
        }
        Ok(BlobFile {
            bytes,
            count: u32_at(bytes, 0),
        })
    }

    /// The blob whose metadata sits at `offset`: its type and data, after checking the
    /// sentinel, the alignment of metadata and data, and that the data lies in the file.
    pub fn blob(&self, offset: u64) -> Result<(BlobType, &'a [u8]), BlobError> {
        let bad = |reason: String| BlobError::Metadata { offset, reason };
        if offset % ALIGNMENT as u64 != 0 {
            return Err(bad("offset is not 64-byte aligned".into()));
        }
        let at = offset as usize;
        if at < ALIGNMENT || at + ALIGNMENT > self.bytes.len() {
            return Err(bad(format!("outside the {}-byte file", self.bytes.len())));
        }
        let sentinel = u32_at(self.bytes, at);
        if sentinel != SENTINEL {
            return Err(bad(format!(
                "sentinel {sentinel:#x}, expected {SENTINEL:#x}"
            )));
        }
        let dtype = BlobType::from_u32(u32_at(self.bytes, at + 4))
            .ok_or_else(|| bad("unknown data type".into()))?;
        let size = u64_at(self.bytes, at + 8) as usize;
        let data_offset = u64_at(self.bytes, at + 16) as usize;
        if data_offset % ALIGNMENT != 0 {
            return Err(bad(format!(
                "data offset {data_offset} is not 64-byte aligned"
            )));
        }
        if data_offset < at + ALIGNMENT || data_offset + size > self.bytes.len() {
            return Err(bad(format!(
                "data [{data_offset}, +{size}) outside the file"
            )));
        }
        if size % dtype.element_bytes() != 0 {
            return Err(bad(format!(
                "{size} bytes is not a whole number of {dtype:?}"
            )));
        }
        Ok((dtype, &self.bytes[data_offset..data_offset + size]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_aligned_and_read_back() {
        let mut w = BlobWriter::new();
        let a = w.add(BlobType::Float16, &[1, 2, 3, 4, 5, 6]);
        let b = w.add(BlobType::Int8, &[7; 100]);
        let bytes = w.finish();
        assert_eq!(a, 64);
        assert_eq!(b, 192);
        assert_eq!(bytes.len() % 64, 0);
        let f = BlobFile::parse(&bytes).unwrap();
        assert_eq!(f.count, 2);
        assert_eq!(
            f.blob(a).unwrap(),
            (BlobType::Float16, &[1u8, 2, 3, 4, 5, 6][..])
        );
        assert_eq!(f.blob(b).unwrap().1.len(), 100);
        assert!(f.blob(65).is_err());
        assert!(f.blob(128).is_err(), "no sentinel at a data offset");
    }
}
