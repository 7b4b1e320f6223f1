//! GeLaCo Studio core: model runtime, layer collapse, fitness, search and runs.
//! The window (crate `gelaco-studio`) and the command line (crate `gelaco-cli`) are thin shells over the same job API.

pub mod backend;
pub mod collapse;
pub mod dist;
pub mod error;
pub mod eval;
pub mod export;
pub mod fitness;
pub mod limits;
pub mod model;
pub mod run;
pub mod search;
pub mod util;

pub use error::{Error, Result};
