//! Writing GGUF files: the header and tensor directory, whole files written atomically, and
//! a streamed writer that holds one tensor at a time.

use std::io::Write;
use std::path::Path;

use super::{align_up, GgmlType, Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::error::{Error, Result};

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
