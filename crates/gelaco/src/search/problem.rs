//! What a GeLaCo search optimises: genes -> plan -> fitness, with a cache keyed on the
//! compressed model a plan builds, so no model is evaluated twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use rand::Rng;
use rand::rngs::StdRng;

use super::algorithm::{Evaluation, Individual, Problem, Survival, survive};
use super::fidelity::Fidelity;
use super::operators::Bounds;
use crate::collapse::{MergeOp, Plan, Triple};
use crate::error::Result;
use crate::fitness::{FitnessEngine, FitnessResult};

/// What the search maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Mode {
    /// NSGA-II on (fitness, compression).
    Pareto,
    /// Fitness of models with exactly `target_removed` layers removed.
    Single { target_removed: usize },
}

/// How genes become plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encoding {
    pub layers: usize,
    /// A fourth gene per triple chooses the merge operator.
    pub op_genes: bool,
    /// Operator of triples without an operator gene.
    pub default_op: MergeOp,
}

impl Encoding {
    pub fn genes_per_triple(&self) -> usize {
        if self.op_genes { 4 } else { 3 }
    }

    pub fn bounds(&self) -> Bounds {
        let top = (self.layers.max(1) - 1) as f64;
        let mut upper = Vec::new();
        for _ in 0..self.layers {
            upper.extend([top, top, 1.0]);
            if self.op_genes {
                upper.push((MergeOp::ALL.len() - 1) as f64);
            }
        }
        Bounds { lower: vec![0.0; upper.len()], upper, integer: true }
    }

    pub fn triples(&self, x: &[f64]) -> Vec<Triple> {
        x.chunks_exact(self.genes_per_triple())
            .map(|g| Triple {
                b: g[0] as usize,
                e: g[1] as usize,
                active: g[2] >= 0.5,
                op: if self.op_genes { Some(MergeOp::ALL[(g[3] as usize).min(MergeOp::ALL.len() - 1)]) } else { None },
            })
            .collect()
    }

    pub fn decode(&self, x: &[f64]) -> Plan {
        Plan::decode(&self.triples(x), self.layers, self.default_op)
    }

    /// Genes of a plan: its effective merges first, then inactive triples.
    pub fn encode(&self, plan: &Plan) -> Vec<f64> {
        plan.to_genotype()
            .iter()
            .flat_map(|t| {
                let mut g = vec![t.b as f64, t.e as f64, if t.active { 1.0 } else { 0.0 }];
                if self.op_genes {
                    g.push(t.op.unwrap_or(self.default_op).index() as f64);
                }
                g
            })
            .collect()
    }
}

/// One evaluation as the search saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluatedPlan {
    /// Running number of this evaluation in the run.
    pub index: usize,
    pub generation: usize,
    pub genes: Vec<f64>,
    pub key: String,
    pub merges: String,
    /// Served from the cache.
    pub cached: bool,
    pub result: Arc<FitnessResult>,
}

/// See [`Problem::vary`] for [`PlanProblem`].
pub fn vary_plan(encoding: &Encoding, x: &[f64], rng: &mut StdRng) -> Option<Vec<f64>> {
    let layers = encoding.layers;
    if layers < 3 {
        return None;
    }
    let plan = encoding.decode(x);
    // merged[j]: original layer j joined the group of layer j - 1
    let mut merged: Vec<bool> = (0..layers).map(|j| j > 0 && plan.psi[j] == plan.psi[j - 1]).collect();
    let on: Vec<usize> = (1..layers).filter(|&j| merged[j]).collect();
    let off: Vec<usize> = (1..layers).filter(|&j| !merged[j]).collect();
    if off.is_empty() {
        return None;
    }
    if !on.is_empty() {
        merged[on[rng.random_range(0..on.len())]] = false;
    }
    merged[off[rng.random_range(0..off.len())]] = true;
    // the operator of each original layer's group, where the plan merged it
    let genotype = plan.to_genotype();
    let op_of = |j: usize| genotype.iter().rev().find(|t| t.active && t.b <= j && j <= t.e).and_then(|t| t.op).unwrap_or(encoding.default_op);
    let mut triples = Vec::new();
    let mut j = 1;
    while j < layers {
        if merged[j] {
            let start = j - 1;
            while j + 1 < layers && merged[j + 1] {
                j += 1;
            }
            triples.push(Triple { b: start, e: j, active: true, op: encoding.op_genes.then(|| op_of(start)) });
        }
        j += 1;
    }
    let varied = Plan::decode(&triples, layers, encoding.default_op);
    let mut genes = encoding.encode(&varied);
    // inactive triples keep the positions they had: material for crossover
    let g = encoding.genes_per_triple();
    for t in varied.canonical.len()..layers {
        genes[t * g] = x[t * g];
        genes[t * g + 1] = x[t * g + 1];
    }
    Some(genes)
}

/// One evaluation to farm out: the plan (the first of its generation to build its model),
/// its model key, and the calibration tokens it is scored on (`None`: all of them; else a
/// multi-fidelity screening on the first chunks holding that many).
#[derive(Debug, Clone, Copy)]
pub struct FarmJob<'a> {
    pub plan: &'a Plan,
    pub key: &'a str,
    pub tokens: Option<usize>,
}

/// Evaluations done elsewhere (other processes, other machines: see [`crate::dist`]), a
/// batch at a time, with the same engine settings as the search's own: each batch's results
/// come back in the order of its jobs, so a search gives the same evaluations however many
/// evaluate them and in whatever order they finish. `None` when the stop check fired first.
pub trait Farm {
    fn evaluate(&self, jobs: &[FarmJob<'_>], should_stop: &dyn Fn() -> bool) -> Result<Option<Vec<FitnessResult>>>;
}

/// The problem handed to the algorithm.
pub struct PlanProblem<'e> {
    engine: &'e FitnessEngine,
    pub encoding: Encoding,
    pub mode: Mode,
    bounds: Bounds,
    cache: HashMap<String, Arc<FitnessResult>>,
    /// Every model this search evaluated (its log included), once, in the order first seen:
    /// the genes that first built it and its key.
    archive: Vec<(Vec<f64>, String)>,
    archived: HashSet<String>,
    /// The generation in which each model was first evaluated (baselines: 0).
    first_seen: HashMap<String, usize>,
    pub cache_hits: usize,
    pub evaluated: usize,
    /// Multi-fidelity selection of offspring (`None`: every offspring is fully evaluated).
    pub fidelity: Option<Fidelity>,
    /// Cheap evaluations made by the selection.
    pub screened: usize,
    /// Offspring that repeat an evaluated model are varied ([`Problem::vary`]); off for the
    /// paper's search, whose operators are SBX and polynomial mutation only.
    pub vary_repeats: bool,
    /// Where evaluations are done when not here (see [`Problem::prepare`]).
    pub farm: Option<&'e dyn Farm>,
    /// Plans the search started from that are not baselines (ShortGPT's and the closest
    /// blocks in a seeded search): validation weighs them beside the fittest of each size,
    /// since a plan the objective ranks lower can validate, or heal, better.
    pub starting_points: Vec<Plan>,
    /// Results the farm computed for the plans about to be evaluated, by model key.
    farmed: HashMap<String, Arc<FitnessResult>>,
    on_evaluated: Box<dyn FnMut(&EvaluatedPlan) -> Result<()> + 'e>,
}

impl<'e> PlanProblem<'e> {
    pub fn new(
        engine: &'e FitnessEngine,
        encoding: Encoding,
        mode: Mode,
        on_evaluated: Box<dyn FnMut(&EvaluatedPlan) -> Result<()> + 'e>,
    ) -> Self {
        PlanProblem {
            engine,
            bounds: encoding.bounds(),
            encoding,
            mode,
            cache: HashMap::new(),
            archive: Vec::new(),
            archived: HashSet::new(),
            first_seen: HashMap::new(),
            cache_hits: 0,
            evaluated: 0,
            fidelity: None,
            screened: 0,
            vary_repeats: true,
            farm: None,
            starting_points: Vec::new(),
            farmed: HashMap::new(),
            on_evaluated,
        }
    }

    /// An evaluation from this run's log (a resumed run): cached and part of the archive.
    pub fn preload_logged(&mut self, e: &EvaluatedPlan) {
        self.remember(&e.genes, &e.key);
        self.seen(&e.key, e.generation);
        self.cache.insert(e.key.clone(), e.result.clone());
    }

    /// The best of everything this search evaluated, as (genes, result): in Pareto mode the
    /// plans no other plan beats on both fitness and compression (by compression, then
    /// fitness); in single mode the fittest plan of the target size, or of the nearest
    /// size evaluated when none has it.
    pub fn archive_front(&self) -> Vec<(Vec<f64>, Arc<FitnessResult>)> {
        let mut all: Vec<(&Vec<f64>, &Arc<FitnessResult>)> =
            self.archive.iter().filter_map(|(g, k)| self.cache.get(k).map(|r| (g, r))).collect();
        match self.mode {
            Mode::Pareto => {
                // best fitness first at each compression, most compressed first
                all.sort_by(|a, b| b.1.compression.total_cmp(&a.1.compression).then(b.1.fitness.total_cmp(&a.1.fitness)));
                let mut front = Vec::new();
                let mut best = f64::NEG_INFINITY;
                for (g, r) in all {
                    if r.fitness > best {
                        best = r.fitness;
                        front.push((g.clone(), r.clone()));
                    }
                }
                front.reverse();
                front
            }
            Mode::Single { .. } => {
                let violation = |r: &FitnessResult| self.objectives(r).violation;
                all.iter()
                    .min_by(|a, b| violation(a.1).total_cmp(&violation(b.1)).then(b.1.fitness.total_cmp(&a.1.fitness)))
                    .map(|(g, r)| vec![((*g).clone(), (*r).clone())])
                    .unwrap_or_default()
            }
        }
    }

    /// The `k` fittest plans of each size this search evaluated (layers left), as (genes,
    /// result), by size and then fitness, best first: what validation picks from, since the
    /// fittest on the calibration is not always the best on other text. In single mode only
    /// plans of the size the front is taken from.
    pub fn size_leaders(&self, k: usize) -> Vec<(Vec<f64>, Arc<FitnessResult>)> {
        let all = self.archive.iter().filter_map(|(g, key)| self.cache.get(key).map(|r| (g, r)));
        let violation = |r: &FitnessResult| self.objectives(r).violation;
        let least = all.clone().map(|(_, r)| violation(r)).fold(f64::INFINITY, f64::min);
        let mut by_size: std::collections::BTreeMap<usize, Vec<(&Vec<f64>, &Arc<FitnessResult>)>> = Default::default();
        for (g, r) in all {
            if matches!(self.mode, Mode::Single { .. }) && violation(r) > least {
                continue;
            }
            by_size.entry(r.remaining_layers).or_default().push((g, r));
        }
        let mut out = Vec::new();
        for (_, mut plans) in by_size.into_iter().rev() {
            plans.sort_by(|a, b| b.1.fitness.total_cmp(&a.1.fitness));
            out.extend(plans.into_iter().take(k).map(|(g, r)| (g.clone(), r.clone())));
        }
        out
    }

    /// The starting points this search evaluated, as (genes, result), in their order; each
    /// model once.
    pub fn evaluated_starting_points(&self) -> Vec<(Vec<f64>, Arc<FitnessResult>)> {
        // the archive is kept by model key
        let mut seen = HashSet::new();
        self.starting_points
            .iter()
            .map(Plan::model_key)
            .filter(|k| seen.insert(k.clone()))
            .filter_map(|k| {
                let (genes, _) = self.archive.iter().find(|(_, a)| *a == k)?;
                Some((genes.clone(), self.cache.get(&k)?.clone()))
            })
            .collect()
    }

    /// Results known before the run (a resumed run's log, baselines).
    pub fn preload(&mut self, key: String, result: Arc<FitnessResult>) {
        self.seen(&key, 0);
        self.cache.insert(key, result);
    }

    /// A result already computed for `key`.
    pub fn cached(&self, key: &str) -> Option<Arc<FitnessResult>> {
        self.cache.get(key).cloned()
    }

    /// Unique models evaluated (cache size).
    pub fn unique(&self) -> usize {
        self.cache.len()
    }

    pub fn objectives(&self, r: &FitnessResult) -> Evaluation {
        match self.mode {
            Mode::Pareto => Evaluation { objectives: vec![r.fitness, r.compression], violation: 0.0 },
            Mode::Single { target_removed } => {
                let removed = self.encoding.layers - r.remaining_layers;
                Evaluation { objectives: vec![r.fitness], violation: removed.abs_diff(target_removed) as f64 }
            }
        }
    }

    /// Evaluate a plan through the cache.
    pub fn evaluate_plan(&mut self, plan: &Plan) -> Result<(Arc<FitnessResult>, bool)> {
        let key = plan.model_key();
        if let Some(r) = self.cache.get(&key) {
            self.cache_hits += 1;
            return Ok((r.clone(), true));
        }
        let r = match self.farmed.remove(&key) {
            Some(r) => r,
            None => Arc::new(self.engine.evaluate(plan)?),
        };
        self.cache.insert(key, r.clone());
        Ok((r, false))
    }

    fn seen(&mut self, key: &str, generation: usize) {
        let g = self.first_seen.entry(key.to_string()).or_insert(generation);
        *g = (*g).min(generation);
    }

    fn remember(&mut self, genes: &[f64], key: &str) {
        if self.archived.insert(key.to_string()) {
            self.archive.push((genes.to_vec(), key.to_string()));
        }
    }
}

impl Problem for PlanProblem<'_> {
    fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    fn evaluate(&mut self, x: &[f64], generation: usize) -> Result<Evaluation> {
        let plan = self.encoding.decode(x);
        let (result, cached) = self.evaluate_plan(&plan)?;
        self.remember(x, &plan.model_key());
        self.seen(&plan.model_key(), generation);
        let e = EvaluatedPlan {
            index: self.evaluated,
            generation,
            genes: x.to_vec(),
            key: plan.model_key(),
            merges: plan.merges_text(),
            cached,
            result: result.clone(),
        };
        self.evaluated += 1;
        (self.on_evaluated)(&e)?;
        Ok(self.objectives(&result))
    }

    fn key(&self, x: &[f64]) -> Option<String> {
        self.vary_repeats.then(|| self.encoding.decode(x).model_key())
    }

    fn seen_before(&self, key: &str, generation: usize) -> bool {
        self.first_seen.get(key).is_some_and(|&g| g < generation)
    }

    /// Move one removed layer: one layer the plan merges into its predecessor's group is
    /// kept, and one kept layer is merged instead (the size stays), as EvoPress's mutation
    /// does; an unmerged plan gets one merge. Groups that stay keep their operator.
    fn vary(&self, x: &[f64], rng: &mut StdRng) -> Option<Vec<f64>> {
        vary_plan(&self.encoding, x, rng)
    }

    /// With a farm: the models of `xs` not evaluated yet (each once, the first plan that
    /// builds it) are evaluated there, together, and then taken in order as if computed here.
    fn prepare(&mut self, xs: &[Vec<f64>], _generation: usize, should_stop: &dyn Fn() -> bool) -> Result<bool> {
        let Some(farm) = self.farm else { return Ok(true) };
        let mut keys = HashSet::new();
        let plans: Vec<(Plan, String)> = xs
            .iter()
            .map(|x| self.encoding.decode(x))
            .map(|p| {
                let key = p.model_key();
                (p, key)
            })
            .filter(|(_, key)| !self.cache.contains_key(key) && !self.farmed.contains_key(key) && keys.insert(key.clone()))
            .collect();
        if plans.is_empty() {
            return Ok(true);
        }
        let jobs: Vec<FarmJob> = plans.iter().map(|(plan, key)| FarmJob { plan, key, tokens: None }).collect();
        let Some(results) = farm.evaluate(&jobs, should_stop)? else { return Ok(false) };
        for ((_, key), r) in plans.into_iter().zip(results) {
            self.farmed.insert(key, Arc::new(r));
        }
        Ok(true)
    }

    fn screen(&mut self, offspring: &[Vec<f64>], generation: usize, should_stop: &dyn Fn() -> bool) -> Result<Option<Vec<bool>>> {
        let n = offspring.len();
        let Some(fidelity) = self.fidelity.clone() else { return Ok(Some(vec![true; n])) };
        let plans: Vec<_> = offspring.iter().map(|x| self.encoding.decode(x)).collect();
        // models evaluated in earlier generations cost nothing: always kept. A resumed run
        // also knows the models its log holds from this very generation; those are screened
        // as the uninterrupted run screened them, so that the same offspring are chosen.
        let mut chosen: Vec<bool> = plans.iter().map(|p| self.seen_before(&p.model_key(), generation)).collect();
        let mut alive: Vec<usize> = (0..n).filter(|&i| !chosen[i]).collect();
        let survival = match self.mode {
            Mode::Pareto => Survival::Pareto,
            Mode::Single { .. } => Survival::Single,
        };
        for step in fidelity.screening_steps() {
            if alive.len() <= 1 {
                break;
            }
            let mut seen: HashMap<String, Evaluation> = HashMap::new();
            if let Some(farm) = self.farm {
                // the step's distinct models, scored together elsewhere
                let mut firsts: Vec<(usize, String)> = Vec::new();
                for &i in &alive {
                    let key = plans[i].model_key();
                    if !firsts.iter().any(|(_, k)| *k == key) {
                        firsts.push((i, key));
                    }
                }
                let jobs: Vec<FarmJob> = firsts.iter().map(|(i, key)| FarmJob { plan: &plans[*i], key, tokens: Some(step.tokens) }).collect();
                let Some(results) = farm.evaluate(&jobs, should_stop)? else { return Ok(None) };
                for ((_, key), r) in firsts.into_iter().zip(results) {
                    self.screened += 1;
                    seen.insert(key, self.objectives(&r));
                }
            }
            let mut pool = Vec::with_capacity(alive.len());
            for &i in &alive {
                let key = plans[i].model_key();
                let eval = match seen.get(&key) {
                    Some(e) => e.clone(),
                    None => {
                        if should_stop() {
                            return Ok(None);
                        }
                        let r = self.engine.evaluate_partial(&plans[i], Some(step.tokens))?;
                        self.screened += 1;
                        let e = self.objectives(&r);
                        seen.insert(key, e.clone());
                        e
                    }
                };
                pool.push(Individual { x: vec![i as f64], eval, rank: 0, crowding: 0.0 });
            }
            let keep = ((alive.len() as f64 * step.keep).ceil() as usize).clamp(1, alive.len());
            alive = survive(survival, pool, keep).iter().map(|ind| ind.x[0] as usize).collect();
        }
        for i in alive {
            chosen[i] = true;
        }
        Ok(Some(chosen))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn varying_a_plan_moves_one_removed_layer_and_keeps_its_size() {
        let encoding = Encoding { layers: 12, op_genes: false, default_op: MergeOp::KeepFirst };
        let plan = Plan::from_ranges(&[(2, 5), (8, 9)], 12, MergeOp::KeepFirst).unwrap();
        let x = encoding.encode(&plan);
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let y = vary_plan(&encoding, &x, &mut rng).unwrap();
            assert!(encoding.bounds().lower.iter().zip(&encoding.bounds().upper).zip(&y).all(|((lo, hi), v)| lo <= v && v <= hi));
            let varied = encoding.decode(&y);
            assert_eq!(varied.removed(), plan.removed());
            let (a, b): (HashSet<usize>, HashSet<usize>) = (plan.removed_layers().into_iter().collect(), varied.removed_layers().into_iter().collect());
            // one removed layer moved (or, rarely, put back where it was)
            assert!(a.symmetric_difference(&b).count() <= 2, "{} -> {}", plan.removed_text(), varied.removed_text());
            seen.insert(varied.model_key());
        }
        assert!(seen.len() > 10, "{} different plans", seen.len());
        // an unmerged plan gets one merge; the same stream gives the same plan
        let identity = encoding.encode(&Plan::identity(12));
        let one = vary_plan(&encoding, &identity, &mut StdRng::seed_from_u64(2)).unwrap();
        assert_eq!(encoding.decode(&one).removed(), 1);
        assert_eq!(one, vary_plan(&encoding, &identity, &mut StdRng::seed_from_u64(2)).unwrap());
    }

    #[test]
    fn varying_keeps_the_operators_of_groups_that_stay() {
        let encoding = Encoding { layers: 10, op_genes: true, default_op: MergeOp::KeepFirst };
        let mut plan = Plan::identity(10);
        plan.push(1, 3, MergeOp::Mean);
        plan.push(4, 5, MergeOp::KeepFirst); // original layers 6 and 7
        let x = encoding.encode(&plan);
        let mut kept = 0;
        for seed in 0..40 {
            let varied = encoding.decode(&vary_plan(&encoding, &x, &mut StdRng::seed_from_u64(seed)).unwrap());
            assert_eq!(varied.removed(), 3);
            if let Some(t) = varied.to_genotype().iter().find(|t| t.active && (t.b, t.e) == (1, 3)) {
                assert_eq!(t.op, Some(MergeOp::Mean));
                kept += 1;
            }
        }
        assert!(kept > 0);
    }
}

