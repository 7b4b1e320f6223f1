//! Running searches: the worker-thread job API both shells drive, and the run folder.

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
    /// The lowest validation perplexity of its size among the front and the baselines.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recommended: bool,
}
