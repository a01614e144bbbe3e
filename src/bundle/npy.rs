//! `.npy` (NumPy format version 1.0) for golden frames: little-endian float32, C order;
//! uint8 and int8 too, for targets whose edges are images or integer tensors.
//! Header: magic `\x93NUMPY`, version 1.0, u16 header length, a Python dict literal
//! padded with spaces and ending in `\n` so that the data starts on a 64-byte boundary.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: shape {shape:?} holds {expected} values, got {got}")]
    Length {
        path: String,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a little-endian float32 C-order .npy v1 file: {reason}")]
    Format { path: String, reason: String },
}

fn header(shape: &[usize]) -> Vec<u8> {
    header_of("<f4", shape)
}

fn header_of(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // 6 magic + 2 version + 2 length, then the dict, spaces, '\n'.
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// `len` values fill exactly `shape`.
fn check_len(shape: &[usize], len: usize) -> Result<(), NpyError> {
    let expected: usize = shape.iter().product();
    if expected != len {
        return Err(NpyError::Length {
            path: "<memory>".into(),
            shape: shape.to_vec(),
            expected,
            got: len,
        });
    }
    Ok(())
}

/// The bytes of a `.npy` file holding `data` with `shape`.
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>, NpyError> {
    check_len(shape, data.len())?;
    let mut out = header(shape);
    out.reserve(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// A typed array: what a golden frame holds in a target's own dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    U8(Vec<u8>),
    I8(Vec<i8>),
}

impl NpyData {
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::I8(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// numpy's name of the dtype (`float32`, `uint8`, `int8`).
    pub fn dtype(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "float32",
            NpyData::U8(_) => "uint8",
            NpyData::I8(_) => "int8",
        }
    }
    /// The values as f32 (integers as they are, not dequantized).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            NpyData::F32(v) => v.clone(),
            NpyData::U8(v) => v.iter().map(|x| *x as f32).collect(),
            NpyData::I8(v) => v.iter().map(|x| *x as f32).collect(),
        }
    }
}

/// The bytes of a `.npy` file of any supported dtype.
pub fn encode(shape: &[usize], data: &NpyData) -> Result<Vec<u8>, NpyError> {
    check_len(shape, data.len())?;
    Ok(match data {
        NpyData::F32(v) => encode_f32(shape, v)?,
        NpyData::U8(v) => {
            let mut out = header_of("|u1", shape);
            out.extend_from_slice(v);
            out
        }
        NpyData::I8(v) => {
            let mut out = header_of("|i1", shape);
            out.extend(v.iter().map(|x| *x as u8));
            out
        }
    })
}

/// Reads float32, uint8 or int8 `.npy` bytes (C order, v1).
pub fn decode(bytes: &[u8]) -> Result<(Vec<usize>, NpyData), String> {
    let (header, data) = split_header(bytes)?;
    let shape = shape_of(header)?;
    let count: usize = shape.iter().product();
    let size = if header.contains("'descr': '<f4'") {
        4
    } else {
        1
    };
    if data.len() != count * size {
        return Err(format!("{} data bytes for shape {shape:?}", data.len()));
    }
    let values = if header.contains("'descr': '<f4'") {
        NpyData::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    } else if header.contains("'descr': '|u1'") {
        NpyData::U8(data.to_vec())
    } else if header.contains("'descr': '|i1'") {
        NpyData::I8(data.iter().map(|x| *x as i8).collect())
    } else {
        return Err(format!("unsupported dtype in {header:?}"));
    };
    Ok((shape, values))
}

fn split_header(bytes: &[u8]) -> Result<(&str, &[u8]), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("no NUMPY magic".into());
    }
    if bytes[6] != 1 {
        return Err(format!("version {}.{}", bytes[6], bytes[7]));
    }
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(bytes.get(10..10 + header_len).ok_or("truncated header")?)
        .map_err(|e| e.to_string())?;
    if !header.contains("'fortran_order': False") || !header.ends_with('\n') {
        return Err(format!("unsupported header {header:?}"));
    }
    Ok((header, &bytes[10 + header_len..]))
}

fn shape_of(header: &str) -> Result<Vec<usize>, String> {
    let start = header.find("'shape': (").ok_or("no shape")? + "'shape': (".len();
    let end = start + header[start..].find(')').ok_or("unterminated shape")?;
    header[start..end]
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|e| e.to_string()))
        .collect()
}

/// Writes a `.npy` file atomically (`crate::atomic`).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    let p = path.display().to_string();
    let bytes = encode_f32(shape, data).map_err(|e| match e {
        NpyError::Length {
            shape,
            expected,
            got,
            ..
        } => NpyError::Length {
            path: p.clone(),
            shape,
            expected,
            got,
        },
        other => other,
    })?;
    let werr = |source: std::io::Error| NpyError::Write {
        path: p.clone(),
        source,
    };
    crate::atomic::write(path, &bytes).map_err(werr)
}

/// Reads a `.npy` file this module (or numpy, for `<f4` C-order v1 data) wrote.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Read {
        path: p.clone(),
        source,
    })?;
    decode_f32(&bytes).map_err(|reason| NpyError::Format { path: p, reason })
}

pub fn decode_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    match decode(bytes)? {
        (shape, NpyData::F32(v)) => Ok((shape, v)),
        (_, other) => Err(format!("{} data, expected float32", other.dtype())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_follows_the_npy_spec_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("golden.npy");
        let data: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32 * 0.5 - 1.0).collect();
        write_f32(&path, &[2, 3, 4], &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0, "data must start 64-byte aligned");
        let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(
            header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }")
        );
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + hlen + data.len() * 4);
        assert_eq!(
            f32::from_le_bytes(bytes[10 + hlen..14 + hlen].try_into().unwrap()),
            -1.0
        );
        assert_eq!(read_f32(&path).unwrap(), (vec![2, 3, 4], data));
        // 1-D shapes need the trailing comma of a Python 1-tuple.
        let one = encode_f32(&[3], &[1.0, 2.0, 3.0]).unwrap();
        assert!(std::str::from_utf8(&one[10..64])
            .unwrap()
            .contains("'shape': (3,)"));
        assert!(matches!(
            write_f32(&path, &[2, 2], &[1.0]),
            Err(NpyError::Length { .. })
        ));
    }

    #[test]
    fn integer_arrays_round_trip_with_numpy_dtype_names() {
        let u = NpyData::U8(vec![0, 7, 255, 128, 1, 2]);
        let bytes = encode(&[1, 2, 3], &u).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert!(std::str::from_utf8(&bytes[10..10 + hlen])
            .unwrap()
            .starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2, 3), }"));
        assert_eq!(decode(&bytes).unwrap(), (vec![1, 2, 3], u));
        let i = NpyData::I8(vec![-128, 0, 127]);
        assert_eq!(decode(&encode(&[3], &i).unwrap()).unwrap(), (vec![3], i));
        assert!(decode_f32(&encode(&[3], &NpyData::U8(vec![1, 2, 3])).unwrap()).is_err());
    }
}
