//! Layer collapse: genotypes and plans, merge operators.

pub mod merge;
pub mod plan;

pub use merge::{LayerSource, MergeOp, MergeSettings, build, layer_sources, representative_layers};
pub use plan::{Plan, Span, Triple};
