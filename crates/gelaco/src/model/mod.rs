//! Models: configuration, weights (GGUF, safetensors), tokenizer and the burn decoder.

pub mod config;
pub mod gguf;
pub mod llama;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

use crate::backend::ComputeDevice;
use crate::error::{Error, Result};

pub use config::{Arch, ModelConfig};
pub use llama::Llama;
pub use tokenizer::Tokenizer;
pub use weights::ModelFiles;

/// A model ready to run: files, device tensors and tokenizer.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub device: ComputeDevice,
}

/// The tokenizer that goes with a model: `tokenizer.json` beside a Hugging Face model,
/// or the vocabulary inside a GGUF file.
pub fn load_tokenizer(files: &ModelFiles) -> Result<Tokenizer> {
    let cfg = &files.config;
    match files.gguf() {
        Some(g) => Tokenizer::from_gguf(g),
        None => {
            let p = files.path.join("tokenizer.json");
            if !p.exists() {
                return Err(Error::format(&files.path, "no tokenizer.json in this folder"));
            }
            Tokenizer::from_file(&p, cfg.bos_token_id, cfg.eos_token_ids.clone())
        }
    }
}

/// Open, validate and load a model onto `device`.
pub fn load(path: &Path, device: ComputeDevice) -> Result<LoadedModel> {
    let files = ModelFiles::open(path)?;
    let tokenizer = load_tokenizer(&files)?;
    let model = Llama::load(&files, &device.device)?;
    Ok(LoadedModel {
        files,
        model,
        tokenizer,
        device,
    })
}
