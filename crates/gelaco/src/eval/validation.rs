//! Held-out validation: text the search never optimises, used only to pick among the
//! models it found (calibration for searching, validation for picking, test for reporting).
//!
//! By default the validation text is the rest of the calibration file: every line the
//! calibration did not take (and no line equal to one it took). A text of the user's own
//! is refused when it holds a calibration line. The text is tokenised without special
//! tokens and cut into non-overlapping windows scored like [`super::perplexity`].

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::perplexity::head_nll;
use crate::error::{Error, Result};
use crate::fitness::calibration::{self, CalibOptions, CalibSource, hash_ids};
use crate::model::Tokenizer;
use crate::model::llama::Llama;

/// Where the validation text comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "kind", content = "path")]
pub enum ValidationSource {
    /// The calibration file's lines that the calibration did not take.
    #[default]
    Rest,
    /// A text file of the user's (one document; lines are joined).
    File(PathBuf),
}

/// How much validation text to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationOptions {
    /// Tokens per window.
    pub window: usize,
    pub windows: usize,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        ValidationOptions { window: 512, windows: 4 }
    }
}

/// The validation windows of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub source: String,
    /// SHA-256 of the windows' token ids.
    pub hash: String,
    pub windows: Vec<Vec<u32>>,
}

impl Validation {
    /// Build the validation windows for a calibration built from `calib` with `copts`.
    pub fn load(
        source: &ValidationSource,
        calib: &CalibSource,
        copts: &CalibOptions,
        vopts: &ValidationOptions,
        tokenizer: &Tokenizer,
    ) -> Result<Self> {
        Self::load_split(source, calib, copts, vopts, tokenizer).map(|(v, _)| v)
    }

    /// [`Validation::load`], and the calibration file's texts that hold no validation text
    /// (the calibration's own among them), for fitting what validation then judges; `None`
    /// for a self-generated calibration.
    pub fn load_split(
        source: &ValidationSource,
        calib: &CalibSource,
        copts: &CalibOptions,
        vopts: &ValidationOptions,
        tokenizer: &Tokenizer,
    ) -> Result<(Self, Option<Vec<String>>)> {
        if vopts.window < 2 {
            return Err(Error::setting("validation_window", "must be at least 2"));
        }
        if vopts.windows == 0 {
            return Err(Error::setting("validation_windows", "must be at least 1"));
        }
        let calib_texts: Option<(PathBuf, Vec<String>, Vec<usize>)> = match calib {
            CalibSource::File(p) => {
                let texts = calibration::read_texts(p, &copts.text_field)?;
                let chosen = calibration::choose(&texts, copts, &p.display().to_string())?;
                Some((p.clone(), texts, chosen))
            }
            CalibSource::SelfGenerated => None,
        };
        let (described, lines): (String, Vec<String>) = match source {
            ValidationSource::Rest => {
                let Some((path, texts, chosen)) = &calib_texts else {
                    return Err(Error::setting(
                        "validation",
                        "cannot be the rest of a self-generated calibration; name a validation text file",
                    ));
                };
                let taken: std::collections::HashSet<&str> = chosen.iter().map(|&i| texts[i].trim()).collect();
                let rest = texts.iter().filter(|t| !taken.contains(t.trim())).cloned().collect();
                (format!("{} (lines not used for calibration)", path.display()), rest)
            }
            ValidationSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                let lines: Vec<String> = text.lines().map(String::from).collect();
                if let Some((cpath, texts, chosen)) = &calib_texts {
                    refuse_overlap(path, &lines, cpath, chosen.iter().map(|&i| texts[i].trim()))?;
                }
                (path.display().to_string(), lines)
            }
        };
        let (windows, used) = windows_of(&lines, tokenizer, vopts)?;
        if windows.is_empty() {
            return Err(Error::setting(
                "validation",
                format!("{described} holds fewer than {MIN_TOKENS} tokens: nothing to score"),
            ));
        }
        let free = calib_texts.map(|(_, texts, _)| {
            let scored: std::collections::HashSet<&str> = lines[..used].iter().map(|l| l.trim()).collect();
            texts.iter().filter(|t| !scored.contains(t.trim())).cloned().collect()
        });
        Ok((Validation { source: described, hash: hash_ids(&windows), windows }, free))
    }

    /// Perplexity of `model` over the windows: exp of the mean NLL of every token after a
    /// window's first.
    pub fn perplexity(&self, model: &Llama) -> Result<f64> {
        self.perplexity_from(model, 0, &self.entering(model, None, 0)?)
    }

    /// [`Validation::perplexity`] of a model whose layers before `first` are those of the
    /// model `entering` was computed on: `entering[i]` is the hidden state of window `i`
    /// entering layer `first` (see [`Validation::entering`]). The same number as a full
    /// forward, for the layers `first` and after only.
    pub fn perplexity_from(&self, model: &Llama, first: usize, entering: &[Tensor<3>]) -> Result<f64> {
        if entering.len() != self.windows.len() || first > model.num_layers() {
            return Err(Error::Invalid(format!(
                "validation from layer {first} of {} needs the states of {} windows, got {}",
                model.num_layers(),
                self.windows.len(),
                entering.len()
            )));
        }
        let mut nll = 0.0;
        let mut tokens = 0usize;
        for (w, h) in self.windows.iter().zip(entering) {
            let mut state = model.state(w.len());
            let h = model.run_layers(h.clone(), first..model.num_layers(), &mut state, None, None);
            nll += head_nll(model, model.final_norm(h), w)?;
            tokens += w.len() - 1;
        }
        Ok((nll / tokens.max(1) as f64).exp())
    }

    /// The hidden state of each window entering layer `to` of `model`, from the states
    /// entering layer `from` (`None`: from the embeddings, `from` is then 0).
    pub fn entering(&self, model: &Llama, from: Option<(usize, &[Tensor<3>])>, to: usize) -> Result<Vec<Tensor<3>>> {
        let (from, states) = match from {
            Some((k, states)) => (k, Some(states)),
            None => (0, None),
        };
        if from > to || to > model.num_layers() {
            return Err(Error::Invalid(format!("validation states from layer {from} to {to} of {}", model.num_layers())));
        }
        self.windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let h = match states {
                    Some(s) => s.get(i).cloned().ok_or_else(|| Error::Invalid("validation states for fewer windows than the text has".into()))?,
                    None => model.embed(model.ids_tensor(&[w.clone()])?),
                };
                let mut state = model.state(w.len());
                Ok(model.run_layers(h, from..to, &mut state, None, None))
            })
            .collect()
    }

    /// Bytes of one set of [`Validation::entering`] states of a model of `hidden` size.
    pub fn entering_bytes(&self, hidden: usize) -> usize {
        self.windows.iter().map(|w| w.len() * hidden * std::mem::size_of::<f32>()).sum()
    }

    /// Tokens scored.
    pub fn tokens(&self) -> usize {
        self.windows.iter().map(|w| w.len().saturating_sub(1)).sum()
    }
}

/// A validation text must not hold a calibration line.
fn refuse_overlap<'a>(path: &Path, lines: &[String], cpath: &Path, calib: impl Iterator<Item = &'a str>) -> Result<()> {
    let calib: std::collections::HashSet<&str> = calib.filter(|t| !t.is_empty()).collect();
    for (n, l) in lines.iter().enumerate() {
        if calib.contains(l.trim()) {
            return Err(Error::format(
                path,
                format!("line {} is also a calibration sample of {}: validation must be text the search never sees", n + 1, cpath.display()),
            ));
        }
    }
    Ok(())
}

/// The fewest tokens a validation text may have.
pub const MIN_TOKENS: usize = 16;

/// Tokenise `lines` (joined by newlines) a line at a time until enough tokens for the
/// windows, then cut them; a text shorter than one window (but at least [`MIN_TOKENS`])
/// is one shorter window. Also: how many leading lines were tokenised.
fn windows_of(lines: &[String], tokenizer: &Tokenizer, o: &ValidationOptions) -> Result<(Vec<Vec<u32>>, usize)> {
    let need = o.window.saturating_mul(o.windows);
    let mut ids: Vec<u32> = Vec::with_capacity(need.min(1 << 20));
    let mut used = 0;
    for l in lines {
        if ids.len() >= need {
            break;
        }
        ids.extend(tokenizer.encode(&format!("{l}\n"))?);
        used += 1;
    }
    if ids.len() < o.window {
        return Ok((if ids.len() >= MIN_TOKENS { vec![ids] } else { Vec::new() }, used));
    }
    Ok((ids.chunks_exact(o.window).take(o.windows).map(|w| w.to_vec()).collect(), used))
}
