//! Recipes: one JSON file that fully identifies a compressed model, so that it can be
//! rebuilt, judged and exported later, on another machine, from the same source model.
//!
//! A recipe names the source model by content hash; applying it to another file is refused
//! unless the caller asks for it explicitly, and even then the architecture and layer count
//! must agree.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::collapse::{MergeOp, MergeSettings, Plan, Span, Triple};
use crate::error::{Error, Result};
use crate::fitness::FitnessResult;
use crate::model::ModelFiles;
use crate::run::store::{ModelIdentity, RunInfo};
use crate::util::write_atomic;

/// The `format` field of every recipe.
pub const RECIPE_FORMAT: &str = "gelaco-recipe";
/// The recipe layout version this tool writes and reads.
pub const RECIPE_VERSION: u32 = 1;

/// The calibration a recipe was scored on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationIdentity {
    pub hash: String,
    pub source: String,
    #[serde(default)]
    pub samples: Option<usize>,
    #[serde(default)]
    pub tokens: Option<usize>,
}

/// The scores of a recipe on its calibration, when it was scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipeScores {
    pub fitness: f64,
    pub attention: f64,
    pub ffn: f64,
    pub hidden: f64,
    pub compression: f64,
    pub params_removed: f64,
}

impl From<&FitnessResult> for RecipeScores {
    fn from(r: &FitnessResult) -> Self {
        RecipeScores {
            fitness: r.fitness,
            attention: r.attention,
            ffn: r.ffn,
            hidden: r.hidden,
            compression: r.compression,
            params_removed: r.params_removed,
        }
    }
}

/// A replayable compressed model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub format: String,
    pub version: u32,
    pub tool_version: String,
    /// The source model: path when written, content hash, architecture, layer count.
    pub model: ModelIdentity,
    pub architecture: String,
    /// The genotype in original indices; decoding it gives `canonical`.
    pub genotype: Vec<Triple>,
    /// Active merges in merges-text form (`B:E,B:E:op`) (original indices, inclusive).
    pub merges: String,
    /// Effective merges in the order they apply (indices of the model compressed so far).
    pub canonical: Vec<Span>,
    /// The operator of merges that name none.
    pub merge_op: MergeOp,
    pub keep_norms: bool,
    pub remaining_layers: usize,
    #[serde(default)]
    pub calibration: Option<CalibrationIdentity>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub fitness: Option<RecipeScores>,
    /// Where the recipe came from: a run folder and front position, a baseline, a command.
    #[serde(default)]
    pub origin: String,
    /// Healing and the calibration samples it is fitted on (so the healed model can be
    /// built again anywhere); absent: not healed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal: Option<super::variant::Healing>,
    /// Perplexity on the search run's held-out validation text, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_perplexity: Option<f64>,
    /// The baseline method that found the plan, for recipes a baseline wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<crate::search::baselines::BaselineMethod>,
}

impl Recipe {
    /// A recipe for `plan` on the model `model`.
    pub fn new(model: ModelIdentity, plan: &Plan, merge_op: MergeOp, settings: MergeSettings) -> Self {
        let genotype = plan.to_genotype();
        Recipe {
            format: RECIPE_FORMAT.into(),
            version: RECIPE_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            architecture: model.architecture.clone(),
            model,
            genotype,
            merges: plan.merges_text_with_ops(merge_op),
            canonical: plan.canonical.clone(),
            merge_op,
            keep_norms: settings.keep_base_norms,
            remaining_layers: plan.remaining(),
            calibration: None,
            seed: None,
            fitness: None,
            origin: String::new(),
            heal: None,
            validation_perplexity: None,
            method: None,
        }
    }

    /// The merge settings the recipe was built with.
    pub fn settings(&self) -> MergeSettings {
        MergeSettings { keep_base_norms: self.keep_norms }
    }

    /// Read and check a recipe file: format, version, and that its genotype decodes to
    /// the canonical form it records.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(RECIPE_FORMAT) {
            return Err(Error::format(path, format!("not a recipe (no \"format\": \"{RECIPE_FORMAT}\")")));
        }
        let r: Recipe = serde_json::from_value(v).map_err(|e| Error::format(path, format!("not a valid recipe: {e}")))?;
        if r.version > RECIPE_VERSION {
            return Err(Error::format(
                path,
                format!("recipe version {} is newer than this tool reads ({RECIPE_VERSION})", r.version),
            ));
        }
        r.check().map_err(|m| Error::format(path, m))?;
        let plan = r.plan_unchecked().map_err(|e| Error::format(path, e.to_string()))?;
        if plan.canonical != r.canonical {
            return Err(Error::format(path, "the genotype does not decode to the recorded canonical merges"));
        }
        if plan.remaining() != r.remaining_layers {
            return Err(Error::format(path, "remaining_layers does not match the merges"));
        }
        Ok(r)
    }

    /// Write the recipe (whole or not at all). An existing file is kept unless `force`.
    pub fn save(&self, path: &Path, force: bool) -> Result<()> {
        refuse_existing(path, force)?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::format(path, e.to_string()))?;
        write_atomic(path, &text)
    }

    /// The checks that come before anything is built from the recipe's numbers.
    fn check(&self) -> crate::limits::Check {
        use crate::limits::{field, number, token_samples};
        field("model", self.model.check())?;
        if self.genotype.len() > self.model.layers {
            return Err(format!("genotype: {} triples for a model of {} layers", self.genotype.len(), self.model.layers));
        }
        if let Some(h) = &self.heal {
            token_samples("heal.calibration.samples", &h.calibration.samples, &h.calibration.hash, None)
                .map_err(|m| if m.starts_with("hash") { format!("heal.calibration.{m}") } else { m })?;
        }
        if let Some(v) = self.validation_perplexity {
            number("validation_perplexity", v)?;
        }
        Ok(())
    }

    fn plan_unchecked(&self) -> Result<Plan> {
        Plan::from_triples(
            &self.genotype.iter().filter(|t| t.active).copied().collect::<Vec<_>>(),
            self.model.layers,
            self.merge_op,
        )
    }

    /// Check that the recipe belongs to the opened model: the same content hash, or with
    /// `any_model`, at least the same architecture and layer count.
    pub fn check_model(&self, files: &ModelFiles, sha256: &str, any_model: bool) -> Result<()> {
        let cfg = &files.config;
        if cfg.arch.name() != self.architecture || cfg.num_layers != self.model.layers {
            return Err(Error::Invalid(format!(
                "this recipe is for a {} model of {} layers ({}); {} is a {} model of {} layers",
                self.architecture,
                self.model.layers,
                self.model.path.display(),
                files.path.display(),
                cfg.arch.name(),
                cfg.num_layers
            )));
        }
        if sha256 != self.model.sha256 && !any_model {
            return Err(Error::OtherModel { message: format!(
                "this recipe was made for another model file: {} (sha256 {}…), not {} (sha256 {}…)",
                self.model.path.display(),
                crate::util::short_hash(&self.model.sha256),
                files.path.display(),
                crate::util::short_hash(&sha256)
            ) });
        }
        Ok(())
    }

    /// The plan this recipe builds.
    pub fn plan(&self) -> Result<Plan> {
        self.plan_unchecked()
    }
}

impl Recipe {
    /// A recipe for a solution of a search run (a front entry or a baseline): its plan,
    /// scores, and the run's model, calibration and seed.
    /// Healed as [`super::Variant::from_run`] heals it.
    pub fn from_run(dir: &Path, info: &RunInfo, result: &FitnessResult, healed: bool, origin: String) -> Result<Self> {
        let variant = super::Variant::from_run(dir, info, result, healed, origin.clone())?;
        let mut r = variant.recipe(info.model.clone());
        r.calibration = Some(CalibrationIdentity {
            hash: info.calibration_hash.clone(),
            source: info.calibration_source.clone(),
            samples: None,
            tokens: None,
        });
        r.seed = Some(info.settings.seed);
        r.fitness = Some(RecipeScores::from(result));
        r.origin = origin;
        Ok(r)
    }
}

/// The plan a scored solution was evaluated as.
pub fn plan_of(result: &FitnessResult) -> Plan {
    Plan { num_layers: result.psi.len(), canonical: result.canonical.clone(), psi: result.psi.clone() }
}

/// Refuse to replace an existing file or folder unless `force`.
pub fn refuse_existing(path: &Path, force: bool) -> Result<()> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(Error::OutputExists { path: path.to_path_buf() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ModelIdentity {
        ModelIdentity {
            path: "/models/m.gguf".into(),
            sha256: "ab".repeat(32),
            architecture: "llama".into(),
            layers: 12,
        }
    }

    #[test]
    fn recipe_roundtrips_and_rebuilds_its_plan() {
        let triples = Plan::parse_merges("2:4,7:9:mean,3:8").unwrap();
        let plan = Plan::from_triples(&triples, 12, MergeOp::KeepFirst).unwrap();
        let r = Recipe::new(identity(), &plan, MergeOp::KeepFirst, MergeSettings::default());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        r.save(&p, false).unwrap();
        let back = Recipe::load(&p).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.plan().unwrap(), plan);
        // an existing file is kept without force
        let e = r.save(&p, false).unwrap_err();
        assert!(matches!(e, Error::OutputExists { .. }), "{e}");
        r.save(&p, true).unwrap();
    }

    #[test]
    fn tampered_recipe_is_refused() {
        let plan = Plan::from_ranges(&[(2, 5)], 12, MergeOp::KeepFirst).unwrap();
        let mut r = Recipe::new(identity(), &plan, MergeOp::KeepFirst, MergeSettings::default());
        r.remaining_layers = 11;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        r.save(&p, false).unwrap();
        let e = Recipe::load(&p).unwrap_err();
        assert!(e.to_string().contains("remaining_layers"), "{e}");
        std::fs::write(&p, "{\"x\": 1}").unwrap();
        assert!(Recipe::load(&p).unwrap_err().to_string().contains("not a recipe"));
    }

    #[test]
    fn hostile_recipes_are_refused_naming_the_field() {
        let plan = Plan::from_ranges(&[(2, 5)], 12, MergeOp::KeepFirst).unwrap();
        let r = Recipe::new(identity(), &plan, MergeOp::KeepFirst, MergeSettings::default());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        type Change = fn(&mut serde_json::Value);
        let cases: Vec<(Change, &str)> = vec![
            (|v| v["model"]["layers"] = serde_json::json!(1u64 << 62), "model.layers"),
            (|v| v["model"]["layers"] = serde_json::json!(1_000_000_000u64), "model.layers"),
            (|v| v["model"]["sha256"] = serde_json::json!("abc"), "model.sha256"),
            (|v| v["model"]["sha256"] = serde_json::json!("ü".repeat(40)), "model.sha256"),
            (|v| v["genotype"] = serde_json::json!(vec![serde_json::json!({"b": 0, "e": 0, "active": false}); 13]), "genotype"),
            (|v| v["genotype"][0]["e"] = serde_json::json!(1u64 << 40), "out of range"),
            (|v| v["canonical"][0]["ce"] = serde_json::json!(9), "canonical"),
            (|v| v["validation_perplexity"] = serde_json::json!(null), ""),
        ];
        for (change, want) in cases {
            let mut v = serde_json::to_value(&r).unwrap();
            change(&mut v);
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
            match Recipe::load(&p) {
                Ok(_) => assert!(want.is_empty(), "{want}: loaded"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(!want.is_empty() && e.contains("r.json") && e.contains(want), "{want}: {e}");
                }
            }
        }
    }
}
