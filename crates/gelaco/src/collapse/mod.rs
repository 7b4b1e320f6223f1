//! Layer collapse: genotypes and plans (METHOD.md 1), merge operators (METHOD.md 2).

pub mod merge;
pub mod plan;

pub use merge::{LayerSource, MergeOp, MergeSettings, build, layer_sources, representative_layers};
pub use plan::{Plan, Span, Triple};
