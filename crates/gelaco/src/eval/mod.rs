//! Judging a model: generation, perplexity.

pub mod choice;
pub mod generate;
pub mod perplexity;
pub mod validation;
