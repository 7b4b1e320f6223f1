//! `gelaco baseline`: LaCo, ShortGPT, SLEB and EvoPress on the same calibration and
//! objective code as the search, with progress bars and recipes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::fitness::{CalibArgs, MergeOpArg};
use gelaco::backend::DeviceChoice;
use gelaco::collapse::MergeSettings;
use gelaco::export::Recipe;
use gelaco::fitness::FitnessEngine;
use gelaco::run::store;
use gelaco::fitness::Objective;
use gelaco::search::baselines::{self, BaselineSolution, LacoSettings};
use gelaco::search::depth::{self, EvoPressSettings};
use gelaco::util::Choice;

#[derive(Subcommand, Debug)]
pub enum BaselineCommand {
    /// LaCo: greedy merging from the top down while final hidden states stay similar.
    Laco {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        calib: CalibArgs,
        /// Layers merged at once (C).
        #[arg(long, default_value_t = LacoSettings::default().window)]
        window: usize,
        /// Hidden-state cosine a merge must keep (T).
        #[arg(long, default_value_t = LacoSettings::default().threshold)]
        threshold: f64,
        /// Layers skipped after an accepted merge (I).
        #[arg(long, default_value_t = LacoSettings::default().interval)]
        interval: usize,
        /// Lowest layer a merge may start at.
        #[arg(long, default_value_t = LacoSettings::default().lowest)]
        lowest: usize,
        /// LaCo's operator is rdsc.
        #[arg(long, value_enum, default_value_t = MergeOpArg::Rdsc)]
        merge_op: MergeOpArg,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// SLEB: remove one layer at a time, each time the one whose removal gives the lowest
    /// calibration NLL; one greedy pass gives every size.
    Sleb(RemovalArgs),
    /// EvoPress: a (1+lambda) evolutionary search over which layers to drop, by KL of the
    /// next-token distributions with multi-step selection; one search per size.
    Evopress {
        #[command(flatten)]
        removal: RemovalArgs,
        /// Offspring per generation (lambda).
        #[arg(long, default_value_t = EvoPressSettings::default().offspring)]
        offspring: usize,
        #[arg(long, default_value_t = EvoPressSettings::default().generations)]
        generations: usize,
        /// Selection steps before the full calibration set, TOKENS:KEEP,... (KEEP: the share
        /// of candidates scored on more tokens).
        #[arg(long, default_value_t = fidelity_text(&EvoPressSettings::default().fidelity))]
        fidelity: String,
    },
    /// ShortGPT: remove the layers of lowest Block Influence.
    Shortgpt(RemovalArgs),
}

/// What the layer-removal baselines share: the model, calibration, sizes and output.
#[derive(Args, Debug)]
pub struct RemovalArgs {
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    calib: CalibArgs,
    /// Layers to remove; several values give several solutions ("3,6,9,12").
    #[arg(long, value_delimiter = ',', required = true)]
    remove: Vec<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write each solution as a recipe in this folder.
    #[arg(long)]
    recipes: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

impl RemovalArgs {
    /// The loaded model and the engine that scores the solutions (unhealed, as published).
    fn open(&self, device: DeviceChoice) -> Result<(gelaco::model::LoadedModel, FitnessEngine)> {
        let m = super::load(&self.model, device)?;
        let cal = self.calib.load(&m, self.seed)?;
        let engine = FitnessEngine::new(&m.model, cal, baseline_options(&self.calib))?;
        Ok((m, engine))
    }

    /// Print the solutions and write their recipes when asked.
    fn report(&self, m: &gelaco::model::LoadedModel, sols: &[BaselineSolution]) -> Result<()> {
        for s in sols {
            print_baseline(s, self.json)?;
        }
        match &self.recipes {
            Some(dir) => save_baseline_recipes(dir, m, sols),
            None => Ok(()),
        }
    }
}

/// Engine settings of a baseline command: the methods as published, unhealed (recipes
/// and fitness alike).
fn baseline_options(calib: &CalibArgs) -> gelaco::fitness::EngineOptions {
    gelaco::fitness::EngineOptions { heal: gelaco::fitness::Heal::None, ..calib.engine_options(MergeSettings::default()) }
}

/// `TOKENS:KEEP,...` of a selection schedule.
fn fidelity_text(steps: &[(usize, f64)]) -> String {
    steps.iter().map(|(t, k)| format!("{t}:{k}")).collect::<Vec<_>>().join(",")
}

fn parse_fidelity(text: &str) -> Result<Vec<(usize, f64)>> {
    let bad = || gelaco::Error::Invalid(format!("--fidelity '{text}' is not TOKENS:KEEP,... (e.g. 512:0.125)"));
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (t, k) = s.split_once(':').ok_or_else(bad)?;
            let t: usize = t.trim().parse().map_err(|_| bad())?;
            let k: f64 = k.trim().parse().map_err(|_| bad())?;
            if t == 0 || !(k > 0.0 && k <= 1.0) {
                return Err(bad().into());
            }
            Ok((t, k))
        })
        .collect()
}

/// Run a baseline with a progress bar over its planned evaluations; with `--json`, JSON
/// progress lines on stderr instead (`{"event":"progress","method",...}`, at most one a
/// second, and the last), so that a script keeps stdout for the solutions and can still
/// follow a run of an hour.
fn with_bar<T>(what: &str, json: bool, run: impl FnOnce(depth::Progress) -> gelaco::Result<T>) -> Result<T> {
    let bar = if json {
        None
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template("{msg} {bar:24} {pos}/{len} evaluations  ETA {eta}").context("progress template")?);
        bar.set_message(what.to_string());
        Some(bar)
    };
    let start = Instant::now();
    let mut last_line: Option<(Instant, usize)> = None;
    let out = run(&mut |done, planned| {
        match &bar {
            Some(b) => {
                b.set_length(planned as u64);
                b.set_position(done as u64);
            }
            None => {
                let due = last_line.is_none_or(|(at, shown)| done != shown && (done >= planned || at.elapsed() >= PROGRESS_EVERY));
                if due {
                    eprintln!("{}", progress_line(what, done, planned, start.elapsed()));
                    last_line = Some((Instant::now(), done));
                }
            }
        }
        true
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(out?)
}

/// The shortest interval between two JSON progress lines of a baseline.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One JSON progress line: evaluations done of planned, elapsed seconds and an estimate of
/// the seconds left at the rate so far (absent before the first evaluation).
fn progress_line(method: &str, done: usize, planned: usize, elapsed: Duration) -> serde_json::Value {
    let seconds = elapsed.as_secs_f64();
    let eta = (done > 0).then(|| seconds / done as f64 * planned.saturating_sub(done) as f64);
    serde_json::json!({
        "event": "progress",
        "method": method,
        "evaluations": done,
        "planned": planned,
        "elapsed_seconds": seconds,
        "eta_seconds": eta,
    })
}

/// Write a baseline's solutions as recipes.
fn save_baseline_recipes(dir: &Path, m: &gelaco::model::LoadedModel, sols: &[BaselineSolution]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| gelaco::Error::io(dir, e))?;
    let identity = store::ModelIdentity::of(&m.files)?;
    for s in sols {
        let mut r = Recipe::new(identity.clone(), &s.plan, gelaco::collapse::MergeOp::KeepFirst, MergeSettings::default());
        r.fitness = Some(gelaco::export::recipe::RecipeScores::from(&s.result));
        r.origin = s.method.clone();
        r.method = s.kind();
        let name = format!("{}-{}layers.json", s.kind().map_or("baseline", |k| k.name()), s.result.remaining_layers);
        r.save(&dir.join(name), true)?;
    }
    eprintln!("{} recipe{} written to {}", sols.len(), if sols.len() == 1 { "" } else { "s" }, dir.display());
    Ok(())
}

fn print_baseline(sol: &BaselineSolution, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&serde_json::json!({
            "method": sol.method,
            "objective": sol.result.objective.name(),
            "kl": sol.result.kl,
            "nll": sol.result.nll,
            "removed": sol.plan.removed_layers(),
            "merges": sol.merges,
            "canonical": sol.plan.canonical,
            "fitness": sol.result.fitness,
            "attention": sol.result.attention,
            "ffn": sol.result.ffn,
            "hidden": sol.result.hidden,
            "compression": sol.result.compression,
            "params_removed": sol.result.params_removed,
            "remaining_layers": sol.result.remaining_layers,
            "psi": sol.result.psi,
        }))?);
    } else {
        println!(
            "{:<32} fitness {:.4}  compression {:.1}%  layers {}  removed {}  merges {}",
            sol.method,
            sol.result.fitness,
            100.0 * sol.result.compression,
            sol.result.remaining_layers,
            sol.plan.removed_text(),
            if sol.merges.is_empty() { "(none)" } else { &sol.merges }
        );
    }
    Ok(())
}

pub fn baseline(cmd: BaselineCommand, device: DeviceChoice) -> Result<()> {
    match cmd {
        BaselineCommand::Laco { model, calib, window, threshold, interval, lowest, merge_op, seed, json } => {
            let op = merge_op.op().ok_or_else(|| gelaco::Error::Invalid("LaCo needs one operator, not auto".into()))?;
            let m = super::load(&model, device)?;
            let cal = calib.load(&m, seed)?;
            let engine = FitnessEngine::new(&m.model, cal, baseline_options(&calib))?;
            let s = LacoSettings { window, threshold, interval, lowest, op };
            print_baseline(&baselines::laco(&engine, &s)?, json)
        }
        BaselineCommand::Sleb(r) => {
            let (m, score) = r.open(device)?;
            let nll = score.under(Objective::Nll)?;
            let sols = with_bar("SLEB", r.json, |progress| depth::sleb(&nll, &score, &r.remove, progress))?;
            r.report(&m, &sols)
        }
        BaselineCommand::Evopress { removal: r, offspring, generations, fidelity } => {
            let settings = EvoPressSettings { offspring, generations, fidelity: parse_fidelity(&fidelity)?, seed: r.seed };
            let (m, score) = r.open(device)?;
            // the selection's first step in a chunk of its own, so that it costs its tokens
            let first = settings.fidelity.first().map(|&(tokens, _)| tokens);
            let options = gelaco::fitness::EngineOptions {
                objective: Objective::Kl,
                heal: gelaco::fitness::Heal::None,
                first_chunk_tokens: first,
                ..score.options
            };
            let kl = FitnessEngine::new(&m.model, score.calibration.clone(), options)?;
            // one search per size, each reported as it ends: a run stopped later keeps them
            for &size in &r.remove {
                let sol = with_bar(&format!("EvoPress r={size}"), r.json, |progress| depth::evopress(&kl, &score, size, &settings, progress))?;
                r.report(&m, std::slice::from_ref(&sol))?;
            }
            Ok(())
        }
        BaselineCommand::Shortgpt(r) => {
            let (m, engine) = r.open(device)?;
            let influence = baselines::block_influence(&m.model, &engine.calibration.samples, r.calib.batch_size)?;
            if !r.json {
                let shown: Vec<String> = influence.iter().map(|b| format!("{b:.3}")).collect();
                println!("block influence: {}", shown.join(" "));
            }
            let sols = r.remove.iter().map(|&k| baselines::shortgpt(&engine, &influence, k)).collect::<gelaco::Result<Vec<_>>>()?;
            r.report(&m, &sols)
        }
    }
}
