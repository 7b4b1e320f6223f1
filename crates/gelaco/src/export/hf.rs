//! Export to a Hugging Face folder: `config.json` with the layer count and every per-layer
//! field updated, safetensors (sharded above a size limit, with an index), the tokenizer
//! (`tokenizer.json` + `tokenizer_config.json`, built from GGUF metadata when the source is
//! a GGUF file), `generation_config.json` when known, and the recipe.
//!
//! Layers the compression left untouched are read from the source files (copied byte for
//! byte when the source is safetensors of the output type); merged layers come from the
//! in-memory compressed model.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use half::{bf16, f16};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

use super::{ExportReport, ExportSource, MergedTensors, size_of, staged};
use crate::collapse::LayerSource;
use crate::error::{Error, Result};
use crate::model::config::{Arch, ModelConfig, RopeScaling};
use crate::model::weights::{FileKind, GLOBAL_TENSORS, LAYER_TENSORS};

/// Element type of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HfDtype {
    F32,
    F16,
    Bf16,
}

crate::choice!(HfDtype {
    F32 => "f32": "32-bit floats",
    F16 => "f16": "16-bit floats (IEEE half)",
    Bf16 => "bf16": "bfloat16",
});

impl HfDtype {
    fn dtype(self) -> Dtype {
        match self {
            HfDtype::F32 => Dtype::F32,
            HfDtype::F16 => Dtype::F16,
            HfDtype::Bf16 => Dtype::BF16,
        }
    }

    fn bytes(self) -> usize {
        if self == HfDtype::F32 { 4 } else { 2 }
    }

    fn torch_name(self) -> &'static str {
        match self {
            HfDtype::F32 => "float32",
            HfDtype::F16 => "float16",
            HfDtype::Bf16 => "bfloat16",
        }
    }

    fn encode(self, x: &[f32]) -> Vec<u8> {
        match self {
            HfDtype::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            HfDtype::F16 => x.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
            HfDtype::Bf16 => x.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
        }
    }
}

/// Options of a Hugging Face export.
#[derive(Debug, Clone)]
pub struct HfOptions {
    /// Output type; `None` keeps the source's safetensors type, or f16 for a GGUF source.
    pub dtype: Option<HfDtype>,
    /// Largest shard, in bytes of tensor data.
    pub max_shard_bytes: u64,
    pub force: bool,
}

impl Default for HfOptions {
    fn default() -> Self {
        HfOptions { dtype: None, max_shard_bytes: 5_000_000_000, force: false }
    }
}

/// One tensor to write: its name and how to get its bytes.
struct Planned {
    name: String,
    shape: Vec<usize>,
    fetch: Fetch,
}

enum Fetch {
    /// From the source files by this name.
    Source(String),
    /// From merged layer `layer` of the compressed model, this suffix.
    Merged { layer: usize, suffix: &'static str },
}

fn source_dtype(src: &ExportSource) -> Option<HfDtype> {
    let (dt, _, _) = src.source.files.raw_safetensor("model.embed_tokens.weight")?;
    match dt {
        Dtype::F32 => Some(HfDtype::F32),
        Dtype::F16 => Some(HfDtype::F16),
        Dtype::BF16 => Some(HfDtype::Bf16),
        _ => None,
    }
}

/// The list of tensors of the exported model, in order: embeddings, layers, norm, head.
fn plan_tensors(src: &ExportSource) -> Result<Vec<Planned>> {
    let files = &src.source.files;
    let cfg = src.config();
    let h = cfg.hidden_size;
    let mut out = vec![Planned {
        name: "model.embed_tokens.weight".into(),
        shape: vec![cfg.vocab_size, h],
        fetch: Fetch::Source("model.embed_tokens.weight".into()),
    }];
    for (i, s) in src.sources().iter().enumerate() {
        for t in LAYER_TENSORS {
            let suffix = t.hf;
            let name = format!("model.layers.{i}.{suffix}");
            let fetch = match s {
                LayerSource::Original(j) => {
                    let from = format!("model.layers.{j}.{suffix}");
                    if !files.has(&from) {
                        continue;
                    }
                    Fetch::Source(from)
                }
                LayerSource::Merged => {
                    if !files.has(&format!("model.layers.0.{suffix}")) {
                        continue;
                    }
                    Fetch::Merged { layer: i, suffix }
                }
            };
            out.push(Planned { name, shape: t.param.shape(cfg), fetch });
        }
    }
    out.push(Planned { name: "model.norm.weight".into(), shape: vec![h], fetch: Fetch::Source("model.norm.weight".into()) });
    if !cfg.tie_word_embeddings {
        out.push(Planned {
            name: "lm_head.weight".into(),
            shape: vec![cfg.vocab_size, h],
            fetch: Fetch::Source("lm_head.weight".into()),
        });
    }
    debug_assert!(GLOBAL_TENSORS.iter().all(|(n, _)| out.iter().any(|p| p.name == *n) || *n == "lm_head.weight"));
    Ok(out)
}

/// Per-layer fields of a Hugging Face config: lists with one entry per layer are cut to
/// the representative layers; `max_window_layers` counts the layers kept below it.
pub fn update_config(mut config: Value, representatives: &[usize], original_layers: usize, dtype: HfDtype) -> Value {
    if let Some(obj) = config.as_object_mut() {
        for (key, v) in obj.iter_mut() {
            if let Some(list) = v.as_array() {
                if list.len() == original_layers && key != "architectures" {
                    *v = Value::Array(representatives.iter().map(|&j| list[j].clone()).collect());
                }
            }
        }
        if let Some(m) = obj.get("max_window_layers").and_then(Value::as_u64) {
            let kept = representatives.iter().filter(|&&j| (j as u64) < m).count();
            obj.insert("max_window_layers".into(), json!(kept));
        }
        obj.insert("num_hidden_layers".into(), json!(representatives.len()));
        let key = if obj.contains_key("dtype") { "dtype" } else { "torch_dtype" };
        obj.insert(key.into(), json!(dtype.torch_name()));
    }
    config
}

/// A `config.json` for a model that came from GGUF metadata.
pub fn config_from(cfg: &ModelConfig, layers: usize, dtype: HfDtype) -> Value {
    let (class, model_type) = match cfg.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Mistral => ("MistralForCausalLM", "mistral"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
    };
    let mut c = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": dtype.torch_name(),
        "use_cache": true,
    });
    let o = c.as_object_mut().expect("an object");
    if cfg.arch == Arch::Llama {
        o.insert("attention_bias".into(), json!(cfg.attention_bias));
        o.insert("mlp_bias".into(), json!(false));
    }
    match cfg.arch {
        Arch::Mistral => {
            o.insert("sliding_window".into(), json!(cfg.sliding_window));
        }
        Arch::Qwen2 | Arch::Qwen3 => {
            o.insert("use_sliding_window".into(), json!(cfg.sliding_window.is_some()));
            o.insert("sliding_window".into(), json!(cfg.sliding_window));
        }
        Arch::Llama => {}
    }
    if let Some(b) = cfg.bos_token_id {
        o.insert("bos_token_id".into(), json!(b));
    }
    match cfg.eos_token_ids.as_slice() {
        [] => {}
        [one] => {
            o.insert("eos_token_id".into(), json!(one));
        }
        many => {
            o.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(r) = &cfg.rope_scaling {
        let v = match r {
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings,
            }),
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        };
        o.insert("rope_scaling".into(), v);
    }
    c
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_vec_pretty(v).map_err(|e| Error::format(path, e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Files of a Hugging Face folder that describe the tokenizer and generation.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
];

/// The tokenizer files: copied from a Hugging Face source, built from a GGUF source.
fn write_tokenizer(src: &ExportSource, dir: &Path, files: &mut Vec<String>, notices: &mut Vec<String>) -> Result<()> {
    let m = src.source;
    if m.files.kind() == FileKind::Safetensors {
        for name in TOKENIZER_FILES {
            let from = m.files.path.join(name);
            if from.is_file() {
                std::fs::copy(&from, dir.join(name)).map_err(|e| Error::io(dir.join(name), e))?;
                files.push(name.to_string());
            }
        }
        return Ok(());
    }
    let tok = &m.tokenizer;
    let mut inner = tok.inner().clone();
    let token = |id: Option<u32>| id.map(|i| tok.token(i));
    let bos = token(tok.bos_id);
    let eos = token(tok.eos_ids.first().copied());
    if tok.add_bos {
        if let (Some(b), Some(id)) = (&bos, tok.bos_id) {
            let tp = tokenizers::processors::template::TemplateProcessing::builder()
                .try_single(format!("{b}:0 $A:0"))
                .and_then(|t| t.try_pair(format!("{b}:0 $A:0 {b}:1 $B:1")))
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .special_tokens(vec![(b.clone(), id)])
                .build()
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            inner.with_post_processor(Some(tp));
        }
    }
    let p = dir.join("tokenizer.json");
    inner.save(&p, true).map_err(|e| Error::format(&p, format!("writing the tokenizer: {e}")))?;
    files.push("tokenizer.json".into());
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": src.config().max_position_embeddings,
        "clean_up_tokenization_spaces": false,
        "add_bos_token": tok.add_bos,
        "add_eos_token": false,
    });
    let o = tc.as_object_mut().expect("an object");
    if let Some(b) = &bos {
        o.insert("bos_token".into(), json!(b));
    }
    if let Some(e) = &eos {
        o.insert("eos_token".into(), json!(e));
    }
    let g = m.files.gguf().expect("a GGUF source");
    if let Some(pad) = g.get("tokenizer.ggml.padding_token_id").and_then(|v| v.as_u64()) {
        o.insert("pad_token".into(), json!(tok.token(pad as u32)));
    }
    if let Some(t) = g.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        o.insert("chat_template".into(), json!(t));
    }
    write_json(&dir.join("tokenizer_config.json"), &tc)?;
    files.push("tokenizer_config.json".into());
    let cfg = src.config();
    if cfg.bos_token_id.is_some() || !cfg.eos_token_ids.is_empty() {
        let mut gc = json!({"_from_model_config": true});
        let o = gc.as_object_mut().expect("an object");
        if let Some(b) = cfg.bos_token_id {
            o.insert("bos_token_id".into(), json!(b));
        }
        if let Some(&e) = cfg.eos_token_ids.first() {
            o.insert("eos_token_id".into(), json!(e));
        }
        write_json(&dir.join("generation_config.json"), &gc)?;
        files.push("generation_config.json".into());
    }
    notices.push("tokenizer.json was built from the GGUF vocabulary and merges".into());
    Ok(())
}

/// Write the compressed model as a Hugging Face folder at `out`.
pub fn export(src: &ExportSource, out: &Path, opts: &HfOptions) -> Result<ExportReport> {
    let files = &src.source.files;
    if let Some(g) = files.gguf() {
        if g.tensor("rope_freqs.weight").is_some() {
            return Err(Error::Invalid(format!(
                "{}: this GGUF stores RoPE scaling as a frequency tensor (Llama 3.1 and later), whose \
                 config.json parameters cannot be recovered; export from the Hugging Face model instead",
                files.path.display()
            )));
        }
    }
    let dtype = opts.dtype.or_else(|| source_dtype(src)).unwrap_or(HfDtype::F16);
    let planned = plan_tensors(src)?;
    let sources = src.sources();
    let representatives = crate::collapse::representative_layers(src.plan, src.settings);
    let mut notices = Vec::new();
    if files.kind() == FileKind::Gguf && dtype != HfDtype::F32 {
        notices.push(format!("weights dequantised from GGUF and stored as {}", dtype.torch_name()));
    }
    // shard assignment by tensor bytes
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut current = 0u64;
    for (i, p) in planned.iter().enumerate() {
        let bytes = (p.shape.iter().product::<usize>() * dtype.bytes()) as u64;
        if current > 0 && current + bytes > opts.max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        shards.last_mut().expect("a shard").push(i);
        current += bytes;
    }
    let n_shards = shards.len();
    let shard_name = |k: usize| {
        if n_shards == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n_shards:05}.safetensors", k + 1) }
    };
    let report = staged(out, opts.force, |dir| {
        std::fs::create_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut written = Vec::new();
        let mut merged = MergedTensors::new(src.compressed);
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (k, shard) in shards.iter().enumerate() {
            let mut data: Vec<(String, Dtype, Vec<usize>, Cow<[u8]>)> = Vec::new();
            for &i in shard {
                let p = &planned[i];
                let bytes: Cow<[u8]> = match &p.fetch {
                    Fetch::Source(name) => match files.raw_safetensor(name) {
                        Some((dt, _, raw)) if dt == dtype.dtype() => Cow::Borrowed(raw),
                        _ => Cow::Owned(dtype.encode(&files.tensor(name)?.data)),
                    },
                    Fetch::Merged { layer, suffix } => Cow::Owned(dtype.encode(&merged.get(*layer, suffix)?.data)),
                };
                total += bytes.len() as u64;
                weight_map.insert(p.name.clone(), shard_name(k));
                data.push((p.name.clone(), dtype.dtype(), p.shape.clone(), bytes));
            }
            let views = data
                .iter()
                .map(|(n, dt, shape, b)| {
                    TensorView::new(*dt, shape.clone(), b).map(|v| (n.clone(), v)).map_err(|e| Error::Invalid(format!("tensor '{n}': {e}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let path = dir.join(shard_name(k));
            let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
            safetensors::serialize_to_file(views, Some(meta), &path).map_err(|e| Error::format(&path, format!("writing: {e}")))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
            }
            written.push(shard_name(k));
        }
        if n_shards > 1 {
            let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            write_json(&dir.join("model.safetensors.index.json"), &index)?;
            written.push("model.safetensors.index.json".into());
        }
        let config = if files.kind() == FileKind::Safetensors {
            let p = files.path.join("config.json");
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(&p, e.to_string()))?;
            update_config(v, &representatives, src.plan.num_layers, dtype)
        } else {
            config_from(src.config(), representatives.len(), dtype)
        };
        write_json(&dir.join("config.json"), &config)?;
        written.push("config.json".into());
        write_tokenizer(src, dir, &mut written, &mut notices)?;
        if let Some(r) = src.recipe {
            let p = dir.join("gelaco_recipe.json");
            let text = serde_json::to_vec_pretty(r).map_err(|e| Error::format(&p, e.to_string()))?;
            std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
            written.push("gelaco_recipe.json".into());
        }
        // make the folder durable before it is moved into place
        for f in &written {
            if let Ok(file) = std::fs::File::open(dir.join(f)) {
                let _ = file.sync_all();
            }
        }
        Ok(written)
    })?;
    let merged = sources.iter().filter(|s| **s == LayerSource::Merged).count();
    Ok(ExportReport {
        path: out.to_path_buf(),
        format: "hf".into(),
        layers: sources.len(),
        bytes: size_of(out),
        files: report,
        copied_layers: sources.len() - merged,
        merged_layers: merged,
        notices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_layer_config_fields_follow_the_kept_layers() {
        let c = json!({"num_hidden_layers": 4, "layer_types": ["a", "b", "c", "d"], "max_window_layers": 3,
                       "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"});
        let u = update_config(c, &[0, 2, 3], 4, HfDtype::F32);
        assert_eq!(u["num_hidden_layers"], 3);
        assert_eq!(u["layer_types"], json!(["a", "c", "d"]));
        assert_eq!(u["max_window_layers"], 2);
        assert_eq!(u["architectures"], json!(["LlamaForCausalLM"]));
        assert_eq!(u["torch_dtype"], "float32");
    }
}
