//! Running searches: the worker-thread job API both shells drive, and the run folder.

pub mod job;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::fitness::FitnessResult;

/// One solution of a front, with everything needed to rebuild and judge it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontEntry {
    /// Active triples in original indices, `--merges` form.
    pub merges: String,
    pub genes: Vec<f64>,
    #[serde(flatten)]
    pub result: FitnessResult,
}
