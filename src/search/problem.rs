//! What a GeLaCo search optimises: genes -> plan -> fitness, with a cache keyed on the
//! compressed model a plan builds, so no model is evaluated twice.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::algorithm::{Evaluation, Problem};
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

/// The problem handed to the algorithm.
pub struct PlanProblem<'e> {
    engine: &'e FitnessEngine,
    pub encoding: Encoding,
    pub mode: Mode,
    bounds: Bounds,
    cache: HashMap<String, Arc<FitnessResult>>,
    pub cache_hits: usize,
    pub evaluated: usize,
    on_evaluated: Box<dyn FnMut(&EvaluatedPlan) -> Result<()> + 'e>,
}

impl<'e> PlanProblem<'e> {
    pub fn new(
        engine: &'e FitnessEngine,
        encoding: Encoding,
        mode: Mode,
        on_evaluated: Box<dyn FnMut(&EvaluatedPlan) -> Result<()> + 'e>,
    ) -> Self {
        PlanProblem { engine, bounds: encoding.bounds(), encoding, mode, cache: HashMap::new(), cache_hits: 0, evaluated: 0, on_evaluated }
    }

    /// Results known before the run (a resumed run's log, baselines).
    pub fn preload(&mut self, key: String, result: Arc<FitnessResult>) {
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
        let r = Arc::new(self.engine.evaluate(plan)?);
        self.cache.insert(key, r.clone());
        Ok((r, false))
    }
}

impl Problem for PlanProblem<'_> {
    fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    fn evaluate(&mut self, x: &[f64], generation: usize) -> Result<Evaluation> {
        let plan = self.encoding.decode(x);
        let (result, cached) = self.evaluate_plan(&plan)?;
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
}
