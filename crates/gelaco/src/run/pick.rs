//! Picking what to recommend: every front solution and baseline gets its perplexity on the
//! run's held-out validation text (cached by the model it builds), and at each size the one
//! with the lowest validation perplexity is marked `recommended`. The search never sees the
//! validation text; it only decides among what the search and the baselines found.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::Arc;

use burn::tensor::Tensor;

use super::FrontEntry;
use crate::error::{Error, Result};
use crate::eval::validation::Validation;
use crate::export::recipe::plan_of;
use crate::fitness::calibration::Calibration;
use crate::fitness::{FitnessEngine, FitnessResult, Heal};
use crate::model::llama::Llama;
use crate::search::baselines::BaselineSolution;
use crate::search::problem::PlanProblem;

/// Validation perplexities of the models of one run, built as the run's engine builds
/// them (merge settings, healing), and of the best of each size healed when the run heals
/// its picks ([`super::heal_picks`]).
pub struct Picker<'a> {
    pub validation: Validation,
    engine: &'a FitnessEngine,
    cache: HashMap<String, Option<f64>>,
    /// How the picks are healed: see [`Picker::with_healing`]; the engine that heals them,
    /// once needed.
    healing: Option<Healing>,
    healer: Option<FitnessEngine>,
    healed: HashMap<String, Option<f64>>,
    /// The original's hidden states of the validation windows entering some layers: a
    /// compressed model's layers before its first change are the original's, so its
    /// validation runs from there (as many as [`Picker::entering_limit`] holds).
    entering: BTreeMap<usize, Vec<Tensor<3>>>,
}

/// How a [`Picker`] heals the picks.
struct Healing {
    method: Heal,
    calibration: Calibration,
    /// The sizes (layers removed) healed.
    removed: RangeInclusive<usize>,
    /// The samples the plans of a size are screened on.
    screen: Option<usize>,
    /// How many plans of each size are healed.
    per_size: usize,
}

/// The most memory for the original's validation states kept by a [`Picker`], in MiB.
pub const ENTERING_MB: usize = 256;

impl<'a> Picker<'a> {
    pub fn new(validation: Validation, engine: &'a FitnessEngine) -> Self {
        Picker { validation, engine, cache: HashMap::new(), healing: None, healer: None, healed: HashMap::new(), entering: BTreeMap::new() }
    }

    /// At the end of the search, also heal the best `per_size` plans of each size that
    /// removes a number of layers in `removed` (the sizes the search aims at) with `method`,
    /// fitted on `calibration`; with `screen`, each on `screen` of those samples (the
    /// healing engine's first chunks), and the one of each size that then validates best on
    /// all of them (see [`super::heal_picks`]).
    pub fn with_healing(
        mut self,
        method: Heal,
        calibration: Calibration,
        removed: RangeInclusive<usize>,
        screen: Option<usize>,
        per_size: usize,
    ) -> Self {
        self.healing = Some(Healing { method, calibration, removed, screen, per_size });
        self
    }

    /// What [`Picker::annotate_final`] does to heal, in words.
    pub fn healing_stage(&self) -> String {
        match &self.healing {
            Some(Healing { calibration, screen: Some(screen), per_size, .. }) => format!(
                "healing the best {per_size} plans of each size on {screen} samples, the one of each that validates best on all {}, and validating them",
                calibration.samples.len()
            ),
            Some(Healing { per_size, .. }) => format!("healing the best {per_size} plans of each size and validating them again"),
            None => "validating".into(),
        }
    }

    /// Whether [`Picker::annotate_final`] heals.
    pub fn heals(&self) -> bool {
        self.healing.is_some()
    }

    /// Validation perplexity of the model `result` describes (`None`: not finite).
    pub fn perplexity(&mut self, result: &FitnessResult) -> Result<Option<f64>> {
        let plan = plan_of(result);
        let key = plan.model_key();
        if let Some(v) = self.cache.get(&key) {
            return Ok(*v);
        }
        let v = self.validate(&self.engine.build_on(&plan, usize::MAX)?, plan.first_changed_layer())?;
        self.cache.insert(key, v);
        Ok(v)
    }

    /// Validation perplexity of `model`, whose layers before `first` are the original's.
    fn validate(&mut self, model: &Llama, first: usize) -> Result<Option<f64>> {
        let first = first.min(model.num_layers());
        let v = self.entering(first).and_then(|entering| self.validation.perplexity_from(model, first, &entering));
        match v {
            Ok(p) if p.is_finite() => Ok(Some(p)),
            Ok(_) | Err(Error::Numerical(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes of validation states kept: [`ENTERING_MB`], or a quarter of the engine's
    /// cache for the original's activations where that is less.
    pub fn entering_limit(&self) -> usize {
        ENTERING_MB.min(self.engine.options.cache_mb / 4) << 20
    }

    /// The original's validation states entering layer `layer`: kept, or run on from the
    /// nearest kept layer before it (kept in turn while they fit in the limit).
    fn entering(&mut self, layer: usize) -> Result<Vec<Tensor<3>>> {
        if let Some(s) = self.entering.get(&layer) {
            return Ok(s.clone());
        }
        let original = self.engine.model();
        let from = self.entering.range(..layer).next_back().map(|(&k, s)| (k, s.as_slice()));
        let states = self.validation.entering(original, from, layer)?;
        let each = self.validation.entering_bytes(original.config.hidden_size);
        if (self.entering.len() + 1) * each <= self.entering_limit() {
            self.entering.insert(layer, states.clone());
        }
        Ok(states)
    }

    /// Validation perplexity of `plan` healed on the fitting samples of the first `chunks`
    /// chunks of the healing engine (`None`: not finite, or healing failed numerically).
    fn healed_on(&mut self, plan: &crate::collapse::Plan, chunks: usize) -> Result<Option<f64>> {
        let built = self.healer()?.build_on(plan, chunks);
        match built {
            Ok(m) => self.validate(&m, plan.first_changed_layer()),
            Err(Error::Numerical(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The engine that heals the picks, made when first needed.
    fn healer(&mut self) -> Result<&FitnessEngine> {
        let healer = match (self.healer.take(), &self.healing) {
            (Some(h), _) => h,
            (None, Some(h)) => super::heal_picks::engine(self.engine, h.method, h.calibration.clone())?,
            (None, None) => return Err(Error::Invalid("the run does not heal its picks".into())),
        };
        Ok(self.healer.insert(healer))
    }

    /// Heal the plans of one size (see [`Picker::with_healing`]) and record each one's
    /// healed validation perplexity (`None` for those screened out); `step()` before each
    /// fit.
    fn heal_size(&mut self, plans: &[crate::collapse::Plan], step: &mut dyn FnMut()) -> Result<()> {
        let screen = self.healing.as_ref().and_then(|h| h.screen).filter(|_| plans.len() > 1);
        let chosen: Vec<&crate::collapse::Plan> = match screen {
            Some(samples) => {
                let chunks = self.healer()?.chunks_holding(samples);
                let mut best: Option<(f64, &crate::collapse::Plan)> = None;
                for plan in plans {
                    step();
                    if let Some(v) = self.healed_on(plan, chunks)? {
                        if best.is_none_or(|(b, _)| v < b) {
                            best = Some((v, plan));
                        }
                    }
                    self.healed.insert(plan.model_key(), None);
                }
                best.map(|(_, p)| p).into_iter().collect()
            }
            None => plans.iter().collect(),
        };
        for plan in chosen {
            step();
            let v = self.healed_on(plan, usize::MAX)?;
            self.healed.insert(plan.model_key(), v);
        }
        Ok(())
    }

    /// How many fits [`Picker::heal_size`] makes for `plans`.
    fn fits(&self, plans: &[crate::collapse::Plan]) -> usize {
        match self.healing.as_ref().and_then(|h| h.screen) {
            Some(_) if plans.len() > 1 => plans.len() + 1,
            _ => plans.len(),
        }
    }

    /// How many of these solutions have no validation perplexity yet.
    pub fn missing(&self, entries: &[FrontEntry], baselines: &[BaselineSolution]) -> usize {
        let known = |r: &FitnessResult| self.cache.contains_key(&plan_of(r).model_key());
        entries.iter().filter(|f| !known(&f.result)).count() + baselines.iter().filter(|b| !known(&b.result)).count()
    }

    /// Fill in every validation perplexity (healed ones known from before as well) and mark
    /// the recommended solution of each size.
    pub fn annotate(&mut self, front: &mut [FrontEntry], candidates: &mut [FrontEntry], baselines: &mut [BaselineSolution]) -> Result<()> {
        self.annotate_with(front, candidates, baselines, None)
    }

    /// [`Picker::annotate`] at the end of a search: the best plans of each size are healed
    /// first when the run heals its picks; `progress(done, of)` before each.
    pub fn annotate_final(
        &mut self,
        front: &mut [FrontEntry],
        candidates: &mut [FrontEntry],
        baselines: &mut [BaselineSolution],
        progress: &dyn Fn(usize, usize),
    ) -> Result<()> {
        self.annotate_with(front, candidates, baselines, Some(progress))
    }

    fn annotate_with(
        &mut self,
        front: &mut [FrontEntry],
        candidates: &mut [FrontEntry],
        baselines: &mut [BaselineSolution],
        heal: Option<&dyn Fn(usize, usize)>,
    ) -> Result<()> {
        for f in front.iter_mut().chain(candidates.iter_mut()) {
            f.validation_perplexity = self.perplexity(&f.result)?;
        }
        for b in baselines.iter_mut() {
            b.validation_perplexity = self.perplexity(&b.result)?;
        }
        if let Some(Healing { removed, per_size, .. }) = &self.healing {
            let per_size = *per_size;
            if let Some(progress) = heal {
                let scored = front.iter().chain(candidates.iter()).map(|f| (&f.result, f.validation_perplexity));
                let scored = scored.chain(baselines.iter().map(|b| (&b.result, b.validation_perplexity)));
                let scored = scored.filter(|(r, _)| removed.contains(&(r.psi.len() - r.remaining_layers)));
                let sizes: Vec<Vec<_>> = best_per_size(scored, per_size)
                    .into_iter()
                    .map(|plans| plans.into_iter().filter(|p| !self.healed.contains_key(&p.model_key())).collect::<Vec<_>>())
                    .filter(|plans| !plans.is_empty())
                    .collect();
                let of = sizes.iter().map(|plans| self.fits(plans)).sum();
                let mut done = 0;
                for plans in &sizes {
                    self.heal_size(plans, &mut || {
                        progress(done, of);
                        done += 1;
                    })?;
                }
            }
            let healed = |r: &FitnessResult| self.healed.get(&plan_of(r).model_key()).copied().flatten();
            for f in front.iter_mut().chain(candidates.iter_mut()) {
                f.healed_validation_perplexity = healed(&f.result);
            }
            for b in baselines.iter_mut() {
                b.healed_validation_perplexity = healed(&b.result);
            }
        }
        mark_recommended(front, candidates, baselines);
        Ok(())
    }
}

/// The `k` plans of lowest validation perplexity of each size that remove layers (distinct
/// models; ties to the first listed), lowest first, one list per size.
fn best_per_size<'r>(scored: impl Iterator<Item = (&'r FitnessResult, Option<f64>)>, k: usize) -> Vec<Vec<crate::collapse::Plan>> {
    let mut by_size: std::collections::BTreeMap<usize, Vec<(f64, crate::collapse::Plan)>> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for (r, ppl) in scored {
        let (Some(p), plan) = (ppl, plan_of(r)) else { continue };
        if plan.removed() > 0 && seen.insert(plan.model_key()) {
            by_size.entry(r.remaining_layers).or_default().push((p, plan));
        }
    }
    by_size
        .into_values()
        .map(|mut v| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v.into_iter().take(k).map(|(_, plan)| plan).collect()
        })
        .collect()
}

/// How many plans of each size validation picks from: the fittest few the search found
/// (see [`crate::search::problem::PlanProblem::size_leaders`]).
pub const CANDIDATES_PER_SIZE: usize = 3;

/// At each size (layers left), mark the solution of lowest validation perplexity (of its
/// model, healed or not) among the front, the other candidates and the baselines; ties go
/// to the front, then to the other candidates, then to the fitter.
pub fn mark_recommended(front: &mut [FrontEntry], candidates: &mut [FrontEntry], baselines: &mut [BaselineSolution]) {
    // (layers left) -> (perplexity, group, -fitness, index); groups: front, candidates, baselines
    let mut best: HashMap<usize, (f64, u8, f64, usize)> = HashMap::new();
    let mut consider = |layers: usize, ppl: Option<f64>, group: u8, fitness: f64, i: usize| {
        let Some(p) = ppl else { return };
        let key = (p, group, -fitness, i);
        let better = |a: &(f64, u8, f64, usize)| (key.0, key.1, key.2).partial_cmp(&(a.0, a.1, a.2)) == Some(std::cmp::Ordering::Less);
        best.entry(layers).and_modify(|b| if better(b) { *b = key }).or_insert(key);
    };
    for (group, entries) in [(0u8, &*front), (1, &*candidates)] {
        for (i, f) in entries.iter().enumerate() {
            consider(f.result.remaining_layers, f.picked_perplexity(), group, f.result.fitness, i);
        }
    }
    for (i, b) in baselines.iter().enumerate() {
        consider(b.result.remaining_layers, b.picked_perplexity(), 2, b.result.fitness, i);
    }
    let is_best = |layers: usize, group: u8, i: usize| best.get(&layers).is_some_and(|b| b.1 == group && b.3 == i);
    for (group, entries) in [(0u8, front), (1, candidates)] {
        for (i, f) in entries.iter_mut().enumerate() {
            f.recommended = is_best(f.result.remaining_layers, group, i);
        }
    }
    for (i, b) in baselines.iter_mut().enumerate() {
        b.recommended = is_best(b.result.remaining_layers, 2, i);
    }
}

/// The front of everything evaluated so far (see [`PlanProblem::archive_front`]).
pub(super) fn front_entries(problem: &PlanProblem) -> Vec<FrontEntry> {
    entries(problem, problem.archive_front())
}

/// The fittest few plans of each size (see [`PlanProblem::size_leaders`]), then the
/// starting points the search evaluated, that are not on `front`; each model once.
pub(super) fn candidate_entries(problem: &PlanProblem, front: &[FrontEntry]) -> Vec<FrontEntry> {
    let mut seen: std::collections::HashSet<String> = front.iter().map(|f| plan_of(&f.result).model_key()).collect();
    let plans = problem.size_leaders(CANDIDATES_PER_SIZE).into_iter().chain(problem.evaluated_starting_points());
    entries(problem, plans.filter(|(_, r)| seen.insert(plan_of(r).model_key())).collect())
}

fn entries(problem: &PlanProblem, plans: Vec<(Vec<f64>, Arc<FitnessResult>)>) -> Vec<FrontEntry> {
    plans
        .into_iter()
        .map(|(genes, r)| FrontEntry {
            merges: problem.encoding.decode(&genes).merges_text(),
            genes,
            result: (*r).clone(),
            validation_perplexity: None, healed_validation_perplexity: None,
            recommended: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collapse::{MergeOp, Plan};
    use crate::search::baselines::removal_plan;

    fn result(plan: &Plan, fitness: f64) -> FitnessResult {
        FitnessResult {
            fitness,
            compression: plan.compression(),
            remaining_layers: plan.remaining(),
            psi: plan.psi.clone(),
            canonical: plan.canonical.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn the_lowest_validation_perplexity_of_each_size_is_recommended() {
        let a = Plan::from_ranges(&[(3, 5)], 10, MergeOp::KeepFirst).unwrap();
        let b = Plan::from_ranges(&[(7, 8)], 10, MergeOp::KeepFirst).unwrap();
        let mut front = vec![
            FrontEntry { merges: a.merges_text(), genes: vec![], result: result(&a, 0.9), validation_perplexity: Some(40.0), healed_validation_perplexity: None, recommended: false },
            FrontEntry { merges: b.merges_text(), genes: vec![], result: result(&b, 0.95), validation_perplexity: Some(20.0), healed_validation_perplexity: None, recommended: false },
        ];
        let c = removal_plan(10, &[1, 2]).unwrap();
        let mut baselines = vec![BaselineSolution {
            method: "SLEB (r=2)".into(),
            kind: None,
            merges: c.merges_text(),
            result: result(&c, 0.5),
            plan: c,
            validation_perplexity: Some(30.0), healed_validation_perplexity: None,
            recommended: false,
        }];
        mark_recommended(&mut front, &mut [], &mut baselines);
        // 8 layers left: the SLEB plan beats the front's; 9 left: the front's only plan
        assert!(!front[0].recommended);
        assert!(baselines[0].recommended);
        assert!(front[1].recommended);
        baselines[0].validation_perplexity = None;
        mark_recommended(&mut front, &mut [], &mut baselines);
        assert!(front[0].recommended && !baselines[0].recommended);
        // a candidate of 8 layers off the front beats the front's
        let d = Plan::from_ranges(&[(2, 4)], 10, MergeOp::KeepFirst).unwrap();
        let mut candidates =
            vec![FrontEntry { merges: d.merges_text(), genes: vec![], result: result(&d, 0.8), validation_perplexity: Some(35.0), healed_validation_perplexity: None, recommended: false }];
        mark_recommended(&mut front, &mut candidates, &mut baselines);
        assert!(candidates[0].recommended && !front[0].recommended && front[1].recommended);
        // equal perplexity: the front's wins
        candidates[0].validation_perplexity = Some(40.0);
        mark_recommended(&mut front, &mut candidates, &mut baselines);
        assert!(!candidates[0].recommended && front[0].recommended);
        // healed, the candidate validates better than the front's plan: it is recommended,
        // as its healed model
        candidates[0].healed_validation_perplexity = Some(33.0);
        mark_recommended(&mut front, &mut candidates, &mut baselines);
        assert!(candidates[0].recommended && candidates[0].healed() && !front[0].recommended);
        assert_eq!(candidates[0].picked_perplexity(), Some(33.0));
        // a healed model that validates worse is not the solution's model
        candidates[0].healed_validation_perplexity = Some(45.0);
        mark_recommended(&mut front, &mut candidates, &mut baselines);
        assert!(!candidates[0].healed() && front[0].recommended);
        // nor is one that is healed but not finite
        candidates[0].healed_validation_perplexity = None;
        assert_eq!(candidates[0].picked_perplexity(), Some(40.0));
    }

    #[test]
    fn the_best_plans_of_each_size_are_chosen_for_healing() {
        let plans = [(3, 5, 30.0), (6, 8, 20.0), (1, 3, 25.0), (2, 4, 10.0)];
        let results: Vec<(FitnessResult, Option<f64>)> =
            plans.iter().map(|&(b, e, p)| (result(&Plan::from_ranges(&[(b, e)], 10, MergeOp::KeepFirst).unwrap(), 0.5), Some(p))).collect();
        let identity = (result(&Plan::identity(10), 1.0), Some(5.0));
        let one_removed = (result(&removal_plan(10, &[1]).unwrap(), 0.4), Some(1.0));
        let all = results.iter().chain([&identity, &one_removed]).map(|(r, p)| (r, *p));
        let chosen: Vec<String> = best_per_size(all, 2).iter().flatten().map(|p| p.merges_text()).collect();
        // 8 layers left: the two lowest of four; 9 left: its only plan; 10 left: the
        // original is never healed
        assert_eq!(chosen.len(), 3, "{chosen:?}");
        for m in ["2:4", "6:8", "0:1"] {
            assert!(chosen.contains(&m.to_string()), "{m} in {chosen:?}");
        }
    }
}
