//! Export to GGUF, from a GGUF source: the metadata is copied with `block_count` and every
//! per-layer array cut to the kept layers (llama.cpp reads those arrays by layer index, so a
//! stale one breaks loading), tensors are renumbered, and the alignment is kept.
//!
//! Tensors of layers the compression left untouched, and the whole-model tensors, are
//! copied byte for byte in their original quantisation. Merged tensors are re-quantised to
//! the type of the base layer's tensor when this tool can write it (F32, F16, BF16, Q8_0,
//! Q4_0, Q4_1), otherwise to Q8_0, with a notice.

use std::borrow::Cow;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::{ExportReport, ExportSource, MergedTensors, staged};
use crate::collapse::{LayerSource, representative_layers};
use crate::error::{Error, Result};
use crate::model::gguf::{self as format, DEFAULT_ALIGNMENT, GgmlType, GgufFile, Value};
use crate::model::weights::{layer_tensor_gguf, permute_rows};

/// Options of a GGUF export.
#[derive(Debug, Clone, Default)]
pub struct GgufOptions {
    pub force: bool,
}

/// `blk.N.rest` -> (N, rest).
fn layer_of(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, suffix) = rest.split_once('.')?;
    Some((n.parse().ok()?, suffix))
}

/// The metadata of the compressed model: `block_count` set, per-layer arrays cut to the
/// representative layers, and the recipe recorded under `gelaco.*`.
pub fn updated_metadata(g: &GgufFile, arch: &str, representatives: &[usize], merges: &str) -> Vec<(String, Value)> {
    let layers = g
        .get(&format!("{arch}.block_count"))
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    let mut out = Vec::with_capacity(g.key_order.len() + 2);
    for key in &g.key_order {
        let Some(v) = g.get(key) else { continue };
        let v = if key == &format!("{arch}.block_count") {
            match v {
                Value::U64(_) => Value::U64(representatives.len() as u64),
                _ => Value::U32(representatives.len() as u32),
            }
        } else if key.starts_with(&format!("{arch}.")) {
            match v {
                Value::Array(items) if items.len() == layers => {
                    Value::Array(representatives.iter().map(|&j| items[j].clone()).collect())
                }
                other => other.clone(),
            }
        } else {
            v.clone()
        };
        if key.starts_with("gelaco.") {
            continue;
        }
        out.push((key.clone(), v));
    }
    out.push(("gelaco.merges".into(), Value::String(merges.to_string())));
    out.push(("gelaco.source_layers".into(), Value::U32(layers as u32)));
    out
}

/// A tensor of the output: where it comes from.
enum Item<'a> {
    /// Bytes copied from the source tensor.
    Copy(&'a crate::model::gguf::TensorInfo),
    /// A merged layer's tensor (Hugging Face suffix), quantised to `kind`.
    Merged { layer: usize, hf_suffix: &'static str },
}

/// Write the compressed model as a GGUF file at `out`.
pub fn export(src: &ExportSource, out: &Path, opts: &GgufOptions) -> Result<ExportReport> {
    let files = &src.source.files;
    let g = files.gguf().ok_or_else(|| {
        Error::Invalid(format!(
            "GGUF export needs a GGUF source model; {} is a Hugging Face folder. Export it in \
             Hugging Face form and convert that folder with llama.cpp's convert_hf_to_gguf.py",
            files.path.display()
        ))
    })?;
    let arch = g.get("general.architecture").and_then(Value::as_str).unwrap_or("llama").to_string();
    let sources = src.sources();
    let representatives = representative_layers(src.plan, src.settings);
    let metadata = updated_metadata(g, &arch, &representatives, &src.plan.merges_text());
    let alignment = if g.alignment > 0 { g.alignment } else { DEFAULT_ALIGNMENT };
    let mut notices = Vec::new();

    // output directory: whole-model tensors before the first layer, the layers, the rest
    let first_layer = g.tensors.iter().position(|t| t.name.starts_with("blk.")).unwrap_or(g.tensors.len());
    let mut items: Vec<(String, Vec<u64>, GgmlType, Item)> = Vec::new();
    for t in g.tensors[..first_layer].iter().filter(|t| layer_of(&t.name).is_none()) {
        items.push((t.name.clone(), t.dims.clone(), t.kind, Item::Copy(t)));
    }
    for (i, (s, &rep)) in sources.iter().zip(&representatives).enumerate() {
        for t in g.tensors.iter().filter(|t| layer_of(&t.name).is_some_and(|(n, _)| n == rep)) {
            let (_, suffix) = layer_of(&t.name).expect("a layer tensor");
            let name = format!("blk.{i}.{suffix}");
            let hf = layer_tensor_gguf(suffix).map(|t| t.hf);
            match (s, hf) {
                (LayerSource::Merged, Some(hf_suffix)) => {
                    let n = t.elements();
                    let kind = if format::can_quantize(t.kind) && t.kind.bytes_for(n).is_some() {
                        t.kind
                    } else if GgmlType::Q8_0.bytes_for(n).is_some() {
                        notices.push(format!("{name}: merged weights written as Q8_0 ({} cannot be written)", t.kind.name()));
                        GgmlType::Q8_0
                    } else {
                        notices.push(format!("{name}: merged weights written as F32 ({} cannot be written)", t.kind.name()));
                        GgmlType::F32
                    };
                    items.push((name, t.dims.clone(), kind, Item::Merged { layer: i, hf_suffix }));
                }
                (LayerSource::Merged, None) => {
                    notices.push(format!("{name}: not a weight this tool merges; copied from layer {rep}"));
                    items.push((name, t.dims.clone(), t.kind, Item::Copy(t)));
                }
                (LayerSource::Original(_), _) => items.push((name, t.dims.clone(), t.kind, Item::Copy(t))),
            }
        }
    }
    for t in g.tensors[first_layer..].iter().filter(|t| layer_of(&t.name).is_none()) {
        items.push((t.name.clone(), t.dims.clone(), t.kind, Item::Copy(t)));
    }
    let directory: Vec<(String, Vec<u64>, GgmlType, u64)> = items
        .iter()
        .map(|(name, dims, kind, item)| {
            let len = match item {
                Item::Copy(t) => g.raw(t).len() as u64,
                Item::Merged { .. } => kind.bytes_for(dims.iter().product()).unwrap_or(0),
            };
            (name.clone(), dims.clone(), *kind, len)
        })
        .collect();

    let cfg = src.config();
    let permuted = files.gguf_permuted();
    let mut merged = MergedTensors::new(src.compressed);
    let mut produce = |i: usize| -> Result<Cow<'_, [u8]>> {
        let (name, _, kind, item) = &items[i];
        match item {
            Item::Copy(t) => Ok(Cow::Borrowed(g.raw(t))),
            Item::Merged { layer, hf_suffix } => {
                let t = merged.get(*layer, hf_suffix)?;
                let heads = match *hf_suffix {
                    "self_attn.q_proj.weight" | "self_attn.q_proj.bias" if permuted => Some(cfg.num_heads),
                    "self_attn.k_proj.weight" | "self_attn.k_proj.bias" if permuted => Some(cfg.num_kv_heads),
                    _ => None,
                };
                let data = match heads {
                    Some(h) => {
                        let rows = t.shape[0];
                        let cols = t.shape.get(1).copied().unwrap_or(1);
                        permute_rows(&t.data, rows, cols, h)
                    }
                    None => t.data.clone(),
                };
                format::quantize(*kind, &data).map(Cow::Owned).map_err(|m| Error::Invalid(format!("{name}: {m}")))
            }
        }
    };
    staged(out, opts.force, |path| {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut w = BufWriter::with_capacity(1 << 22, file);
        format::write_streamed(&mut w, &metadata, &directory, alignment, &mut produce).map_err(|e| match e {
            Error::Device(m) => Error::Invalid(format!("{}: {m}", out.display())),
            other => other,
        })?;
        let file = w.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        Ok(())
    })?;
    let merged = sources.iter().filter(|s| **s == LayerSource::Merged).count();
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let _ = std::io::stdout().flush();
    Ok(ExportReport {
        path: out.to_path_buf(),
        format: "gguf".into(),
        layers: sources.len(),
        bytes: super::size_of(out),
        files: vec![name],
        copied_layers: sources.len() - merged,
        merged_layers: merged,
        notices,
    })
}
