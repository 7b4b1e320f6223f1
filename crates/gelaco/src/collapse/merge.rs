//! Merge operators and the construction of a compressed model from a plan.
//!
//! Only merged layers get new tensors. Every other layer of a compressed model is the
//! original's `Arc<Layer>`, whose tensors are reference-counted device handles.

use std::sync::Arc;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::plan::Plan;
use crate::model::llama::{Layer, Llama, ParamTensor};
use crate::model::stored::Weight;
use crate::model::weights::LayerParam;

/// The operator used when none is named, chosen by measurement on the demo model (README).
pub const DEFAULT_MERGE_OP: MergeOp = MergeOp::KeepFirst;

/// How a run of layers `cb..=ce` becomes one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeOp {
    /// LaCo's "reserving differences while seeking common": `θ_cb + Σ_k (θ_k − θ_cb)`.
    Rdsc,
    /// The element-wise mean of the layers.
    Mean,
    /// Keep the first layer, drop the rest.
    KeepFirst,
    /// Keep the last layer's weights in the first's place.
    KeepLast,
}

impl MergeOp {
    pub const ALL: [MergeOp; 4] = [MergeOp::Rdsc, MergeOp::Mean, MergeOp::KeepFirst, MergeOp::KeepLast];

    /// Whether merging `a..=b` then the result with more layers differs from merging the
    /// whole run at once.
    pub fn depends_on_order(self) -> bool {
        matches!(self, MergeOp::Rdsc | MergeOp::Mean)
    }

    /// Index of this operator, for an integer gene.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

crate::choice!(MergeOp {
    Rdsc => "rdsc": "LaCo's sum of differences (the paper's operator)",
    Mean => "mean": "the element-wise mean of the layers",
    KeepFirst => "keep-first": "keep the first layer, drop the rest",
    KeepLast => "keep-last": "keep the last layer's weights in the first's place",
});

/// Settings that apply to every merge of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MergeSettings {
    /// Leave the RMSNorm weights of the base layer (`cb`) unmerged.
    pub keep_base_norms: bool,
}

fn combine<const D: usize>(ts: Vec<Tensor<D>>, op: MergeOp) -> Tensor<D> {
    let n = ts.len();
    match op {
        MergeOp::KeepFirst => ts.into_iter().next().expect("a merge has layers"),
        MergeOp::KeepLast => ts.into_iter().next_back().expect("a merge has layers"),
        MergeOp::Rdsc | MergeOp::Mean => {
            let base = ts[0].clone();
            let mut sum = ts[0].clone();
            for t in &ts[1..] {
                sum = sum + t.clone();
            }
            if op == MergeOp::Mean {
                sum.div_scalar(n as f64)
            } else {
                // θ_0 + Σ_{k≥1} (θ_k − θ_0) = Σ_k θ_k − (n − 1) θ_0
                sum - base.mul_scalar((n - 1) as f64)
            }
        }
    }
}

/// Merge a run of layers into one.
pub fn merge_layers(layers: &[Arc<Layer>], op: MergeOp, settings: MergeSettings) -> Arc<Layer> {
    if layers.len() == 1 || op == MergeOp::KeepFirst {
        return layers[0].clone();
    }
    let base = &layers[0];
    // a parameter is combined from every layer that has it (the layers of one model all do)
    let parts = |param: LayerParam| layers.iter().filter_map(move |l| l.tensor(param));
    let vector = |param: LayerParam, own: &Tensor<1>| {
        if param.is_norm() && settings.keep_base_norms {
            return own.clone();
        }
        combine(parts(param).filter_map(|t| if let ParamTensor::Vector(v) = t { Some(v) } else { None }).collect(), op)
    };
    let matrix = |param: LayerParam, _: &Weight| {
        combine(parts(param).filter_map(|t| if let ParamTensor::Matrix(m) = t { Some(m) } else { None }).collect(), op)
    };
    Arc::new(base.map(vector, matrix))
}

/// The compressed model of `plan`: merges applied in canonical order on the layers as they
/// are at that point; untouched layers shared with `model`.
pub fn build(model: &Llama, plan: &Plan, settings: MergeSettings) -> Llama {
    let mut layers = model.layers.clone();
    for s in &plan.canonical {
        let merged = merge_layers(&layers[s.cb..=s.ce], s.op, settings);
        layers.splice(s.cb..=s.ce, [merged]);
    }
    model.with_layers(layers)
}

/// Where a compressed layer's weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerSource {
    /// Exactly the weights of this original layer.
    Original(usize),
    /// New weights computed by a merge.
    Merged,
}

/// For each layer of the compressed model of `plan`, whether it is an original layer
/// unchanged (and which) or a merge result, following [`merge_layers`]' rules.
pub fn layer_sources(plan: &Plan, settings: MergeSettings) -> Vec<LayerSource> {
    let mut src: Vec<LayerSource> = (0..plan.num_layers).map(LayerSource::Original).collect();
    for s in &plan.canonical {
        let group: Vec<LayerSource> = src.drain(s.cb..=s.ce).collect();
        let merged = match s.op {
            MergeOp::KeepFirst => group[0],
            MergeOp::KeepLast if !settings.keep_base_norms => group[group.len() - 1],
            _ if group.len() == 1 => group[0],
            _ => LayerSource::Merged,
        };
        src.insert(s.cb, merged);
    }
    src
}

/// For each layer of the compressed model, the original layer whose per-layer settings
/// (metadata, extra tensors) it keeps: the layer it is, or the first of its merged group.
pub fn representative_layers(plan: &Plan, settings: MergeSettings) -> Vec<usize> {
    layer_sources(plan, settings)
        .iter()
        .zip(plan.groups())
        .map(|(s, g)| match s {
            LayerSource::Original(j) => *j,
            LayerSource::Merged => *g.start(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_follow_the_operators() {
        let plan = Plan::from_ranges(&[(2, 4)], 8, MergeOp::KeepLast).unwrap();
        let s = layer_sources(&plan, MergeSettings::default());
        assert_eq!(s.len(), 6);
        assert_eq!(s[2], LayerSource::Original(4));
        assert_eq!(s[3], LayerSource::Original(5));
        let s = layer_sources(&plan, MergeSettings { keep_base_norms: true });
        assert_eq!(s[2], LayerSource::Merged);
        assert_eq!(representative_layers(&plan, MergeSettings { keep_base_norms: true })[2], 2);
        let plan = Plan::from_triples(&Plan::parse_merges("1:2:mean,5:6").unwrap(), 8, MergeOp::KeepFirst).unwrap();
        let s = layer_sources(&plan, MergeSettings::default());
        assert_eq!(s, vec![
            LayerSource::Original(0),
            LayerSource::Merged,
            LayerSource::Original(3),
            LayerSource::Original(4),
            LayerSource::Original(5),
            LayerSource::Original(7),
        ]);
    }
}
