//! Depth-pruning baselines that drop whole layers, chosen by language-modelling objectives:
//!
//! - SLEB (arXiv 2402.09025): remove one layer at a time, each time the one whose removal
//!   gives the lowest calibration NLL; one greedy pass gives a solution at every size.
//! - EvoPress (arXiv 2410.14649, depth pruning): a (1 + lambda) evolutionary search over
//!   which `remove` layers to drop. Offspring swap dropped and kept layers of the parent;
//!   multi-step selection scores all offspring on a few calibration tokens, keeps the best
//!   fraction for more tokens, and lets only full-calibration KL replace the parent.
//!
//! Both report progress as `(done, planned)` evaluations; returning `false` from the
//! callback stops them with [`Error::Cancelled`].

use std::collections::HashMap;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::baselines::{BaselineMethod, BaselineSolution, removal_plan};
use crate::collapse::MergeOp;
use crate::error::{Error, Result};
use crate::fitness::{FitnessEngine, FitnessResult};

/// A progress callback: `(evaluations done, evaluations planned)`; false stops.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize) -> bool;

/// Score a removal set with `engine` and name it.
fn solution(engine: &FitnessEngine, method: BaselineMethod, label: String, removed: &[usize], known: Option<FitnessResult>) -> Result<BaselineSolution> {
    let plan = removal_plan(engine.model().num_layers(), removed)?;
    let result = match known {
        Some(r) if r.objective == engine.options.objective => r,
        _ => engine.evaluate(&plan)?,
    };
    Ok(BaselineSolution { method: label, kind: Some(method), merges: plan.merges_text_with_ops(MergeOp::KeepFirst), plan, result, validation_perplexity: None, healed_validation_perplexity: None, recommended: false })
}

/// Evaluations SLEB makes to reach `max_removed` layers of `layers`.
pub fn sleb_evaluations(layers: usize, max_removed: usize) -> usize {
    (0..max_removed.min(layers.saturating_sub(1))).map(|k| layers - k).sum()
}

/// SLEB with `nll` (an engine under the `nll` objective) choosing each removal; the
/// solutions at `sizes` (layers removed) are scored with `score`.
pub fn sleb(nll: &FitnessEngine, score: &FitnessEngine, sizes: &[usize], progress: Progress) -> Result<Vec<BaselineSolution>> {
    let layers = nll.model().num_layers();
    let max = sizes.iter().copied().max().unwrap_or(0);
    if max == 0 || max >= layers {
        return Err(Error::setting("remove", format!("sizes must be between 1 and {}", layers - 1)));
    }
    let planned = sleb_evaluations(layers, max);
    let mut done = 0;
    let mut removed: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    for step in 1..=max {
        let mut best: Option<(f64, usize, FitnessResult)> = None;
        for l in (0..layers).filter(|l| !removed.contains(l)) {
            if !progress(done, planned) {
                return Err(Error::Cancelled);
            }
            let mut candidate = removed.clone();
            candidate.push(l);
            let r = nll.evaluate(&removal_plan(layers, &candidate)?)?;
            done += 1;
            let loss = if r.non_finite { f64::INFINITY } else { r.nll.unwrap_or(f64::INFINITY) };
            if best.as_ref().is_none_or(|(b, ..)| loss < *b) {
                best = Some((loss, l, r));
            }
        }
        let (_, layer, r) = best.ok_or_else(|| Error::Invalid("SLEB found no layer to remove".into()))?;
        removed.push(layer);
        if sizes.contains(&step) {
            out.push(solution(score, BaselineMethod::Sleb, format!("SLEB (r={step})"), &removed, Some(r))?);
        }
    }
    progress(planned, planned);
    Ok(out)
}

/// EvoPress's settings (depth pruning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvoPressSettings {
    /// Offspring per generation (lambda).
    pub offspring: usize,
    pub generations: usize,
    /// Selection steps: calibration tokens and the share of candidates kept for the next
    /// step; the last step uses every token and keeps one.
    pub fidelity: Vec<(usize, f64)>,
    pub seed: u64,
}

impl Default for EvoPressSettings {
    fn default() -> Self {
        EvoPressSettings { offspring: 16, generations: 20, fidelity: vec![(512, 0.125)], seed: 0 }
    }
}

impl EvoPressSettings {
    /// Evaluations planned for one run (an upper bound: repeated candidates are cached).
    pub fn evaluations(&self) -> usize {
        // the first population is selected as each generation's offspring are
        let per_generation: usize = self.steps().iter().map(|&(_, n)| n).sum();
        (self.generations + 1) * per_generation
    }

    /// (tokens, candidates scored) per selection step, the full set last (`None` tokens).
    fn steps(&self) -> Vec<(Option<usize>, usize)> {
        let mut steps = Vec::new();
        let mut n = self.offspring.max(1);
        for &(tokens, keep) in &self.fidelity {
            steps.push((Some(tokens), n));
            n = ((n as f64 * keep).ceil() as usize).clamp(1, n);
        }
        steps.push((None, n));
        steps
    }
}

/// EvoPress with `kl` (an engine under the `kl` objective) choosing which `remove` layers
/// to drop; the result is scored with `score`.
pub fn evopress(kl: &FitnessEngine, score: &FitnessEngine, remove: usize, s: &EvoPressSettings, progress: Progress) -> Result<BaselineSolution> {
    let layers = kl.model().num_layers();
    if remove == 0 || remove >= layers {
        return Err(Error::setting("remove", format!("must be between 1 and {}", layers - 1)));
    }
    if s.offspring == 0 {
        return Err(Error::setting("offspring", "must be at least 1"));
    }
    let mut scorer = Scorer { kl, layers, cache: HashMap::new(), done: 0, planned: s.evaluations(), progress };
    let mut rng = StdRng::seed_from_u64(s.seed ^ 0xE70_9E55 ^ ((remove as u64) << 32));
    let steps = s.steps();
    let random_set = |rng: &mut StdRng| {
        let mut all: Vec<usize> = (0..layers).collect();
        for i in 0..remove {
            let j = rng.random_range(i..layers);
            all.swap(i, j);
        }
        let mut set = all[..remove].to_vec();
        set.sort_unstable();
        set
    };
    let first: Vec<Vec<usize>> = (0..s.offspring).map(|_| random_set(&mut rng)).collect();
    let (mut parent, mut parent_loss) = scorer.select(first, &steps)?;
    for _ in 0..s.generations {
        let mut children = Vec::with_capacity(s.offspring);
        // small models have fewer neighbours than offspring: stop drawing after a while
        for _ in 0..50 * s.offspring {
            if children.len() == s.offspring {
                break;
            }
            let mut child = parent.clone();
            let mut swaps = 1;
            while swaps < remove.min(layers - remove) && rng.random_bool(0.5) {
                swaps += 1;
            }
            for _ in 0..swaps {
                let kept: Vec<usize> = (0..layers).filter(|l| !child.contains(l)).collect();
                let out = rng.random_range(0..child.len());
                child[out] = kept[rng.random_range(0..kept.len())];
            }
            child.sort_unstable();
            if child != parent && !children.contains(&child) {
                children.push(child);
            }
        }
        if children.is_empty() {
            break;
        }
        let (child, loss) = scorer.select(children, &steps)?;
        let parent_full = scorer.loss(&parent, None)?;
        parent_loss = parent_full;
        if loss < parent_full {
            parent = child;
            parent_loss = loss;
        }
    }
    (scorer.progress)(scorer.planned, scorer.planned);
    tracing::debug!(remove, kl = parent_loss, ?parent, "evopress");
    solution(score, BaselineMethod::Evopress, format!("EvoPress (r={remove})"), &parent, None)
}

/// KL of removal sets at a fidelity, cached, counting evaluations.
struct Scorer<'a, 'p> {
    kl: &'a FitnessEngine,
    layers: usize,
    cache: HashMap<(Vec<usize>, Option<usize>), f64>,
    done: usize,
    planned: usize,
    progress: Progress<'p>,
}

impl Scorer<'_, '_> {
    fn loss(&mut self, set: &[usize], tokens: Option<usize>) -> Result<f64> {
        let key = (set.to_vec(), tokens);
        if let Some(v) = self.cache.get(&key) {
            return Ok(*v);
        }
        if !(self.progress)(self.done, self.planned) {
            return Err(Error::Cancelled);
        }
        let r = self.kl.evaluate_partial(&removal_plan(self.layers, set)?, tokens)?;
        self.done += 1;
        let loss = if r.non_finite { f64::INFINITY } else { r.kl.unwrap_or(f64::INFINITY) };
        self.cache.insert(key, loss);
        Ok(loss)
    }

    /// Multi-step selection (see [`select`]) by KL.
    fn select(&mut self, candidates: Vec<Vec<usize>>, steps: &[(Option<usize>, usize)]) -> Result<(Vec<usize>, f64)> {
        select(candidates, steps, &mut |c, tokens| self.loss(c, tokens))
    }
}

/// Multi-step selection: the best candidate by `loss` on the full calibration set (`None`
/// tokens), and that loss. Each step scores what the step before kept, and keeps as many
/// as the next step scores (`steps` holds how many each step scores; the last keeps one),
/// so that only the most promising few are scored on many tokens.
fn select(
    mut candidates: Vec<Vec<usize>>,
    steps: &[(Option<usize>, usize)],
    loss: &mut dyn FnMut(&[usize], Option<usize>) -> Result<f64>,
) -> Result<(Vec<usize>, f64)> {
    let mut best = None;
    for (i, &(tokens, _)) in steps.iter().enumerate() {
        let mut scored = Vec::with_capacity(candidates.len());
        for c in candidates {
            scored.push((loss(&c, tokens)?, c));
        }
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        let keep = steps.get(i + 1).map_or(1, |&(_, next)| next);
        scored.truncate(keep.max(1));
        best = scored.first().map(|(l, c)| (c.clone(), *l));
        candidates = scored.into_iter().map(|(_, c)| c).collect();
    }
    best.ok_or_else(|| Error::Invalid("EvoPress had no candidate".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_evaluations_count_every_step() {
        assert_eq!(sleb_evaluations(10, 3), 10 + 9 + 8);
        let s = EvoPressSettings { offspring: 16, generations: 2, fidelity: vec![(512, 0.25)], seed: 0 };
        // 16 on 512 tokens, 4 on all, per generation and for the first population
        assert_eq!(s.steps(), vec![(Some(512), 16), (None, 4)]);
        assert_eq!(s.evaluations(), (1 + 2) * 20);
    }

    #[test]
    fn selection_scores_only_the_kept_candidates_on_more_tokens() {
        let s = EvoPressSettings { offspring: 16, generations: 1, fidelity: vec![(512, 0.125)], seed: 0 };
        let candidates: Vec<Vec<usize>> = (0..16).map(|i| vec![i]).collect();
        let mut calls: Vec<(usize, Option<usize>)> = Vec::new();
        // the cheap score ranks 0, 1, 2, ... best; the full score prefers the second of them
        let mut loss = |c: &[usize], tokens: Option<usize>| -> Result<f64> {
            calls.push((c[0], tokens));
            Ok(match tokens {
                Some(_) => c[0] as f64,
                None => if c[0] == 1 { 0.5 } else { 1.0 + c[0] as f64 },
            })
        };
        let (best, full) = select(candidates, &s.steps(), &mut loss).unwrap();
        assert_eq!((best, full), (vec![1], 0.5));
        let cheap = calls.iter().filter(|(_, t)| t.is_some()).count();
        let mut on_all: Vec<usize> = calls.iter().filter(|(_, t)| t.is_none()).map(|(c, _)| *c).collect();
        on_all.sort_unstable();
        assert_eq!(cheap, 16);
        // ceil(16 x 0.125) = 2 scored on every token: the two best of the cheap step
        assert_eq!(on_all, vec![0, 1]);
        assert_eq!(calls.len(), s.steps().iter().map(|&(_, n)| n).sum::<usize>());
    }
}
