//! The straightforward evaluation, as public GeLaCo and LaCo code does it: copy the model,
//! merge, run the original and the compressed model over every sample, bring all module
//! outputs back to the host and compare there. Kept as the baseline of the speed
//! benchmark and as an independent check of the engine.

use burn::tensor::Tensor;

use super::calibration::Calibration;
use super::{FitnessResult, LayerSimilarity, WORST_FITNESS};
use crate::collapse::{MergeSettings, Plan, build};
use crate::error::Result;
use crate::model::llama::{Llama, download};

fn copy<const D: usize>(t: &Tensor<D>) -> Tensor<D> {
    Tensor::from_data(t.to_data(), &t.device())
}

/// A deep copy of the model: every tensor read back and written again.
pub fn deep_copy(model: &Llama) -> Llama {
    let layers = model.layers.iter().map(|l| std::sync::Arc::new(l.map(|_, t| copy(t), |_, w| copy(&w.dense_t())))).collect();
    let mut m = model.with_layers(layers);
    m.embed = copy(&model.embed);
    m.norm = copy(&model.norm);
    m.head_t = copy(&model.head_t);
    m
}

fn cos(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        d += x * y;
        na += x * x;
        nb += y * y;
    }
    d / (na.sqrt() * nb.sqrt())
}

/// Every module output of every layer and the final hidden state, per sample, on the host.
fn activations(model: &Llama, ids: &[u32]) -> Result<(Vec<Vec<Vec<f32>>>, Vec<f32>)> {
    let mut taps = Vec::new();
    let fin = model.forward(&[ids.to_vec()], Some(&mut taps))?;
    let layers = taps
        .iter()
        .map(|t| t.all().iter().map(|m| download((*m).clone()).map(|h| h.data)).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    Ok((layers, download(fin)?.data))
}

/// The fitness of `plan`, computed the straightforward way.
pub fn evaluate(model: &Llama, calibration: &Calibration, plan: &Plan, merge: MergeSettings) -> Result<FitnessResult> {
    let copied = deep_copy(model);
    let compressed = build(&copied, plan, merge);
    let l = plan.num_layers;
    let (mut attn, mut ffn, mut hidden) = (0f64, 0f64, 0f64);
    let mut per_layer = vec![LayerSimilarity { attention: 0.0, ffn: 0.0 }; l];
    for ids in &calibration.samples {
        let (orig, orig_fin) = activations(model, ids)?;
        let (comp, comp_fin) = activations(&compressed, ids)?;
        let (mut a, mut f) = (0f64, 0f64);
        for j in 0..l {
            let c = &comp[plan.psi[j]];
            let aj = (0..4).map(|m| cos(&orig[j][m], &c[m])).sum::<f64>() / 4.0;
            let fj = (4..7).map(|m| cos(&orig[j][m], &c[m])).sum::<f64>() / 3.0;
            per_layer[j].attention += aj;
            per_layer[j].ffn += fj;
            a += aj;
            f += fj;
        }
        attn += a / l as f64;
        ffn += f / l as f64;
        hidden += cos(&orig_fin, &comp_fin);
    }
    let n = calibration.samples.len() as f64;
    let (attn, ffn, hidden) = (attn / n, ffn / n, hidden / n);
    let non_finite = !(attn.is_finite() && ffn.is_finite() && hidden.is_finite());
    for p in per_layer.iter_mut() {
        p.attention /= n;
        p.ffn /= n;
    }
    let cfg = &model.config;
    Ok(FitnessResult {
        fitness: if non_finite { WORST_FITNESS } else { (attn + ffn + hidden) / 3.0 },
        attention: if non_finite { WORST_FITNESS } else { attn },
        ffn: if non_finite { WORST_FITNESS } else { ffn },
        hidden: if non_finite { WORST_FITNESS } else { hidden },
        compression: plan.compression(),
        params_removed: (plan.removed() * cfg.layer_params()) as f64 / cfg.total_params() as f64,
        remaining_layers: plan.remaining(),
        psi: plan.psi.clone(),
        canonical: plan.canonical.clone(),
        non_finite,
        per_layer,
        objective: super::Objective::Similarity,
        kl: None,
        nll: None,
    })
}
