//! Model configuration twice over: serde mirrors of what the files say (Hugging Face
//! `config.json`, GGUF metadata), then one validated [`ModelConfig`] the runtime uses.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::gguf::{GgufFile, Value};
use crate::error::{Error, Result};

/// The decoder families this tool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }

    fn from_hf_class(class: &str) -> Option<Self> {
        match class {
            "LlamaForCausalLM" => Some(Arch::Llama),
            "MistralForCausalLM" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            "Qwen3ForCausalLM" => Some(Arch::Qwen3),
            _ => None,
        }
    }
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.x: wavelength-dependent interpolation.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Linear position interpolation.
    Linear { factor: f64 },
}

/// The validated configuration the runtime is built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
    /// Per-head RMSNorm on queries and keys (Qwen3).
    pub qk_norm: bool,
    /// Mistral-style sliding-window attention, when set.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Check internal consistency; every failure names the field.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::config(path, m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        // bounds far above any published model, so that sizes computed from them cannot
        // overflow and nothing is allocated from an absurd number
        use crate::limits::{MAX_LAYERS, MAX_VOCAB};
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_heads, 1 << 12),
            ("num_key_value_heads", self.num_kv_heads, 1 << 12),
            ("head_dim", self.head_dim, 1 << 12),
        ] {
            if v > max {
                return bad(format!("{name} ({v}) is larger than {max}, more than any model this tool can run"));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!("head_dim ({}) must be even for RoPE", self.head_dim));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return bad("rms_norm_eps must be a positive number".into());
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad("rope_theta must be a positive number".into());
        }
        Ok(())
    }

    /// Number of parameters of one decoder layer.
    pub fn layer_params(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mut n = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h;
        if self.attention_bias {
            n += q + 2 * kv;
        }
        if self.qk_norm {
            n += 2 * self.head_dim;
        }
        n
    }

    /// Total parameter count (tied embeddings counted once).
    pub fn total_params(&self) -> usize {
        let emb = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + self.hidden_size + self.num_layers * self.layer_params()
    }
}

/// Mirror of a Hugging Face `config.json` (the fields this tool reads).
#[derive(Debug, Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    sliding_window: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn ids_of(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => Vec::new(),
    }
}

fn parse_rope_scaling(path: &Path, v: &serde_json::Value) -> Result<Option<RopeScaling>> {
    if v.is_null() {
        return Ok(None);
    }
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| Error::config(path, format!("rope_scaling.{k} is missing")))
    };
    match kind {
        "default" => Ok(None),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        })),
        "linear" => Ok(Some(RopeScaling::Linear { factor: num("factor")? })),
        other => Err(Error::config(path, format!("rope_scaling type '{other}' is not supported (llama3, linear are)"))),
    }
}

/// Parse and validate a Hugging Face `config.json`.
pub fn from_hf_json(path: &Path, text: &str) -> Result<ModelConfig> {
    let raw: HfConfig = serde_json::from_str(text)
        .map_err(|e| Error::format(path, format!("not a valid config.json: {e}")))?;
    let arch = match (&raw.architectures, &raw.model_type) {
        (Some(classes), _) if !classes.is_empty() => {
            let class = &classes[0];
            Arch::from_hf_class(class).ok_or_else(|| Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: class.clone(),
            })?
        }
        (_, Some(t)) => Arch::from_name(t).ok_or_else(|| Error::UnsupportedArchitecture {
            path: path.to_path_buf(),
            arch: t.clone(),
        })?,
        _ => return Err(Error::config(path, "neither 'architectures' nor 'model_type' is given")),
    };
    let req = |name: &str, v: Option<usize>| v.ok_or_else(|| Error::config(path, format!("required field '{name}' is missing")));
    let hidden_size = req("hidden_size", raw.hidden_size)?;
    let num_heads = req("num_attention_heads", raw.num_attention_heads)?;
    let sliding_window = if arch == Arch::Mistral || raw.use_sliding_window == Some(true) {
        raw.sliding_window.as_ref().and_then(|v| v.as_u64()).map(|v| v as usize)
    } else {
        None
    };
    let cfg = ModelConfig {
        arch,
        vocab_size: req("vocab_size", raw.vocab_size)?,
        hidden_size,
        intermediate_size: req("intermediate_size", raw.intermediate_size)?,
        num_layers: req("num_hidden_layers", raw.num_hidden_layers)?,
        num_heads,
        num_kv_heads: raw.num_key_value_heads.unwrap_or(num_heads),
        head_dim: raw.head_dim.unwrap_or(if num_heads > 0 { hidden_size / num_heads } else { 0 }),
        rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
        rope_theta: raw.rope_theta.unwrap_or(10000.0),
        rope_scaling: match &raw.rope_scaling {
            Some(v) => parse_rope_scaling(path, v)?,
            None => None,
        },
        max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        attention_bias: raw.attention_bias.unwrap_or(arch == Arch::Qwen2),
        qk_norm: arch == Arch::Qwen3,
        sliding_window,
        bos_token_id: ids_of(&raw.bos_token_id).first().copied(),
        eos_token_ids: ids_of(&raw.eos_token_id),
    };
    cfg.validate(path)?;
    Ok(cfg)
}

/// Architecture-prefixed GGUF metadata lookups.
pub struct GgufMeta<'a> {
    pub file: &'a GgufFile,
    pub arch: String,
}

impl<'a> GgufMeta<'a> {
    pub fn new(file: &'a GgufFile) -> Result<Self> {
        let arch = file
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::config(&file.path, "required key 'general.architecture' is missing"))?
            .to_string();
        Ok(GgufMeta { file, arch })
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{}.{}", self.arch, suffix)
    }

    fn get(&self, suffix: &str) -> Option<&Value> {
        self.file.get(&self.key(suffix))
    }

    fn req_u64(&self, suffix: &str) -> Result<usize> {
        self.get(suffix)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::config(&self.file.path, format!("required key '{}' is missing", self.key(suffix))))
    }

    fn opt_u64(&self, suffix: &str) -> Option<usize> {
        self.get(suffix).and_then(Value::as_u64).map(|v| v as usize)
    }

    fn opt_f64(&self, suffix: &str) -> Option<f64> {
        self.get(suffix).and_then(Value::as_f64)
    }
}

/// Tensors every transformer block of a supported model has.
const TENSORS_PER_BLOCK: usize = 9;

/// Build and validate the configuration of a GGUF model from its metadata.
pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let meta = GgufMeta::new(file)?;
    let path = &file.path;
    let arch = Arch::from_name(&meta.arch).ok_or_else(|| Error::UnsupportedArchitecture {
        path: path.clone(),
        arch: meta.arch.clone(),
    })?;
    if file.tensors.iter().any(|t| t.name.contains("ffn_gate_inp") || t.name.contains("_exps")) {
        return Err(Error::UnsupportedArchitecture {
            path: path.clone(),
            arch: format!("{} (mixture of experts)", meta.arch),
        });
    }
    let hidden_size = meta.req_u64("embedding_length")?;
    let num_heads = meta.req_u64("attention.head_count")?;
    let num_kv_heads = meta.opt_u64("attention.head_count_kv").unwrap_or(num_heads);
    let head_dim = meta
        .opt_u64("attention.key_length")
        .or_else(|| meta.opt_u64("rope.dimension_count"))
        .unwrap_or(if num_heads > 0 { hidden_size / num_heads } else { 0 });
    let vocab_size = match meta.opt_u64("vocab_size") {
        Some(v) => v,
        None => file
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(|a| a.len())
            .or_else(|| file.tensor("token_embd.weight").map(|t| t.dims.get(1).copied().unwrap_or(0) as usize))
            .ok_or_else(|| Error::config(path, "vocabulary size is unknown (no vocab_size, token list or embedding)"))?,
    };
    let rope_scaling = match meta.get("rope.scaling.type").and_then(Value::as_str) {
        Some("linear") => Some(RopeScaling::Linear {
            factor: meta.opt_f64("rope.scaling.factor").unwrap_or(1.0),
        }),
        Some("none") | None => None,
        Some(other) => {
            return Err(Error::config(path, format!("rope scaling type '{other}' is not supported")));
        }
    };
    let bos = file.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64).map(|v| v as u32);
    let eos = file.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64).map(|v| v as u32);
    // each block holds at least its two norms, four attention and three MLP matrices: a
    // block count the tensors cannot back is corrupt, whatever the general bound allows
    let num_layers = meta.req_u64("block_count")?;
    if num_layers.saturating_mul(TENSORS_PER_BLOCK) > file.tensors.len() {
        return Err(Error::config(
            path,
            format!(
                "{}.block_count ({num_layers}) needs at least {TENSORS_PER_BLOCK} tensors per block, but the file has {} tensors",
                meta.arch,
                file.tensors.len()
            ),
        ));
    }
    let cfg = ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size: meta.req_u64("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: meta.opt_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: meta.opt_f64("rope.freq_base").unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: meta.opt_u64("context_length").unwrap_or(2048),
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        attention_bias: file.tensor("blk.0.attn_q.bias").is_some(),
        qk_norm: file.tensor("blk.0.attn_q_norm.weight").is_some(),
        sliding_window: meta.opt_u64("attention.sliding_window"),
        bos_token_id: bos,
        eos_token_ids: eos.into_iter().collect(),
    };
    cfg.validate(path)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":576,"intermediate_size":1536,
      "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
      "rms_norm_eps":1e-5,"rope_theta":100000,"tie_word_embeddings":true,"bos_token_id":1,"eos_token_id":2}"#;

    #[test]
    fn parses_smollm_config() {
        let c = from_hf_json(Path::new("config.json"), SMOL).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.num_kv_heads, 3);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![2]);
        // SmolLM2-135M has 134,515,008 parameters
        assert_eq!(c.total_params(), 134_515_008);
    }

    #[test]
    fn refuses_other_architectures_by_name() {
        let e = from_hf_json(Path::new("c.json"), r#"{"architectures":["GPT2LMHeadModel"]}"#).unwrap_err();
        assert!(e.to_string().contains("GPT2LMHeadModel"), "{e}");
    }

    #[test]
    fn names_missing_field() {
        let text = SMOL.replace("\"hidden_size\":576,", "");
        let e = from_hf_json(Path::new("c.json"), &text).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
    }

    #[test]
    fn llama3_rope_scaling() {
        let text = SMOL.replace(
            "\"tie_word_embeddings\"",
            r#""rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192},"tie_word_embeddings""#,
        );
        let c = from_hf_json(Path::new("c.json"), &text).unwrap();
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0));
    }
}
