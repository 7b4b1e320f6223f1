//! Picking what to recommend: every front solution and baseline gets its perplexity on the
//! run's held-out validation text (cached by the model it builds), and at each size the one
//! with the lowest validation perplexity is marked `recommended`. The search never sees the
//! validation text; it only decides among what the search and the baselines found.

use std::collections::HashMap;
use std::sync::Arc;

use super::FrontEntry;
use crate::error::{Error, Result};
use crate::eval::validation::Validation;
use crate::export::recipe::plan_of;
use crate::fitness::{FitnessEngine, FitnessResult};
use crate::search::baselines::BaselineSolution;
use crate::search::problem::PlanProblem;

/// Validation perplexities of the models of one run, built as the run's engine builds
/// them (merge settings, healing).
pub struct Picker<'a> {
    pub validation: Validation,
    engine: &'a FitnessEngine,
    cache: HashMap<String, Option<f64>>,
}

impl<'a> Picker<'a> {
    pub fn new(validation: Validation, engine: &'a FitnessEngine) -> Self {
        Picker { validation, engine, cache: HashMap::new() }
    }

    /// Validation perplexity of the model `result` describes (`None`: not finite).
    pub fn perplexity(&mut self, result: &FitnessResult) -> Result<Option<f64>> {
        let plan = plan_of(result);
        let key = plan.model_key();
        if let Some(v) = self.cache.get(&key) {
            return Ok(*v);
        }
        let compressed = self.engine.build_on(&plan, usize::MAX)?;
        let v = match self.validation.perplexity(&compressed) {
            Ok(p) if p.is_finite() => Some(p),
            Ok(_) | Err(Error::Numerical(_)) => None,
            Err(e) => return Err(e),
        };
        self.cache.insert(key, v);
        Ok(v)
    }

    /// How many of these solutions have no validation perplexity yet.
    pub fn missing(&self, entries: &[FrontEntry], baselines: &[BaselineSolution]) -> usize {
        let known = |r: &FitnessResult| self.cache.contains_key(&plan_of(r).model_key());
        entries.iter().filter(|f| !known(&f.result)).count() + baselines.iter().filter(|b| !known(&b.result)).count()
    }

    /// Fill in every validation perplexity and mark the recommended solution of each size.
    pub fn annotate(&mut self, front: &mut [FrontEntry], candidates: &mut [FrontEntry], baselines: &mut [BaselineSolution]) -> Result<()> {
        for f in front.iter_mut().chain(candidates.iter_mut()) {
            f.validation_perplexity = self.perplexity(&f.result)?;
        }
        for b in baselines.iter_mut() {
            b.validation_perplexity = self.perplexity(&b.result)?;
        }
        mark_recommended(front, candidates, baselines);
        Ok(())
    }
}

/// How many plans of each size validation picks from: the fittest few the search found
/// (see [`crate::search::problem::PlanProblem::size_leaders`]).
pub const CANDIDATES_PER_SIZE: usize = 3;

/// At each size (layers left), mark the solution of lowest validation perplexity among the
/// front, the other candidates and the baselines; ties go to the front, then to the other
/// candidates, then to the fitter.
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
            consider(f.result.remaining_layers, f.validation_perplexity, group, f.result.fitness, i);
        }
    }
    for (i, b) in baselines.iter().enumerate() {
        consider(b.result.remaining_layers, b.validation_perplexity, 2, b.result.fitness, i);
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

/// The fittest few plans of each size that are not on `front` (see
/// [`PlanProblem::size_leaders`]).
pub(super) fn candidate_entries(problem: &PlanProblem, front: &[FrontEntry]) -> Vec<FrontEntry> {
    let on_front: std::collections::HashSet<String> = front.iter().map(|f| plan_of(&f.result).model_key()).collect();
    let leaders = problem.size_leaders(CANDIDATES_PER_SIZE).into_iter().filter(|(_, r)| !on_front.contains(&plan_of(r).model_key()));
    entries(problem, leaders.collect())
}

fn entries(problem: &PlanProblem, plans: Vec<(Vec<f64>, Arc<FitnessResult>)>) -> Vec<FrontEntry> {
    plans
        .into_iter()
        .map(|(genes, r)| FrontEntry {
            merges: problem.encoding.decode(&genes).merges_text(),
            genes,
            result: (*r).clone(),
            validation_perplexity: None,
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
            FrontEntry { merges: a.merges_text(), genes: vec![], result: result(&a, 0.9), validation_perplexity: Some(40.0), recommended: false },
            FrontEntry { merges: b.merges_text(), genes: vec![], result: result(&b, 0.95), validation_perplexity: Some(20.0), recommended: false },
        ];
        let c = removal_plan(10, &[1, 2]).unwrap();
        let mut baselines = vec![BaselineSolution {
            method: "SLEB (r=2)".into(),
            kind: None,
            merges: c.merges_text(),
            result: result(&c, 0.5),
            plan: c,
            validation_perplexity: Some(30.0),
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
            vec![FrontEntry { merges: d.merges_text(), genes: vec![], result: result(&d, 0.8), validation_perplexity: Some(35.0), recommended: false }];
        mark_recommended(&mut front, &mut candidates, &mut baselines);
        assert!(candidates[0].recommended && !front[0].recommended && front[1].recommended);
        // equal perplexity: the front's wins
        candidates[0].validation_perplexity = Some(40.0);
        mark_recommended(&mut front, &mut candidates, &mut baselines);
        assert!(!candidates[0].recommended && front[0].recommended);
    }
}
