//! Original-model activations on the calibration set: computed once, kept on the device
//! within a memory budget. Where every layer's states of every chunk do not fit, the
//! language-modelling objectives keep every few layers' (states between are run on from the
//! nearest kept one, a few layers' work); chunks that do not fit even so are recomputed
//! when needed.

use burn::tensor::{Tensor, TensorData};

use super::objective::{HeadRows, Objective, TargetDist};
use crate::error::{Error, Result};
use crate::model::llama::{LayerTaps, Llama};

/// A batch of calibration samples, right-padded to one length.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub ids: Vec<Vec<u32>>,
    pub lens: Vec<usize>,
    /// 1 at real tokens, 0 at padding: `[batch, seq, 1]`.
    pub mask: Tensor<3>,
}

impl Chunk {
    pub fn new(samples: &[Vec<u32>], model: &Llama) -> Self {
        let (ids, lens) = Llama::pad_batch(samples, 0);
        let s = ids[0].len();
        let m: Vec<f32> = lens
            .iter()
            .flat_map(|&l| (0..s).map(move |i| if i < l { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::<2>::from_data(TensorData::new(m, [lens.len(), s]), &model.device).unsqueeze_dim::<3>(2);
        Chunk { ids, lens, mask }
    }

    pub fn batch(&self) -> usize {
        self.ids.len()
    }

    pub fn seq(&self) -> usize {
        self.ids[0].len()
    }
}

/// Sum over all but the batch dimension: `[b, s, f]` -> `[b]`.
pub fn per_sample_sum(x: Tensor<3>) -> Tensor<1> {
    let b = x.dims()[0];
    x.sum_dim(2).sum_dim(1).reshape([b])
}

/// Module outputs of one layer with padding zeroed, and their squared norms per sample.
#[derive(Clone, Debug)]
pub struct MaskedTaps {
    pub outputs: [Tensor<3>; 7],
    pub sq_norms: [Tensor<1>; 7],
}

impl MaskedTaps {
    pub fn new(taps: &LayerTaps, mask: &Tensor<3>) -> Self {
        let outputs = taps.all().map(|t| t.clone() * mask.clone());
        let sq_norms = outputs.clone().map(|t| per_sample_sum(t.square()));
        MaskedTaps { outputs, sq_norms }
    }

    /// Outputs left as they are, norms over real tokens only: enough to compare with
    /// masked reference outputs, whose zeros at padding cancel the padding here.
    pub fn unmasked(taps: &LayerTaps, mask: &Tensor<3>) -> Self {
        let outputs = taps.all().map(|t| t.clone());
        let sq_norms = outputs.clone().map(|t| per_sample_sum(t.square() * mask.clone()));
        MaskedTaps { outputs, sq_norms }
    }
}

/// The original model's activations on one chunk: every layer's when cached, only those
/// one evaluation reads when recomputed for it.
#[derive(Clone, Debug)]
pub struct ReferenceActs {
    /// Hidden state entering each layer, `[b, s, hidden]`, where kept.
    hidden_in: Vec<Option<Tensor<3>>>,
    /// Module outputs per layer, where kept (similarity only; empty otherwise).
    taps: Vec<Option<MaskedTaps>>,
    /// The original's next-token distributions (`kl` only).
    pub target: Option<TargetDist>,
    /// Hidden state leaving the last layer, before the final norm.
    pub hidden_out: Tensor<3>,
    /// Final hidden state after the final norm, masked.
    pub final_hidden: Tensor<3>,
    pub final_sq: Tensor<1>,
}

impl ReferenceActs {
    /// What `objective` needs of the original on `chunk`, for the layers `keep` selects
    /// (the hidden state entering each, and its module outputs under similarity); `top_k`
    /// as in [`super::objective::effective_top_k`], `rows` for the LM-head objectives.
    /// The forward pass is the same whatever is kept, so kept values do not depend on it.
    pub fn compute(
        model: &Llama,
        chunk: &Chunk,
        objective: Objective,
        top_k: Option<usize>,
        rows: Option<&HeadRows>,
        keep: &dyn Fn(usize) -> bool,
    ) -> Result<Self> {
        let with_taps = objective == Objective::Similarity;
        let ids = model.ids_tensor(&chunk.ids)?;
        let mut state = model.state(chunk.seq());
        let mut h = model.embed(ids);
        let layers = model.num_layers();
        let mut hidden_in = Vec::with_capacity(layers);
        let mut taps = Vec::with_capacity(if with_taps { layers } else { 0 });
        for j in 0..layers {
            let kept = keep(j);
            hidden_in.push(kept.then(|| h.clone()));
            if with_taps {
                let mut t = Vec::with_capacity(1);
                h = model.run_layers(h, j..j + 1, &mut state, None, Some(&mut t));
                let t = t.pop().ok_or_else(|| Error::Invalid("a layer produced no taps".into()))?;
                taps.push(kept.then(|| MaskedTaps::new(&t, &chunk.mask)));
            } else {
                h = model.run_layers(h, j..j + 1, &mut state, None, None);
            }
        }
        let hidden_out = h.clone();
        let normed = model.final_norm(h);
        let target = match (objective, rows) {
            (Objective::Kl, Some(rows)) => Some(TargetDist::compute(model, &normed, rows, top_k)?),
            _ => None,
        };
        let final_hidden = normed * chunk.mask.clone();
        let final_sq = per_sample_sum(final_hidden.clone().square());
        Ok(ReferenceActs {
            hidden_in,
            taps,
            target,
            hidden_out,
            final_hidden,
            final_sq,
        })
    }

    /// The hidden state entering original layer `j`, or leaving the last one for `j` past it.
    pub fn hidden_in(&self, j: usize) -> Result<Tensor<3>> {
        if j == self.hidden_in.len() {
            return Ok(self.hidden_out.clone());
        }
        self.hidden_in
            .get(j)
            .and_then(Option::as_ref)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("the original's hidden state entering layer {j} was not kept")))
    }

    /// The hidden state entering original layer `j` (leaving the last one for `j` past it):
    /// kept, or run on through `model`'s layers from the nearest kept state before it (from
    /// the embeddings where none is kept), the same values as the forward pass that keeps
    /// them.
    pub fn hidden_entering(&self, model: &Llama, chunk: &Chunk, j: usize) -> Result<Tensor<3>> {
        if j >= self.hidden_in.len() || self.hidden_in[j].is_some() {
            return self.hidden_in(j);
        }
        let (from, h) = match (0..j).rev().find(|&k| self.hidden_in[k].is_some()) {
            Some(k) => (k, self.hidden_in(k)?),
            None => (0, model.embed(model.ids_tensor(&chunk.ids)?)),
        };
        let mut state = model.state(chunk.seq());
        Ok(model.run_layers(h, from..j, &mut state, None, None))
    }

    /// The module outputs of original layer `j` (similarity).
    pub fn taps(&self, j: usize) -> Result<&MaskedTaps> {
        self.taps
            .get(j)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Invalid(format!("the original's module outputs of layer {j} were not kept")))
    }
}

/// Floats of one layer's seven module outputs, per token (the similarity's taps).
fn tap_floats(model: &Llama) -> usize {
    let c = &model.config;
    let q = c.num_heads * c.head_dim;
    let kv = c.num_kv_heads * c.head_dim;
    q + 2 * kv + c.hidden_size + 2 * c.intermediate_size + c.hidden_size
}

/// Bytes the cached activations of one padded token take under `objective`.
pub fn bytes_per_token(model: &Llama, objective: Objective, top_k: Option<usize>) -> usize {
    kept_bytes_per_token(model, objective, top_k, 1)
}

/// [`bytes_per_token`] when the states entering every `stride`-th layer are kept (from the
/// first), as [`ReferenceActs::compute`] keeps them for `|j| j % stride == 0`.
pub fn kept_bytes_per_token(model: &Llama, objective: Objective, top_k: Option<usize>, stride: usize) -> usize {
    let c = &model.config;
    let taps = match objective {
        Objective::Similarity => tap_floats(model),
        Objective::Kl | Objective::Nll => 0,
    };
    let target = match objective {
        Objective::Kl => TargetDist::bytes_per_row(c.vocab_size, top_k),
        Objective::Similarity | Objective::Nll => 0,
    };
    4 * (model.num_layers().div_ceil(stride.max(1)) * (c.hidden_size + taps) + 2 * c.hidden_size) + target
}

/// The most bytes of activations one evaluation holds at once on a chunk of `batch`
/// samples padded to `seq` tokens, at its worst (a plan that changes the first layer, a
/// chunk whose reference is not cached): the original's activations recomputed for it
/// (only what the evaluation reads), the compressed model's module outputs (similarity),
/// a layer's intermediate tensors with its attention scores, and the LM head's slices.
pub fn working_bytes(model: &Llama, objective: Objective, top_k: Option<usize>, batch: usize, seq: usize) -> u64 {
    let c = &model.config;
    let (h, q, kv) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let tokens = (batch * seq) as u64;
    // the layer's input, norms, residuals and projections (keys and values repeated to
    // every head), the MLP's three intermediate products, scores and their softmax
    let layer = 6 * h + q + 2 * kv + 2 * q + 3 * c.intermediate_size + 2 * c.num_heads * seq;
    let (reference, compressed) = match objective {
        Objective::Similarity => (bytes_per_token(model, objective, top_k), 4 * model.num_layers() * tap_floats(model)),
        // the state entering the first changed layer, the last one's output, the final
        // state normed and masked, and the target distribution
        Objective::Kl => (4 * 4 * h + TargetDist::bytes_per_row(c.vocab_size, top_k), 0),
        Objective::Nll => (4 * 4 * h, 0),
    };
    let head = if objective.needs_head() {
        // logits, their log-softmax and the products of a slice, at most HEAD_BYTES each
        4 * (super::objective::HEAD_BYTES as u64).min(4 * tokens * c.vocab_size as u64)
    } else {
        0
    };
    tokens * (reference + compressed + 4 * layer) as u64 + head
}
