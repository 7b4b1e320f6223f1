//! The GeLaCo search: NSGA-II over (fitness, compression), or a
//! single-objective GA at a target size, over genotypes of layer-collapse triples.

pub mod algorithm;
pub mod baselines;
pub mod depth;
pub mod fidelity;
pub mod operators;
pub mod pareto;
pub mod problem;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::collapse::{MergeOp, Plan};
use crate::error::{Error, Result};
use algorithm::{AlgorithmSettings, Survival};
use operators::{PolynomialMutation, Sbx};
use problem::{Encoding, Mode};

/// How the first population is made.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Uniform over the genotype space, as the paper.
    Paper,
    /// Plans whose compression falls in a band (the `band` setting).
    #[default]
    Banded,
    /// The baselines' solutions, then banded plans.
    Warm,
    /// ShortGPT's plan (one forward pass) at sizes spread over the band, then their
    /// neighbours (one removed layer moved) and banded plans.
    Seeded,
}

crate::choice!(Init {
    Paper => "paper": "uniform over the genotype space, and the paper's operators only (offspring that repeat a model are not varied)",
    Banded => "banded": "plans whose compression falls in a band",
    Warm => "warm": "the baselines' solutions, then banded plans",
    Seeded => "seeded": "ShortGPT's plan and the closest contiguous block of layers (angular distance; one forward pass for both) at every size of the band, validated at the end beside the fittest of their size, then their neighbours (one removed layer moved) and banded plans",
});

/// The initial population of a new search: a short search starts from known good plans
/// of several sizes and explores around them.
pub const DEFAULT_INIT: Init = Init::Seeded;

/// Solutions per generation of a new search: small enough that a ten-minute search on a
/// 2-core CPU runs several generations (the paper's 200 is `population: 200`).
pub const DEFAULT_POPULATION: usize = 16;

/// Multi-fidelity selection of a new search: a quarter of the offspring, chosen on 256
/// calibration tokens, are scored on the full set.
pub const DEFAULT_FIDELITY: &str = "256:0.25,full:1";

/// Everything that defines a search, saved in its run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSettings {
    pub mode: Mode,
    pub population: usize,
    /// Evaluation budget (offspring evaluated, cache hits included).
    pub evaluations: usize,
    pub generations: Option<usize>,
    /// Wall-clock limit in seconds.
    pub max_seconds: Option<f64>,
    pub seed: u64,
    pub init: Init,
    /// Compression band of `banded` and `warm` initial plans.
    pub band: (f64, f64),
    pub crossover_probability: f64,
    pub crossover_eta: f64,
    /// Per-gene mutation probability; `None` is 1/(3L).
    pub mutation_probability: Option<f64>,
    pub mutation_eta: f64,
    /// `None` lets each merge carry its own operator gene.
    pub merge_op: Option<MergeOp>,
    pub keep_norms: bool,
    /// Multi-fidelity selection of offspring, `TOKENS:KEEP,...,full:1` (see
    /// [`fidelity::Fidelity`]); `None`: every offspring on the full calibration set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<String>,
}

impl Default for SearchSettings {
    fn default() -> Self {
        SearchSettings {
            mode: Mode::Pareto,
            population: DEFAULT_POPULATION,
            evaluations: 30_000,
            generations: None,
            max_seconds: None,
            seed: 0,
            init: DEFAULT_INIT,
            band: (0.05, 0.5),
            crossover_probability: 0.9,
            crossover_eta: 20.0,
            mutation_probability: None,
            mutation_eta: 20.0,
            merge_op: Some(crate::collapse::merge::DEFAULT_MERGE_OP),
            keep_norms: false,
            fidelity: Some(DEFAULT_FIDELITY.into()),
        }
    }
}

impl SearchSettings {
    pub fn validate(&self, layers: usize) -> Result<()> {
        if self.population < 2 || self.population > crate::limits::MAX_POPULATION {
            return Err(Error::setting("population", format!("must be between 2 and {}", crate::limits::MAX_POPULATION)));
        }
        if self.evaluations == 0 {
            return Err(Error::setting("evaluations", "must be at least 1"));
        }
        let (lo, hi) = self.band;
        if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo > hi {
            return Err(Error::setting("band", format!("{lo},{hi} must satisfy 0 <= LO <= HI <= 1")));
        }
        if let Mode::Single { target_removed } = self.mode {
            if target_removed == 0 || target_removed >= layers {
                return Err(Error::setting("target_removed", format!("must be between 1 and {}", layers.saturating_sub(1))));
            }
        }
        let probability = |name: &'static str, p: f64| {
            if (0.0..=1.0).contains(&p) { Ok(()) } else { Err(Error::setting(name, format!("{p} must be between 0 and 1"))) }
        };
        probability("crossover_probability", self.crossover_probability)?;
        if let Some(p) = self.mutation_probability {
            probability("mutation_probability", p)?;
        }
        for (name, eta) in [("crossover_eta", self.crossover_eta), ("mutation_eta", self.mutation_eta)] {
            if !(eta.is_finite() && eta >= 0.0) {
                return Err(Error::setting(name, format!("{eta} must be a finite number of at least 0")));
            }
        }
        if let Some(s) = self.max_seconds {
            if s.is_nan() || s < 0.0 {
                return Err(Error::setting("max_seconds", format!("{s} must be at least 0")));
            }
        }
        Ok(())
    }

    /// Layers removed by initial plans: the one size asked for, else the band's sizes.
    pub fn removed_range(&self, layers: usize) -> (usize, usize) {
        let top = layers.saturating_sub(1).max(1);
        match self.mode {
            Mode::Single { target_removed } => (target_removed.clamp(1, top), target_removed.clamp(1, top)),
            Mode::Pareto => {
                let (lo, hi) = self.band;
                let lo_r = ((lo * layers as f64).round() as usize).clamp(1, top);
                (lo_r, ((hi * layers as f64).round() as usize).clamp(lo_r, top))
            }
        }
    }

    /// The sizes (layers removed) of a `seeded` search's seeds (ShortGPT's plan and the
    /// closest block): every size of [`SearchSettings::removed_range`], so that a front
    /// starts from both at each size it may recommend.
    pub fn seed_sizes(&self, layers: usize) -> Vec<usize> {
        let (lo, hi) = self.removed_range(layers);
        (lo..=hi).collect()
    }

    pub fn encoding(&self, layers: usize) -> Encoding {
        Encoding {
            layers,
            op_genes: self.merge_op.is_none(),
            default_op: self.merge_op.unwrap_or(crate::collapse::merge::DEFAULT_MERGE_OP),
        }
    }

    pub fn algorithm(&self, layers: usize) -> AlgorithmSettings {
        let genes = self.encoding(layers).bounds().len();
        AlgorithmSettings {
            population: self.population,
            sbx: Sbx { probability: self.crossover_probability, eta: self.crossover_eta, variable_probability: 0.5 },
            mutation: PolynomialMutation { probability: Some(self.mutation_probability.unwrap_or(1.0 / genes as f64)), eta: self.mutation_eta },
            survival: match self.mode {
                Mode::Pareto => Survival::Pareto,
                Mode::Single { .. } => Survival::Single,
            },
            seed: self.seed,
        }
    }
}

/// A plan that removes `removed` layers in up to four random spans.
pub fn random_plan_removing(layers: usize, removed: usize, op: MergeOp, rng: &mut StdRng) -> Plan {
    let mut plan = Plan::identity(layers);
    let mut left = removed.min(layers - 1);
    let spans = rng.random_range(1..=left.clamp(1, 4));
    for k in 0..spans {
        if left == 0 {
            break;
        }
        let take = if k + 1 == spans { left } else { rng.random_range(1..=left - (spans - k - 1)) };
        let current = plan.remaining();
        if take >= current {
            break;
        }
        let cb = rng.random_range(0..current - take);
        plan.push(cb, cb + take, op);
        left -= take;
    }
    plan
}

/// Initial genes for `init` (uniform initialisation is the algorithm's own sampling). A
/// seeded start holds every seed, and more plans than the population when the seeds are more
/// than half of it.
pub fn initial_population(settings: &SearchSettings, encoding: &Encoding, seeds: &[Plan]) -> Vec<Vec<f64>> {
    let layers = encoding.layers;
    let mut rng = StdRng::seed_from_u64(settings.seed ^ 0x5EED);
    let bounds = encoding.bounds();
    let mut out: Vec<Vec<f64>> = Vec::new();
    if settings.init == Init::Paper {
        return out;
    }
    // the first population: the population's size, or more when a seeded start has more
    // seeds than half of it (survival cuts the evaluated start to the population)
    let mut size = settings.population;
    let mut keys = std::collections::HashSet::new();
    if matches!(settings.init, Init::Warm | Init::Seeded) {
        let cap = if settings.init == Init::Seeded { seeds.len() } else { settings.population };
        for plan in seeds {
            if out.len() >= cap {
                break;
            }
            if keys.insert(plan.model_key()) {
                out.push(encoding.encode(plan));
            }
        }
    }
    if settings.init == Init::Seeded && !out.is_empty() {
        // neighbours of the seeds (one removed layer moved), the search's best start: three
        // quarters of the rest for one size, half for a front
        let seeded = out.len();
        let rest = settings.population - seeded.min(settings.population / 2);
        size = seeded + rest;
        let wanted = seeded + if matches!(settings.mode, Mode::Single { .. }) { rest * 3 / 4 } else { rest / 2 };
        let mut tries = 0;
        while out.len() < wanted && tries < 32 * size {
            tries += 1;
            let Some(x) = problem::vary_plan(encoding, &out[tries % seeded], &mut rng) else { break };
            if keys.insert(encoding.decode(&x).model_key()) {
                out.push(x);
            }
        }
    }
    let (lo_r, hi_r) = settings.removed_range(layers);
    while out.len() < size {
        let removed = rng.random_range(lo_r..=hi_r);
        let op = if encoding.op_genes { MergeOp::ALL[rng.random_range(0..MergeOp::ALL.len())] } else { encoding.default_op };
        let plan = random_plan_removing(layers, removed, op, &mut rng);
        let mut genes = encoding.encode(&plan);
        // inactive triples keep random positions: material for crossover
        let g = encoding.genes_per_triple();
        let active = plan.canonical.len();
        let random = bounds.sample(&mut rng);
        for t in active..layers {
            genes[t * g] = random[t * g];
            genes[t * g + 1] = random[t * g + 1];
        }
        out.push(genes);
    }
    out
}

/// Hypervolume of (fitness, compression) points above the reference (0, 0).
pub fn hypervolume(points: &[[f64; 2]]) -> f64 {
    pareto::hypervolume_2d(points, [0.0, 0.0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collapse::Plan;

    #[test]
    fn seeded_searches_start_from_their_seeds_at_sizes_across_the_band() {
        let s = SearchSettings::default();
        assert_eq!(s.init, Init::Seeded);
        // 30 layers, band 5-50%: every size from 2 to 15 layers removed
        assert_eq!(s.seed_sizes(30), (2..=15).collect::<Vec<_>>());
        let single = SearchSettings { mode: Mode::Single { target_removed: 6 }, ..SearchSettings::default() };
        assert_eq!(single.seed_sizes(30), vec![6]);
        let encoding = s.encoding(30);
        let seeds: Vec<Plan> = [(3, 9), (20, 23)].iter().map(|&(b, e)| Plan::from_ranges(&[(b, e)], 30, MergeOp::KeepFirst).unwrap()).collect();
        let pop = initial_population(&s, &encoding, &seeds);
        assert_eq!(pop.len(), s.population);
        assert_eq!(encoding.decode(&pop[0]), seeds[0]);
        assert_eq!(encoding.decode(&pop[1]), seeds[1]);
        // then neighbours of the seeds: the same sizes, one removed layer moved, all distinct
        let neighbours: Vec<Plan> = pop[2..2 + (s.population - 2) / 2].iter().map(|x| encoding.decode(x)).collect();
        for n in &neighbours {
            assert!(seeds.iter().any(|seed| seed.removed() == n.removed() && seed != n), "{}", n.merges_text());
        }
        let keys: std::collections::HashSet<String> = pop.iter().map(|x| encoding.decode(x).model_key()).collect();
        assert_eq!(keys.len(), pop.len());
        // a seed at each of the band's 14 sizes: all of them start, with the neighbours and
        // banded plans that half a population of seeds would have (survival keeps 16)
        let every: Vec<Plan> = s.seed_sizes(30).iter().map(|&r| Plan::from_ranges(&[(10, 10 + r)], 30, MergeOp::KeepFirst).unwrap()).collect();
        let pop = initial_population(&s, &encoding, &every);
        let half = s.population / 2;
        assert_eq!(pop.len(), every.len() + s.population - half);
        for (x, seed) in pop.iter().zip(&every) {
            assert_eq!(&encoding.decode(x), seed);
        }
        let neighbours = &pop[every.len()..every.len() + (s.population - half) / 2];
        assert!(neighbours.iter().map(|x| encoding.decode(x)).all(|n| every.iter().any(|seed| seed.removed() == n.removed())));
        let keys: std::collections::HashSet<String> = pop.iter().map(|x| encoding.decode(x).model_key()).collect();
        assert_eq!(keys.len(), pop.len());
        // banded: no seeds
        let banded = SearchSettings { init: Init::Banded, ..SearchSettings::default() };
        assert_ne!(encoding.decode(&initial_population(&banded, &encoding, &seeds)[0]), seeds[0]);
    }
}
