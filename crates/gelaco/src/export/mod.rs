//! Leaving the tool: replayable recipes, Hugging Face safetensors folders and GGUF files.
//!
//! Every export is staged beside its destination and moved into place only when complete,
//! so a failed export (disk full, permission, a bad tensor) leaves nothing behind, and an
//! existing output is only replaced when the caller says so.

pub mod gguf;
pub mod hf;
pub mod recipe;
pub mod variant;

use std::path::{Path, PathBuf};

use crate::collapse::{LayerSource, MergeSettings, Plan, layer_sources};
use crate::error::{Error, Result};
use crate::model::llama::{Layer, Llama, download};
use crate::model::weights::{HostTensor, LAYER_TENSORS};
use crate::model::{LoadedModel, ModelConfig};

pub use recipe::{Recipe, refuse_existing};
pub use variant::{Healing, Variant};

/// What an export produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub path: PathBuf,
    pub format: String,
    pub layers: usize,
    pub bytes: u64,
    pub files: Vec<String>,
    /// Layers copied unchanged from the source, and layers written from merged weights.
    pub copied_layers: usize,
    pub merged_layers: usize,
    /// Things the user should know (types changed, fields guessed).
    pub notices: Vec<String>,
}

/// A compressed model ready to be written: the source files, the plan and the in-memory
/// compressed model (whose merged layers hold the new weights).
pub struct ExportSource<'a> {
    pub source: &'a LoadedModel,
    pub plan: &'a Plan,
    pub settings: MergeSettings,
    pub compressed: &'a Llama,
    pub recipe: Option<&'a Recipe>,
    /// Collapsed groups were healed: their layers hold new weights even where the merge
    /// kept one original layer.
    pub healed: bool,
}

impl ExportSource<'_> {
    pub fn config(&self) -> &ModelConfig {
        &self.source.files.config
    }

    pub fn sources(&self) -> Vec<LayerSource> {
        let mut sources = layer_sources(self.plan, self.settings);
        if self.healed {
            for (s, g) in sources.iter_mut().zip(self.plan.groups()) {
                if g.start() != g.end() {
                    *s = LayerSource::Merged;
                }
            }
        }
        sources
    }
}

/// The formats a compressed model is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Hf,
    Gguf,
}

crate::choice!(ExportFormat {
    Hf => "hf": "a Hugging Face folder: config.json, safetensors, tokenizer files",
    Gguf => "gguf": "one GGUF file for llama.cpp and Ollama (from a GGUF source)",
});

/// How to write an export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRequest {
    pub format: ExportFormat,
    pub out: PathBuf,
    /// Replace an existing output.
    pub force: bool,
    /// Weight type of a Hugging Face export (`None`: the source's).
    pub dtype: Option<hf::HfDtype>,
    /// Largest safetensors shard, bytes.
    pub max_shard_bytes: u64,
    /// Reload the export and compare its logits with the in-memory model.
    pub verify: bool,
}

impl ExportRequest {
    pub fn new(format: ExportFormat, out: PathBuf) -> Self {
        ExportRequest { format, out, force: false, dtype: None, max_shard_bytes: hf::HfOptions::default().max_shard_bytes, verify: true }
    }
}

/// What reloading an export showed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Verification {
    /// Largest |difference| of the logits of the reloaded and the in-memory model on
    /// [`VERIFY_TEXT`].
    pub max_abs_logit_difference: f64,
    /// Largest |logit|, for scale.
    pub max_abs_logit: f64,
    /// The exported tokenizer encodes the text as the source's does.
    pub tokenizer_matches: bool,
}

/// The text an export's check runs.
pub const VERIFY_TEXT: &str = "The capital of France is Paris. Layer collapse keeps the first and last layers of a model.";

/// Build `variant` from the loaded model, write it as asked, and (unless told not to)
/// reload the result and compare its logits with the in-memory model.
pub fn export_variant(m: &LoadedModel, variant: &Variant, recipe: &Recipe, req: &ExportRequest) -> Result<(ExportReport, Option<Verification>)> {
    refuse_existing(&req.out, req.force)?;
    let compressed = variant.build(&m.model)?;
    let src = ExportSource {
        source: m,
        plan: &variant.plan,
        settings: variant.settings,
        compressed: &compressed,
        recipe: Some(recipe),
        healed: variant.heal.as_ref().is_some_and(|h| h.method != crate::fitness::Heal::None),
    };
    let report = match req.format {
        ExportFormat::Hf => hf::export(&src, &req.out, &hf::HfOptions { dtype: req.dtype, max_shard_bytes: req.max_shard_bytes.max(1), force: req.force })?,
        ExportFormat::Gguf => gguf::export(&src, &req.out, &gguf::GgufOptions { force: req.force })?,
    };
    let verification = if req.verify { Some(verify(m, &compressed, &req.out)?) } else { None };
    Ok((report, verification))
}

/// Reload the export at `out` and compare it with `compressed`.
pub fn verify(m: &LoadedModel, compressed: &Llama, out: &Path) -> Result<Verification> {
    let back = crate::model::load(out, m.device.clone()).map_err(|e| match e {
        Error::Io { .. } | Error::Format { .. } | Error::Config { .. } | Error::Weights { .. } => {
            Error::Invalid(format!("the export at {} does not load back: {e}", out.display()))
        }
        other => other,
    })?;
    let ids = m.tokenizer.encode(VERIFY_TEXT)?;
    let tokenizer_matches = back.tokenizer.encode(VERIFY_TEXT)? == ids;
    let la = download(compressed.logits(compressed.forward(&[ids.clone()], None)?))?;
    let lb = download(back.model.logits(back.model.forward(&[ids], None)?))?;
    Ok(Verification {
        max_abs_logit_difference: la.data.iter().zip(&lb.data).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max),
        max_abs_logit: la.data.iter().map(|x| x.abs() as f64).fold(0.0, f64::max),
        tokenizer_matches,
    })
}

/// The tensors of a merged layer, downloaded from the device, by Hugging Face suffix
/// (`self_attn.q_proj.weight`), in Hugging Face layout.
pub fn merged_layer_tensors(layer: &Layer) -> Result<Vec<(&'static str, HostTensor)>> {
    let mut out = Vec::new();
    for t in LAYER_TENSORS {
        if let Some(x) = layer.param(t.param)? {
            out.push((t.hf, x));
        }
    }
    Ok(out)
}

/// The tensors of merged layers, downloaded one layer at a time as an export reaches them
/// (exports visit a layer's tensors together, so one layer is held at a time).
pub struct MergedTensors<'a> {
    model: &'a Llama,
    current: Option<(usize, Vec<(&'static str, HostTensor)>)>,
}

impl<'a> MergedTensors<'a> {
    pub fn new(model: &'a Llama) -> Self {
        MergedTensors { model, current: None }
    }

    /// Tensor `suffix` (Hugging Face naming and layout) of compressed layer `layer`.
    pub fn get(&mut self, layer: usize, suffix: &str) -> Result<&HostTensor> {
        if self.current.as_ref().is_none_or(|(l, _)| *l != layer) {
            let l = self
                .model
                .layers
                .get(layer)
                .ok_or_else(|| Error::Invalid(format!("the compressed model has no layer {layer}")))?;
            self.current = Some((layer, merged_layer_tensors(l)?));
        }
        let (_, tensors) = self.current.as_ref().expect("filled above");
        tensors
            .iter()
            .find(|(s, _)| *s == suffix)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::Invalid(format!("merged layer {layer} has no {suffix}")))
    }
}

/// A temporary sibling of `dest` to build an export in.
pub fn staging_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
    dest.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Move a finished staged export into place, replacing `dest` when `force`.
pub fn commit_staged(staged: &Path, dest: &Path, force: bool) -> Result<()> {
    if std::fs::symlink_metadata(dest).is_ok() {
        refuse_existing(dest, force)?;
        let old = dest.with_file_name(format!(
            ".{}.old-{}",
            dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(dest, &old).map_err(|e| Error::io(dest, e))?;
        if let Err(e) = std::fs::rename(staged, dest) {
            let _ = std::fs::rename(&old, dest);
            return Err(Error::io(dest, e));
        }
        remove_any(&old);
        return Ok(());
    }
    std::fs::rename(staged, dest).map_err(|e| Error::io(dest, e))
}

/// Remove a file or folder, ignoring errors (clean-up after a failure).
pub fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Run `build` on a staging path and move the result to `dest`; on any failure the staged
/// output is removed and `dest` is untouched.
pub fn staged<T>(dest: &Path, force: bool, build: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    refuse_existing(dest, force)?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::Invalid(format!("{}: the folder to write into does not exist", parent.display())));
    }
    let stage = staging_path(dest);
    remove_any(&stage);
    let result = build(&stage).and_then(|v| commit_staged(&stage, dest, force).map(|_| v));
    if result.is_err() {
        remove_any(&stage);
    }
    result
}

/// Bytes of a file or of all files in a folder.
pub fn size_of(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| size_of(&e.path())).sum(),
        Err(_) => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_export_leaves_nothing_and_keeps_the_old_output() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        std::fs::write(&dest, "old").unwrap();
        let r: Result<()> = staged(&dest, true, |p| {
            std::fs::write(p, "half").unwrap();
            Err(Error::Invalid("disk full".into()))
        });
        assert!(r.unwrap_err().to_string().contains("disk full"));
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        staged(&dest, true, |p| std::fs::write(p, "new").map_err(|e| Error::io(p, e))).unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
