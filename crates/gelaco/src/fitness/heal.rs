//! Training-free healing (after ReplaceMe, arXiv 2505.02819, and LinearPatch, arXiv
//! 2505.24680). Where a compressed layer stands for a group of original layers `b..=e`, its
//! MLP output `M` is multiplied by a linear map `T` fitted on the calibration activations so
//! that the layer's output approaches the hidden state the original produced after layer
//! `e`:
//!
//! ```text
//! layer output = Z + M            Z: residual after attention, M: MLP output
//! T = argmin ||M T - (target - Z)||^2 + lambda ||T||^2     over real calibration tokens
//!   = (M^T M + lambda I)^-1 M^T (target - Z)
//! ```
//!
//! with `lambda` a small multiple of the mean diagonal of `M^T M`. `T` is folded into the
//! down projection (`W_down^T <- W_down^T T`), so the healed model has the original
//! architecture and exports like any other. Layers are healed in order, each fitted on the
//! hidden states the already healed layers before it produce.

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::calibration::Calibration;
use super::{EngineOptions, FitnessEngine, Objective};
use crate::collapse::{MergeSettings, Plan};
use crate::error::{Error, Result};
use crate::model::llama::{Layer, Llama, download};
use crate::model::stored::Weight;

/// How a compressed model is healed after its layers are collapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Heal {
    /// The collapsed layers as they are.
    #[default]
    None,
    /// A least-squares linear map per collapsed group, folded into its down projection.
    Linear,
}

crate::choice!(Heal {
    None => "none": "the collapsed layers as they are",
    Linear => "linear": "fit a linear map on the calibration activations that restores each collapsed group's output, folded into its down projection",
});

/// Healing fits on at least this many calibration tokens per hidden dimension.
pub const MIN_TOKENS_PER_DIM: usize = 2;

/// Healing a model of hidden size `d` needs [`MIN_TOKENS_PER_DIM`] calibration tokens per
/// dimension: a `d x d` map fitted on fewer restores the calibration almost exactly and says
/// nothing of other text.
pub fn check_tokens(available: usize, d: usize) -> Result<()> {
    if available < MIN_TOKENS_PER_DIM * d {
        return Err(Error::setting(
            "heal",
            format!(
                "needs at least {} calibration tokens to fit on ({MIN_TOKENS_PER_DIM} x the hidden size {d}); the calibration has {available}",
                MIN_TOKENS_PER_DIM * d
            ),
        ));
    }
    Ok(())
}

/// `lambda` relative to the mean diagonal of `M^T M`.
pub const RIDGE: f64 = 1e-3;

impl FitnessEngine {
    /// An engine that builds `base`'s compressed models healed with `method`, fitted on
    /// `calibration`, keeping only what healing fits on (the hidden states entering each
    /// layer). Recipes, exports and a run's healed picks all heal through it, so the same
    /// plan and samples give the same model.
    pub fn healer(base: &Llama, calibration: Calibration, merge: MergeSettings, method: Heal) -> Result<Self> {
        let options = EngineOptions { merge, objective: Objective::Nll, heal: method, precision: base.precision, ..EngineOptions::default() };
        FitnessEngine::new(base, calibration, options)
    }

    /// `compressed` (built from `plan`) healed on the first `chunks` calibration chunks.
    pub fn heal(&self, compressed: &Llama, plan: &Plan, chunks: usize) -> Result<Llama> {
        if plan.removed() == 0 {
            return Err(Error::setting("heal", "needs a plan that removes at least one layer"));
        }
        let groups = plan.groups();
        let first = plan.first_changed_layer();
        let start = plan.psi[first];
        // fit on at least the tokens `check_tokens` asks for, even when scoring on fewer
        let d = compressed.config.hidden_size;
        check_tokens(self.total_tokens(), d)?;
        let chunks = chunks.max(self.chunk_count(Some(MIN_TOKENS_PER_DIM * d))).clamp(1, self.chunks.len());
        // of the original, what the fits read: the state entering the first changed layer and
        // the states leaving each collapsed group
        let targets: Vec<usize> = groups.iter().filter(|g| g.start() != g.end()).map(|g| g.end() + 1).collect();
        let keep = |j: usize| j == start || targets.contains(&j);
        let refs: Vec<_> = (0..chunks).map(|i| self.reference(i, &keep)).collect::<Result<_>>()?;
        let original = |i: usize, j: usize| refs[i].hidden_entering(&self.model, &self.chunks[i], j);
        let mut hidden: Vec<Tensor<3>> = (0..refs.len()).map(|i| original(i, start)).collect::<Result<_>>()?;
        let mut model = compressed.clone();
        // layers after the last collapsed group need not run: nothing after them is fitted
        let last = groups.iter().rposition(|g| g.start() != g.end()).unwrap_or(0);
        for (c, group) in groups.iter().enumerate().take(last + 1).skip(start) {
            if group.start() == group.end() {
                // an untouched layer: the next group is fitted on what it leaves
                for (i, h) in hidden.iter_mut().enumerate() {
                    let mut state = model.state(self.chunks[i].seq());
                    *h = model.run_layers(h.clone(), c..c + 1, &mut state, None, None);
                }
                continue;
            }
            let end = *group.end();
            let mut ata: Option<Tensor<2>> = None;
            let mut atb: Option<Tensor<2>> = None;
            // per chunk: the layer's output without its MLP (Z) and the MLP output (M)
            let mut parts = Vec::with_capacity(hidden.len());
            for (i, h) in hidden.iter().enumerate() {
                let chunk = &self.chunks[i];
                let mut state = model.state(chunk.seq());
                let mut taps = Vec::with_capacity(1);
                let out = model.run_layers(h.clone(), c..c + 1, &mut state, None, Some(&mut taps));
                let down = taps.pop().ok_or_else(|| Error::Invalid("a layer produced no taps".into()))?.down;
                let target = original(i, end + 1)?;
                let without = out - down.clone();
                let residual = target - without.clone();
                let [b, s, d] = down.dims();
                let m = (down.clone() * chunk.mask.clone()).reshape([b * s, d]);
                let r = (residual * chunk.mask.clone()).reshape([b * s, d]);
                let mt = m.clone().transpose();
                add(&mut ata, mt.clone().matmul(m));
                add(&mut atb, mt.matmul(r));
                parts.push((without, down));
            }
            let (Some(ata), Some(atb)) = (ata, atb) else { continue };
            let d = compressed.config.hidden_size;
            let t = solve_ridge(&download(ata)?.data, &download(atb)?.data, d)?;
            let t = Tensor::<2>::from_data(TensorData::new(t, [d, d]), &model.device);
            let mut layers = model.layers.clone();
            layers[c] = Arc::new(fold(&layers[c], t.clone()));
            model = model.with_layers(layers);
            if c == last {
                break;
            }
            // the healed layer's output, Z + M T, without running it again
            for (h, (without, down)) in hidden.iter_mut().zip(parts) {
                let [b, s, d] = down.dims();
                *h = without + down.reshape([b * s, d]).matmul(t.clone()).reshape([b, s, d]);
            }
        }
        Ok(model)
    }
}

fn add(acc: &mut Option<Tensor<2>>, x: Tensor<2>) {
    *acc = Some(match acc.take() {
        Some(a) => a + x,
        None => x,
    });
}

/// The layer with `T` folded into its down projection.
fn fold(layer: &Layer, t: Tensor<2>) -> Layer {
    let mut healed = layer.clone();
    healed.mlp.down.weight = Weight::made(layer.mlp.down.weight_t().matmul(t.clone()), &layer.mlp.down.weight);
    healed.mlp.down.bias = layer.mlp.down.bias.clone().map(|b| b.unsqueeze_dim::<2>(0).matmul(t).squeeze_dim::<1>(0));
    healed
}

/// `(A + lambda I)^-1 B` for symmetric positive semi-definite `A` (`n x n`, row-major, f32)
/// and `B` (`n x n`), by Cholesky in f64; `lambda = RIDGE * mean(diag A)` (at least 1e-12).
pub fn solve_ridge(a: &[f32], b: &[f32], n: usize) -> Result<Vec<f32>> {
    if a.len() != n * n || b.len() != n * n {
        return Err(Error::Invalid("healing statistics have the wrong size".into()));
    }
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return Err(Error::Numerical("the activations healing is fitted on are not finite".into()));
    }
    let mean_diag = (0..n).map(|i| a[i * n + i] as f64).sum::<f64>() / n.max(1) as f64;
    let lambda = (RIDGE * mean_diag).max(1e-12);
    // lower-triangular L with L L^T = A + lambda I
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j] as f64 + if i == j { lambda } else { 0.0 };
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 {
                    return Err(Error::Numerical("healing could not factor its normal equations".into()));
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    // solve L Y = B, then L^T X = Y, for all columns at once (row-major)
    let mut x: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    for i in 0..n {
        for k in 0..i {
            let f = l[i * n + k];
            if f != 0.0 {
                for c in 0..n {
                    x[i * n + c] -= f * x[k * n + c];
                }
            }
        }
        let d = l[i * n + i];
        for c in 0..n {
            x[i * n + c] /= d;
        }
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            let f = l[k * n + i];
            if f != 0.0 {
                for c in 0..n {
                    x[i * n + c] -= f * x[k * n + c];
                }
            }
        }
        let d = l[i * n + i];
        for c in 0..n {
            x[i * n + c] /= d;
        }
    }
    Ok(x.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_solve_recovers_a_known_map() {
        // A = M^T M for a well-conditioned M; B = A T: the solve returns T up to the ridge
        let n = 4;
        let m: Vec<f64> = (0..8 * n).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0 + if i % (n + 1) == 0 { 2.0 } else { 0.0 }).collect();
        let t: Vec<f64> = (0..n * n).map(|i| ((i * 13 % 7) as f64 - 3.0) / 2.0).collect();
        let rows = 8;
        let mut a = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..rows).map(|r| m[r * n + i] * m[r * n + j]).sum::<f64>() as f32;
            }
        }
        let mut b = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                b[i * n + j] = (0..n).map(|k| a[i * n + k] as f64 * t[k * n + j]).sum::<f64>() as f32;
            }
        }
        let x = solve_ridge(&a, &b, n).unwrap();
        for (got, want) in x.iter().zip(&t) {
            assert!((*got as f64 - want).abs() < 0.05, "{got} vs {want}");
        }
        assert!(solve_ridge(&[f32::NAN; 16], &b, n).is_err());
    }
}
