//! GeLaCo Studio core: model runtime, evaluation. No windows, no terminals.

pub mod backend;
pub mod error;
pub mod eval;
pub mod model;
pub mod util;

pub use error::{Error, Result};
