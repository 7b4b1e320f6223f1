//! Models: configuration, weights (GGUF, safetensors), tokenizer and the burn decoder.

pub mod config;
pub mod gguf;
pub mod layer;
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

/// Bytes a loaded model holds: every parameter as f32.
pub fn load_bytes(files: &ModelFiles) -> u64 {
    files.config.total_params() as u64 * 4
}

/// Memory this process may use, in bytes: what the system reports available, or
/// `GELACO_MEMORY_LIMIT` (bytes, or with a K, M or G suffix) when that is lower; `None`
/// where neither is known.
pub fn available_memory() -> Option<u64> {
    let system = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let limit = std::env::var("GELACO_MEMORY_LIMIT").ok().and_then(|v| parse_size(&v));
    match (system, limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `123`, `64K`, `512M`, `16G` (binary units) as bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return None,
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Refuse, with the numbers, a model that cannot fit in `available` bytes (before any of
/// it is loaded, instead of an allocation failure that aborts the process).
pub fn check_memory(files: &ModelFiles, available: Option<u64>) -> Result<()> {
    let need = load_bytes(files);
    match available {
        Some(have) if need > have => Err(Error::weights(
            &files.path,
            format!(
                "loading it needs about {:.2} GiB ({} parameters as f32), more than the {:.2} GiB of memory available",
                need as f64 / (1u64 << 30) as f64,
                files.config.total_params(),
                have as f64 / (1u64 << 30) as f64
            ),
        )),
        _ => Ok(()),
    }
}

/// Open, validate and load a model onto `device`.
pub fn load(path: &Path, device: ComputeDevice) -> Result<LoadedModel> {
    let files = ModelFiles::open(path)?;
    check_memory(&files, available_memory())?;
    let tokenizer = load_tokenizer(&files)?;
    let model = Llama::load(&files, &device.device)?;
    Ok(LoadedModel {
        files,
        model,
        tokenizer,
        device,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size(" 16g "), Some(16 << 30));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
