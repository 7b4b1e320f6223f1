//! Original-model activations on the calibration set: computed once, kept on the device
//! within a memory budget; chunks that do not fit are recomputed when needed.

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

/// The original model's activations on one chunk.
#[derive(Clone, Debug)]
pub struct ReferenceActs {
    /// Hidden state entering each layer, `[b, s, hidden]`.
    pub hidden_in: Vec<Tensor<3>>,
    /// Module outputs per layer (similarity only; empty otherwise).
    pub taps: Vec<MaskedTaps>,
    /// The original's next-token distributions (`kl` only).
    pub target: Option<TargetDist>,
    /// Hidden state leaving the last layer, before the final norm.
    pub hidden_out: Tensor<3>,
    /// Final hidden state after the final norm, masked.
    pub final_hidden: Tensor<3>,
    pub final_sq: Tensor<1>,
}

impl ReferenceActs {
    /// What `objective` needs of the original on `chunk`; `top_k` as in
    /// [`super::objective::effective_top_k`], `rows` for the LM-head objectives.
    pub fn compute(model: &Llama, chunk: &Chunk, objective: Objective, top_k: Option<usize>, rows: Option<&HeadRows>) -> Result<Self> {
        let with_taps = objective == Objective::Similarity;
        let ids = model.ids_tensor(&chunk.ids)?;
        let mut state = model.state(chunk.seq());
        let mut h = model.embed(ids);
        let layers = model.num_layers();
        let mut hidden_in = Vec::with_capacity(layers);
        let mut taps = Vec::with_capacity(layers);
        for j in 0..layers {
            hidden_in.push(h.clone());
            if with_taps {
                let mut t = Vec::with_capacity(1);
                h = model.run_layers(h, j..j + 1, &mut state, None, Some(&mut t));
                let t = t.pop().ok_or_else(|| Error::Invalid("a layer produced no taps".into()))?;
                taps.push(MaskedTaps::new(&t, &chunk.mask));
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
}

/// Bytes the cached activations of one padded token take under `objective`.
pub fn bytes_per_token(model: &Llama, objective: Objective, top_k: Option<usize>) -> usize {
    let c = &model.config;
    let q = c.num_heads * c.head_dim;
    let kv = c.num_kv_heads * c.head_dim;
    let taps = match objective {
        Objective::Similarity => q + 2 * kv + c.hidden_size + 2 * c.intermediate_size + c.hidden_size,
        Objective::Kl | Objective::Nll => 0,
    };
    let target = match objective {
        Objective::Kl => TargetDist::bytes_per_row(c.vocab_size, top_k),
        Objective::Similarity | Objective::Nll => 0,
    };
    4 * (model.num_layers() * (c.hidden_size + taps) + 2 * c.hidden_size) + target
}
