//! Random-weight GGUF models of real models' shapes, for measuring what the tool needs at
//! scale without downloading weights: the layer count, widths, heads and RoPE base of
//! Llama 3.2 1B and 3B, Llama 2 7B, Llama 3 8B and Mistral 7B, with another model's
//! vocabulary and tokenizer (a real 128,256-token vocabulary would only make the files
//! larger). Layers are stored in Q4_0, the embeddings and head in Q8_0, norms in F32, as
//! llama.cpp's Q4_0 files do; the file is written tensor by tensor, so only one tensor is
//! in memory at a time.

use std::borrow::Cow;
use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::gguf::{self, GgmlType, GgufFile, Value, DEFAULT_ALIGNMENT};
use crate::error::{Error, Result};

/// A real model's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub ff: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub rope_theta: f32,
    pub context: u32,
    /// The head shares the embedding matrix.
    pub tied: bool,
}

pub const SHAPES: &[Shape] = &[
    Shape { name: "llama-3.2-1b", layers: 16, hidden: 2048, ff: 8192, heads: 32, kv_heads: 8, rope_theta: 500_000.0, context: 131_072, tied: true },
    Shape { name: "llama-3.2-3b", layers: 28, hidden: 3072, ff: 8192, heads: 24, kv_heads: 8, rope_theta: 500_000.0, context: 131_072, tied: true },
    Shape { name: "llama-2-7b", layers: 32, hidden: 4096, ff: 11008, heads: 32, kv_heads: 32, rope_theta: 10_000.0, context: 4096, tied: false },
    Shape { name: "llama-3-8b", layers: 32, hidden: 4096, ff: 14336, heads: 32, kv_heads: 8, rope_theta: 500_000.0, context: 8192, tied: false },
    Shape { name: "mistral-7b", layers: 32, hidden: 4096, ff: 14336, heads: 32, kv_heads: 8, rope_theta: 1_000_000.0, context: 32_768, tied: false },
];

pub fn shape(name: &str) -> Option<&'static Shape> {
    SHAPES.iter().find(|s| s.name == name)
}

/// Write a random-weight model of `shape` to `out` (whole or not at all), with the vocabulary,
/// tokenizer and other metadata of the `llama` GGUF file `vocab_from`.
pub fn write_random(shape: &Shape, vocab_from: &GgufFile, out: &Path, seed: u64) -> Result<()> {
    let arch = vocab_from.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    if arch != "llama" {
        return Err(Error::format(&vocab_from.path, format!("a vocabulary source of architecture '{arch}'; a 'llama' GGUF file is needed")));
    }
    let vocab = vocab_from
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(<[Value]>::len)
        .ok_or_else(|| Error::format(&vocab_from.path, "has no tokenizer.ggml.tokens"))?;
    let head_dim = shape.hidden / shape.heads;
    let own: Vec<(&str, Value)> = vec![
        ("general.name", Value::String(format!("random {}", shape.name))),
        ("general.file_type", Value::U32(2)),
        ("llama.block_count", Value::U32(shape.layers as u32)),
        ("llama.context_length", Value::U32(shape.context)),
        ("llama.embedding_length", Value::U32(shape.hidden as u32)),
        ("llama.feed_forward_length", Value::U32(shape.ff as u32)),
        ("llama.attention.head_count", Value::U32(shape.heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(shape.kv_heads as u32)),
        ("llama.rope.freq_base", Value::F32(shape.rope_theta)),
        ("llama.rope.dimension_count", Value::U32(head_dim as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(vocab as u32)),
    ];
    let mut metadata: Vec<(String, Value)> = Vec::new();
    for key in &vocab_from.key_order {
        if key.starts_with("llama.") || own.iter().any(|(k, _)| k == key) {
            continue;
        }
        if let Some(v) = vocab_from.get(key) {
            metadata.push((key.clone(), v.clone()));
        }
    }
    metadata.extend(own.into_iter().map(|(k, v)| (k.to_string(), v)));

    let (h, q, kv, ff) = (shape.hidden as u64, (shape.heads * head_dim) as u64, (shape.kv_heads * head_dim) as u64, shape.ff as u64);
    // ggml order: dims[0] is the number of columns (the input width of a projection)
    let mut tensors: Vec<(String, Vec<u64>, GgmlType)> = vec![("token_embd.weight".into(), vec![h, vocab as u64], GgmlType::Q8_0)];
    for l in 0..shape.layers {
        let t = |n: &str, dims: Vec<u64>, kind| (format!("blk.{l}.{n}"), dims, kind);
        tensors.extend([
            t("attn_norm.weight", vec![h], GgmlType::F32),
            t("attn_q.weight", vec![h, q], GgmlType::Q4_0),
            t("attn_k.weight", vec![h, kv], GgmlType::Q4_0),
            t("attn_v.weight", vec![h, kv], GgmlType::Q4_0),
            t("attn_output.weight", vec![q, h], GgmlType::Q4_0),
            t("ffn_norm.weight", vec![h], GgmlType::F32),
            t("ffn_gate.weight", vec![h, ff], GgmlType::Q4_0),
            t("ffn_up.weight", vec![h, ff], GgmlType::Q4_0),
            t("ffn_down.weight", vec![ff, h], GgmlType::Q4_0),
        ]);
    }
    tensors.push(("output_norm.weight".into(), vec![h], GgmlType::F32));
    if !shape.tied {
        tensors.push(("output.weight".into(), vec![h, vocab as u64], GgmlType::Q8_0));
    }
    let directory: Vec<(String, Vec<u64>, GgmlType, u64)> = tensors
        .iter()
        .map(|(n, d, k)| {
            let len = k.bytes_for(d.iter().product()).ok_or_else(|| Error::Invalid(format!("tensor '{n}' is not whole {} blocks", k.name())))?;
            Ok((n.clone(), d.clone(), *k, len))
        })
        .collect::<Result<_>>()?;
    let mut rng = StdRng::seed_from_u64(seed);
    crate::export::staged(out, true, |path| {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, file);
        gguf::write_streamed(&mut w, &metadata, &directory, DEFAULT_ALIGNMENT, |i| {
            let (name, dims, kind) = &tensors[i];
            let n: u64 = dims.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n as usize]
            } else {
                // uniform with the standard deviation of a 0.02 normal, as models are initialised
                let a = 0.02 * 3f32.sqrt();
                (0..n).map(|_| rng.random_range(-a..a)).collect()
            };
            gguf::quantize(*kind, &values).map(Cow::Owned).map_err(|m| Error::Invalid(format!("tensor '{name}': {m}")))
        })?;
        let file = w.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(path, e))
    })
}
