//! The GGUF container: header, metadata, tensor directory, memory-mapped data, dequantisation
//! of the block formats the tool reads, and a writer (used by tests and by export).
//!
//! Every size read from the file is checked against the file's length before anything is
//! allocated, so a truncated or hostile file gives an error, never an allocation failure.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{Error, Result};

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
    mmap: Mmap,
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
            mmap,
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

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantise `n` elements of type `kind` from `data` to f32.
pub fn dequantize(kind: GgmlType, data: &[u8], n: usize) -> std::result::Result<Vec<f32>, String> {
    let (block, bytes) = kind
        .block_layout()
        .ok_or_else(|| format!("unknown type {}", kind.name()))?;
    if n % block != 0 || data.len() != n / block * bytes {
        return Err(format!(
            "{} bytes do not hold {n} {} elements",
            data.len(),
            kind.name()
        ));
    }
    let mut out = vec![0f32; n];
    match kind {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            for (o, b) in out.chunks_exact_mut(block).zip(data.chunks_exact(bytes)) {
                dequantize_block(kind, b, o)?;
            }
        }
    }
    Ok(out)
}

/// K-quant 6-bit scale and min of sub-block `j` (Q4_K and Q5_K).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as f32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32,
        )
    }
}

fn dequantize_block(kind: GgmlType, b: &[u8], y: &mut [f32]) -> std::result::Result<(), String> {
    match kind {
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for (i, o) in y.iter_mut().enumerate() {
                *o = (b[2 + i] as i8) as f32 * d;
            }
        }
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qs = &b[4..20];
            for j in 0..16 {
                y[j] = (qs[j] & 0xF) as f32 * d + m;
                y[j + 16] = (qs[j] >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = (((qs[j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
                y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
            }
        }
        GgmlType::Q5_1 => {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = ((qs[j] & 0xF) as u32 | h0) as f32 * d + m;
                y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
            }
        }
        GgmlType::Q4K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qs = &b[16..144];
            for (chunk, n) in (0..256).step_by(64).enumerate() {
                let is = chunk * 2;
                let (sc1, m1) = scale_min_k4(is, scales);
                let (sc2, m2) = scale_min_k4(is + 1, scales);
                let (d1, m1) = (d * sc1, dmin * m1);
                let (d2, m2) = (d * sc2, dmin * m2);
                let q = &qs[chunk * 32..chunk * 32 + 32];
                for l in 0..32 {
                    y[n + l] = d1 * (q[l] & 0xF) as f32 - m1;
                    y[n + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
        GgmlType::Q5K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            let (mut u1, mut u2) = (1u8, 2u8);
            for (chunk, n) in (0..256).step_by(64).enumerate() {
                let is = chunk * 2;
                let (sc1, m1) = scale_min_k4(is, scales);
                let (sc2, m2) = scale_min_k4(is + 1, scales);
                let (d1, m1) = (d * sc1, dmin * m1);
                let (d2, m2) = (d * sc2, dmin * m2);
                let ql = &qs[chunk * 32..chunk * 32 + 32];
                for l in 0..32 {
                    let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    y[n + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                    y[n + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
                }
                u1 <<= 2;
                u2 <<= 2;
            }
        }
        GgmlType::Q6K => {
            let ql_all = &b[0..128];
            let qh_all = &b[128..192];
            let sc_all = &b[192..208];
            let d = f16_at(b, 208);
            for half in 0..2 {
                let ql = &ql_all[half * 64..half * 64 + 64];
                let qh = &qh_all[half * 32..half * 32 + 32];
                let sc = &sc_all[half * 8..half * 8 + 8];
                let y = &mut y[half * 128..half * 128 + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
        other => return Err(format!("type {} cannot be dequantised", other.name())),
    }
    Ok(())
}

/// Quantise f32 values to Q8_0 (round to nearest, as ggml's reference quantiser).
pub fn quantize_q8_0(x: &[f32]) -> std::result::Result<Vec<u8>, String> {
    if x.len() % 32 != 0 {
        return Err(format!("{} values are not a whole number of Q8_0 blocks", x.len()));
    }
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        for v in block {
            out.push(((v * id).round() as i32).clamp(-128, 127) as i8 as u8);
        }
    }
    Ok(out)
}

/// A tensor to write: name, shape in ggml order (fastest first), type and encoded bytes.
pub struct TensorOut {
    pub name: String,
    pub dims: Vec<u64>,
    pub kind: GgmlType,
    pub data: Vec<u8>,
}

fn write_string(w: &mut Vec<u8>, s: &str) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn write_value(w: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => w.push(*x),
        Value::I8(x) => w.push(*x as u8),
        Value::U16(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => w.push(*x as u8),
        Value::String(s) => write_string(w, s),
        Value::Array(items) => {
            let t = items.first().map(Value::type_id).unwrap_or(4);
            w.extend_from_slice(&t.to_le_bytes());
            w.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                write_value(w, i);
            }
        }
        Value::U64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => w.extend_from_slice(&x.to_le_bytes()),
    }
}

/// The header of a GGUF v3 file (magic, counts, metadata, tensor directory), padded to
/// `alignment`; the tensor data follows it, each tensor padded to `alignment`.
pub fn encode_header(metadata: &[(String, Value)], tensors: &[(String, Vec<u64>, GgmlType, u64)], alignment: u64) -> Vec<u8> {
    let mut w = Vec::new();
    w.extend_from_slice(MAGIC);
    w.extend_from_slice(&3u32.to_le_bytes());
    w.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    w.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        write_string(&mut w, k);
        w.extend_from_slice(&v.type_id().to_le_bytes());
        write_value(&mut w, v);
    }
    let mut offset = 0u64;
    for (name, dims, kind, len) in tensors {
        write_string(&mut w, name);
        w.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            w.extend_from_slice(&d.to_le_bytes());
        }
        w.extend_from_slice(&kind.id().to_le_bytes());
        w.extend_from_slice(&offset.to_le_bytes());
        offset = align_up(offset + len, alignment);
    }
    w.resize(align_up(w.len() as u64, alignment) as usize, 0);
    w
}

/// Encode a whole GGUF v3 file in memory: metadata in the given order, then the tensor
/// directory, then the aligned data.
pub fn encode(metadata: &[(String, Value)], tensors: &[TensorOut], alignment: u64) -> Vec<u8> {
    let dir: Vec<_> = tensors.iter().map(|t| (t.name.clone(), t.dims.clone(), t.kind, t.data.len() as u64)).collect();
    let mut w = encode_header(metadata, &dir, alignment);
    for t in tensors {
        w.extend_from_slice(&t.data);
        w.resize(align_up(w.len() as u64, alignment) as usize, 0);
    }
    w
}

/// Write a GGUF file whole or not at all (temporary file in the same folder, fsync, rename).
pub fn write_file(path: &Path, metadata: &[(String, Value)], tensors: &[TensorOut]) -> Result<()> {
    let bytes = encode(metadata, tensors, DEFAULT_ALIGNMENT);
    crate::util::write_atomic(path, &bytes)
}

/// Write a GGUF file tensor by tensor into `out` (any writer): `data(i)` produces tensor
/// `i`'s bytes when its turn comes, so only one tensor is in memory at a time. Each
/// produced tensor must have the length given in the directory.
pub fn write_streamed<'d, W: Write>(
    out: &mut W,
    metadata: &[(String, Value)],
    tensors: &[(String, Vec<u64>, GgmlType, u64)],
    alignment: u64,
    mut data: impl FnMut(usize) -> Result<std::borrow::Cow<'d, [u8]>>,
) -> Result<()> {
    let io = |e: std::io::Error| Error::Device(format!("writing GGUF data: {e}"));
    out.write_all(&encode_header(metadata, tensors, alignment)).map_err(io)?;
    let zeros = vec![0u8; alignment as usize];
    for (i, (name, _, _, len)) in tensors.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() as u64 != *len {
            return Err(Error::Invalid(format!("tensor '{name}': {} bytes produced, {len} announced", bytes.len())));
        }
        out.write_all(&bytes).map_err(io)?;
        let pad = (align_up(*len, alignment) - len) as usize;
        out.write_all(&zeros[..pad]).map_err(io)?;
    }
    Ok(())
}

/// Quantise f32 values to `kind` with ggml's reference quantisers. Supported targets:
/// F32, F16, BF16, Q8_0, Q4_0, Q4_1.
pub fn quantize(kind: GgmlType, x: &[f32]) -> std::result::Result<Vec<u8>, String> {
    match kind {
        GgmlType::F32 => Ok(f32_bytes(x)),
        GgmlType::F16 => Ok(x.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()),
        GgmlType::BF16 => Ok(x.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect()),
        GgmlType::Q8_0 => quantize_q8_0(x),
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            if x.len() % 32 != 0 {
                return Err(format!("{} values are not a whole number of {} blocks", x.len(), kind.name()));
            }
            let mut out = Vec::with_capacity(x.len() / 32 * 20);
            for block in x.chunks_exact(32) {
                let (lo, hi) = block.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
                let (scale, min, offset) = if kind == GgmlType::Q4_0 {
                    // the value of largest magnitude, sign kept, maps to -8
                    let max = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    (max / -8.0, 0.0, 8.5)
                } else {
                    ((hi - lo) / 15.0, lo, 0.5)
                };
                let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(scale).to_le_bytes());
                if kind == GgmlType::Q4_1 {
                    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                }
                let q = |v: f32| (((v - min) * id + offset) as i8).clamp(0, 15) as u8;
                for j in 0..16 {
                    out.push(q(block[j]) | (q(block[j + 16]) << 4));
                }
            }
            Ok(out)
        }
        other => Err(format!("quantising to {} is not supported", other.name())),
    }
}

/// Whether [`quantize`] can produce this type.
pub fn can_quantize(kind: GgmlType) -> bool {
    matches!(kind, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1)
}

/// Convenience for writers: f32 values as little-endian bytes.
pub fn f32_bytes(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() * 4);
    for v in x {
        out.write_all(&v.to_le_bytes()).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn quantisers_roundtrip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 30.0) * 0.013).collect();
        for kind in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
            let q = quantize(kind, &x).unwrap();
            assert_eq!(q.len() as u64, kind.bytes_for(64).unwrap(), "{}", kind.name());
            let y = dequantize(kind, &q, 64).unwrap();
            let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let levels = match kind {
                GgmlType::Q4_0 | GgmlType::Q4_1 => 15.0,
                GgmlType::Q8_0 => 254.0,
                _ => 1000.0,
            };
            let step = (hi - lo) / levels;
            let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 0.5 * step * 1.1 + 1e-3, "{}: error {worst} vs step {step}", kind.name());
        }
        // re-quantising what was dequantised gives the same Q4_1 bytes back
        let q = quantize(GgmlType::Q4_1, &x).unwrap();
        let y = dequantize(GgmlType::Q4_1, &q, 64).unwrap();
        assert_eq!(dequantize(GgmlType::Q4_1, &quantize(GgmlType::Q4_1, &y).unwrap(), 64).unwrap(), y);
    }

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
    fn q8_0_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(0.5));
        for i in 0..32 {
            b.push((i as i8 - 16) as u8);
        }
        let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(y[0], -8.0);
        assert_eq!(y[16], 0.0);
        assert_eq!(y[31], 7.5);
    }

    #[test]
    fn q4_0_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(2.0));
        // low nibbles 0..15, high nibbles 15..0
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(y[0], -16.0); // (0 - 8) * 2
        assert_eq!(y[15], 14.0); // (15 - 8) * 2
        assert_eq!(y[16], 14.0); // high nibble of byte 0 = 15
        assert_eq!(y[31], -16.0);
    }

    #[test]
    fn q4_1_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(0.25));
        b.extend_from_slice(&h(-1.0));
        for j in 0..16u8 {
            b.push(j | (3 << 4));
        }
        let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(y[0], -1.0);
        assert_eq!(y[8], 1.0); // 8 * 0.25 - 1
        assert_eq!(y[20], -0.25); // 3 * 0.25 - 1
    }

    #[test]
    fn q5_0_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(1.0));
        // high bit set for element 1 (bit 1) and element 16 (bit 16 -> j=0 of upper half uses bit 12+0+4? no: bit j+16)
        let qh: u32 = (1 << 1) | (1 << 16);
        b.extend_from_slice(&qh.to_le_bytes());
        for _ in 0..16 {
            b.push(0x21); // low nibble 1, high nibble 2
        }
        let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!(y[0], 1.0 - 16.0);
        assert_eq!(y[1], (1 + 16) as f32 - 16.0);
        assert_eq!(y[16], (2 + 16) as f32 - 16.0);
        assert_eq!(y[17], 2.0 - 16.0);
    }

    #[test]
    fn q5_1_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&h(0.5));
        b.extend_from_slice(&h(10.0));
        let qh: u32 = 1 << 31; // element 31 gets the high bit
        b.extend_from_slice(&qh.to_le_bytes());
        for _ in 0..16 {
            b.push(0xF0);
        }
        let y = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
        assert_eq!(y[0], 10.0);
        assert_eq!(y[16], 15.0 * 0.5 + 10.0);
        assert_eq!(y[31], 31.0 * 0.5 + 10.0);
    }

    #[test]
    fn f16_bf16_f32() {
        let y = dequantize(GgmlType::F16, &[0x00, 0x3c, 0x00, 0xc0], 2).unwrap();
        assert_eq!(y, vec![1.0, -2.0]);
        let y = dequantize(GgmlType::BF16, &[0x80, 0x3f, 0x40, 0x40], 2).unwrap();
        assert_eq!(y, vec![1.0, 3.0]);
        let y = dequantize(GgmlType::F32, &f32_bytes(&[1.5, -0.25]), 2).unwrap();
        assert_eq!(y, vec![1.5, -0.25]);
    }

    fn k_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        // inverse of scale_min_k4 for 6-bit values
        let mut q = [0u8; 12];
        for j in 0..4 {
            q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
            q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
            q[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
        }
        q
    }

    #[test]
    fn scale_min_roundtrip() {
        let sc = [1, 2, 3, 4, 50, 60, 33, 17];
        let m = [5, 6, 7, 8, 63, 40, 20, 1];
        let q = k_scales(sc, m);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (sc[j] as f32, m[j] as f32));
        }
    }

    #[test]
    fn q4_k_block() {
        let sc = [1, 2, 3, 4, 5, 6, 7, 8];
        let m = [0, 1, 0, 1, 0, 1, 0, 40];
        let mut b = Vec::new();
        b.extend_from_slice(&h(0.5)); // d
        b.extend_from_slice(&h(0.25)); // dmin
        b.extend_from_slice(&k_scales(sc, m));
        for i in 0..128 {
            b.push(((i % 16) as u8) | (((15 - i % 16) as u8) << 4));
        }
        let y = dequantize(GgmlType::Q4K, &b, 256).unwrap();
        // element 0: sub-block 0, scale 1, min 0, q = 0
        assert_eq!(y[0], 0.0);
        // element 5: q = 5 -> 0.5*1*5 - 0
        assert_eq!(y[5], 2.5);
        // element 32: sub-block 1 (high nibbles of bytes 0..32), q = 15, scale 2, min 1
        assert_eq!(y[32], 0.5 * 2.0 * 15.0 - 0.25);
        // element 255: sub-block 7, byte 127 high nibble = 15 - 127 % 16 = 0, scale 8, min 40
        assert_eq!(y[255], -0.25 * 40.0);
        // element 200: sub-block 6 (bytes 96..128 low nibble), byte 104 -> q = 8, scale 7, min 0
        assert_eq!(y[200], 0.5 * 7.0 * 8.0);
    }

    #[test]
    fn q5_k_block() {
        let sc = [1, 1, 1, 1, 1, 1, 2, 2];
        let m = [0, 0, 0, 0, 0, 0, 0, 3];
        let mut b = Vec::new();
        b.extend_from_slice(&h(1.0));
        b.extend_from_slice(&h(1.0));
        b.extend_from_slice(&k_scales(sc, m));
        // qh: element l of sub-block s uses bit s of qh[l]
        let mut qh = [0u8; 32];
        qh[0] = 0b0000_0001; // element 0 (sub-block 0)
        qh[1] = 0b1000_0000; // element 224+1 (sub-block 7)
        b.extend_from_slice(&qh);
        for _ in 0..128 {
            b.push(0x32); // low 2, high 3
        }
        let y = dequantize(GgmlType::Q5K, &b, 256).unwrap();
        assert_eq!(y[0], 2.0 + 16.0);
        assert_eq!(y[1], 2.0);
        assert_eq!(y[32], 3.0);
        assert_eq!(y[225], 2.0 * (3.0 + 16.0) - 3.0);
        assert_eq!(y[224], 2.0 * 3.0 - 3.0);
        assert_eq!(y[192], 2.0 * 2.0);
    }

    #[test]
    fn q6_k_block() {
        let mut b = vec![0u8; 210];
        // ql: element 0 low nibble 1; element 64 (high nibble of ql[0]) 2
        b[0] = 0x21;
        // qh[0] bits 0-1 -> element 0 high bits = 1 (adds 16); bits 4-5 -> element 64 high = 2 (adds 32)
        b[128] = 0b0010_0001;
        // ql[32] low nibble -> element 32; ql[64 + 0] -> element 128
        b[32] = 0x0F;
        b[64] = 0x05;
        // scales (i8) for first half: is 0..8
        let scales: [i8; 16] = [1, 2, 3, 4, -1, 6, 7, 8, 2, 2, 2, 2, 2, 2, 2, 2];
        for (i, s) in scales.iter().enumerate() {
            b[192 + i] = *s as u8;
        }
        b[208..210].copy_from_slice(&h(0.5));
        let y = dequantize(GgmlType::Q6K, &b, 256).unwrap();
        assert_eq!(y[0], 0.5 * 1.0 * ((1 + 16) as f32 - 32.0));
        assert_eq!(y[1], 0.5 * 1.0 * -32.0);
        assert_eq!(y[16], 0.5 * 2.0 * -32.0); // is = 1
        assert_eq!(y[32], 0.5 * 3.0 * (15.0 - 32.0)); // sc[is+2]
        assert_eq!(y[64], 0.5 * -1.0 * ((2 + 32) as f32 - 32.0)); // sc[is+4] = -1
        assert_eq!(y[128], 0.5 * 2.0 * (5.0 - 32.0)); // second half, sc = 2
    }

    #[test]
    fn q8_0_roundtrip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.37).sin()).collect();
        let q = quantize_q8_0(&x).unwrap();
        let y = dequantize(GgmlType::Q8_0, &q, 64).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 0.01, "{a} vs {b}");
        }
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
