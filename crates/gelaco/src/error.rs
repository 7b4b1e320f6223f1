//! The one error type of the core. Every variant names what went wrong and where, so a
//! command-line user gets a single clear line and the GUI can show it verbatim.

use std::path::PathBuf;

/// Errors of the core library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what its format requires.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// The model's architecture is not one this tool runs.
    #[error("{path}: unsupported architecture '{arch}' (supported: llama, mistral, qwen2, qwen3)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    /// A tensor is stored in a quantisation type this tool cannot read.
    #[error("{path}: tensor '{tensor}' uses unsupported type {kind}")]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        kind: String,
    },
    /// The model configuration is missing a field or holds an impossible value.
    #[error("{path}: invalid model configuration: {message}")]
    Config { path: PathBuf, message: String },
    /// A tensor the architecture needs is absent, or has the wrong shape.
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    /// Tokenizer construction or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The compute device could not be set up.
    #[error("device: {0}")]
    Device(String),
    /// A request that cannot be carried out with the given arguments.
    #[error("{0}")]
    Invalid(String),
    /// A setting holds a value that cannot be used. `setting` is the core's name for it (the
    /// settings field, e.g. `population`, `cache_mb`); each shell names it in its own words.
    #[error("{setting} {message}")]
    Setting { setting: &'static str, message: String },
    /// An output exists and replacing it was not allowed.
    #[error("{} already exists; choose another path, or allow replacing it", path.display())]
    OutputExists { path: PathBuf },
    /// A recipe was made for another model file than the one it is applied to.
    #[error("{message}")]
    OtherModel { message: String },
    /// A new run was asked for in a folder that already holds one.
    #[error("{} is not empty: resume that run, or choose another run folder", path.display())]
    RunExists { path: PathBuf },
    /// A worker thread panicked; the message is the panic's.
    #[error("the {what} worker panicked: {message}")]
    Panicked { what: &'static str, message: String },
    /// Numerical failure (NaN or infinity) where a finite value is required.
    #[error("numerical error: {0}")]
    Numerical(String),
    /// The message broker of a distributed search could not be reached or used; `server` is
    /// its address without credentials.
    #[error("NATS at {server}: {message}")]
    Broker { server: String, message: String },
    /// The caller asked a long computation to stop.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn setting(setting: &'static str, message: impl Into<String>) -> Self {
        Error::Setting {
            setting,
            message: message.into(),
        }
    }

    /// The error of a thread that panicked with `payload` (from `catch_unwind` or `join`).
    pub fn from_panic(what: &'static str, payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Error::Panicked { what, message }
    }

    pub fn weights(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            message: message.into(),
        }
    }

    /// True when the error comes from the user's input (a file, a flag) rather than from
    /// the machine; the command line maps it to exit code 2.
    pub fn is_input_error(&self) -> bool {
        !matches!(self, Error::Device(_) | Error::Numerical(_) | Error::Cancelled | Error::Panicked { .. } | Error::Broker { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
