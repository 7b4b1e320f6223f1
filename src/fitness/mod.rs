//! The GeLaCo fitness (METHOD.md 3): module-wise similarity between the original and a
//! compressed model on a calibration set.
//!
//! The engine computes the original model's activations once (within `cache_mb`), builds
//! compressed models from shared tensors plus merged layers, starts their forward pass at
//! the first changed layer from the cached hidden state, and reduces similarities on the
//! device.

pub mod calibration;
pub mod naive;
pub mod reference;
pub mod similarity;

use serde::{Deserialize, Serialize};

use crate::collapse::{MergeSettings, Plan, Span, build};
use crate::error::{Error, Result};
use crate::model::Llama;
use calibration::Calibration;
use reference::{Chunk, ReferenceActs, bytes_per_token};
use similarity::{ChunkSimilarity, chunk_similarity};

/// The value given to a model whose activations are not finite: below any cosine.
pub const WORST_FITNESS: f64 = -1.0;

/// Similarities of one original layer, averaged over samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerSimilarity {
    pub attention: f64,
    pub ffn: f64,
}

/// The fitness of one plan and what it is made of.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FitnessResult {
    pub fitness: f64,
    pub attention: f64,
    pub ffn: f64,
    pub hidden: f64,
    /// Removed layers / original layers.
    pub compression: f64,
    /// Share of the model's parameters removed.
    pub params_removed: f64,
    pub remaining_layers: usize,
    pub psi: Vec<usize>,
    pub canonical: Vec<Span>,
    /// Some activation was NaN or infinite: the fitness is [`WORST_FITNESS`].
    pub non_finite: bool,
    pub per_layer: Vec<LayerSimilarity>,
}

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EngineOptions {
    /// Samples per forward pass.
    pub batch_size: usize,
    /// Memory for cached original activations, in MiB.
    pub cache_mb: usize,
    pub merge: MergeSettings,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batch_size: 16,
            cache_mb: 2048,
            merge: MergeSettings::default(),
        }
    }
}

/// Accumulates per-sample similarities over chunks.
#[derive(Default)]
struct Totals {
    attention: Vec<f64>,
    ffn: Vec<f64>,
    hidden: Vec<f64>,
    layer_attention: Vec<f64>,
    layer_ffn: Vec<f64>,
    samples: usize,
    non_finite: bool,
}

impl Totals {
    fn new(layers: usize) -> Self {
        Totals {
            layer_attention: vec![0.0; layers],
            layer_ffn: vec![0.0; layers],
            ..Default::default()
        }
    }

    fn add(&mut self, c: &ChunkSimilarity, layers: usize) {
        let b = c.hidden.len();
        for s in 0..b {
            // layers before `first` are identical: cosine 1 for every module
            let mut attn = c.first as f64;
            let mut ffn = c.first as f64;
            for j in 0..c.attention.len() {
                let a = c.attention[j][s] as f64 / 4.0;
                let f = c.ffn[j][s] as f64 / 3.0;
                attn += a;
                ffn += f;
                self.layer_attention[c.first + j] += a;
                self.layer_ffn[c.first + j] += f;
            }
            for j in 0..c.first {
                self.layer_attention[j] += 1.0;
                self.layer_ffn[j] += 1.0;
            }
            let h = c.hidden[s] as f64;
            let (attn, ffn) = (attn / layers as f64, ffn / layers as f64);
            if !(attn.is_finite() && ffn.is_finite() && h.is_finite()) {
                self.non_finite = true;
            }
            self.attention.push(attn);
            self.ffn.push(ffn);
            self.hidden.push(h);
        }
        self.samples += b;
    }

    fn finish(self, plan: &Plan, model: &Llama) -> FitnessResult {
        let n = self.samples.max(1) as f64;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
        let cfg = &model.config;
        let params_removed = (plan.removed() * cfg.layer_params()) as f64 / cfg.total_params() as f64;
        let (attention, ffn, hidden) = (mean(&self.attention), mean(&self.ffn), mean(&self.hidden));
        let per_layer = self
            .layer_attention
            .iter()
            .zip(&self.layer_ffn)
            .map(|(a, f)| {
                let finite = |v: f64| if v.is_finite() { v } else { WORST_FITNESS };
                LayerSimilarity { attention: finite(a / n), ffn: finite(f / n) }
            })
            .collect();
        let (fitness, attention, ffn, hidden) = if self.non_finite {
            (WORST_FITNESS, WORST_FITNESS, WORST_FITNESS, WORST_FITNESS)
        } else {
            ((attention + ffn + hidden) / 3.0, attention, ffn, hidden)
        };
        FitnessResult {
            fitness,
            attention,
            ffn,
            hidden,
            compression: plan.compression(),
            params_removed,
            remaining_layers: plan.remaining(),
            psi: plan.psi.clone(),
            canonical: plan.canonical.clone(),
            non_finite: self.non_finite,
            per_layer,
        }
    }
}

/// Evaluates plans against one model and one calibration set.
pub struct FitnessEngine {
    model: Llama,
    pub calibration: Calibration,
    pub options: EngineOptions,
    chunks: Vec<Chunk>,
    cached: Vec<Option<ReferenceActs>>,
}

impl FitnessEngine {
    /// Prepare the engine: chunk the samples and cache as many chunks' reference
    /// activations as `cache_mb` holds.
    pub fn new(model: &Llama, calibration: Calibration, options: EngineOptions) -> Result<Self> {
        if calibration.samples.is_empty() {
            return Err(Error::Invalid("the calibration set is empty".into()));
        }
        if options.batch_size == 0 {
            return Err(Error::Invalid("--batch-size must be at least 1".into()));
        }
        let budget = options.cache_mb as u64 * 1024 * 1024;
        let per_token = bytes_per_token(model) as u64;
        let longest = calibration.samples.iter().map(Vec::len).max().unwrap_or(1) as u64;
        if budget < per_token * longest {
            return Err(Error::Invalid(format!(
                "--cache-mb {} cannot hold the activations of even one sample ({:.1} MiB needed for {longest} tokens)",
                options.cache_mb,
                (per_token * longest) as f64 / (1024.0 * 1024.0)
            )));
        }
        // samples sorted by length pad least; chunks keep a fixed order for reproducibility
        let mut order: Vec<usize> = (0..calibration.samples.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(calibration.samples[i].len()));
        let chunk_size = options.batch_size.min((budget / (per_token * longest)).max(1) as usize);
        let chunks: Vec<Chunk> = order
            .chunks(chunk_size)
            .map(|idx| {
                let samples: Vec<Vec<u32>> = idx.iter().map(|&i| calibration.samples[i].clone()).collect();
                Chunk::new(&samples, model)
            })
            .collect();
        let mut used = 0u64;
        let mut cached = Vec::with_capacity(chunks.len());
        for c in &chunks {
            let bytes = per_token * (c.batch() * c.seq()) as u64;
            if used + bytes <= budget {
                used += bytes;
                cached.push(Some(ReferenceActs::compute(model, c)?));
            } else {
                cached.push(None);
            }
        }
        tracing::debug!(chunks = chunks.len(), cached = cached.iter().flatten().count(), mib = used / (1024 * 1024), "reference activations");
        Ok(FitnessEngine {
            model: model.clone(),
            calibration,
            options,
            chunks,
            cached,
        })
    }

    /// (chunks, chunks whose reference activations are cached).
    pub fn cache_state(&self) -> (usize, usize) {
        (self.chunks.len(), self.cached.iter().flatten().count())
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The fitness of `plan`.
    pub fn evaluate(&self, plan: &Plan) -> Result<FitnessResult> {
        if plan.num_layers != self.model.num_layers() {
            return Err(Error::Invalid(format!(
                "the plan is for {} layers, the model has {}",
                plan.num_layers,
                self.model.num_layers()
            )));
        }
        let compressed = build(&self.model, plan, self.options.merge);
        self.evaluate_model(&compressed, plan)
    }

    /// The fitness of an already built compressed model whose layers follow `plan`.
    pub fn evaluate_model(&self, compressed: &Llama, plan: &Plan) -> Result<FitnessResult> {
        if compressed.num_layers() != plan.remaining() {
            return Err(Error::Invalid(format!(
                "the compressed model has {} layers, the plan leaves {}",
                compressed.num_layers(),
                plan.remaining()
            )));
        }
        let mut totals = Totals::new(plan.num_layers);
        for (chunk, cached) in self.chunks.iter().zip(&self.cached) {
            let sims = match cached {
                Some(r) => chunk_similarity(compressed, plan, r, chunk)?,
                None => chunk_similarity(compressed, plan, &ReferenceActs::compute(&self.model, chunk)?, chunk)?,
            };
            totals.add(&sims, plan.num_layers);
        }
        Ok(totals.finish(plan, &self.model))
    }
}
