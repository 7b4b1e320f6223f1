//! Judging a model: generation, perplexity.

pub mod generate;
pub mod perplexity;
