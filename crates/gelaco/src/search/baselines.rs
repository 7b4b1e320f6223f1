//! The baselines GeLaCo is compared with, expressed as collapse plans so that
//! they are scored with the same fitness and can seed a search.
//!
//! - LaCo: from the top down, merge a window of C layers into its first; keep the merge
//!   when the final hidden states stay above a cosine threshold T.
//! - ShortGPT: remove the r layers with the lowest Block Influence,
//!   BI_i = 1 - mean over tokens of cos(input of layer i, output of layer i).
//! - SLEB and EvoPress: see [`super::depth`].
//! - The closest block (Gromov et al.): remove the n contiguous layers whose input and
//!   output hidden states are closest in angular distance; a seed of the default search.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::collapse::{MergeOp, Plan};
use crate::error::{Error, Result};
use crate::fitness::reference::Chunk;
use crate::fitness::{FitnessEngine, FitnessResult};
use crate::model::llama::{Llama, download};

/// LaCo's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LacoSettings {
    /// Layers merged at once (C).
    pub window: usize,
    /// Cosine similarity of final hidden states a merge must keep (T).
    pub threshold: f64,
    /// Layers skipped down after an accepted merge (I).
    pub interval: usize,
    /// Lowest layer a merge may start at.
    pub lowest: usize,
    pub op: MergeOp,
}

impl Default for LacoSettings {
    fn default() -> Self {
        LacoSettings { window: 4, threshold: 0.65, interval: 2, lowest: 1, op: MergeOp::Rdsc }
    }
}

/// The methods the search is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaselineMethod {
    Laco,
    Shortgpt,
    Sleb,
    Evopress,
}

crate::choice!(BaselineMethod {
    Laco => "laco": "LaCo: greedy merging while final hidden states stay similar",
    Shortgpt => "shortgpt": "ShortGPT: remove the layers of lowest Block Influence",
    Sleb => "sleb": "SLEB: remove one layer at a time, the one whose removal gives the lowest calibration NLL",
    Evopress => "evopress": "EvoPress: a (1+lambda) search over which layers to drop, by KL with multi-step selection",
});

impl BaselineMethod {
    /// The name people know the method by.
    pub fn title(self) -> &'static str {
        match self {
            BaselineMethod::Laco => "LaCo",
            BaselineMethod::Shortgpt => "ShortGPT",
            BaselineMethod::Sleb => "SLEB",
            BaselineMethod::Evopress => "EvoPress",
        }
    }
}

/// A baseline's plan, scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineSolution {
    /// The method and its settings, e.g. `ShortGPT (r=6)`.
    pub method: String,
    /// The method (absent from run folders written before it was recorded: see
    /// [`BaselineSolution::kind`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<BaselineMethod>,
    /// Perplexity on the run's held-out validation text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_perplexity: Option<f64>,
    /// Perplexity on the validation text once healed (see [`crate::run::heal_picks`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healed_validation_perplexity: Option<f64>,
    /// The lowest validation perplexity of its size among the front and the baselines.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recommended: bool,
    pub plan: Plan,
    pub merges: String,
    pub result: FitnessResult,
}

impl BaselineSolution {
    /// Whether this solution's model is its plan healed: healing validated better.
    pub fn healed(&self) -> bool {
        crate::run::heal_picks::healed_wins(self.validation_perplexity, self.healed_validation_perplexity)
    }

    /// The validation perplexity of this solution's model (healed or not).
    pub fn picked_perplexity(&self) -> Option<f64> {
        crate::run::heal_picks::picked(self.validation_perplexity, self.healed_validation_perplexity)
    }
}

/// LaCo's greedy merging.
pub fn laco(engine: &FitnessEngine, s: &LacoSettings) -> Result<BaselineSolution> {
    let layers = engine.model().num_layers();
    if s.window < 2 || s.window > layers {
        return Err(Error::setting("window", format!("must be between 2 and {layers}")));
    }
    // LaCo's criterion is the similarity of final hidden states, whatever the run measures
    let criterion = engine.under(crate::fitness::Objective::Similarity)?;
    let mut plan = Plan::identity(layers);
    let mut l = layers as isize - s.window as isize;
    while l >= s.lowest as isize {
        let cb = l as usize;
        let ce = cb + s.window - 1;
        if ce < plan.remaining() {
            let mut candidate = plan.clone();
            candidate.push(cb, ce, s.op);
            let r = criterion.evaluate(&candidate)?;
            tracing::debug!(cb, ce, hidden = r.hidden, "laco candidate");
            if r.hidden.is_finite() && r.hidden > s.threshold {
                plan = candidate;
                l -= s.interval as isize;
                l = l.min(plan.remaining() as isize - s.window as isize);
                continue;
            }
        }
        l -= 1;
    }
    let result = engine.evaluate(&plan)?;
    Ok(BaselineSolution {
        method: format!("LaCo (C={}, T={}, I={}, {})", s.window, s.threshold, s.interval, s.op),
        kind: Some(BaselineMethod::Laco),
        validation_perplexity: None, healed_validation_perplexity: None,
        recommended: false,
        merges: plan.merges_text(),
        plan,
        result,
    })
}

/// How far apart the original model's hidden states are across spans of layers, measured
/// once on the calibration samples: entry `[n - 1][l]` compares the state entering layer
/// `l` with the one entering layer `l + n` (the model's last state, before the final norm,
/// where `l + n` is the number of layers), as a mean over every real token.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanDistances {
    /// Mean cosine similarity.
    pub cosine: Vec<Vec<f64>>,
    /// Mean angular distance, arccos(cosine) / pi, in [0, 1].
    pub angular: Vec<Vec<f64>>,
}

/// The most memory [`span_distances`] keeps hidden states in: batches are made smaller
/// (down to one sample) to stay under it.
pub const SPAN_STATES_BYTES: usize = 256 << 20;

/// [`SpanDistances`] for spans of 1 to `max_span` layers: the original model run once over
/// `samples`, up to `batch` at a time, keeping the last `max_span` hidden states of the
/// batch (never the whole stack of them), within [`SPAN_STATES_BYTES`] where one sample
/// allows. The figures do not depend on the batch.
pub fn span_distances(model: &Llama, samples: &[Vec<u32>], batch: usize, max_span: usize) -> Result<SpanDistances> {
    span_distances_within(model, samples, batch, max_span, SPAN_STATES_BYTES)
}

/// [`span_distances`] keeping at most `bytes` of hidden states where one sample allows.
pub fn span_distances_within(model: &Llama, samples: &[Vec<u32>], batch: usize, max_span: usize, bytes: usize) -> Result<SpanDistances> {
    let layers = model.num_layers();
    let max_span = max_span.clamp(1, layers.max(1));
    let longest = samples.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let per_sample = max_span * longest * model.config.hidden_size * std::mem::size_of::<f32>();
    let batch = batch.clamp(1, (bytes / per_sample.max(1)).max(1));
    let mut cos_sum: Vec<Vec<f64>> = (1..=max_span).map(|n| vec![0.0; layers + 1 - n]).collect();
    let mut angle_sum = cos_sum.clone();
    let mut tokens = 0usize;
    for group in samples.chunks(batch) {
        let chunk = Chunk::new(group, model);
        let seq = chunk.seq();
        let ids = model.ids_tensor(&chunk.ids)?;
        let mut state = model.state(seq);
        // the newest state first: states[k] enters layer j - k
        let mut states: std::collections::VecDeque<Tensor<3>> = std::collections::VecDeque::with_capacity(max_span + 1);
        states.push_front(model.embed(ids));
        for j in 0..layers {
            let out = model.run_layers(states[0].clone(), j..j + 1, &mut state, None, None);
            let out_sq = out.clone().square().sum_dim(2);
            // per-token cosine of the state leaving layer j with each kept earlier one
            let rows: Vec<Tensor<3>> = states
                .iter()
                .map(|h| (h.clone() * out.clone()).sum_dim(2) / (h.clone().square().sum_dim(2) * out_sq.clone()).sqrt())
                .collect();
            let cosines = download(Tensor::cat(rows, 2))?;
            let spans = states.len();
            for (row, &len) in cosines.data.chunks(seq * spans).zip(&chunk.lens) {
                for t in row.chunks(spans).take(len) {
                    for (k, &c) in t.iter().enumerate() {
                        let c = (c as f64).clamp(-1.0, 1.0);
                        // span k + 1, from the state entering layer j - k
                        cos_sum[k][j - k] += c;
                        angle_sum[k][j - k] += c.acos() / std::f64::consts::PI;
                    }
                }
            }
            states.push_front(out);
            states.truncate(max_span);
        }
        tokens += chunk.lens.iter().sum::<usize>();
    }
    let mean = |sums: Vec<Vec<f64>>| -> Vec<Vec<f64>> { sums.into_iter().map(|r| r.into_iter().map(|s| s / tokens.max(1) as f64).collect()).collect() };
    Ok(SpanDistances { cosine: mean(cos_sum), angular: mean(angle_sum) })
}

impl SpanDistances {
    /// Block Influence of every layer: one minus the mean cosine of its input and output.
    pub fn block_influence(&self) -> Vec<f64> {
        self.cosine[0].iter().map(|c| 1.0 - c).collect()
    }
}

/// Block Influence of every layer on the calibration samples.
pub fn block_influence(model: &Llama, samples: &[Vec<u32>], batch: usize) -> Result<Vec<f64>> {
    Ok(span_distances(model, samples, batch, 1)?.block_influence())
}

/// The contiguous block of `remove` layers whose removal joins the two closest hidden
/// states, by angular distance (Gromov et al., arXiv 2403.17887): layers `l..l + remove`
/// for the `l` of least `angular[remove - 1][l]`, the lowest such `l` on a tie.
pub fn closest_block_plan(distances: &SpanDistances, remove: usize) -> Result<Plan> {
    let row = remove.checked_sub(1).and_then(|n| distances.angular.get(n)).ok_or_else(|| {
        Error::Invalid(format!("no angular distances over {remove} layers (measured up to {})", distances.angular.len()))
    })?;
    let layers = row.len() + remove - 1;
    let start = (0..row.len()).min_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b))).unwrap_or(0);
    removal_plan(layers, &(start..start + remove).collect::<Vec<_>>())
}

/// The plan that removes `layers_to_remove` (original indices): each run of removed
/// layers is dropped by keeping the layer before it (or, for a run at the bottom, the
/// layer after it).
pub fn removal_plan(num_layers: usize, layers_to_remove: &[usize]) -> Result<Plan> {
    let mut remove: Vec<usize> = layers_to_remove.to_vec();
    remove.sort_unstable();
    remove.dedup();
    if remove.len() >= num_layers {
        return Err(Error::Invalid(format!("cannot remove {} of {num_layers} layers", remove.len())));
    }
    let mut plan = Plan::identity(num_layers);
    let mut i = 0;
    while i < remove.len() {
        let start = remove[i];
        let mut end = start;
        while i + 1 < remove.len() && remove[i + 1] == end + 1 {
            i += 1;
            end += 1;
        }
        if start > 0 {
            plan.push(plan.psi[start - 1], plan.psi[end], MergeOp::KeepFirst);
        } else {
            plan.push(plan.psi[0], plan.psi[end + 1], MergeOp::KeepLast);
        }
        i += 1;
    }
    Ok(plan)
}

/// ShortGPT: remove the `remove` layers of lowest Block Influence.
pub fn shortgpt(engine: &FitnessEngine, influence: &[f64], remove: usize) -> Result<BaselineSolution> {
    let plan = shortgpt_plan(influence, remove)?;
    let result = engine.evaluate(&plan)?;
    Ok(BaselineSolution {
        method: format!("ShortGPT (r={remove})"),
        kind: Some(BaselineMethod::Shortgpt),
        merges: plan.merges_text_with_ops(MergeOp::KeepFirst),
        plan,
        result,
        validation_perplexity: None, healed_validation_perplexity: None,
        recommended: false,
    })
}

/// ShortGPT's plan: remove the `remove` layers of lowest Block Influence.
pub fn shortgpt_plan(influence: &[f64], remove: usize) -> Result<Plan> {
    let mut order: Vec<usize> = (0..influence.len()).collect();
    order.sort_by(|&a, &b| influence[a].total_cmp(&influence[b]).then(a.cmp(&b)));
    let chosen: Vec<usize> = order.into_iter().take(remove).collect();
    removal_plan(influence.len(), &chosen)
}

impl BaselineSolution {
    /// The method, recorded or read from the label's first word.
    pub fn kind(&self) -> Option<BaselineMethod> {
        self.kind.or_else(|| {
            let first = self.method.split_whitespace().next()?;
            [BaselineMethod::Laco, BaselineMethod::Shortgpt, BaselineMethod::Sleb, BaselineMethod::Evopress]
                .into_iter()
                .find(|m| m.title() == first)
        })
    }
}

/// LaCo and ShortGPT solutions at a spread of sizes, scored by `engine`: what a search
/// computes when asked for baselines, to plot beside its front and to start a `warm`
/// search from. `None` when `stopped` said so before they were all computed (asked
/// between solutions).
pub fn compute_baselines(
    engine: &FitnessEngine,
    merge_op: crate::collapse::MergeOp,
    stopped: &dyn Fn() -> bool,
) -> Result<Option<Vec<BaselineSolution>>> {
    let layers = engine.model().num_layers();
    let mut out = Vec::new();
    let influence = block_influence(engine.model(), &engine.calibration.samples, engine.options.batch_size)?;
    let step = (layers / 10).max(1);
    let mut r = step;
    while r <= layers / 2 {
        if stopped() {
            return Ok(None);
        }
        out.push(shortgpt(engine, &influence, r)?);
        r += step;
    }
    for threshold in [0.9, 0.8, 0.65] {
        for op in [crate::collapse::MergeOp::Rdsc, merge_op] {
            if stopped() {
                return Ok(None);
            }
            let s = LacoSettings { threshold, op, ..LacoSettings::default() };
            let sol = laco(engine, &s)?;
            if sol.plan.removed() > 0 && !out.iter().any(|o: &BaselineSolution| o.plan == sol.plan) {
                out.push(sol);
            }
            if op == crate::collapse::MergeOp::Rdsc && merge_op == op {
                break;
            }
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_plans_drop_exactly_the_named_layers() {
        let p = removal_plan(10, &[0, 4, 5, 9]).unwrap();
        assert_eq!(p.removed(), 4);
        // survivors: 1, 2, 3, 6, 7, 8 — each group keeps exactly one original survivor
        let groups = p.groups();
        assert_eq!(groups.len(), 6);
        assert_eq!(groups[0], 0..=1);
        assert_eq!(groups[2], 3..=5);
        assert_eq!(groups[5], 8..=9);
        assert!(removal_plan(3, &[0, 1, 2]).is_err());
        // the bottom run keeps the layer after it, and says so in --merges form
        assert_eq!(p.merges_text_with_ops(MergeOp::KeepFirst), "0:1:keep-last,3:5,8:9");
        assert_eq!(p.removed_text(), "0, 4-5, 9");
    }

    #[test]
    fn the_closest_block_is_the_span_of_least_angular_distance() {
        // 6 layers; spans of 1 and 2 layers
        let distances = SpanDistances {
            cosine: vec![vec![0.9; 6], vec![0.8; 5]],
            angular: vec![vec![0.3, 0.2, 0.25, 0.2, 0.4, 0.5], vec![0.4, 0.35, 0.3, 0.31, 0.6]],
        };
        // a tie goes to the lower start
        assert_eq!(closest_block_plan(&distances, 1).unwrap().removed_layers(), vec![1]);
        let two = closest_block_plan(&distances, 2).unwrap();
        assert_eq!(two.removed_layers(), vec![2, 3]);
        assert_eq!(two.merges_text_with_ops(MergeOp::KeepFirst), "1:3");
        // a block at the bottom keeps the layer after it
        let bottom = SpanDistances { cosine: vec![vec![0.9; 4]], angular: vec![vec![0.1, 0.2, 0.3, 0.4]] };
        assert_eq!(closest_block_plan(&bottom, 1).unwrap().removed_layers(), vec![0]);
        assert!(closest_block_plan(&distances, 3).is_err());
        assert!(closest_block_plan(&distances, 0).is_err());
    }

    #[test]
    fn the_method_of_an_old_baseline_is_read_from_its_label() {
        let plan = removal_plan(10, &[4]).unwrap();
        let old = BaselineSolution { method: "LaCo (C=4, T=0.65, I=2, rdsc)".into(), kind: None, merges: plan.merges_text(), plan, result: FitnessResult::default(), validation_perplexity: None, healed_validation_perplexity: None, recommended: false };
        assert_eq!(old.kind(), Some(BaselineMethod::Laco));
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("\"kind\""), "{json}");
        let other = BaselineSolution { method: "Laconic".into(), ..old };
        assert_eq!(other.kind(), None);
    }
}
