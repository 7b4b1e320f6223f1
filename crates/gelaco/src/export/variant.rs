//! One compressed model to build from a loaded original: from merges text (`B:E,B:E:op`), a
//! recipe, or a search run's solution; with its merge operator and settings, and healing
//! with the calibration it is fitted on. Every workflow that runs, judges or exports a
//! compressed model builds it through this type.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::recipe::{Recipe, plan_of};
use crate::collapse::{MergeOp, MergeSettings, Plan, build};
use crate::error::{Error, Result};
use crate::fitness::calibration::Calibration;
use crate::fitness::{FitnessEngine, FitnessResult, Heal};
use crate::model::{Llama, ModelFiles};
use crate::run::store::{ModelIdentity, RunInfo, read_calibration};

/// Healing of a compressed model and the calibration samples it is fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Healing {
    pub method: Heal,
    pub calibration: Calibration,
}

/// A compressed model to build.
#[derive(Debug, Clone)]
pub struct Variant {
    pub label: String,
    pub plan: Plan,
    pub merge_op: MergeOp,
    pub settings: MergeSettings,
    pub heal: Option<Healing>,
    /// The recipe it was read from.
    pub recipe: Option<Recipe>,
}

impl Variant {
    /// The original model, as a variant that changes nothing.
    pub fn original(num_layers: usize) -> Self {
        Variant::from_plan("original", Plan::identity(num_layers), crate::collapse::merge::DEFAULT_MERGE_OP, MergeSettings::default())
    }

    pub fn from_plan(label: impl Into<String>, plan: Plan, merge_op: MergeOp, settings: MergeSettings) -> Self {
        Variant { label: label.into(), plan, merge_op, settings, heal: None, recipe: None }
    }

    /// From `B:E,B:E:op,...` in original indices, `op` for merges that name none.
    pub fn from_merges(text: &str, op: MergeOp, settings: MergeSettings, num_layers: usize) -> Result<Self> {
        let triples = Plan::parse_merges(text)?;
        let plan = Plan::from_triples(&triples, num_layers, op)?;
        Ok(Variant::from_plan(text, plan, op, settings))
    }

    /// From a recipe file, checked against the model it is applied to (`sha256`: that
    /// model's content hash); `any_model` allows another file of the same shape.
    pub fn from_recipe_file(path: &Path, files: &ModelFiles, sha256: &str, any_model: bool) -> Result<Self> {
        let r = Recipe::load(path)?;
        r.check_model(files, sha256, any_model)?;
        let label = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "recipe".into());
        Ok(Variant { label, plan: r.plan()?, merge_op: r.merge_op, settings: r.settings(), heal: r.heal.clone(), recipe: Some(r) })
    }

    /// A solution of a search run (a front entry or a baseline), healed as the run healed
    /// its candidates, or, for a `healed` pick, as the run heals its picks.
    pub fn from_run(dir: &Path, info: &RunInfo, result: &FitnessResult, healed: bool, label: impl Into<String>) -> Result<Self> {
        let op = info.settings.merge_op.unwrap_or(crate::collapse::merge::DEFAULT_MERGE_OP);
        let mut v = Variant::from_plan(label, plan_of(result), op, info.engine.merge);
        if v.plan.removed() == 0 {
            return Ok(v);
        }
        if info.engine.heal != Heal::None {
            v.heal = Some(Healing { method: info.engine.heal, calibration: read_calibration(dir)? });
        } else if let (true, Some(picks)) = (healed, &info.heal_picks) {
            let calibration = crate::run::heal_picks::read(dir, info)?
                .ok_or_else(|| Error::Invalid(format!("{}: the run heals its picks but has no fitting samples", dir.display())))?;
            v.heal = Some(Healing { method: picks.method, calibration });
        }
        Ok(v)
    }

    /// Heal this variant on `calibration`.
    pub fn healed(mut self, method: Heal, calibration: Calibration) -> Result<Self> {
        if method == Heal::None {
            self.heal = None;
            return Ok(self);
        }
        if self.plan.removed() == 0 {
            return Err(Error::setting("heal", "needs a plan that removes at least one layer"));
        }
        self.heal = Some(Healing { method, calibration });
        Ok(self)
    }

    pub fn is_original(&self) -> bool {
        self.plan.removed() == 0 && self.plan.canonical.is_empty()
    }

    /// The compressed model: shared tensors for every untouched layer, new tensors for
    /// merged (and healed) ones.
    pub fn build(&self, base: &Llama) -> Result<Llama> {
        if self.plan.num_layers != base.num_layers() {
            return Err(Error::Invalid(format!(
                "{} is a plan for {} layers; the model has {}",
                self.label,
                self.plan.num_layers,
                base.num_layers()
            )));
        }
        match &self.heal {
            Some(h) if h.method != Heal::None && self.plan.removed() > 0 => {
                FitnessEngine::healer(base, h.calibration.clone(), self.settings, h.method)?.build_on(&self.plan, usize::MAX)
            }
            _ => Ok(build(base, &self.plan, self.settings)),
        }
    }

    /// The recipe of this variant: the one it was read from, or a new one for `model`.
    pub fn recipe(&self, model: ModelIdentity) -> Recipe {
        match &self.recipe {
            Some(r) => r.clone(),
            None => {
                let mut r = Recipe::new(model, &self.plan, self.merge_op, self.settings);
                r.heal = self.heal.clone();
                r
            }
        }
    }

    pub fn describe(&self) -> String {
        let healed = match &self.heal {
            Some(h) if h.method != Heal::None => format!(", healed ({})", h.method),
            _ => String::new(),
        };
        format!(
            "{} of {} layers, removed {} ({}){healed}",
            self.plan.remaining(),
            self.plan.num_layers,
            self.plan.removed_text(),
            self.plan.merges_text_with_ops(self.merge_op)
        )
    }
}
