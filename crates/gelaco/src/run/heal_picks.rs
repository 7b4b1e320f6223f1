//! Healing the picks. Validation picks the recommended model of each size among the
//! fittest plans the search found and the baselines; the best few of each size (by
//! validation perplexity) are also healed ([`crate::fitness::heal`]) on calibration text
//! that holds none of the validation text, and validated again. Where the healed model
//! validates better than its plan unhealed, it is that solution's model, and it competes
//! for the recommendation like any other.
//!
//! A fit on more text generalises better, and costs in proportion. So the plans of a size
//! are first healed on a part of the fitting samples (the screen: the healing engine's
//! first chunks, which hold the longest samples), and only the one that validates best
//! that way is healed on all of them: that is its healed model; the others stay unhealed.
//!
//! Healing inside the search (`--heal linear`) fits on the tokens it is then scored on,
//! which flatters healed plans and steers the search towards plans that fall apart on
//! other text. Here the fit uses several times the search's tokens and never sees the text
//! that judges it, and the search itself is left alone.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::store::{RunInfo, read_checked, write_json};
use crate::error::{Error, Result};
use crate::fitness::calibration::{self, CalibOptions, CalibSource, Calibration};
use crate::fitness::{FitnessEngine, Heal, heal};
use crate::limits::token_samples;
use crate::model::Tokenizer;

/// How many plans of each size a new run heals: the best by validation perplexity
/// unhealed. Healing reorders plans (one whose collapsed groups restore well can overtake
/// the plan that validated best unhealed), so more than one is healed; a third on the
/// demo model cost 40% more time after the search and chose no better models on test text.
pub const DEFAULT_PER_SIZE: usize = 2;

/// How many plans of each size runs written before the number was a setting heal.
pub const LEGACY_PER_SIZE: usize = 2;

fn legacy_per_size() -> usize {
    LEGACY_PER_SIZE
}

/// Fitting samples of a new run (of the calibration's length each).
pub const DEFAULT_SAMPLES: usize = 512;

/// Of those, the samples a new run screens the plans of each size on.
pub const DEFAULT_SCREEN_SAMPLES: usize = 128;

/// The fitting samples in the run folder.
pub const FILE: &str = "heal-calibration.json";

/// How a new run heals its picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealPicks {
    pub method: Heal,
    /// Samples to fit on, picked as the calibration picks its own.
    pub samples: usize,
    /// How many of those the plans of each size are screened on (0, or as many as there
    /// are: every plan fitted on all of them).
    pub screen: usize,
    /// How many plans of each size are healed (the best by validation perplexity).
    pub per_size: usize,
}

impl HealPicks {
    /// Refuses what no run can heal with, naming the setting.
    pub fn check(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::setting("heal_samples", "must be at least 1"));
        }
        if self.per_size == 0 {
            return Err(Error::setting("heal_per_size", "must be at least 1"));
        }
        Ok(())
    }
}

impl Default for HealPicks {
    fn default() -> Self {
        HealPicks { method: Heal::Linear, samples: DEFAULT_SAMPLES, screen: DEFAULT_SCREEN_SAMPLES, per_size: DEFAULT_PER_SIZE }
    }
}

/// What a run's picks are healed with (in `run.json`; absent: not healed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealPicksInfo {
    pub method: Heal,
    /// SHA-256 of the fitting samples' token ids (the samples are in `heal-calibration.json`).
    pub hash: String,
    pub samples: usize,
    pub tokens: usize,
    /// The plans of each size are healed on this many of the samples first, and the one
    /// that validates best is healed on all of them (absent: every plan on all of them, as
    /// in runs written before screening existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_samples: Option<usize>,
    /// How many plans of each size are healed, the best by validation perplexity (absent:
    /// [`LEGACY_PER_SIZE`], as runs written before it was a setting).
    #[serde(default = "legacy_per_size")]
    pub per_size: usize,
}

impl HealPicksInfo {
    /// As `h` says, fitted on `c`: screened on `h.screen` of its samples where that is
    /// fewer.
    pub fn of(h: &HealPicks, c: &Calibration) -> Self {
        let screen_samples = (h.screen > 0 && h.screen < c.samples.len()).then_some(h.screen);
        HealPicksInfo { method: h.method, hash: c.hash.clone(), samples: c.samples.len(), tokens: c.tokens(), screen_samples, per_size: h.per_size }
    }
}

/// Whether a solution's model is its plan healed: a healed validation perplexity below the
/// unhealed one (or the only finite one).
pub fn healed_wins(plain: Option<f64>, healed: Option<f64>) -> bool {
    match (plain, healed) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(p), Some(h)) => h < p,
    }
}

/// The validation perplexity of a solution's model: the healed one where it wins.
pub fn picked(plain: Option<f64>, healed: Option<f64>) -> Option<f64> {
    if healed_wins(plain, healed) { healed } else { plain }
}

/// The samples to heal on: up to `samples` of `free` (texts holding no validation text, see
/// [`crate::eval::validation::Validation::load_split`]) picked as the calibration picks its
/// own (minimum length, truncation, first or seeded); for a self-generated calibration
/// (`free` is `None`) the run's calibration itself. Too few tokens to fit on is an error
/// naming the setting.
pub fn calibration(
    free: Option<&[String]>,
    run_calibration: &Calibration,
    samples: usize,
    tokenizer: &Tokenizer,
    hidden_size: usize,
) -> Result<Calibration> {
    HealPicks { samples, ..HealPicks::default() }.check()?;
    let cal = match (free, &run_calibration.source) {
        (Some(free), source @ CalibSource::File(path)) => {
            let copts = &run_calibration.options;
            let usable = free.iter().filter(|t| t.trim().chars().count() >= copts.min_chars).count();
            if usable == 0 {
                return Err(Error::setting(
                    "heal_picks",
                    format!("{} has no line of at least {} characters outside the validation text to fit on", path.display(), copts.min_chars),
                ));
            }
            let opts = CalibOptions { samples: samples.min(usable), ..copts.clone() };
            let ids = calibration::from_texts(free, tokenizer, &opts, &format!("{} (healing text)", path.display()))?;
            Calibration::from_samples(ids, source.clone(), opts)
        }
        _ => run_calibration.clone(),
    };
    heal::check_tokens(cal.tokens(), hidden_size).map_err(|e| match e {
        Error::Setting { message, .. } => Error::setting("heal_picks", message),
        e => e,
    })?;
    Ok(cal)
}

/// The engine that heals the picks: the run's model and merge settings, fitted on `cal`
/// as a recipe of the healed pick will be.
pub fn engine(run_engine: &FitnessEngine, method: Heal, cal: Calibration) -> Result<FitnessEngine> {
    FitnessEngine::healer(run_engine.model(), cal, run_engine.options.merge, method)
}

pub fn write(dir: &Path, cal: &Calibration) -> Result<()> {
    write_json(&dir.join(FILE), cal)
}

/// The fitting samples of a run folder whose picks are healed (`None`: they are not).
pub fn read(dir: &Path, info: &RunInfo) -> Result<Option<Calibration>> {
    let Some(h) = &info.heal_picks else { return Ok(None) };
    read_checked(&dir.join(FILE), |c: &Calibration| {
        token_samples("samples", &c.samples, &c.hash, None)?;
        if c.hash != h.hash {
            return Err("hash: differs from heal_picks.hash of run.json".into());
        }
        Ok(())
    })
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_written_before_the_number_of_plans_healed_was_a_setting_heals_two_per_size() {
        let old = r#"{"method":"linear","hash":"ab","samples":512,"tokens":49794,"screen_samples":128}"#;
        let h: HealPicksInfo = serde_json::from_str(old).unwrap();
        assert_eq!(h.per_size, LEGACY_PER_SIZE);
        let new: HealPicksInfo = serde_json::from_str(&serde_json::to_string(&HealPicksInfo { per_size: 3, ..h }).unwrap()).unwrap();
        assert_eq!(new.per_size, 3);
    }
}
