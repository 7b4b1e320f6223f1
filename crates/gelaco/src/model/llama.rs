//! The Llama-family decoder on burn: embeddings, decoder layers (RMSNorm, RoPE, grouped-query
//! attention with a causal mask, SwiGLU MLP), final norm and LM head; forward passes that
//! can record module outputs ("taps") and can start at any layer from given hidden states.
//!
//! Weights are immutable device tensors. A layer's tensors are reference-counted handles,
//! so a compressed model that reuses a layer shares its memory with the original.

use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::config::{ModelConfig, RopeScaling};
pub use crate::backend::Precision;
use super::layer::rms_norm;
pub use super::layer::{Attention, Layer, LayerTaps, Linear, Mlp, ParamTensor};
pub use super::stored::upload_transposed;
use super::stored::{Reservation, Resident, ResidentStats, Weight};
use super::weights::{HostTensor, ModelFiles};
use crate::error::{Error, Result};

/// Upload a host tensor to the device with rank `D`.
pub fn upload<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// Read a device tensor back to the host.
pub fn download<const D: usize>(t: Tensor<D>) -> Result<HostTensor> {
    let shape = t.dims().to_vec();
    let data = t
        .try_into_data()
        .map_err(|e| {
            // the device's report can run to pages (every autotune candidate's failure): its
            // first line says what happened
            let report = e.to_string();
            tracing::debug!(%report, "the device failed");
            let first = report.lines().find(|l| !l.trim().is_empty()).unwrap_or("no report");
            Error::Device(format!("the device failed while computing: {first} (--verbose shows its full report; --device cpu runs on the CPU backend)"))
        })?
        .try_into_vec::<f32>()
        .map_err(|e| Error::Device(format!("reading a tensor back: {e:?}")))?;
    Ok(HostTensor::new(shape, data))
}


/// Key/value cache of one generation: per layer `[batch, kv_heads, past, head_dim]`.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    entries: Vec<Option<(Tensor<4>, Tensor<4>)>>,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        KvCache { entries: vec![None; layers] }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.entries
            .iter()
            .flatten()
            .next()
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache of a one-row batch repeated for `rows` rows: every row then continues the
    /// same prefix.
    pub fn repeat_batch(&self, rows: usize) -> Self {
        let entries = self
            .entries
            .iter()
            .map(|e| e.as_ref().map(|(k, v)| (k.clone().repeat_dim(0, rows), v.clone().repeat_dim(0, rows))))
            .collect();
        KvCache { entries }
    }
}

/// RoPE cos/sin tables `[positions, head_dim]` on the device, grown on demand.
#[derive(Clone, Debug)]
struct Rope {
    inv_freq: Vec<f64>,
    cos: Tensor<2>,
    sin: Tensor<2>,
    positions: usize,
}

/// RoPE inverse frequencies, with the configured scaling applied.
pub fn rope_inv_freq(cfg: &ModelConfig, freq_factors: Option<&[f32]>) -> Vec<f64> {
    let d = cfg.head_dim;
    let mut inv: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64))
        .collect();
    if let Some(f) = freq_factors {
        for (x, f) in inv.iter_mut().zip(f) {
            *x /= *f as f64;
        }
        return inv;
    }
    match cfg.rope_scaling {
        Some(RopeScaling::Linear { factor }) => {
            for x in inv.iter_mut() {
                *x /= factor;
            }
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old = original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            for x in inv.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *x;
                if wavelen > low_wavelen {
                    *x /= factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    *x = (1.0 - smooth) * *x / factor + smooth * *x;
                }
            }
        }
        None => {}
    }
    inv
}

impl Rope {
    fn new(inv_freq: Vec<f64>, positions: usize, device: &Device) -> Self {
        let (cos, sin) = Self::tables(&inv_freq, positions, device);
        Rope {
            inv_freq,
            cos,
            sin,
            positions,
        }
    }

    fn tables(inv: &[f64], positions: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let half = inv.len();
        let d = half * 2;
        let mut cos = vec![0f32; positions * d];
        let mut sin = vec![0f32; positions * d];
        for p in 0..positions {
            for (i, f) in inv.iter().enumerate() {
                // as transformers: angles in float32
                let a = (p as f32) * (*f as f32);
                let (s, c) = (a.sin(), a.cos());
                cos[p * d + i] = c;
                cos[p * d + half + i] = c;
                sin[p * d + i] = s;
                sin[p * d + half + i] = s;
            }
        }
        (
            Tensor::<2>::from_data(TensorData::new(cos, [positions, d]), device),
            Tensor::<2>::from_data(TensorData::new(sin, [positions, d]), device),
        )
    }

    /// cos, sin for positions `start..start+len`, shaped `[1, 1, len, head_dim]`.
    fn slice(&mut self, start: usize, len: usize) -> (Tensor<4>, Tensor<4>) {
        if start + len > self.positions {
            let want = (start + len).next_power_of_two().max(self.positions * 2);
            let device = self.cos.device();
            let (c, s) = Self::tables(&self.inv_freq, want, &device);
            self.cos = c;
            self.sin = s;
            self.positions = want;
        }
        let c = self.cos.clone().slice([start..start + len]).unsqueeze_dims::<4>(&[0, 1]);
        let s = self.sin.clone().slice([start..start + len]).unsqueeze_dims::<4>(&[0, 1]);
        (c, s)
    }
}

/// Per-call state of a forward pass: RoPE tables (shared, grown on demand).
#[derive(Clone, Debug)]
pub struct ForwardState {
    rope: Rope,
}

/// The model: configuration plus device tensors.
#[derive(Clone, Debug)]
pub struct Llama {
    pub config: ModelConfig,
    pub embed: Tensor<2>,
    pub layers: Vec<Arc<Layer>>,
    pub norm: Tensor<1>,
    /// LM head, transposed `[hidden, vocab]`; the embedding's own memory when tied.
    pub head_t: Tensor<2>,
    inv_freq: Vec<f64>,
    pub device: Device,
    /// The dequantised projection weights of the model file's layers, within the budget.
    resident: Arc<Resident>,
    /// What the layers' matrix products compute in.
    pub precision: Precision,
}


/// Additive attention mask `[1, 1, s, past + s]`: 0 where query i may see key j.
fn causal_mask(s: usize, past: usize, window: Option<usize>, device: &Device) -> Tensor<4> {
    let t = past + s;
    let mut m = vec![0f32; s * t];
    for i in 0..s {
        let qpos = past + i;
        for j in 0..t {
            let hidden = j > qpos || window.is_some_and(|w| qpos - j.min(qpos) >= w);
            if hidden {
                m[i * t + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::<2>::from_data(TensorData::new(m, [s, t]), device).unsqueeze_dims::<4>(&[0, 1])
}

impl Llama {
    /// Load `files` onto `device`: embeddings, norms, biases and the head as device tensors,
    /// the layers' projection weights as the file stores them, dequantised when used and
    /// kept within `resident_budget` bytes; with `codes_on_device`, block-quantised ones are
    /// kept on the device as their codes and dequantised there (see [`super::stored`]).
    pub fn load(files: &ModelFiles, device: &Device, resident_budget: u64, codes_on_device: bool) -> Result<Self> {
        let resident = Resident::keeping_codes(resident_budget, codes_on_device);
        let cfg = files.config.clone();
        let t = |name: &str| files.tensor(name);
        let vec1 = |name: &str| -> Result<Tensor<1>> { Ok(upload::<1>(&t(name)?, device)) };
        let embed_host = t("model.embed_tokens.weight")?;
        let embed = Tensor::<2>::from_data(TensorData::new(embed_host.data, embed_host.shape), device);
        // a tied head is the embedding matrix itself, read transposed (matmul takes strides)
        let head_t = if cfg.tie_word_embeddings { embed.clone().transpose() } else { upload_transposed(&t("lm_head.weight")?, device) };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let layer = Layer::from_params(|tensor| {
                if !tensor.param.present(&cfg) {
                    return Ok(None);
                }
                let name = format!("model.layers.{l}.{}", tensor.hf);
                if tensor.param.is_matrix() {
                    if let Some(stored) = files.stored_matrix(&name, &resident, device)? {
                        return Ok(Some(ParamTensor::Stored(Weight::Stored(stored))));
                    }
                    return Ok(Some(ParamTensor::Matrix(upload_transposed(&t(&name)?, device))));
                }
                Ok(Some(ParamTensor::Vector(upload::<1>(&t(&name)?, device))))
            })?;
            layers.push(Arc::new(layer));
        }
        let freq_factors = files.rope_freq_factors()?;
        let inv_freq = rope_inv_freq(&cfg, freq_factors.as_deref());
        Ok(Llama {
            norm: vec1("model.norm.weight")?,
            config: cfg,
            embed,
            layers,
            head_t,
            inv_freq,
            device: device.clone(),
            resident,
            precision: Precision::F32,
        })
    }

    /// What the set of dequantised layer weights has done so far.
    pub fn resident_stats(&self) -> ResidentStats {
        self.resident.stats()
    }

    /// The bytes the memory budget leaves for dequantised layer weights now (`u64::MAX`
    /// where no budget bounds them).
    pub fn weights_budget(&self) -> u64 {
        self.resident.budget()
    }

    /// What the weights' budget holds beyond one layer's dequantised weights (the least
    /// a streamed forward pass needs): memory that something else may take from it.
    pub fn spare_memory(&self) -> u64 {
        self.resident.budget().saturating_sub(super::layer_matrix_bytes(&self.config))
    }

    /// Take `bytes` out of the budget of the dequantised layer weights, for memory that
    /// lives beside them, until the reservation is dropped (see [`Resident::reserve`]).
    pub fn reserve_memory(&self, bytes: u64) -> Reservation {
        self.resident.reserve(bytes)
    }

    /// The same model with its layers' matrix products computed in `precision`; an error
    /// where its device cannot (see [`crate::backend::check_precision`]).
    pub fn with_precision(&self, precision: Precision) -> Result<Self> {
        crate::backend::check_precision(&self.device, precision)?;
        Ok(Llama { precision, ..self.clone() })
    }

    /// A model with the same embeddings, norm and head but another list of layers
    /// (shared handles: no tensor is copied).
    pub fn with_layers(&self, layers: Vec<Arc<Layer>>) -> Self {
        let mut m = self.clone();
        m.config.num_layers = layers.len();
        m.layers = layers;
        m
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Fresh forward state (RoPE tables for `positions`, grown when needed).
    pub fn state(&self, positions: usize) -> ForwardState {
        ForwardState {
            rope: Rope::new(self.inv_freq.clone(), positions.max(1), &self.device),
        }
    }

    /// Whether every id is in the vocabulary; the message names the first that is not.
    pub fn check_ids<'a>(&self, ids: impl IntoIterator<Item = &'a u32>) -> std::result::Result<(), String> {
        let vocab = self.config.vocab_size as u32;
        match ids.into_iter().find(|&&t| t >= vocab) {
            Some(bad) => Err(format!("token id {bad} is outside the vocabulary ({vocab})")),
            None => Ok(()),
        }
    }

    /// Token ids `[batch][seq]` (equal lengths) -> an Int tensor `[batch, seq]`.
    pub fn ids_tensor(&self, ids: &[Vec<u32>]) -> Result<Tensor<2, Int>> {
        let b = ids.len();
        let s = ids.first().map(Vec::len).unwrap_or(0);
        if b == 0 || s == 0 || ids.iter().any(|r| r.len() != s) {
            return Err(Error::Invalid("a batch needs rows of one non-zero length".into()));
        }
        self.check_ids(ids.iter().flatten()).map_err(Error::Invalid)?;
        let flat: Vec<i32> = ids.iter().flatten().map(|&t| t as i32).collect();
        Ok(Tensor::<2, Int>::from_data(TensorData::new(flat, [b, s]), &self.device))
    }

    /// Embeddings of `[batch, seq]` ids: `[batch, seq, hidden]`.
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, s] = ids.dims();
        let h = self.config.hidden_size;
        self.embed.clone().select(0, ids.reshape([b * s])).reshape([b, s, h])
    }

    /// Run layers `range` on `hidden` (`[batch, seq, hidden]`, positions starting at the
    /// cache length), optionally recording taps and extending a KV cache.
    pub fn run_layers(
        &self,
        mut hidden: Tensor<3>,
        range: std::ops::Range<usize>,
        state: &mut ForwardState,
        mut cache: Option<&mut KvCache>,
        mut taps: Option<&mut Vec<LayerTaps>>,
    ) -> Tensor<3> {
        let [_, s, _] = hidden.dims();
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let (cos, sin) = state.rope.slice(past, s);
        let mask = if s > 1 || past > 0 {
            Some(causal_mask(s, past, self.config.sliding_window, &self.device))
        } else {
            None
        };
        for l in range {
            let entry = cache.as_deref_mut().map(|c| &mut c.entries[l]);
            let (h, t) = self.layers[l].forward(&self.config, self.precision, hidden, &cos, &sin, mask.as_ref(), entry, taps.is_some());
            hidden = h;
            if let (Some(out), Some(t)) = (taps.as_deref_mut(), t) {
                out.push(t);
            }
        }
        hidden
    }

    /// Hidden states `[batch, seq, hidden]` from the host onto this model's device, e.g. to
    /// resume a forward pass at a later layer.
    pub fn hidden_from_host(&self, t: &HostTensor) -> Tensor<3> {
        upload::<3>(t, &self.device)
    }

    /// Final RMSNorm: what the LM head reads.
    pub fn final_norm(&self, hidden: Tensor<3>) -> Tensor<3> {
        rms_norm(hidden, &self.norm, self.config.rms_norm_eps)
    }

    /// LM head: `[batch, seq, hidden]` -> `[batch, seq, vocab]`.
    pub fn logits(&self, normed: Tensor<3>) -> Tensor<3> {
        let [b, s, h] = normed.dims();
        normed
            .reshape([b * s, h])
            .matmul(self.head_t.clone())
            .reshape([b, s, self.config.vocab_size])
    }

    /// Full forward of a batch of equal-length rows, with all taps if asked.
    ///
    /// Returns the final hidden state after the final norm, `[batch, seq, hidden]`.
    pub fn forward(&self, ids: &[Vec<u32>], taps: Option<&mut Vec<LayerTaps>>) -> Result<Tensor<3>> {
        let ids_t = self.ids_tensor(ids)?;
        let mut state = self.state(ids[0].len());
        let h = self.embed(ids_t);
        let h = self.run_layers(h, 0..self.layers.len(), &mut state, None, taps);
        Ok(self.final_norm(h))
    }

    /// Right-pad rows of different lengths with `pad` to one length; returns the lengths.
    /// With a causal mask, a row's real positions never see the padding after them, so
    /// their outputs equal the unpadded forward's.
    pub fn pad_batch(rows: &[Vec<u32>], pad: u32) -> (Vec<Vec<u32>>, Vec<usize>) {
        let max = rows.iter().map(Vec::len).max().unwrap_or(0);
        let lens = rows.iter().map(Vec::len).collect();
        let padded = rows
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.resize(max, pad);
                r
            })
            .collect();
        (padded, lens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, ModelConfig};

    fn llama31() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 8,
            hidden_size: 4096,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
            max_position_embeddings: 131_072,
            tie_word_embeddings: false,
            attention_bias: false,
            qk_norm: false,
            sliding_window: None,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    #[test]
    fn llama3_rope_scaling_has_three_regimes() {
        let scaled = rope_inv_freq(&llama31(), None);
        let plain = rope_inv_freq(&ModelConfig { rope_scaling: None, ..llama31() }, None);
        let (low_wavelen, high_wavelen) = (8192.0, 2048.0);
        let mut seen = [false; 3];
        for (s, p) in scaled.iter().zip(&plain) {
            let wavelen = 2.0 * std::f64::consts::PI / p;
            if wavelen < high_wavelen {
                assert_eq!(s, p, "high frequencies are kept");
                seen[0] = true;
            } else if wavelen > low_wavelen {
                assert!((s - p / 8.0).abs() < 1e-15, "low frequencies are divided by the factor");
                seen[1] = true;
            } else {
                assert!(*s < *p && *s > p / 8.0, "the band between is interpolated");
                seen[2] = true;
            }
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn frequency_factors_divide_frequencies() {
        let cfg = ModelConfig { rope_scaling: None, ..llama31() };
        let factors: Vec<f32> = (0..64).map(|i| 1.0 + i as f32).collect();
        let plain = rope_inv_freq(&cfg, None);
        let f = rope_inv_freq(&cfg, Some(&factors));
        assert!((f[10] - plain[10] / 11.0).abs() < 1e-15);
    }
}
