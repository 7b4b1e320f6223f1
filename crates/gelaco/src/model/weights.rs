//! Weight sources: a GGUF file or a Hugging Face folder of safetensors, both answering
//! requests for named host tensors in Hugging Face naming and layout.
//!
//! The one name table between GGUF (`blk.N.attn_q.weight`) and Hugging Face
//! (`model.layers.N.self_attn.q_proj.weight`) lives here, and so does the one place that
//! undoes llama.cpp's row permutation of the q/k weights of `llama` models.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::config::{self, Arch, ModelConfig};
use super::gguf::{GgmlType, GgufFile};
use super::stored::{MappedBytes, Resident, StoredMatrix};
use crate::error::{Error, Result};

/// A dense f32 host tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }
}

/// One parameter of a transformer layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerParam {
    InputNorm,
    Q,
    K,
    V,
    O,
    QBias,
    KBias,
    VBias,
    QNorm,
    KNorm,
    PostAttnNorm,
    Gate,
    Up,
    Down,
}

impl LayerParam {
    /// Whether a model of this configuration has the parameter.
    pub fn present(self, c: &ModelConfig) -> bool {
        match self {
            LayerParam::QBias | LayerParam::KBias | LayerParam::VBias => c.attention_bias,
            LayerParam::QNorm | LayerParam::KNorm => c.qk_norm,
            _ => true,
        }
    }

    /// A projection's weight matrix (the rest are vectors: norms and biases).
    pub fn is_matrix(self) -> bool {
        matches!(self, LayerParam::Q | LayerParam::K | LayerParam::V | LayerParam::O | LayerParam::Gate | LayerParam::Up | LayerParam::Down)
    }

    /// An RMSNorm weight.
    pub fn is_norm(self) -> bool {
        matches!(self, LayerParam::InputNorm | LayerParam::PostAttnNorm | LayerParam::QNorm | LayerParam::KNorm)
    }

    /// The parameter's shape under this configuration, in Hugging Face layout
    /// (`[out, in]` for matrices).
    pub fn shape(self, c: &ModelConfig) -> Vec<usize> {
        let (h, q, kv, ff) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size);
        match self {
            LayerParam::InputNorm | LayerParam::PostAttnNorm => vec![h],
            LayerParam::Q => vec![q, h],
            LayerParam::K | LayerParam::V => vec![kv, h],
            LayerParam::O => vec![h, q],
            LayerParam::QBias => vec![q],
            LayerParam::KBias | LayerParam::VBias => vec![kv],
            LayerParam::QNorm | LayerParam::KNorm => vec![c.head_dim],
            LayerParam::Gate | LayerParam::Up => vec![ff, h],
            LayerParam::Down => vec![h, ff],
        }
    }
}

/// A layer parameter's tensor names: the suffixes after `model.layers.N.` (Hugging Face)
/// and `blk.N.` (GGUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerTensor {
    pub hf: &'static str,
    pub gguf: &'static str,
    pub param: LayerParam,
}

const fn layer_tensor(hf: &'static str, gguf: &'static str, param: LayerParam) -> LayerTensor {
    LayerTensor { hf, gguf, param }
}

/// Every parameter of a layer, in the order exports write them: the one table of a layer's
/// tensors, their names in both formats and their shapes.
pub const LAYER_TENSORS: &[LayerTensor] = &[
    layer_tensor("input_layernorm.weight", "attn_norm.weight", LayerParam::InputNorm),
    layer_tensor("self_attn.q_proj.weight", "attn_q.weight", LayerParam::Q),
    layer_tensor("self_attn.k_proj.weight", "attn_k.weight", LayerParam::K),
    layer_tensor("self_attn.v_proj.weight", "attn_v.weight", LayerParam::V),
    layer_tensor("self_attn.o_proj.weight", "attn_output.weight", LayerParam::O),
    layer_tensor("self_attn.q_proj.bias", "attn_q.bias", LayerParam::QBias),
    layer_tensor("self_attn.k_proj.bias", "attn_k.bias", LayerParam::KBias),
    layer_tensor("self_attn.v_proj.bias", "attn_v.bias", LayerParam::VBias),
    layer_tensor("self_attn.q_norm.weight", "attn_q_norm.weight", LayerParam::QNorm),
    layer_tensor("self_attn.k_norm.weight", "attn_k_norm.weight", LayerParam::KNorm),
    layer_tensor("post_attention_layernorm.weight", "ffn_norm.weight", LayerParam::PostAttnNorm),
    layer_tensor("mlp.gate_proj.weight", "ffn_gate.weight", LayerParam::Gate),
    layer_tensor("mlp.up_proj.weight", "ffn_up.weight", LayerParam::Up),
    layer_tensor("mlp.down_proj.weight", "ffn_down.weight", LayerParam::Down),
];

/// The layer tensor of a Hugging Face suffix (`self_attn.q_proj.weight`).
pub fn layer_tensor_hf(suffix: &str) -> Option<&'static LayerTensor> {
    LAYER_TENSORS.iter().find(|t| t.hf == suffix)
}

/// The layer tensor of a GGUF suffix (`attn_q.weight`).
pub fn layer_tensor_gguf(suffix: &str) -> Option<&'static LayerTensor> {
    LAYER_TENSORS.iter().find(|t| t.gguf == suffix)
}

/// The type a safetensors matrix is kept in as stored (32 or 16 bits); `None` for the
/// others.
fn stored_kind(dtype: Dtype) -> Option<GgmlType> {
    match dtype {
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

/// Whole-model tensors: (Hugging Face, GGUF).
pub const GLOBAL_TENSORS: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// GGUF name of a Hugging Face tensor name, when the table knows it.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    if let Some(&(_, g)) = GLOBAL_TENSORS.iter().find(|(h, _)| *h == name) {
        return Some(g.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let layer: usize = idx.parse().ok()?;
    Some(format!("blk.{layer}.{}", layer_tensor_hf(suffix)?.gguf))
}

/// Hugging Face name of a GGUF tensor name, when the table knows it.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    if let Some(&(h, _)) = GLOBAL_TENSORS.iter().find(|(_, g)| *g == name) {
        return Some(h.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let layer: usize = idx.parse().ok()?;
    Some(format!("model.layers.{layer}.{}", layer_tensor_gguf(suffix)?.hf))
}

/// Move whole rows between Hugging Face's q/k layout and llama.cpp's. Per head, llama.cpp
/// stores at row `2*j + i` what Hugging Face stores at row `i * head_dim/2 + j`;
/// `to_gguf` picks the direction. `rows` are the weight's rows (or a bias's elements).
fn move_rows<T: Copy>(data: &[T], rows: usize, cols: usize, heads: usize, to_gguf: bool) -> Vec<T> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = data.to_vec();
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let hf = h * head_dim + i * half + j;
                let gg = h * head_dim + 2 * j + i;
                let (dst, src) = if to_gguf { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Undo llama.cpp's q/k row permutation (interleaved RoPE pairs back to halves).
pub fn unpermute_rows<T: Copy>(data: &[T], rows: usize, cols: usize, heads: usize) -> Vec<T> {
    move_rows(data, rows, cols, heads, false)
}

/// Inverse of [`unpermute_rows`]: Hugging Face layout to llama.cpp's.
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_rows(data, rows, cols, heads, true)
}

struct Shard {
    path: PathBuf,
    mmap: Arc<Mmap>,
}

impl Shard {
    /// The mapped bytes of `data`, a slice of this shard's mapping (a tensor's data).
    fn mapped(&self, data: &[u8]) -> MappedBytes {
        let start = data.as_ptr() as usize - self.mmap.as_ptr() as usize;
        MappedBytes::new(self.mmap.clone(), start..start + data.len())
    }
}

enum Source {
    Gguf(GgufFile),
    Safetensors {
        shards: Vec<Shard>,
        /// tensor name -> shard index
        index: BTreeMap<String, usize>,
    },
}

/// What kind of file a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Gguf,
    Safetensors,
}

/// An opened model on disk: its configuration and a way to read its tensors.
pub struct ModelFiles {
    /// The path the user gave (a GGUF file or a folder).
    pub path: PathBuf,
    pub config: ModelConfig,
    source: Source,
}

fn open_mmap(path: &Path) -> Result<Mmap> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map of a file this tool never writes while reading.
    unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))
}

impl ModelFiles {
    /// Open a GGUF file or a Hugging Face folder (`config.json` + safetensors).
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            Self::open_hf(path)
        } else if path.extension().is_some_and(|e| e == "safetensors" || e == "json") {
            match path.parent() {
                Some(dir) => Self::open_hf(dir),
                None => Err(Error::format(path, "a safetensors file must sit in a folder with config.json")),
            }
        } else {
            Self::open_gguf(path)
        }
    }

    fn open_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = config::from_gguf(&file)?;
        let this = ModelFiles {
            path: path.to_path_buf(),
            config,
            source: Source::Gguf(file),
        };
        this.check_tensors()?;
        Ok(this)
    }

    fn open_hf(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config = config::from_hf_json(&cfg_path, &text)?;
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(&index_path, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(&index_path, "no 'weight_map' object"))?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(Error::format(dir, "no model.safetensors or model.safetensors.index.json in this folder"));
            }
            vec![single]
        };
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for (i, p) in files.iter().enumerate() {
            let mmap = open_mmap(p)?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| Error::format(p, format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            shards.push(Shard { path: p.clone(), mmap: Arc::new(mmap) });
        }
        let this = ModelFiles {
            path: dir.to_path_buf(),
            config,
            source: Source::Safetensors { shards, index },
        };
        this.check_tensors()?;
        Ok(this)
    }

    pub fn kind(&self) -> FileKind {
        match self.source {
            Source::Gguf(_) => FileKind::Gguf,
            Source::Safetensors { .. } => FileKind::Safetensors,
        }
    }

    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.source {
            Source::Gguf(g) => Some(g),
            Source::Safetensors { .. } => None,
        }
    }

    /// Llama 3's RoPE frequency factors where the file stores them as a tensor (llama.cpp's
    /// `rope_freqs.weight`) instead of configuration fields.
    pub fn rope_freq_factors(&self) -> Result<Option<Vec<f32>>> {
        match self.gguf().and_then(|g| g.tensor("rope_freqs.weight").map(|info| (g, info))) {
            Some((g, info)) => Ok(Some(g.dequantize(info)?)),
            None => Ok(None),
        }
    }

    /// Every tensor the architecture needs is present, with its expected shape, and
    /// stored in a type this tool reads. Checked once at open, before any work.
    fn check_tensors(&self) -> Result<()> {
        let c = &self.config;
        let mut expect: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![c.vocab_size, c.hidden_size]),
            ("model.norm.weight".into(), vec![c.hidden_size]),
        ];
        if !c.tie_word_embeddings {
            expect.push(("lm_head.weight".into(), vec![c.vocab_size, c.hidden_size]));
        }
        for l in 0..c.num_layers {
            for t in LAYER_TENSORS.iter().filter(|t| t.param.present(c)) {
                expect.push((format!("model.layers.{l}.{}", t.hf), t.param.shape(c)));
            }
        }
        for (name, shape) in expect {
            let (found, kind) = self.shape_of(&name)?;
            if found != shape {
                return Err(Error::weights(
                    self.file_of(&name),
                    format!("tensor '{name}' has shape {found:?}, the configuration needs {shape:?}"),
                ));
            }
            if let Some(kind) = kind {
                if !kind.is_supported() {
                    return Err(Error::UnsupportedType {
                        path: self.path.clone(),
                        tensor: hf_to_gguf(&name).unwrap_or(name),
                        kind: kind.name(),
                    });
                }
            }
        }
        Ok(())
    }

    fn file_of(&self, name: &str) -> PathBuf {
        match &self.source {
            Source::Gguf(g) => g.path.clone(),
            Source::Safetensors { shards, index } => index
                .get(name)
                .map(|&i| shards[i].path.clone())
                .unwrap_or_else(|| self.path.clone()),
        }
    }

    /// Shape (row-major) of a tensor by Hugging Face name, and its GGUF type if any.
    fn shape_of(&self, name: &str) -> Result<(Vec<usize>, Option<GgmlType>)> {
        let missing = || Error::weights(&self.path, format!("required tensor '{name}' is missing"));
        match &self.source {
            Source::Gguf(g) => {
                let gname = hf_to_gguf(name).ok_or_else(missing)?;
                let t = g.tensor(&gname).ok_or_else(missing)?;
                Ok((t.shape(), Some(t.kind)))
            }
            Source::Safetensors { shards, index } => {
                let &i = index.get(name).ok_or_else(missing)?;
                let st = SafeTensors::deserialize(&shards[i].mmap)
                    .map_err(|e| Error::format(&shards[i].path, e.to_string()))?;
                let v = st.tensor(name).map_err(|_| missing())?;
                Ok((v.shape().to_vec(), None))
            }
        }
    }

    /// Whether a tensor (Hugging Face name) exists.
    pub fn has(&self, name: &str) -> bool {
        match &self.source {
            Source::Gguf(g) => hf_to_gguf(name).is_some_and(|n| g.tensor(&n).is_some()),
            Source::Safetensors { index, .. } => index.contains_key(name),
        }
    }

    /// Read a tensor by Hugging Face name, as f32 in Hugging Face layout.
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        match &self.source {
            Source::Gguf(g) => {
                let gname = hf_to_gguf(name)
                    .ok_or_else(|| Error::weights(&self.path, format!("no GGUF name for tensor '{name}'")))?;
                let info = g
                    .tensor(&gname)
                    .ok_or_else(|| Error::weights(&self.path, format!("required tensor '{gname}' is missing")))?;
                let shape = info.shape();
                let mut data = g.dequantize(info)?;
                // the caller keeps the f32 copy: the file's bytes need not stay in memory besides
                g.mapped(info).release();
                if let Some(heads) = self.permuted_heads(&gname) {
                    let rows = shape[0];
                    let cols = if shape.len() > 1 { shape[1] } else { 1 };
                    data = unpermute_rows(&data, rows, cols, heads);
                }
                Ok(HostTensor::new(shape, data))
            }
            Source::Safetensors { shards, index } => {
                let &i = index
                    .get(name)
                    .ok_or_else(|| Error::weights(&self.path, format!("required tensor '{name}' is missing")))?;
                let shard = &shards[i];
                let st = SafeTensors::deserialize(&shard.mmap).map_err(|e| Error::format(&shard.path, e.to_string()))?;
                let v = st
                    .tensor(name)
                    .map_err(|e| Error::weights(&shard.path, format!("tensor '{name}': {e}")))?;
                let raw = v.data();
                let data: Vec<f32> = match v.dtype() {
                    Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                    Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                    Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                    other => {
                        return Err(Error::UnsupportedType {
                            path: shard.path.clone(),
                            tensor: name.to_string(),
                            kind: format!("{other:?}"),
                        });
                    }
                };
                shard.mapped(raw).release();
                Ok(HostTensor::new(v.shape().to_vec(), data))
            }
        }
    }

    /// A layer's projection weight (Hugging Face name) as the file stores it, to be
    /// dequantised when used; `None` for a safetensors type that is not 32 or 16 bits.
    pub fn stored_matrix(&self, name: &str, resident: &Arc<Resident>, device: &Device) -> Result<Option<Arc<StoredMatrix>>> {
        let missing = || Error::weights(&self.path, format!("required tensor '{name}' is missing"));
        let (kind, bytes, shape, heads, file) = match &self.source {
            Source::Gguf(g) => {
                let gname = hf_to_gguf(name).ok_or_else(missing)?;
                let info = g.tensor(&gname).ok_or_else(missing)?;
                (info.kind, g.mapped(info), info.shape(), self.permuted_heads(&gname), g.path.clone())
            }
            Source::Safetensors { shards, index } => {
                let shard = &shards[*index.get(name).ok_or_else(missing)?];
                let st = SafeTensors::deserialize(&shard.mmap).map_err(|e| Error::format(&shard.path, e.to_string()))?;
                let v = st.tensor(name).map_err(|e| Error::weights(&shard.path, format!("tensor '{name}': {e}")))?;
                let Some(kind) = stored_kind(v.dtype()) else {
                    return Ok(None);
                };
                (kind, shard.mapped(v.data()), v.shape().to_vec(), None, shard.path.clone())
            }
        };
        let [rows, cols] = shape[..] else {
            return Err(Error::weights(file, format!("tensor '{name}' has shape {shape:?}, not a matrix")));
        };
        StoredMatrix::new(name.to_string(), kind, bytes, rows, cols, heads, resident, device)
            .map(Some)
            .map_err(|m| Error::weights(file, m))
    }

    /// The stored bytes of a safetensors tensor (Hugging Face name): type, shape, data.
    pub fn raw_safetensor(&self, name: &str) -> Option<(Dtype, Vec<usize>, &[u8])> {
        match &self.source {
            Source::Gguf(_) => None,
            Source::Safetensors { shards, index } => {
                let shard = &shards[*index.get(name)?];
                let st = SafeTensors::deserialize(&shard.mmap).ok()?;
                let v = st.tensor(name).ok()?;
                Some((v.dtype(), v.shape().to_vec(), v.data()))
            }
        }
    }

    /// The heads over which llama.cpp permuted the rows of this GGUF tensor (the q and k
    /// weights and biases of `llama` models), to be undone on reading.
    fn permuted_heads(&self, gguf_name: &str) -> Option<usize> {
        if !self.gguf_permuted() {
            None
        } else if gguf_name.ends_with("attn_q.weight") || gguf_name.ends_with("attn_q.bias") {
            Some(self.config.num_heads)
        } else if gguf_name.ends_with("attn_k.weight") || gguf_name.ends_with("attn_k.bias") {
            Some(self.config.num_kv_heads)
        } else {
            None
        }
    }

    /// The bytes every layer's projection weights take on a device that keeps
    /// block-quantised matrices as their codes and 16-bit ones as 16 bits
    /// ([`super::stored::DeviceCodes`]), the others as f32.
    pub fn layers_codes_bytes(&self) -> u64 {
        let f32_bytes = super::layer_matrix_bytes(&self.config) * self.config.num_layers as u64;
        // (type, shape) of every layer matrix the files hold
        let mut matrices: Vec<(GgmlType, Vec<usize>)> = Vec::new();
        match &self.source {
            Source::Gguf(g) => {
                for t in &g.tensors {
                    let Some((_, suffix)) = t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')) else {
                        continue;
                    };
                    if layer_tensor_gguf(suffix).is_some_and(|l| l.param.is_matrix()) {
                        matrices.push((t.kind, t.shape()));
                    }
                }
            }
            Source::Safetensors { shards, .. } => {
                for shard in shards {
                    let Ok(st) = SafeTensors::deserialize(&shard.mmap) else {
                        continue;
                    };
                    for (name, view) in st.tensors() {
                        let Some((_, suffix)) = name.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) else {
                            continue;
                        };
                        if layer_tensor_hf(suffix).is_some_and(|l| l.param.is_matrix()) {
                            // a type not kept as stored is counted as f32
                            matrices.push((stored_kind(view.dtype()).unwrap_or(GgmlType::F32), view.shape().to_vec()));
                        }
                    }
                }
            }
        }
        let mut total = 0;
        let mut seen = 0;
        for (kind, shape) in matrices {
            let [rows, cols] = shape[..] else {
                continue;
            };
            seen += rows as u64 * cols as u64 * 4;
            total += super::stored::DeviceCodes::bytes_for(kind, rows, cols);
        }
        // a file whose matrices were not all recognised counts the rest as f32
        total + f32_bytes.saturating_sub(seen)
    }

    /// GGUF files of the `llama` architecture store q/k rows permuted by llama.cpp.
    pub fn gguf_permuted(&self) -> bool {
        matches!(&self.source, Source::Gguf(_)) && matches!(self.config.arch, Arch::Llama | Arch::Mistral)
    }

    /// A description of how the weights are stored: file type and a count per tensor type.
    pub fn storage_summary(&self) -> (String, BTreeMap<String, usize>) {
        let mut counts = BTreeMap::new();
        match &self.source {
            Source::Gguf(g) => {
                for t in &g.tensors {
                    *counts.entry(t.kind.name()).or_insert(0) += 1;
                }
                let ft = g
                    .get("general.file_type")
                    .and_then(|v| v.as_u64())
                    .map(file_type_name)
                    .unwrap_or_else(|| "unknown".into());
                (format!("GGUF v{} ({ft})", g.version), counts)
            }
            Source::Safetensors { shards, .. } => {
                for s in shards {
                    if let Ok(st) = SafeTensors::deserialize(&s.mmap) {
                        for (_, v) in st.iter() {
                            *counts.entry(format!("{:?}", v.dtype())).or_insert(0) += 1;
                        }
                    }
                }
                (format!("safetensors ({} file{})", shards.len(), if shards.len() == 1 { "" } else { "s" }), counts)
            }
        }
    }

    /// SHA-256 over the files that define the model: the GGUF file, or `config.json` and
    /// the safetensors files of a folder, in name order.
    pub fn sha256(&self) -> Result<String> {
        let files: Vec<PathBuf> = match &self.source {
            Source::Gguf(g) => vec![g.path.clone()],
            Source::Safetensors { .. } => {
                let mut v: Vec<PathBuf> = std::fs::read_dir(&self.path)
                    .map_err(|e| Error::io(&self.path, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension().is_some_and(|x| x == "safetensors") || p.file_name().is_some_and(|n| n == "config.json")
                    })
                    .collect();
                v.sort();
                v
            }
        };
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        for f in files {
            let mut file = File::open(&f).map_err(|e| Error::io(&f, e))?;
            std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(&f, e))?;
        }
        Ok(format!("{:x}", sha2::Digest::finalize(hasher)))
    }

    /// Total bytes of the model files.
    pub fn file_bytes(&self) -> u64 {
        match &self.source {
            Source::Gguf(g) => g.file_size(),
            Source::Safetensors { shards, .. } => shards.iter().map(|s| s.mmap.len() as u64).sum(),
        }
    }
}

/// llama.cpp's `general.file_type` names.
pub fn file_type_name(ft: u64) -> String {
    match ft {
        0 => "all F32",
        1 => "mostly F16",
        2 => "mostly Q4_0",
        3 => "mostly Q4_1",
        7 => "mostly Q8_0",
        8 => "mostly Q5_0",
        9 => "mostly Q5_1",
        10 => "mostly Q2_K",
        11 => "mostly Q3_K_S",
        12 => "mostly Q3_K_M",
        13 => "mostly Q3_K_L",
        14 => "mostly Q4_K_S",
        15 => "mostly Q4_K_M",
        16 => "mostly Q5_K_S",
        17 => "mostly Q5_K_M",
        18 => "mostly Q6_K",
        32 => "mostly BF16",
        other => return format!("file type {other}"),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_table_roundtrips() {
        for (h, g) in [
            ("model.layers.3.self_attn.q_proj.weight", "blk.3.attn_q.weight"),
            ("model.layers.12.mlp.down_proj.weight", "blk.12.ffn_down.weight"),
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
        ] {
            assert_eq!(hf_to_gguf(h).as_deref(), Some(g));
            assert_eq!(gguf_to_hf(g).as_deref(), Some(h));
        }
        assert_eq!(hf_to_gguf("model.layers.x.foo"), None);
    }

    #[test]
    fn permutation_inverts() {
        let rows = 12; // 2 heads of dim 6
        let cols = 3;
        let data: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let p = permute_rows(&data, rows, cols, 2);
        assert_ne!(p, data);
        assert_eq!(unpermute_rows(&p, rows, cols, 2), data);
        // head 0, hf rows [0,1,2 | 3,4,5] -> gguf rows [0,3,1,4,2,5]
        let row = |d: &[f32], r: usize| d[r * cols];
        assert_eq!(row(&p, 1), row(&data, 3));
        assert_eq!(row(&p, 2), row(&data, 1));
    }
}
