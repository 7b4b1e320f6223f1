//! GeLaCo Studio core: model runtime, layer collapse, fitness, search and runs.
//! The window (`gui`) and the command line are thin shells over the same job API.

pub mod backend;
pub mod collapse;
pub mod error;
pub mod eval;
pub mod export;
pub mod fitness;
pub mod gui;
pub mod model;
pub mod run;
pub mod search;
pub mod util;

pub use error::{Error, Result};
