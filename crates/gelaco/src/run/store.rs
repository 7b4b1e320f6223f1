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
}

/// Identity of a run's validation text (its windows are in `validation.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationInfo {
    pub source: String,
    pub hash: String,
    pub tokens: usize,
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

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
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
        let info: RunInfo = read_json(&dir.join("run.json"))?;
        let calibration: Calibration = read_json(&dir.join("calibration.json"))?;
        let log_path = dir.join("evaluations.jsonl");
        let mut evaluations = Vec::new();
        if log_path.exists() {
            let f = File::open(&log_path).map_err(|e| Error::io(&log_path, e))?;
            let mut good_bytes = 0u64;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| Error::io(&log_path, e))?;
                match serde_json::from_str::<EvaluatedPlan>(&line) {
                    Ok(e) if e.index == evaluations.len() => {
                        good_bytes += line.len() as u64 + 1;
                        evaluations.push(e);
                    }
                    _ => break,
                }
            }
            // cut a torn tail so that appends continue on a line boundary
            let f = OpenOptions::new().write(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
            f.set_len(good_bytes).map_err(|e| Error::io(&log_path, e))?;
        }
        let cp_path = dir.join("checkpoint.json");
        let checkpoint = if cp_path.exists() { Some(read_json(&cp_path)?) } else { None };
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

/// The saved front of a run folder.
pub fn read_front(dir: &Path) -> Result<Vec<FrontEntry>> {
    read_json(&dir.join("front.json"))
}

/// The saved baselines of a run folder (empty when none were computed).
pub fn read_baselines(dir: &Path) -> Result<Vec<BaselineSolution>> {
    let p = dir.join("baselines.json");
    if p.exists() { read_json(&p) } else { Ok(Vec::new()) }
}

/// The calibration samples of a run folder.
pub fn read_calibration(dir: &Path) -> Result<Calibration> {
    read_json(&dir.join("calibration.json"))
}

/// The validation windows of a run folder (`None` when it has none).
pub fn read_validation(dir: &Path) -> Result<Option<Validation>> {
    let p = dir.join("validation.json");
    if p.exists() { read_json(&p).map(Some) } else { Ok(None) }
}

pub fn read_info(dir: &Path) -> Result<RunInfo> {
    read_json(&dir.join("run.json"))
}
