//! What the window shows and selects: evaluated points, solutions (front, candidates,
//! baselines, points) and what was measured of them.

use super::*;

/// One plotted evaluation.
#[derive(Debug, Clone)]
pub struct Point {
    pub compression: f64,
    pub fitness: f64,
    pub generation: usize,
    pub merges: String,
    pub result: Arc<FitnessResult>,
}

/// A solution the user can inspect, compare and export.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    pub label: String,
    pub merges: String,
    pub result: FitnessResult,
    /// Perplexity on the run's validation text, when the run has one.
    pub validation_perplexity: Option<f64>,
    /// Validation perplexity of the plan healed, when the run healed it.
    pub healed_validation_perplexity: Option<f64>,
    /// The lowest validation perplexity of its size.
    pub recommended: bool,
}

impl Solution {
    pub fn plan(&self) -> Plan {
        plan_of(&self.result)
    }

    /// Whether the solution's model is its plan healed (the run healed it, and healing
    /// validated better).
    pub fn healed(&self) -> bool {
        gelaco::run::heal_picks::healed_wins(self.validation_perplexity, self.healed_validation_perplexity)
    }

    /// The validation perplexity of the solution's model (healed or not).
    pub fn picked_perplexity(&self) -> Option<f64> {
        gelaco::run::heal_picks::picked(self.validation_perplexity, self.healed_validation_perplexity)
    }

    pub fn from_front(i: usize, e: &FrontEntry) -> Self {
        Solution {
            label: format!("front #{i} ({} layers)", e.result.remaining_layers),
            merges: e.merges.clone(),
            result: e.result.clone(),
            validation_perplexity: e.validation_perplexity,
            healed_validation_perplexity: e.healed_validation_perplexity,
            recommended: e.recommended,
        }
    }

    pub fn from_candidate(e: &FrontEntry) -> Self {
        Solution { label: format!("candidate ({} layers, off the front)", e.result.remaining_layers), ..Self::from_front(0, e) }
    }

    pub fn from_point(p: &Point) -> Self {
        Solution {
            label: format!("{} layers, gen {}", p.result.remaining_layers, p.generation),
            merges: p.merges.clone(),
            result: (*p.result).clone(),
            validation_perplexity: None,
            healed_validation_perplexity: None,
            recommended: false,
        }
    }

    pub fn from_baseline(b: &BaselineSolution) -> Self {
        Solution {
            label: b.method.clone(),
            merges: b.merges.clone(),
            result: b.result.clone(),
            validation_perplexity: b.validation_perplexity,
            healed_validation_perplexity: b.healed_validation_perplexity,
            recommended: b.recommended,
        }
    }
}

/// Measurements of a model, by label.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub perplexity: Option<Result<f64, String>>,
    pub benchmarks: Option<Result<Vec<TaskScore>, String>>,
}
