//! GeLaCo Studio core: model runtime, layer collapse, fitness, search and runs.
//! No windows, no terminals: the GUI and the command line are shells over this.

pub mod backend;
pub mod collapse;
pub mod error;
pub mod eval;
pub mod fitness;
pub mod model;
pub mod run;
pub mod search;
pub mod util;

pub use error::{Error, Result};
