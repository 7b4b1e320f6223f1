//! The fitness of a compressed model on a calibration set, under one of three objectives:
//! GeLaCo's module-wise similarity (the cosine of each module's output with the original's,
//! averaged with the final hidden state's), or the language-modelling objectives `kl` and
//! `nll` ([`objective`]), whose fitness is `exp(-loss)` so that higher is better for all.
//!
//! The engine computes the original model's activations once (within `cache_mb`, and
//! within the model's memory budget, beside its dequantised weights; see [`reference`]), builds
//! compressed models from shared tensors plus merged layers, starts their forward pass at
//! the first changed layer from the cached hidden state, and reduces on the device.

pub mod calibration;
pub mod heal;
pub mod naive;
pub mod objective;
pub mod reference;
pub mod similarity;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::collapse::{MergeSettings, Plan, Span, build};
use crate::error::{Error, Result};
use crate::backend::Precision;
use crate::model::{Llama, gib};
use crate::model::stored::Reservation;
use calibration::Calibration;
pub use heal::Heal;
pub use objective::Objective;
use objective::{HeadRows, chunk_losses, effective_top_k};
use reference::{Chunk, ReferenceActs, bytes_per_token, kept_bytes_per_token, working_bytes};
use similarity::{ChunkSimilarity, chunk_similarity};

/// The objective of a new search or evaluation, chosen by the measurements in the README
/// (run folders written before objectives existed read as `similarity`).
pub const DEFAULT_OBJECTIVE: Objective = Objective::Kl;

/// Healing of a new search's candidates: none, since healing fitted and scored on the same
/// calibration tokens made held-out perplexity worse at every size measured (README).
pub const DEFAULT_HEAL: Heal = Heal::None;

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
    /// Per original layer (similarity only).
    #[serde(default)]
    pub per_layer: Vec<LayerSimilarity>,
    /// What `fitness` measures (results written before objectives existed: similarity).
    #[serde(default)]
    pub objective: Objective,
    /// Mean KL(original || compressed) per token, in nats, where computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// Mean next-token NLL of the calibration text, in nats, where computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll: Option<f64>,
}

impl EngineOptions {
    /// Check options read from a file.
    pub fn check(&self) -> crate::limits::Check {
        use crate::limits::{MAX_VOCAB, count};
        count("batch_size", self.batch_size, 1, 1 << 16)?;
        count("cache_mb", self.cache_mb, 1, usize::MAX >> 21)?;
        if let Some(t) = self.first_chunk_tokens {
            count("first_chunk_tokens", t, 1, usize::MAX >> 8)?;
        }
        match self.kl_top_k {
            Some(k) => count("kl_top_k", k, 1, MAX_VOCAB),
            None => Ok(()),
        }
    }
}

impl FitnessResult {
    /// Check a result read from a file against a model of `layers` layers.
    pub fn check(&self, layers: usize) -> crate::limits::Check {
        use crate::limits::number;
        crate::collapse::Plan::check_parts(layers, &self.canonical, &self.psi)?;
        let removed: usize = self.canonical.iter().map(|s| s.ce - s.cb).sum();
        if self.remaining_layers != layers - removed {
            return Err(format!("remaining_layers: {} but the merges leave {}", self.remaining_layers, layers - removed));
        }
        if self.per_layer.len() > layers {
            return Err(format!("per_layer: {} entries for a model of {layers} layers", self.per_layer.len()));
        }
        number("fitness", self.fitness)?;
        number("compression", self.compression)?;
        number("params_removed", self.params_removed)
    }
}

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EngineOptions {
    /// Samples per forward pass.
    pub batch_size: usize,
    /// Memory for cached original activations, in MiB: the most the cache takes. Under a
    /// memory budget it also takes at most half of what the budget leaves for the layers'
    /// dequantised weights, out of their share; chunks not cached are recomputed when used.
    pub cache_mb: usize,
    pub merge: MergeSettings,
    /// What the fitness measures (run folders written before objectives existed: similarity).
    #[serde(default)]
    pub objective: Objective,
    /// `kl` keeps the original's top K log-probabilities per token plus the remaining mass
    /// (`None`: the whole distribution for small vocabularies, a default K for large ones).
    #[serde(default)]
    pub kl_top_k: Option<usize>,
    /// Healing of every candidate that removes layers (run folders written before healing
    /// existed: none).
    #[serde(default)]
    pub heal: Heal,
    /// The first chunk holds just enough samples for this many tokens, the others
    /// `batch_size` samples each, so that a cheap estimate on that many tokens
    /// ([`FitnessEngine::evaluate_partial`]) costs that many tokens and not a whole batch
    /// (`None`: every chunk `batch_size` samples, as run folders written before it had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_chunk_tokens: Option<usize>,
    /// What the forward's matrix products compute in, the original's and the candidates'
    /// alike (run folders written before it existed, and every f32 run: f32).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batch_size: 16,
            cache_mb: 2048,
            merge: MergeSettings::default(),
            objective: DEFAULT_OBJECTIVE,
            kl_top_k: None,
            heal: DEFAULT_HEAL,
            first_chunk_tokens: None,
            precision: Precision::F32,
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
            objective: Objective::Similarity,
            kl: None,
            nll: None,
        }
    }
}

/// Evaluates plans against one model and one calibration set.
#[derive(Clone)]
pub struct FitnessEngine {
    model: Llama,
    pub calibration: Calibration,
    pub options: EngineOptions,
    chunks: Vec<Chunk>,
    /// LM-head rows per chunk (`kl` and `nll` only).
    rows: Vec<Option<HeadRows>>,
    top_k: Option<usize>,
    cached: Vec<Option<ReferenceActs>>,
    cache_bytes: u64,
    /// Cached chunks keep the original's state entering every `stride`-th layer.
    stride: usize,
    /// The most bytes of activations one evaluation holds at once.
    working_bytes: u64,
    /// What an evaluation's activations need beyond the budget's reserve for them, and the
    /// cache's bytes, taken out of the model's memory budget while the engine lives.
    _reservations: Arc<[Reservation; 2]>,
}

impl FitnessEngine {
    /// Prepare the engine: chunk the samples and cache as many chunks' reference
    /// activations as `cache_mb` holds.
    pub fn new(model: &Llama, calibration: Calibration, options: EngineOptions) -> Result<Self> {
        let model = &model.with_precision(options.precision)?;
        crate::limits::token_samples("calibration samples", &calibration.samples, &calibration.hash, Some(model.config.vocab_size))
            .map_err(|m| Error::Invalid(format!("the calibration set is not usable: {m}")))?;
        if options.heal == Heal::Linear {
            heal::check_tokens(calibration.tokens(), model.config.hidden_size)?;
        }
        if options.batch_size == 0 {
            return Err(Error::setting("batch_size", "must be at least 1"));
        }
        let top_k = match options.objective {
            Objective::Kl => effective_top_k(options.kl_top_k, model.config.vocab_size)?,
            Objective::Similarity | Objective::Nll => None,
        };
        let budget = options.cache_mb as u64 * 1024 * 1024;
        let per_token = bytes_per_token(model, options.objective, top_k) as u64;
        let longest = calibration.samples.iter().map(Vec::len).max().unwrap_or(1) as u64;
        if budget < per_token * longest {
            return Err(Error::setting(
                "cache_mb",
                format!(
                "{} cannot hold the activations of even one sample ({:.1} MiB needed for {longest} tokens)",
                options.cache_mb,
                (per_token * longest) as f64 / (1024.0 * 1024.0)
            )));
        }
        // samples sorted by length pad least; chunks keep a fixed order for reproducibility
        let mut order: Vec<usize> = (0..calibration.samples.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(calibration.samples[i].len()));
        let chunk_size = options.batch_size.min((budget / (per_token * longest)).max(1) as usize);
        let first = options.first_chunk_tokens.map_or(chunk_size, |want| {
            let mut seen = 0;
            let n = order
                .iter()
                .take_while(|&&i| {
                    let before = seen;
                    seen += calibration.samples[i].len();
                    before < want
                })
                .count();
            n.clamp(1, chunk_size)
        });
        let (head, rest) = order.split_at(first.min(order.len()));
        let chunks: Vec<Chunk> = std::iter::once(head)
            .filter(|h| !h.is_empty())
            .chain(rest.chunks(chunk_size))
            .map(|idx| {
                let samples: Vec<Vec<u32>> = idx.iter().map(|&i| calibration.samples[i].clone()).collect();
                Chunk::new(&samples, model)
            })
            .collect();
        let rows: Vec<Option<HeadRows>> =
            chunks.iter().map(|c| options.objective.needs_head().then(|| HeadRows::new(c, model))).collect();
        // an evaluation's activations beyond what the budget keeps for them come out of the
        // layers' share first; a budget that cannot give them is refused before any work
        let working = chunks.iter().map(|c| working_bytes(model, options.objective, top_k, c.batch(), c.seq())).max().unwrap_or(0);
        let beyond = working.saturating_sub(crate::model::ACTIVATIONS_RESERVE);
        if beyond > model.spare_memory() {
            let widest = chunks.iter().max_by_key(|c| c.batch() * c.seq()).map_or((0, 0), |c| (c.batch(), c.seq()));
            return Err(Error::setting(
                "memory_budget",
                format!(
                    "leaves {} beyond the model's embeddings, head and one layer, and scoring {} samples of {} tokens at once holds {} of activations at its worst, {} more than the {} kept for them: give a larger --memory-budget, or fewer tokens per forward pass (--batch-size, --max-tokens)",
                    gib(model.spare_memory()),
                    widest.0,
                    widest.1,
                    gib(working),
                    gib(beyond),
                    gib(crate::model::ACTIVATIONS_RESERVE)
                ),
            ));
        }
        let for_activations = model.reserve_memory(beyond);
        // within a memory budget the cache takes at most half of what the budget leaves for
        // the layers' dequantised weights beyond one layer, and what it takes comes out of
        // their share; chunks left out are recomputed when used, with the same results
        let room = budget.min(model.spare_memory() / 2);
        // `kl` and `nll` read the original's state entering one layer: where every layer's
        // does not fit for every chunk, every few layers' are kept for all of them (a state
        // between is a few layers' work, a chunk not kept a whole forward pass); similarity
        // reads every layer's module outputs from the first changed one
        let padded: u64 = chunks.iter().map(|c| (c.batch() * c.seq()) as u64).sum();
        let layers = model.num_layers().max(1);
        let kept = |stride: usize| kept_bytes_per_token(model, options.objective, top_k, stride) as u64;
        let stride = match options.objective {
            Objective::Similarity => 1,
            Objective::Kl | Objective::Nll => (1..=layers).find(|&s| kept(s) * padded <= room).unwrap_or(layers),
        };
        let per_token = kept(stride);
        let mut used = 0u64;
        let keep: Vec<bool> = chunks
            .iter()
            .map(|c| {
                let bytes = per_token * (c.batch() * c.seq()) as u64;
                let fits = used + bytes <= room;
                if fits {
                    used += bytes;
                }
                fits
            })
            .collect();
        let reservations = Arc::new([for_activations, model.reserve_memory(used)]);
        let mut cached = Vec::with_capacity(chunks.len());
        for ((c, r), keep) in chunks.iter().zip(&rows).zip(keep) {
            cached.push(if keep { Some(ReferenceActs::compute(model, c, options.objective, top_k, r.as_ref(), &|j| j % stride == 0)?) } else { None });
        }
        tracing::debug!(
            chunks = chunks.len(),
            cached = cached.iter().flatten().count(),
            stride,
            mib = used / (1024 * 1024),
            taken_from_weights_mib = reservations[1].bytes() / (1024 * 1024),
            activations_beyond_reserve_mib = beyond / (1024 * 1024),
            "reference activations"
        );
        Ok(FitnessEngine {
            model: model.clone(),
            calibration,
            options,
            chunks,
            rows,
            top_k,
            cached,
            cache_bytes: used,
            stride,
            working_bytes: working,
            _reservations: reservations,
        })
    }

    /// (chunks, chunks whose reference activations are cached).
    pub fn cache_state(&self) -> (usize, usize) {
        (self.chunks.len(), self.cached.iter().flatten().count())
    }

    /// Cached chunks keep the original's hidden state entering every this many layers (1:
    /// every layer's); the others are run on from the nearest kept one when read.
    pub fn cache_stride(&self) -> usize {
        self.stride
    }

    /// Bytes the cached reference activations hold.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_bytes
    }

    /// The most bytes of activations one evaluation holds at once, as estimated before any
    /// work (beyond the budget's reserve for activations they are taken from the layers').
    pub fn working_bytes(&self) -> u64 {
        self.working_bytes
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The fitness of `plan`.
    pub fn evaluate(&self, plan: &Plan) -> Result<FitnessResult> {
        self.check_plan(plan)?;
        let compressed = self.build_on(plan, self.chunks.len())?;
        self.evaluate_model(&compressed, plan)
    }

    /// The fitness of `plan` on the first chunks of the calibration set that hold at least
    /// `tokens` tokens (whole chunks; all of them when `tokens` is `None`): a cheap
    /// estimate for multi-fidelity selection.
    pub fn evaluate_partial(&self, plan: &Plan, tokens: Option<usize>) -> Result<FitnessResult> {
        self.check_plan(plan)?;
        let count = self.chunk_count(tokens);
        let compressed = self.build_on(plan, count)?;
        self.evaluate_chunks(&compressed, plan, count)
    }

    /// The compressed model `plan` builds, healed (on the first `chunks` chunks) when the
    /// engine heals and the plan removes layers.
    pub fn build_on(&self, plan: &Plan, chunks: usize) -> Result<Llama> {
        let compressed = build(&self.model, plan, self.options.merge);
        match self.options.heal {
            Heal::Linear if plan.removed() > 0 => self.heal(&compressed, plan, chunks),
            Heal::Linear | Heal::None => Ok(compressed),
        }
    }

    /// How many leading chunks hold at least `tokens` real tokens (all for `None`).
    pub fn chunk_count(&self, tokens: Option<usize>) -> usize {
        let Some(want) = tokens else { return self.chunks.len() };
        let mut seen = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            seen += c.lens.iter().sum::<usize>();
            if seen >= want {
                return i + 1;
            }
        }
        self.chunks.len()
    }

    /// How many leading chunks hold at least `samples` samples (all where fewer).
    pub fn chunks_holding(&self, samples: usize) -> usize {
        let mut seen = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            seen += c.batch();
            if seen >= samples {
                return i + 1;
            }
        }
        self.chunks.len()
    }

    /// The multiply-add work, in floating-point operations (two per multiply-add), of the
    /// matrix products one evaluation of `plan` runs on the device: the compressed layers
    /// from the first changed one to the top over every chunk as padded (projections, and
    /// attention scores and their weighted sum over all positions), and the LM head on
    /// every row where the objective needs it. Building merged layers, healing fits and the
    /// reductions are not counted: this is the bound a device's matmul rate sets.
    pub fn matmul_flops(&self, plan: &Plan) -> f64 {
        let c = &self.model.config;
        let first = plan.first_changed_layer();
        let layers = if first >= plan.num_layers { 0 } else { plan.remaining().saturating_sub(first) };
        // two operations per weight of the layer's projection matrices, per token
        let projection = 2.0 * (crate::model::layer_matrix_bytes(c) / 4) as f64;
        let head = if self.options.objective.needs_head() { 2.0 * (c.hidden_size * c.vocab_size) as f64 } else { 0.0 };
        self.chunks
            .iter()
            .map(|chunk| {
                let (b, s) = (chunk.batch() as f64, chunk.seq() as f64);
                let attention = 2.0 * 2.0 * b * c.num_heads as f64 * s * s * c.head_dim as f64;
                layers as f64 * (b * s * projection + attention) + b * s * head
            })
            .sum()
    }

    /// Real tokens in the calibration set.
    pub fn total_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.lens.iter().sum::<usize>()).sum()
    }

    /// The engine a published method measures with: `objective`, without healing, on the
    /// same calibration and settings. This engine when it is that, else a new one (the
    /// original's activations are computed anew for it).
    pub fn under(&self, objective: Objective) -> Result<std::borrow::Cow<'_, FitnessEngine>> {
        if objective == self.options.objective && self.options.heal == Heal::None {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        let other = FitnessEngine::new(&self.model, self.calibration.clone(), EngineOptions { objective, heal: Heal::None, ..self.options })?;
        Ok(std::borrow::Cow::Owned(other))
    }

    fn check_plan(&self, plan: &Plan) -> Result<()> {
        if plan.num_layers != self.model.num_layers() {
            return Err(Error::Invalid(format!(
                "the plan is for {} layers, the model has {}",
                plan.num_layers,
                self.model.num_layers()
            )));
        }
        Ok(())
    }

    /// The fitness of an already built compressed model whose layers follow `plan`.
    pub fn evaluate_model(&self, compressed: &Llama, plan: &Plan) -> Result<FitnessResult> {
        self.evaluate_chunks(compressed, plan, self.chunks.len())
    }

    fn evaluate_chunks(&self, compressed: &Llama, plan: &Plan, count: usize) -> Result<FitnessResult> {
        if compressed.num_layers() != plan.remaining() {
            return Err(Error::Invalid(format!(
                "the compressed model has {} layers, the plan leaves {}",
                compressed.num_layers(),
                plan.remaining()
            )));
        }
        if self.options.objective.needs_head() {
            return self.evaluate_losses(compressed, plan, count);
        }
        let mut totals = Totals::new(plan.num_layers);
        let first = plan.first_changed_layer();
        for (i, chunk) in self.chunks.iter().enumerate().take(count) {
            let sims = chunk_similarity(compressed, plan, &*self.reference(i, &|j| j >= first)?, chunk)?;
            totals.add(&sims, plan.num_layers);
        }
        Ok(totals.finish(plan, &self.model))
    }

    /// The cached reference of chunk `i`, or a fresh one when it did not fit the cache,
    /// holding only the layers `keep` selects (what the caller reads).
    pub(crate) fn reference(&self, i: usize, keep: &dyn Fn(usize) -> bool) -> Result<std::borrow::Cow<'_, ReferenceActs>> {
        Ok(match &self.cached[i] {
            Some(r) => std::borrow::Cow::Borrowed(r),
            None => std::borrow::Cow::Owned(ReferenceActs::compute(
                &self.model,
                &self.chunks[i],
                self.options.objective,
                self.top_k,
                self.rows[i].as_ref(),
                keep,
            )?),
        })
    }

    /// `kl` and `nll`: the compressed forward from the first changed layer to the LM head.
    fn evaluate_losses(&self, compressed: &Llama, plan: &Plan, count: usize) -> Result<FitnessResult> {
        let first = plan.first_changed_layer();
        let objective = self.options.objective;
        let (mut kl_sum, mut nll_sum, mut real, mut next) = (0.0, 0.0, 0usize, 0usize);
        for (i, chunk) in self.chunks.iter().enumerate().take(count) {
            let reference = self.reference(i, &|j| j == first)?;
            let rows = self.rows[i].as_ref().ok_or_else(|| Error::Invalid("LM-head rows missing for a chunk".into()))?;
            let normed = if first >= plan.num_layers {
                reference.final_hidden.clone()
            } else {
                let mut state = compressed.state(chunk.seq());
                let h = compressed.run_layers(reference.hidden_entering(&self.model, chunk, first)?, first..compressed.num_layers(), &mut state, None, None);
                compressed.final_norm(h)
            };
            let target = if objective == Objective::Kl { reference.target.as_ref() } else { None };
            let (kl, nll) = chunk_losses(compressed, &normed, rows, target)?;
            kl_sum += kl;
            nll_sum += nll;
            real += rows.real_tokens;
            next += rows.next_tokens;
        }
        let kl = (objective == Objective::Kl).then(|| (kl_sum / real.max(1) as f64).max(0.0));
        let nll = nll_sum / next.max(1) as f64;
        let loss = kl.unwrap_or(nll);
        let non_finite = !loss.is_finite() || !nll.is_finite();
        let cfg = &self.model.config;
        Ok(FitnessResult {
            fitness: if non_finite { WORST_FITNESS } else { objective.fitness_of(loss) },
            attention: 0.0,
            ffn: 0.0,
            hidden: 0.0,
            compression: plan.compression(),
            params_removed: (plan.removed() * cfg.layer_params()) as f64 / cfg.total_params() as f64,
            remaining_layers: plan.remaining(),
            psi: plan.psi.clone(),
            canonical: plan.canonical.clone(),
            non_finite,
            per_layer: Vec::new(),
            objective,
            kl: kl.filter(|v| v.is_finite()),
            nll: nll.is_finite().then_some(nll),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_records_its_precision_and_older_runs_read_as_f32() {
        let f32 = serde_json::to_value(EngineOptions::default()).unwrap();
        assert!(f32.get("precision").is_none(), "an f32 run's settings are written as before: {f32}");
        let f16 = serde_json::to_value(EngineOptions { precision: Precision::F16, ..EngineOptions::default() }).unwrap();
        assert_eq!(f16["precision"], "f16");
        assert_eq!(serde_json::from_value::<EngineOptions>(f16).unwrap().precision, Precision::F16);
        assert_eq!(serde_json::from_value::<EngineOptions>(f32.clone()).unwrap().precision, Precision::F32);
        let mut bad = f32;
        bad["precision"] = "f64".into();
        let e = serde_json::from_value::<EngineOptions>(bad).unwrap_err().to_string();
        assert!(e.contains("f64") && e.contains("f32") && e.contains("f16"), "{e}");
    }
}
