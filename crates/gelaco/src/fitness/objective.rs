//! Language-modelling objectives, reduced on the device:
//!
//! - `kl`: the token-weighted mean, over every real position of every calibration sample
//!   (the last one included), of KL(p_original || p_compressed) of the next-token
//!   distributions over the whole vocabulary, in nats. The original's distributions are
//!   computed once per chunk and kept whole, or as their top K log-probabilities plus the
//!   log of the remaining mass (EvoPress's TopK-KL), where the remaining mass is one more
//!   outcome on both sides.
//! - `nll`: the token-weighted mean of -log p_compressed(token t+1) over positions
//!   0..n-2 of each sample (SLEB's criterion), in nats.
//!
//! The LM head runs over slices of token rows so that no logits buffer passes
//! [`HEAD_BYTES`] (software Vulkan caps a binding at 128 MiB).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::reference::Chunk;
use crate::error::{Error, Result};
use crate::model::llama::{Llama, download};

/// What a fitness evaluation measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Module-wise cosine similarity of activations (the GeLaCo paper).
    #[default]
    Similarity,
    /// KL divergence of the next-token distributions from the original's.
    Kl,
    /// Negative log-likelihood of the calibration text.
    Nll,
}

crate::choice!(Objective {
    Similarity => "similarity": "module-wise cosine similarity of activations (the paper's fitness)",
    Kl => "kl": "KL divergence of next-token distributions from the original's (EvoPress)",
    Nll => "nll": "negative log-likelihood of the calibration text (SLEB)",
});

impl Objective {
    /// Whether the objective reads the LM head's output.
    pub fn needs_head(self) -> bool {
        !matches!(self, Objective::Similarity)
    }

    /// The search's fitness (higher is better, 1 for the original under `kl`) of a loss.
    pub fn fitness_of(self, loss: f64) -> f64 {
        (-loss).exp()
    }
}

/// Largest logits buffer of one LM-head slice, in bytes.
pub const HEAD_BYTES: usize = 32 << 20;

/// Vocabularies up to this size keep the original's whole distribution under `kl` unless
/// a top K is asked for; larger ones keep [`DEFAULT_TOP_K`].
pub const FULL_KL_MAX_VOCAB: usize = 8192;
pub const DEFAULT_TOP_K: usize = 256;

/// The top K the engine uses for `kl` (`None`: the whole distribution).
pub fn effective_top_k(requested: Option<usize>, vocab: usize) -> Result<Option<usize>> {
    match requested {
        Some(k) if k == 0 || k > vocab => {
            Err(Error::setting("kl_top_k", format!("{k} must be between 1 and the vocabulary size {vocab}")))
        }
        Some(k) if k == vocab => Ok(None),
        Some(k) => Ok(Some(k)),
        None if vocab <= FULL_KL_MAX_VOCAB => Ok(None),
        None => Ok(Some(DEFAULT_TOP_K)),
    }
}

/// Token rows of one chunk as the head sees them: `[batch * seq]` flattened row-major,
/// cut into slices, with the weights and targets of each slice.
#[derive(Clone, Debug)]
pub struct HeadRows {
    pub slices: Vec<std::ops::Range<usize>>,
    /// 1 at real tokens: `[rows]` per slice.
    real: Vec<Tensor<1>>,
    /// 1 where a next token exists (position < len - 1): `[rows]` per slice.
    has_next: Vec<Tensor<1>>,
    /// The next token's id (0 where there is none): `[rows, 1]` per slice.
    targets: Vec<Tensor<2, Int>>,
    pub real_tokens: usize,
    pub next_tokens: usize,
}

impl HeadRows {
    pub fn new(chunk: &Chunk, model: &Llama) -> Self {
        let (b, s) = (chunk.batch(), chunk.seq());
        let rows = b * s;
        let per_slice = (HEAD_BYTES / (4 * model.config.vocab_size.max(1))).clamp(1, rows.max(1));
        let mut real = vec![0f32; rows];
        let mut has_next = vec![0f32; rows];
        let mut targets = vec![0i32; rows];
        for (i, (ids, &len)) in chunk.ids.iter().zip(&chunk.lens).enumerate() {
            for p in 0..len {
                real[i * s + p] = 1.0;
                if p + 1 < len {
                    has_next[i * s + p] = 1.0;
                    targets[i * s + p] = ids[p + 1] as i32;
                }
            }
        }
        let device = &model.device;
        let slices: Vec<_> = (0..rows).step_by(per_slice).map(|a| a..(a + per_slice).min(rows)).collect();
        let ones = |v: &[f32], r: &std::ops::Range<usize>| Tensor::<1>::from_data(TensorData::new(v[r.clone()].to_vec(), [r.len()]), device);
        HeadRows {
            real: slices.iter().map(|r| ones(&real, r)).collect(),
            has_next: slices.iter().map(|r| ones(&has_next, r)).collect(),
            targets: slices
                .iter()
                .map(|r| Tensor::<2, Int>::from_data(TensorData::new(targets[r.clone()].to_vec(), [r.len(), 1]), device))
                .collect(),
            real_tokens: chunk.lens.iter().sum(),
            next_tokens: chunk.lens.iter().map(|l| l.saturating_sub(1)).sum(),
            slices,
        }
    }
}

/// The original's next-token distributions of one chunk, per head slice.
#[derive(Clone, Debug)]
pub enum TargetDist {
    /// Log-probabilities over the whole vocabulary, `[rows, vocab]`.
    Full(Vec<Tensor<2>>),
    /// The top K log-probabilities `[rows, K]`, their token ids `[rows, K]`, and the log of
    /// the remaining mass `[rows]`.
    TopK(Vec<(Tensor<2>, Tensor<2, Int>, Tensor<1>)>),
}

impl TargetDist {
    /// Bytes one token row takes.
    pub fn bytes_per_row(vocab: usize, top_k: Option<usize>) -> usize {
        match top_k {
            None => 4 * vocab,
            Some(k) => 12 * k + 4,
        }
    }

    /// Compute from the original's final normed hidden state `[batch, seq, hidden]`.
    pub fn compute(model: &Llama, normed: &Tensor<3>, rows: &HeadRows, top_k: Option<usize>) -> Result<Self> {
        let slices = head_slices(model, normed, rows);
        Ok(match top_k {
            None => TargetDist::Full(slices.collect()),
            // the top K are chosen on the host, once per calibration set: the same choice on
            // every backend
            Some(k) => TargetDist::TopK(slices.map(|lp| top_k_rows(lp, k)).collect::<Result<_>>()?),
        })
    }
}

/// The `k` largest log-probabilities of each row of `lp` (`[rows, vocab]`), their token ids,
/// and the log of each row's remaining mass.
fn top_k_rows(lp: Tensor<2>, k: usize) -> Result<(Tensor<2>, Tensor<2, Int>, Tensor<1>)> {
    let device = lp.device();
    let [n, vocab] = lp.dims();
    let host = download(lp)?;
    let (mut values, mut ids, mut rest) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k), Vec::with_capacity(n));
    let mut order: Vec<usize> = Vec::with_capacity(vocab);
    for row in host.data.chunks(vocab) {
        order.clear();
        order.extend(0..vocab);
        order.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
        let top = &mut order[..k];
        top.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let kept: f64 = top.iter().map(|&i| (row[i] as f64).exp()).sum();
        values.extend(top.iter().map(|&i| row[i]));
        ids.extend(top.iter().map(|&i| i as i32));
        rest.push((1.0 - kept).max(1e-12).ln() as f32);
    }
    Ok((
        Tensor::<2>::from_data(TensorData::new(values, [n, k]), &device),
        Tensor::<2, Int>::from_data(TensorData::new(ids, [n, k]), &device),
        Tensor::<1>::from_data(TensorData::new(rest, [n]), &device),
    ))
}

/// Log-softmax of the LM head over each slice of token rows: `[rows, vocab]` each.
fn head_slices<'a>(model: &'a Llama, normed: &Tensor<3>, rows: &'a HeadRows) -> impl Iterator<Item = Tensor<2>> + 'a {
    let [b, s, h] = normed.dims();
    let flat = normed.clone().reshape([b * s, h]);
    rows.slices.iter().map(move |r| {
        let x = flat.clone().slice_dim(0, r.clone());
        log_softmax(model.logits(x.unsqueeze_dim::<3>(0)).squeeze_dim::<2>(0), 1)
    })
}

/// Summed KL over real tokens and summed NLL over tokens with a successor, of one chunk:
/// `(kl_sum, nll_sum)`; `kl_sum` is 0 when `target` is `None`.
pub fn chunk_losses(model: &Llama, normed: &Tensor<3>, rows: &HeadRows, target: Option<&TargetDist>) -> Result<(f64, f64)> {
    let mut kl: Option<Tensor<1>> = None;
    let mut nll: Option<Tensor<1>> = None;
    let add = |acc: &mut Option<Tensor<1>>, x: Tensor<1>| {
        *acc = Some(match acc.take() {
            Some(a) => a + x,
            None => x,
        })
    };
    for (i, lq) in head_slices(model, normed, rows).enumerate() {
        let n = rows.slices[i].len();
        if let Some(t) = target {
            let per_row = match t {
                TargetDist::Full(lps) => {
                    let lp = lps[i].clone();
                    (lp.clone().exp() * (lp - lq.clone())).sum_dim(1).reshape([n])
                }
                TargetDist::TopK(tops) => {
                    let (lp, idx, rest_p) = &tops[i];
                    let lq_k = lq.clone().gather(1, idx.clone());
                    let rest_q = (lq_k.clone().exp().sum_dim(1).reshape([n]).neg() + 1.0).clamp_min(1e-12).log();
                    let top = (lp.clone().exp() * (lp.clone() - lq_k)).sum_dim(1).reshape([n]);
                    top + rest_p.clone().exp() * (rest_p.clone() - rest_q)
                }
            };
            add(&mut kl, (per_row * rows.real[i].clone()).sum());
        }
        let picked = lq.gather(1, rows.targets[i].clone()).reshape([n]);
        add(&mut nll, (picked * rows.has_next[i].clone()).sum().neg());
    }
    let device = &model.device;
    let zero = || Tensor::<1>::zeros([1], device);
    let both = Tensor::cat(vec![kl.unwrap_or_else(zero), nll.unwrap_or_else(zero)], 0);
    let host = download(both)?;
    Ok((host.data[0] as f64, host.data[1] as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_checked_against_the_vocabulary() {
        assert_eq!(effective_top_k(None, 100).unwrap(), None);
        assert_eq!(effective_top_k(None, 50_000).unwrap(), Some(DEFAULT_TOP_K));
        assert_eq!(effective_top_k(Some(100), 100).unwrap(), None);
        assert_eq!(effective_top_k(Some(8), 100).unwrap(), Some(8));
        for bad in [0, 101] {
            let e = effective_top_k(Some(bad), 100).unwrap_err();
            assert!(matches!(e, Error::Setting { setting: "kl_top_k", .. }), "{e}");
        }
    }

    #[test]
    fn objective_names_round_trip() {
        use crate::util::Choice;
        for o in Objective::VALUES {
            assert_eq!(Objective::from_name(o.name()), Some(*o));
        }
        assert_eq!(serde_json::to_string(&Objective::Kl).unwrap(), "\"kl\"");
    }
}
