//! Running searches: the worker-thread job API both shells drive, and the run folder.

pub mod heal_picks;
pub mod job;
pub mod pick;
mod session;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::fitness::FitnessResult;

/// One solution of a front, with everything needed to rebuild and judge it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontEntry {
    /// Active triples in original indices, merges-text form (`B:E,B:E:op`).
    pub merges: String,
    pub genes: Vec<f64>,
    #[serde(flatten)]
    pub result: FitnessResult,
    /// Perplexity on the run's held-out validation text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_perplexity: Option<f64>,
    /// Perplexity on the validation text once healed on text that holds none of it (see
    /// [`heal_picks`]), for the plans validated best at their size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healed_validation_perplexity: Option<f64>,
    /// The lowest validation perplexity of its size among the front and the baselines.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recommended: bool,
}

impl FrontEntry {
    /// Whether this solution's model is its plan healed: healing validated better.
    pub fn healed(&self) -> bool {
        heal_picks::healed_wins(self.validation_perplexity, self.healed_validation_perplexity)
    }

    /// The validation perplexity of this solution's model (healed or not).
    pub fn picked_perplexity(&self) -> Option<f64> {
        heal_picks::picked(self.validation_perplexity, self.healed_validation_perplexity)
    }
}
