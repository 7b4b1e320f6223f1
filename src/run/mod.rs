//! Running searches: the worker-thread job API both shells drive, and the run folder.

pub mod job;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::collapse::Span;
use crate::fitness::LayerSimilarity;

/// One solution of a front, with everything needed to rebuild and judge it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontEntry {
    pub fitness: f64,
    pub attention: f64,
    pub ffn: f64,
    pub hidden: f64,
    pub compression: f64,
    pub params_removed: f64,
    pub remaining_layers: usize,
    /// Active triples in original indices, `--merges` form.
    pub merges: String,
    pub canonical: Vec<Span>,
    pub psi: Vec<usize>,
    pub genes: Vec<f64>,
    pub per_layer: Vec<LayerSimilarity>,
}
