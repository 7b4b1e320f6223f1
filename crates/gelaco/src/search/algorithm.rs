//! Step-driven evolutionary algorithms over real or integer vectors: NSGA-II (fast
//! non-dominated sorting, crowding distance, binary tournament, elitist survival) and a
//! single-objective GA with Deb's constraint-domination. All objectives are maximised.
//!
//! Each generation draws from its own random stream, seeded from the run's seed and the
//! generation number, so a run resumed from a checkpoint continues exactly as it would have.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::operators::{Bounds, PolynomialMutation, Sbx};
use super::pareto::{crowding_distance, non_dominated_sort};
use crate::error::Result;

/// What a problem says about one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Maximised.
    pub objectives: Vec<f64>,
    /// 0 when feasible; larger is worse.
    pub violation: f64,
}

/// Something to optimise.
pub trait Problem {
    fn bounds(&self) -> &Bounds;
    /// Evaluate one candidate (already within bounds).
    fn evaluate(&mut self, x: &[f64], generation: usize) -> Result<Evaluation>;
    /// Which offspring of a generation deserve a full evaluation (multi-fidelity
    /// selection): cheap estimates decide, and only the chosen ones are evaluated and take
    /// part in survival. `None` when the stop check fired. By default every offspring.
    fn screen(&mut self, offspring: &[Vec<f64>], _generation: usize, _should_stop: &dyn Fn() -> bool) -> Result<Option<Vec<bool>>> {
        Ok(Some(vec![true; offspring.len()]))
    }
    /// What solution `x` stands for, when different vectors can stand for the same one
    /// (`None`: every vector is its own). Offspring that repeat a solution evaluated in an
    /// earlier generation, or another offspring of theirs, are varied (see
    /// [`Problem::vary`]) so that a generation does not spend itself on repeats.
    fn key(&self, _x: &[f64]) -> Option<String> {
        None
    }
    /// Whether the solution `key` names was evaluated in a generation before `generation`.
    fn seen_before(&self, _key: &str, _generation: usize) -> bool {
        false
    }
    /// A small change of `x` that stands for another solution (`None`: the problem has
    /// none); drawn from `rng` only, so a run stays reproducible.
    fn vary(&self, _x: &[f64], _rng: &mut StdRng) -> Option<Vec<f64>> {
        None
    }
    /// Called with the candidates a generation is about to evaluate one by one, in order,
    /// so that a problem can evaluate them together (elsewhere, in parallel) first; `false`
    /// when the stop check fired. By default nothing.
    fn prepare(&mut self, _xs: &[Vec<f64>], _generation: usize, _should_stop: &dyn Fn() -> bool) -> Result<bool> {
        Ok(true)
    }
}

/// How many times an offspring that repeats a known solution is varied before it is let
/// through as it is.
pub const NOVELTY_TRIES: usize = 32;

/// `x`, varied until it stands for a solution neither evaluated before `generation` nor in
/// `batch` (at most [`NOVELTY_TRIES`] times); its key joins `batch`.
fn novel(problem: &dyn Problem, mut x: Vec<f64>, generation: usize, batch: &mut std::collections::HashSet<String>, rng: &mut StdRng) -> Vec<f64> {
    let Some(mut key) = problem.key(&x) else { return x };
    for _ in 0..NOVELTY_TRIES {
        if !batch.contains(&key) && !problem.seen_before(&key, generation) {
            break;
        }
        let Some(y) = problem.vary(&x, rng) else { break };
        let Some(k) = problem.key(&y) else { break };
        (x, key) = (y, k);
    }
    batch.insert(key);
    x
}

/// A member of the population.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Individual {
    pub x: Vec<f64>,
    pub eval: Evaluation,
    /// Front number (NSGA-II) or position (single-objective); 0 is best.
    pub rank: usize,
    /// Crowding distance; infinite at the ends of a front (written as `null` in JSON).
    #[serde(with = "infinite_as_null")]
    pub crowding: f64,
}

mod infinite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() { s.serialize_f64(*v) } else { s.serialize_none() }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

/// Which survival and comparison the algorithm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Survival {
    /// NSGA-II on all objectives.
    Pareto,
    /// The first objective, constraint-dominated (feasible first, then smaller violation).
    Single,
}

/// Algorithm settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlgorithmSettings {
    pub population: usize,
    pub sbx: Sbx,
    pub mutation: PolynomialMutation,
    pub survival: Survival,
    pub seed: u64,
}

/// The state after a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlgorithmState {
    pub generation: usize,
    pub evaluations: usize,
    pub population: Vec<Individual>,
}

impl AlgorithmState {
    /// Check a state read from a file: a population of at most
    /// [`MAX_POPULATION`](crate::limits::MAX_POPULATION) individuals, each with one gene per
    /// bound, inside it, and `objectives` objectives.
    pub fn check(&self, bounds: &Bounds, objectives: usize) -> crate::limits::Check {
        use crate::limits::{MAX_POPULATION, count, field, number};
        count("population", self.population.len(), 1, MAX_POPULATION)?;
        for (i, ind) in self.population.iter().enumerate() {
            field(format_args!("population[{i}]"), (|| {
                if ind.x.len() != bounds.lower.len() {
                    return Err(format!("x: {} genes where the search has {}", ind.x.len(), bounds.lower.len()));
                }
                for (j, ((&v, &lo), &hi)) in ind.x.iter().zip(&bounds.lower).zip(&bounds.upper).enumerate() {
                    if !(lo..=hi).contains(&v) {
                        return Err(format!("x[{j}]: {v} is outside {lo}..={hi}"));
                    }
                }
                if ind.eval.objectives.len() != objectives {
                    return Err(format!("eval.objectives: {} values where the search has {objectives}", ind.eval.objectives.len()));
                }
                for v in &ind.eval.objectives {
                    number("eval.objectives", *v)?;
                }
                number("eval.violation", ind.eval.violation)
            })())?;
        }
        Ok(())
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// A generation completed.
    Done,
    /// The stop check fired between evaluations; the state is the previous generation's.
    Interrupted,
}

pub struct Algorithm {
    pub settings: AlgorithmSettings,
    pub state: AlgorithmState,
}

/// Total order used by tournaments: `a` better than `b`.
fn better(s: Survival, a: &Individual, b: &Individual) -> bool {
    match s {
        Survival::Pareto => a.rank < b.rank || (a.rank == b.rank && a.crowding > b.crowding),
        Survival::Single => a.rank < b.rank,
    }
}

/// Constraint-domination key for the single-objective case: smaller is better.
fn single_key(e: &Evaluation) -> (f64, f64) {
    (e.violation, -e.objectives[0])
}

/// Assign ranks and crowding, and keep the best `n` (elitist survival).
pub fn survive(survival: Survival, pool: Vec<Individual>, n: usize) -> Vec<Individual> {
    match survival {
        Survival::Pareto => {
            let objs: Vec<Vec<f64>> = pool.iter().map(|i| penalised(&i.eval)).collect();
            let fronts = non_dominated_sort(&objs);
            let mut keep: Vec<Individual> = Vec::with_capacity(n);
            for (rank, front) in fronts.iter().enumerate() {
                let cd = crowding_distance(&objs, front);
                let mut members: Vec<(usize, f64)> = front.iter().copied().zip(cd).collect();
                if keep.len() + members.len() > n {
                    members.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    members.truncate(n - keep.len());
                }
                for (i, d) in members {
                    let mut ind = pool[i].clone();
                    ind.rank = rank;
                    ind.crowding = d;
                    keep.push(ind);
                }
                if keep.len() >= n {
                    break;
                }
            }
            keep
        }
        Survival::Single => {
            let mut order: Vec<usize> = (0..pool.len()).collect();
            order.sort_by(|&a, &b| {
                let (ka, kb) = (single_key(&pool[a].eval), single_key(&pool[b].eval));
                ka.0.total_cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(a.cmp(&b))
            });
            order.truncate(n);
            order
                .into_iter()
                .enumerate()
                .map(|(rank, i)| Individual { rank, crowding: 0.0, ..pool[i].clone() })
                .collect()
        }
    }
}

/// Objectives for Pareto ranking: infeasible candidates sink below every feasible one.
fn penalised(e: &Evaluation) -> Vec<f64> {
    if e.violation > 0.0 { e.objectives.iter().map(|_| -1e12 - e.violation).collect() } else { e.objectives.clone() }
}

impl Algorithm {
    pub fn new(settings: AlgorithmSettings) -> Self {
        Algorithm { settings, state: AlgorithmState { generation: 0, evaluations: 0, population: Vec::new() } }
    }

    /// Continue from a saved state.
    pub fn resume(settings: AlgorithmSettings, state: AlgorithmState) -> Self {
        Algorithm { settings, state }
    }

    /// The random stream of one generation.
    pub fn rng(&self, generation: usize) -> StdRng {
        StdRng::seed_from_u64(self.settings.seed ^ (generation as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Evaluate the initial population (`initial` first, then uniform samples up to the
    /// population; an `initial` larger than the population is evaluated whole and survival
    /// keeps the population's size). Generation 0.
    pub fn initialize(
        &mut self,
        problem: &mut dyn Problem,
        initial: Vec<Vec<f64>>,
        budget: Option<usize>,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<StepOutcome> {
        let mut rng = self.rng(0);
        let n = self.settings.population;
        let mut xs = initial;
        while xs.len() < n {
            xs.push(problem.bounds().sample(&mut rng));
        }
        if let Some(b) = budget {
            xs.truncate(b.max(1));
        }
        for x in xs.iter_mut() {
            problem.bounds().repair(x);
        }
        if !problem.prepare(&xs, 0, should_stop)? {
            return Ok(StepOutcome::Interrupted);
        }
        let mut pool = Vec::with_capacity(xs.len());
        for x in xs {
            if should_stop() {
                return Ok(StepOutcome::Interrupted);
            }
            let eval = problem.evaluate(&x, 0)?;
            pool.push(Individual { x, eval, rank: 0, crowding: 0.0 });
        }
        self.state = AlgorithmState { generation: 0, evaluations: pool.len(), population: survive(self.settings.survival, pool, n) };
        Ok(StepOutcome::Done)
    }

    fn tournament<'a>(&'a self, rng: &mut StdRng) -> &'a Individual {
        let p = &self.state.population;
        let a = &p[rng.random_range(0..p.len())];
        let b = &p[rng.random_range(0..p.len())];
        if better(self.settings.survival, b, a) { b } else { a }
    }

    /// One generation: tournament selection, SBX, mutation (and variation of offspring
    /// that repeat a known solution), evaluation of at most `max_new` offspring, elitist
    /// survival.
    pub fn step(&mut self, problem: &mut dyn Problem, max_new: Option<usize>, should_stop: &dyn Fn() -> bool) -> Result<StepOutcome> {
        let generation = self.state.generation + 1;
        let mut rng = self.rng(generation);
        let n = self.settings.population;
        let wanted = max_new.map_or(n, |m| m.min(n));
        let bounds = problem.bounds().clone();
        let mut offspring: Vec<Vec<f64>> = Vec::with_capacity(wanted + 1);
        let mut batch = std::collections::HashSet::new();
        while offspring.len() < wanted {
            let (p1, p2) = (self.tournament(&mut rng).x.clone(), self.tournament(&mut rng).x.clone());
            let (mut c1, mut c2) = self.settings.sbx.cross(&p1, &p2, &bounds, &mut rng);
            self.settings.mutation.mutate(&mut c1, &bounds, &mut rng);
            self.settings.mutation.mutate(&mut c2, &bounds, &mut rng);
            offspring.push(novel(&*problem, c1, generation, &mut batch, &mut rng));
            offspring.push(novel(&*problem, c2, generation, &mut batch, &mut rng));
        }
        offspring.truncate(wanted);
        let Some(chosen) = problem.screen(&offspring, generation, should_stop)? else {
            return Ok(StepOutcome::Interrupted);
        };
        let chosen: Vec<Vec<f64>> = offspring.into_iter().zip(chosen).filter(|(_, keep)| *keep).map(|(x, _)| x).collect();
        if !problem.prepare(&chosen, generation, should_stop)? {
            return Ok(StepOutcome::Interrupted);
        }
        let mut pool = self.state.population.clone();
        for x in chosen {
            if should_stop() {
                return Ok(StepOutcome::Interrupted);
            }
            let eval = problem.evaluate(&x, generation)?;
            pool.push(Individual { x, eval, rank: 0, crowding: 0.0 });
        }
        let evaluations = self.state.evaluations + wanted;
        self.state = AlgorithmState { generation, evaluations, population: survive(self.settings.survival, pool, n) };
        Ok(StepOutcome::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::pareto::{front_of, igd};

    /// ZDT1 / ZDT2 with 30 variables, as maximisation of the negated objectives.
    struct Zdt {
        bounds: Bounds,
        concave: bool,
    }

    impl Problem for Zdt {
        fn bounds(&self) -> &Bounds {
            &self.bounds
        }
        fn evaluate(&mut self, x: &[f64], _generation: usize) -> Result<Evaluation> {
            let n = x.len() as f64;
            let f1 = x[0];
            let g = 1.0 + 9.0 / (n - 1.0) * x[1..].iter().sum::<f64>();
            let h = if self.concave { 1.0 - (f1 / g).powi(2) } else { 1.0 - (f1 / g).sqrt() };
            Ok(Evaluation { objectives: vec![-f1, -g * h], violation: 0.0 })
        }
    }

    fn run_zdt(concave: bool, seed: u64) -> f64 {
        let mut p = Zdt { bounds: Bounds { lower: vec![0.0; 30], upper: vec![1.0; 30], integer: false }, concave };
        let settings = AlgorithmSettings {
            population: 100,
            sbx: Sbx { probability: 0.9, eta: 15.0, variable_probability: 0.5 },
            mutation: PolynomialMutation { probability: None, eta: 20.0 },
            survival: Survival::Pareto,
            seed,
        };
        let mut a = Algorithm::new(settings);
        a.initialize(&mut p, Vec::new(), None, &|| false).unwrap();
        while a.state.evaluations < 20_000 {
            a.step(&mut p, Some(20_000 - a.state.evaluations), &|| false).unwrap();
        }
        let obtained: Vec<Vec<f64>> = a.state.population.iter().map(|i| i.eval.objectives.iter().map(|v| -v).collect()).collect();
        let front: Vec<Vec<f64>> = front_of(&obtained).into_iter().map(|i| obtained[i].clone()).collect();
        let reference: Vec<Vec<f64>> = (0..1000)
            .map(|k| {
                let f1 = k as f64 / 999.0;
                vec![f1, if concave { 1.0 - f1 * f1 } else { 1.0 - f1.sqrt() }]
            })
            .collect();
        igd(&reference, &front)
    }

    /// pymoo's NSGA-II (population 100, SBX eta 15, PM eta 20) reaches IGD about 0.005 on
    /// ZDT1 and ZDT2 within 200 generations; 0.01 leaves room for seed-to-seed variation
    /// while failing any sorting, crowding or operator bug (those stall above 0.1).
    #[test]
    fn nsga2_converges_on_zdt1_and_zdt2() {
        for (concave, name) in [(false, "ZDT1"), (true, "ZDT2")] {
            for seed in [1, 2] {
                let d = run_zdt(concave, seed);
                assert!(d < 0.01, "{name} seed {seed}: IGD {d}");
            }
        }
    }

    #[test]
    fn constraint_domination_orders_feasible_first() {
        let ind = |f: f64, v: f64| Individual { x: vec![], eval: Evaluation { objectives: vec![f], violation: v }, rank: 0, crowding: 0.0 };
        let kept = survive(Survival::Single, vec![ind(0.9, 2.0), ind(0.5, 0.0), ind(0.99, 1.0), ind(0.7, 0.0), ind(0.1, 1.0)], 4);
        let got: Vec<(f64, f64)> = kept.iter().map(|i| (i.eval.objectives[0], i.eval.violation)).collect();
        assert_eq!(got, vec![(0.7, 0.0), (0.5, 0.0), (0.99, 1.0), (0.1, 1.0)]);
        assert!(better(Survival::Single, &kept[1], &kept[2]));
    }

    #[test]
    fn elitist_survival_keeps_the_first_front_and_spreads_the_last() {
        let ind = |a: f64, b: f64| Individual { x: vec![], eval: Evaluation { objectives: vec![a, b], violation: 0.0 }, rank: 0, crowding: 0.0 };
        let pool = vec![ind(0.0, 1.0), ind(1.0, 0.0), ind(0.5, 0.5), ind(0.0, 0.5), ind(0.25, 0.25), ind(0.5, 0.0), ind(0.4, 0.1)];
        let kept = survive(Survival::Pareto, pool, 5);
        assert_eq!(kept.iter().filter(|i| i.rank == 0).count(), 3);
        // second front: (0.0, 0.5), (0.25, 0.25), (0.5, 0.0), (0.4, 0.1): the extremes win
        let second: Vec<Vec<f64>> = kept.iter().filter(|i| i.rank == 1).map(|i| i.eval.objectives.clone()).collect();
        assert_eq!(second.len(), 2);
        assert!(second.contains(&vec![0.0, 0.5]) && second.contains(&vec![0.5, 0.0]));
    }

    #[test]
    fn a_start_larger_than_the_population_is_evaluated_whole_and_cut_by_survival() {
        let mut p = Zdt { bounds: Bounds { lower: vec![0.0; 10], upper: vec![1.0; 10], integer: false }, concave: false };
        let s = AlgorithmSettings { population: 6, sbx: Sbx::default(), mutation: PolynomialMutation::default(), survival: Survival::Pareto, seed: 1 };
        let mut a = Algorithm::new(s);
        // the best point (f1 = 0, g = 1) is the last of nine
        let mut start: Vec<Vec<f64>> = (1..9).map(|k| vec![k as f64 / 10.0; 10]).collect();
        start.push(vec![0.0; 10]);
        a.initialize(&mut p, start, None, &|| false).unwrap();
        assert_eq!((a.state.evaluations, a.state.population.len()), (9, 6));
        assert!(a.state.population.iter().any(|i| i.x == vec![0.0; 10]));
    }

    #[test]
    fn same_seed_same_run() {
        let run = |seed| {
            let mut p = Zdt { bounds: Bounds { lower: vec![0.0; 10], upper: vec![1.0; 10], integer: false }, concave: false };
            let s = AlgorithmSettings { population: 20, sbx: Sbx::default(), mutation: PolynomialMutation::default(), survival: Survival::Pareto, seed };
            let mut a = Algorithm::new(s);
            a.initialize(&mut p, Vec::new(), None, &|| false).unwrap();
            for _ in 0..10 {
                a.step(&mut p, None, &|| false).unwrap();
            }
            a.state
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    /// Many vectors per solution: only the first gene matters (0..=99), the others are
    /// noise that mutation likes to change.
    struct Coarse {
        bounds: Bounds,
        first: std::collections::HashMap<String, usize>,
        evaluated: Vec<(usize, String)>,
    }

    impl Problem for Coarse {
        fn bounds(&self) -> &Bounds {
            &self.bounds
        }
        fn evaluate(&mut self, x: &[f64], generation: usize) -> Result<Evaluation> {
            let k = self.key(x).unwrap();
            self.first.entry(k.clone()).or_insert(generation);
            self.evaluated.push((generation, k));
            Ok(Evaluation { objectives: vec![-(x[0] - 50.0).abs()], violation: 0.0 })
        }
        fn key(&self, x: &[f64]) -> Option<String> {
            Some(format!("{}", x[0]))
        }
        fn seen_before(&self, key: &str, generation: usize) -> bool {
            self.first.get(key).is_some_and(|&g| g < generation)
        }
        fn vary(&self, x: &[f64], rng: &mut StdRng) -> Option<Vec<f64>> {
            let mut y = x.to_vec();
            y[0] = rng.random_range(0..100) as f64;
            Some(y)
        }
    }

    #[test]
    fn offspring_that_repeat_a_known_solution_are_varied() {
        let mut bounds = Bounds { lower: vec![0.0; 20], upper: vec![9.0; 20], integer: true };
        bounds.upper[0] = 99.0;
        let mut p = Coarse { bounds, first: Default::default(), evaluated: Vec::new() };
        let s = AlgorithmSettings { population: 8, sbx: Sbx::default(), mutation: PolynomialMutation::default(), survival: Survival::Single, seed: 3 };
        let mut a = Algorithm::new(s);
        a.initialize(&mut p, vec![vec![10.0; 20]; 8], None, &|| false).unwrap();
        for _ in 0..5 {
            a.step(&mut p, None, &|| false).unwrap();
        }
        // every offspring is a solution no earlier generation and no sibling had
        for (g, k) in p.evaluated.iter().filter(|(g, _)| *g > 0) {
            assert_eq!(p.first[k], *g, "{k} of generation {g} was seen before");
            assert_eq!(p.evaluated.iter().filter(|(h, l)| h == g && l == k).count(), 1, "{k} twice in generation {g}");
        }
        // without variation the population of copies would stay at 10
        assert!(a.state.population[0].x[0] > 10.0);
    }
}
