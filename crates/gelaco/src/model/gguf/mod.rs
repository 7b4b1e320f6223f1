//! The GGUF container: header, metadata, tensor directory and memory-mapped data. The block
//! formats (dequantisation and the quantisers) are in [`blocks`], the writer (used by tests
//! and by export) in [`write`]; both are re-exported here.
//!
//! Every size read from the file is checked against the file's length before anything is
//! allocated, so a truncated or hostile file gives an error, never an allocation failure.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::model::stored::MappedBytes;

pub mod blocks;
pub mod write;

pub use blocks::{can_quantize, code_layout, codes, dequantize, CodeLayout, Codes, f32_bytes, quantize, quantize_q8_0};
pub use write::{encode, encode_header, write_file, write_streamed, TensorOut};

const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => self.as_u64().map(|v| v != 0),
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types. Only those listed in [`GgmlType::is_supported`] can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
    /// Any other id: recognised as a type, but not readable by this tool.
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q5_0 => "Q5_0".into(),
            GgmlType::Q5_1 => "Q5_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::Q8_1 => "Q8_1".into(),
            GgmlType::Q2K => "Q2_K".into(),
            GgmlType::Q3K => "Q3_K".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q5K => "Q5_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Q8K => "Q8_K".into(),
            GgmlType::BF16 => "BF16".into(),
            GgmlType::Other(id) => format!("ggml type {id}"),
        }
    }

    /// (elements per block, bytes per block), for the types whose layout is known.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Q8K => (256, 292),
            GgmlType::Other(_) => return None,
        })
    }

    /// Whether this tool can dequantise the type.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q8_0
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q4K
                | GgmlType::Q5K
                | GgmlType::Q6K
        )
    }

    /// Bytes taken by `n` elements, when `n` is a whole number of blocks.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (block, bytes) = self.block_layout()?;
        if n % block as u64 != 0 {
            return None;
        }
        (n / block as u64).checked_mul(bytes as u64)
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying (columns of a matrix).
    pub dims: Vec<u64>,
    pub kind: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size in bytes of the data.
    pub size: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in row-major order (slowest first), as PyTorch and safetensors write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An open GGUF file: metadata and a tensor directory over a memory map.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// Metadata keys in file order (the map above is sorted).
    pub key_order: Vec<String>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
    mmap: Arc<Mmap>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> Error {
        Error::format(
            self.path,
            format!("truncated or corrupt GGUF: {what} at byte {} (file has {} bytes)", self.pos, self.buf.len()),
        )
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.err(what))?;
        if end > self.buf.len() {
            return Err(self.err(what));
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "u8")?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, "u16")?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, "u32")?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, "u64")?.try_into().unwrap_or_default()))
    }

    /// A count that must be satisfiable by the remaining bytes, `min_item` bytes per item.
    fn count(&mut self, min_item: usize, what: &str) -> Result<usize> {
        let n = self.u64()?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item.max(1) as u64) > remaining {
            return Err(Error::format(
                self.path,
                format!("truncated or corrupt GGUF: {what} declares {n} items, more than the {remaining} bytes left in the file"),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count(1, "string length")?;
        let bytes = self.take(n, "string")?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    fn value(&mut self, type_id: u32, depth: usize) -> Result<Value> {
        Ok(match type_id {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(self.err("arrays nested too deeply"));
                }
                let item_type = self.u32()?;
                let min = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => return Err(self.err(&format!("unknown array item type {item_type}"))),
                };
                let n = self.count(min, "array")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_type, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => return Err(self.err(&format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Open and validate a GGUF file. Tensor data stays on disk, memory-mapped.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; the tool never writes to a model file it reads.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut c = Cursor {
            buf: &mmap,
            pos: 0,
            path,
        };
        if mmap.len() < 4 || &mmap[..4] != MAGIC {
            return Err(Error::format(path, "not a GGUF file (missing 'GGUF' magic)"));
        }
        c.pos = 4;
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::format(
                path,
                format!("GGUF version {version} is not supported (versions 2 and 3 are)"),
            ));
        }
        let n_tensors = c.count(24, "tensor count")?;
        let n_kv = c.count(13, "metadata count")?;
        let mut metadata = BTreeMap::new();
        let mut key_order = Vec::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string()?;
            let t = c.u32()?;
            let v = c.value(t, 0)?;
            key_order.push(key.clone());
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| Error::format(path, "general.alignment is not a power of two"))?,
            None => DEFAULT_ALIGNMENT,
        };
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims == 0 || n_dims > 4 {
                return Err(Error::format(path, format!("tensor '{name}' has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64()?);
            }
            let kind = GgmlType::from_id(c.u32()?);
            let offset = c.u64()?;
            let elements = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| Error::format(path, format!("tensor '{name}' has an impossible size")))?;
            let size = match kind.block_layout() {
                Some((block, _)) if dims[0] % block as u64 != 0 => {
                    return Err(Error::format(
                        path,
                        format!("tensor '{name}' row length {} is not a multiple of the {} block size {block}", dims[0], kind.name()),
                    ));
                }
                Some(_) => kind.bytes_for(elements).ok_or_else(|| {
                    Error::format(path, format!("tensor '{name}' has an impossible size"))
                })?,
                None => 0,
            };
            tensors.push(TensorInfo {
                name,
                dims,
                kind,
                offset,
                size,
            });
        }
        let data_offset = align_up(c.pos as u64, alignment);
        let file_len = mmap.len() as u64;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.size));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(Error::format(
                        path,
                        format!(
                            "tensor '{}' ({} bytes at data offset {}) extends past the end of the file ({} bytes): truncated or corrupt",
                            t.name, t.size, t.offset, file_len
                        ),
                    ));
                }
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            key_order,
            tensors,
            alignment,
            data_offset,
            mmap: Arc::new(mmap),
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, as stored.
    pub fn raw(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.mmap[start..start + info.size as usize]
    }

    /// The raw bytes of a tensor as a shared handle on the file's memory map, for weights
    /// that stay as the file stores them.
    pub fn mapped(&self, info: &TensorInfo) -> MappedBytes {
        let start = (self.data_offset + info.offset) as usize;
        MappedBytes::new(self.mmap.clone(), start..start + info.size as usize)
    }

    /// The tensor dequantised to f32, in row-major order.
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        if !info.kind.is_supported() {
            return Err(Error::UnsupportedType {
                path: self.path.clone(),
                tensor: info.name.clone(),
                kind: info.kind.name(),
            });
        }
        dequantize(info.kind, self.raw(info), info.elements() as usize).map_err(|m| Error::format(&self.path, format!("tensor '{}': {m}", info.name)))
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }
}

pub fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_writer_equals_in_memory_encoding() {
        let meta = vec![("general.architecture".to_string(), Value::String("llama".into()))];
        let tensors = vec![
            TensorOut { name: "a".into(), dims: vec![3], kind: GgmlType::F32, data: f32_bytes(&[1.0, 2.0, 3.0]) },
            TensorOut { name: "b".into(), dims: vec![32], kind: GgmlType::Q8_0, data: quantize_q8_0(&[0.5; 32]).unwrap() },
        ];
        let dir: Vec<_> = tensors.iter().map(|t| (t.name.clone(), t.dims.clone(), t.kind, t.data.len() as u64)).collect();
        let mut out = Vec::new();
        write_streamed(&mut out, &meta, &dir, 32, |i| Ok(std::borrow::Cow::Borrowed(&tensors[i].data[..]))).unwrap();
        assert_eq!(out, encode(&meta, &tensors, 32));
    }

    #[test]
    fn encode_and_open_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        let md = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("x.list".to_string(), Value::Array(vec![Value::I32(1), Value::I32(-2)])),
        ];
        let t = TensorOut {
            name: "a".into(),
            dims: vec![2, 3],
            kind: GgmlType::F32,
            data: f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
        };
        write_file(&p, &md, &[t]).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.get("general.architecture").and_then(Value::as_str), Some("llama"));
        let info = g.tensor("a").unwrap();
        assert_eq!(info.shape(), vec![3, 2]);
        assert_eq!(g.dequantize(info).unwrap()[5], 5.0);
        assert_eq!(g.key_order, vec!["general.architecture", "x.list"]);
    }
}
