//! The run folder: what a search is (settings, model and calibration identity), an
//! append-only log of every evaluation (one JSON line each, flushed as written), a
//! checkpoint after every generation (written atomically), and the final front.
//!
//! ```text
//! run.json            settings, model identity, engine options, status
//! calibration.json    the calibration token ids (so a resumed run uses the same samples)
//! evaluations.jsonl   one line per evaluation, in order
//! checkpoint.json     population and counters after the last completed generation
//! validation.json     the held-out validation windows (token ids), when the run has them
//! heal-calibration.json  the samples the picks are healed on, when they are
//! baselines.json      the baselines' solutions, when computed
//! front.json          the current best solutions (rewritten after every generation)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FrontEntry;
use crate::error::{Error, Result};
use crate::eval::validation::Validation;
use crate::fitness::EngineOptions;
use crate::model::ModelFiles;
use crate::fitness::calibration::Calibration;
use crate::search::SearchSettings;
use crate::search::algorithm::AlgorithmState;
use crate::search::baselines::BaselineSolution;
use crate::search::problem::EvaluatedPlan;
use crate::limits::{Check, MAX_LAYERS, count, field, sha256, token_samples};
use crate::util::write_atomic;

/// Identity of the model a run is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub path: PathBuf,
    pub sha256: String,
    pub architecture: String,
    pub layers: usize,
}

impl ModelIdentity {
    /// The identity of an opened model: canonical path, content hash, architecture, layers.
    pub fn of(files: &ModelFiles) -> Result<Self> {
        Ok(Self::with_hash(files, files.sha256()?))
    }

    /// The identity of an opened model whose hash is already known.
    pub fn with_hash(files: &ModelFiles, sha256: String) -> Self {
        let path = &files.path;
        ModelIdentity {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()),
            sha256,
            architecture: files.config.arch.name().to_string(),
            layers: files.config.num_layers,
        }
    }
}

impl ModelIdentity {
    /// Check an identity read from a file.
    pub fn check(&self) -> Check {
        count("layers", self.layers, 1, MAX_LAYERS)?;
        sha256("sha256", &self.sha256)
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Stopped,
    Finished,
    Failed,
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub tool_version: String,
    pub settings: SearchSettings,
    pub engine: EngineOptions,
    pub model: ModelIdentity,
    pub calibration_hash: String,
    pub calibration_source: String,
    pub status: Status,
    pub message: Option<String>,
    /// LaCo and ShortGPT were asked for (computed before the search, kept in baselines.json).
    #[serde(default)]
    pub baselines: bool,
    /// The held-out validation text that picks the recommended solutions (absent from runs
    /// written before validation existed, and from runs without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationInfo>,
    /// Healing of the picks (absent: not healed; runs written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal_picks: Option<super::heal_picks::HealPicksInfo>,
    /// A name made when the run began, which tells its jobs and results apart on a message
    /// broker from those of another run with the same settings (absent from runs written
    /// before it existed: the broker name is then made from the settings alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// Identity of a run's validation text (its windows are in `validation.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationInfo {
    pub source: String,
    pub hash: String,
    pub tokens: usize,
}

impl RunInfo {
    /// Check `run.json`: the model's identity, every setting as a new run would check it,
    /// and the hashes.
    pub fn check(&self) -> Check {
        field("model", self.model.check())?;
        self.settings.validate(self.model.layers).map_err(|e| settings_field("settings", e))?;
        field("engine", self.engine.check())?;
        sha256("calibration_hash", &self.calibration_hash)?;
        if let Some(v) = &self.validation {
            sha256("validation.hash", &v.hash)?;
        }
        if let Some(h) = &self.heal_picks {
            sha256("heal_picks.hash", &h.hash)?;
        }
        Ok(())
    }

    /// How many genes a plan of this run has, and how many objectives the search keeps.
    fn shape(&self) -> (crate::search::operators::Bounds, usize) {
        let objectives = match self.settings.mode {
            crate::search::problem::Mode::Pareto => 2,
            crate::search::problem::Mode::Single { .. } => 1,
        };
        (self.settings.encoding(self.model.layers).bounds(), objectives)
    }
}

/// `checkpoint.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub state: AlgorithmState,
    pub evaluated: usize,
    pub cache_hits: usize,
    pub unique: usize,
    pub seconds: f64,
    pub hypervolume: Vec<f64>,
}

/// An open run folder.
pub struct RunStore {
    pub dir: PathBuf,
    log: File,
    /// Lines in the evaluation log.
    pub logged: usize,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not a valid run file: {e}")))
}

/// A setting's error as a field of a file (`settings.population: must be ...`).
fn settings_field(prefix: &str, e: Error) -> String {
    match e {
        Error::Setting { setting, message } => format!("{prefix}.{setting}: {message}"),
        e => format!("{prefix}: {e}"),
    }
}

/// Read a run file and hold it to `check` (its message names the field).
pub(super) fn read_checked<T: for<'de> Deserialize<'de>>(path: &Path, check: impl FnOnce(&T) -> Check) -> Result<T> {
    let value = read_json(path)?;
    check(&value).map_err(|m| Error::format(path, m))?;
    Ok(value)
}

/// Check the calibration samples of a run against its `run.json`.
fn check_calibration(c: &Calibration, info: &RunInfo) -> Check {
    token_samples("samples", &c.samples, &c.hash, None)?;
    if c.hash != info.calibration_hash {
        return Err("hash: differs from the calibration_hash of run.json".into());
    }
    if let Some(text) = &info.settings.fidelity {
        let tokens = c.samples.iter().map(Vec::len).sum();
        crate::search::fidelity::Fidelity::parse(text, tokens).map_err(|e| settings_field("(run.json) settings", e))?;
    }
    Ok(())
}

impl EvaluatedPlan {
    /// Check one line of `evaluations.jsonl` of a run whose plans have `genes` genes.
    fn check(&self, layers: usize, genes: usize) -> Check {
        if self.genes.len() != genes {
            return Err(format!("genes: {} values where the run has {genes}", self.genes.len()));
        }
        field("result", self.result.check(layers))
    }
}

fn check_front(front: &[FrontEntry], layers: usize) -> Check {
    for (i, e) in front.iter().enumerate() {
        field(format_args!("[{i}]"), e.result.check(layers))?;
    }
    Ok(())
}

fn check_baselines(baselines: &[BaselineSolution], layers: usize) -> Check {
    for (i, b) in baselines.iter().enumerate() {
        field(format_args!("[{i}]"), (|| {
            field("plan", b.plan.check(layers))?;
            field("result", b.result.check(layers))?;
            if b.plan.psi != b.result.psi {
                return Err("result.psi: differs from plan.psi".into());
            }
            Ok(())
        })())?;
    }
    Ok(())
}

fn check_validation(v: &Validation) -> Check {
    token_samples("windows", &v.windows, &v.hash, None)?;
    if let Some(i) = v.windows.iter().position(|w| w.len() < 2) {
        return Err(format!("windows[{i}]: fewer than 2 tokens"));
    }
    Ok(())
}

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::format(path, e.to_string()))?;
    write_atomic(path, &text)
}

impl RunStore {
    /// Start a new run folder. An existing folder must be empty (or absent).
    pub fn create(dir: &Path, info: &RunInfo, calibration: &Calibration) -> Result<Self> {
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            if entries.next().is_some() {
                return Err(Error::RunExists { path: dir.to_path_buf() });
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_json(&dir.join("calibration.json"), calibration)?;
        write_json(&dir.join("run.json"), info)?;
        Self::open_log(dir, 0)
    }

    fn open_log(dir: &Path, logged: usize) -> Result<Self> {
        let path = dir.join("evaluations.jsonl");
        let log = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(RunStore { dir: dir.to_path_buf(), log, logged })
    }

    /// Open an existing run: its description, calibration, logged evaluations and last
    /// checkpoint. A torn last line (the process died while writing it) is dropped.
    #[allow(clippy::type_complexity)]
    pub fn open(dir: &Path) -> Result<(Self, RunInfo, Calibration, Vec<EvaluatedPlan>, Option<Checkpoint>)> {
        let info = read_info(dir)?;
        let calibration: Calibration = read_checked(&dir.join("calibration.json"), |c| check_calibration(c, &info))?;
        let (evaluations, good_bytes) = read_log(dir, &info)?;
        let log_path = dir.join("evaluations.jsonl");
        if log_path.exists() {
            // cut a torn tail so that appends continue on a line boundary
            let f = OpenOptions::new().write(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
            f.set_len(good_bytes).map_err(|e| Error::io(&log_path, e))?;
        }
        let checkpoint = read_checkpoint_of(dir, &info)?;
        let store = Self::open_log(dir, evaluations.len())?;
        Ok((store, info, calibration, evaluations, checkpoint))
    }

    /// Append one evaluation (skipped when the log already holds it: a resumed run
    /// replaying the generation that was in flight).
    pub fn append(&mut self, e: &EvaluatedPlan) -> Result<()> {
        if e.index < self.logged {
            return Ok(());
        }
        let path = self.dir.join("evaluations.jsonl");
        let mut line = serde_json::to_vec(e).map_err(|err| Error::format(&path, err.to_string()))?;
        line.push(b'\n');
        self.log.write_all(&line).map_err(|err| Error::io(&path, err))?;
        self.log.flush().map_err(|err| Error::io(&path, err))?;
        self.logged = e.index + 1;
        Ok(())
    }

    pub fn checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        self.log.sync_data().map_err(|e| Error::io(self.dir.join("evaluations.jsonl"), e))?;
        write_json(&self.dir.join("checkpoint.json"), cp)
    }

    pub fn write_front(&self, front: &[FrontEntry]) -> Result<()> {
        write_json(&self.dir.join("front.json"), &front)
    }

    /// The plans besides the front that validation picked from (`candidates.json`).
    pub fn write_candidates(&self, candidates: &[FrontEntry]) -> Result<()> {
        write_json(&self.dir.join("candidates.json"), &candidates)
    }

    pub fn write_validation(&self, v: &Validation) -> Result<()> {
        write_json(&self.dir.join("validation.json"), v)
    }

    pub fn write_baselines(&self, b: &[BaselineSolution]) -> Result<()> {
        write_json(&self.dir.join("baselines.json"), &b)
    }

    pub fn set_status(&self, info: &mut RunInfo, status: Status, message: Option<String>) -> Result<()> {
        info.status = status;
        info.message = message;
        write_json(&self.dir.join("run.json"), info)
    }
}

/// The evaluation log of a run folder, each line checked against the run, and the length
/// of its whole lines (a torn last line, from a process that died while writing it, is
/// left out).
fn read_log(dir: &Path, info: &RunInfo) -> Result<(Vec<EvaluatedPlan>, u64)> {
    let log_path = dir.join("evaluations.jsonl");
    let mut evaluations = Vec::new();
    let mut good_bytes = 0u64;
    if !log_path.exists() {
        return Ok((evaluations, good_bytes));
    }
    let (bounds, _) = info.shape();
    let f = File::open(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let mut lines = BufReader::new(f).lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.map_err(|e| Error::io(&log_path, e))?;
        let number = evaluations.len() + 1;
        match serde_json::from_str::<EvaluatedPlan>(&line) {
            Ok(e) => {
                if e.index != evaluations.len() {
                    return Err(Error::format(&log_path, format!("line {number}: index {} where {} was expected", e.index, evaluations.len())));
                }
                e.check(info.model.layers, bounds.lower.len()).map_err(|m| Error::format(&log_path, format!("line {number}: {m}")))?;
                good_bytes += line.len() as u64 + 1;
                evaluations.push(e);
            }
            Err(_) if lines.peek().is_none() => break,
            Err(e) => return Err(Error::format(&log_path, format!("line {number}: not a valid evaluation: {e}"))),
        }
    }
    Ok((evaluations, good_bytes))
}

fn read_checkpoint_of(dir: &Path, info: &RunInfo) -> Result<Option<Checkpoint>> {
    let path = dir.join("checkpoint.json");
    if !path.exists() {
        return Ok(None);
    }
    let (bounds, objectives) = info.shape();
    read_checked(&path, |c: &Checkpoint| field("state", c.state.check(&bounds, objectives))).map(Some)
}

/// The evaluations a run folder has logged, checked as a resume checks them (read only: a
/// torn last line is left out, not cut).
pub fn read_evaluations(dir: &Path) -> Result<Vec<EvaluatedPlan>> {
    Ok(read_log(dir, &read_info(dir)?)?.0)
}

/// The last checkpoint of a run folder (`None` before its first generation ended).
pub fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>> {
    read_checkpoint_of(dir, &read_info(dir)?)
}

/// The saved front of a run folder.
pub fn read_front(dir: &Path) -> Result<Vec<FrontEntry>> {
    let layers = read_info(dir)?.model.layers;
    read_checked(&dir.join("front.json"), |f: &Vec<FrontEntry>| check_front(f, layers))
}

/// The plans besides the front that validation picked from, the fittest few of each size
/// (empty for runs without validation, unfinished runs and runs of older versions).
pub fn read_candidates(dir: &Path) -> Result<Vec<FrontEntry>> {
    read_list(dir, "candidates.json", check_front)
}

/// The saved baselines of a run folder (empty when none were computed).
pub fn read_baselines(dir: &Path) -> Result<Vec<BaselineSolution>> {
    read_list(dir, "baselines.json", check_baselines)
}

/// A list a run folder may lack (then empty), checked against the run's layer count.
fn read_list<T: serde::de::DeserializeOwned>(dir: &Path, name: &str, check: fn(&[T], usize) -> Check) -> Result<Vec<T>> {
    let p = dir.join(name);
    if !p.exists() {
        return Ok(Vec::new());
    }
    let layers = read_info(dir)?.model.layers;
    read_checked(&p, |list: &Vec<T>| check(list, layers))
}

/// The calibration samples of a run folder.
pub fn read_calibration(dir: &Path) -> Result<Calibration> {
    let info = read_info(dir)?;
    read_checked(&dir.join("calibration.json"), |c| check_calibration(c, &info))
}

/// The validation windows of a run folder (`None` when it has none).
pub fn read_validation(dir: &Path) -> Result<Option<Validation>> {
    let p = dir.join("validation.json");
    if p.exists() { read_checked(&p, check_validation).map(Some) } else { Ok(None) }
}

pub fn read_info(dir: &Path) -> Result<RunInfo> {
    read_checked(&dir.join("run.json"), RunInfo::check)
}

#[cfg(test)]
mod tests;
