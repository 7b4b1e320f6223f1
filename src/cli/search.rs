//! `gelaco search`, `gelaco resume`, `gelaco front` and `gelaco baseline`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::fitness::{CalibArgs, MergeOpArg};
use gelaco::backend::DeviceChoice;
use gelaco::collapse::MergeSettings;
use gelaco::export::Recipe;
use gelaco::export::recipe::plan_of;
use gelaco::fitness::FitnessEngine;
use gelaco::run::FrontEntry;
use gelaco::run::job::{self, Event, JobHandle, JobSpec};
use gelaco::run::store;
use gelaco::search::baselines::{self, BaselineSolution, LacoSettings};
use gelaco::search::problem::Mode;
use gelaco::search::{Init, SearchSettings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// NSGA-II on (fitness, compression): a Pareto front.
    Nsga2,
    /// The best model of one size (--target-removed or --target-ratio).
    Single,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    calib: CalibArgs,
    #[arg(long, value_enum, default_value_t = ModeArg::Nsga2)]
    mode: ModeArg,
    /// Layers to remove (single mode).
    #[arg(long)]
    target_removed: Option<usize>,
    /// Share of layers to remove (single mode), e.g. 0.25.
    #[arg(long)]
    target_ratio: Option<f64>,
    #[arg(long, default_value_t = 200)]
    population: usize,
    /// Evaluation budget (each offspring counts, cache hits included).
    #[arg(long, default_value_t = 30_000)]
    evaluations: usize,
    /// Stop after this many generations.
    #[arg(long)]
    generations: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    max_seconds: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// First population: uniform (paper), plans in a compression band (banded), or the
    /// baselines' solutions plus banded plans (warm).
    #[arg(long, value_enum, default_value_t = Init::Banded)]
    init: Init,
    /// Compression band of banded/warm plans, "LO,HI".
    #[arg(long, default_value = "0.05,0.5")]
    band: String,
    #[arg(long, default_value_t = 0.9)]
    crossover_probability: f64,
    #[arg(long, default_value_t = 20.0)]
    crossover_eta: f64,
    /// Per-gene mutation probability (default 1/(3L)).
    #[arg(long)]
    mutation_probability: Option<f64>,
    #[arg(long, default_value_t = 20.0)]
    mutation_eta: f64,
    /// Merge operator; `auto` gives every merge its own operator gene.
    #[arg(long, value_enum, default_value_t = MergeOpArg::default_arg())]
    merge_op: MergeOpArg,
    /// Leave the RMSNorm weights of the base layer unmerged.
    #[arg(long)]
    keep_norms: bool,
    /// Also compute the LaCo and ShortGPT baselines (always done with --init warm).
    #[arg(long)]
    baselines: bool,
    /// Run folder (must be new or empty).
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Stream one JSON event per line on stdout instead of a progress bar.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The run folder to continue.
    dir: PathBuf,
    /// The model, when it has moved since the run started (it must be the same file).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A new evaluation budget.
    #[arg(long)]
    evaluations: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct FrontArgs {
    dir: PathBuf,
    /// Write every front solution and baseline as a recipe file into this folder.
    #[arg(long)]
    recipes: Option<PathBuf>,
    /// Replace existing recipe files.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum BaselineCommand {
    /// LaCo: greedy merging from the top down while final hidden states stay similar.
    Laco {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        calib: CalibArgs,
        /// Layers merged at once (C).
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Hidden-state cosine a merge must keep (T).
        #[arg(long, default_value_t = 0.65)]
        threshold: f64,
        /// Layers skipped after an accepted merge (I).
        #[arg(long, default_value_t = 2)]
        interval: usize,
        /// Lowest layer a merge may start at.
        #[arg(long, default_value_t = 1)]
        lowest: usize,
        /// LaCo's operator is rdsc.
        #[arg(long, value_enum, default_value_t = MergeOpArg::Rdsc)]
        merge_op: MergeOpArg,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// ShortGPT: remove the layers of lowest Block Influence.
    Shortgpt {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        calib: CalibArgs,
        /// Layers to remove; several values give several solutions ("4,8").
        #[arg(long, value_delimiter = ',', required = true)]
        remove: Vec<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
}

fn parse_band(text: &str) -> Result<(f64, f64)> {
    let bad = || gelaco::Error::Invalid(format!("--band '{text}' is not LO,HI (e.g. 0.05,0.5)"));
    let (a, b) = text.split_once(',').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

/// Layer count of a model without loading its weights.
fn layers_of(model: &Path) -> Result<usize> {
    Ok(gelaco::model::ModelFiles::open(model)?.config.num_layers)
}

pub fn search(a: SearchArgs, device: DeviceChoice) -> Result<()> {
    let layers = layers_of(&a.model)?;
    let mode = match a.mode {
        ModeArg::Nsga2 => {
            if a.target_removed.is_some() || a.target_ratio.is_some() {
                return Err(gelaco::Error::Invalid("--target-removed and --target-ratio need --mode single".into()).into());
            }
            Mode::Pareto
        }
        ModeArg::Single => {
            let target = match (a.target_removed, a.target_ratio) {
                (Some(r), None) => r,
                (None, Some(x)) if (0.0..1.0).contains(&x) => (x * layers as f64).round() as usize,
                (None, Some(x)) => return Err(gelaco::Error::Invalid(format!("--target-ratio {x} must be in [0, 1)")).into()),
                _ => return Err(gelaco::Error::Invalid("--mode single needs one of --target-removed or --target-ratio".into()).into()),
            };
            Mode::Single { target_removed: target }
        }
    };
    let settings = SearchSettings {
        mode,
        population: a.population,
        evaluations: a.evaluations,
        generations: a.generations,
        max_seconds: a.max_seconds,
        seed: a.seed,
        init: a.init,
        band: parse_band(&a.band)?,
        crossover_probability: a.crossover_probability,
        crossover_eta: a.crossover_eta,
        mutation_probability: a.mutation_probability,
        mutation_eta: a.mutation_eta,
        merge_op: a.merge_op.op(),
        keep_norms: a.keep_norms,
    };
    settings.validate(layers)?;
    let spec = JobSpec::New {
        model: a.model.clone(),
        device,
        calib: gelaco::fitness::calibration::CalibSource::parse(&a.calib.calib),
        calib_options: a.calib.options(a.seed),
        engine: a.calib.engine_options(MergeSettings { keep_base_norms: a.keep_norms }),
        settings,
        out: a.out.clone(),
        baselines: a.baselines,
    };
    drive(job::spawn(spec, None), a.json)
}

pub fn resume(a: ResumeArgs, device: DeviceChoice) -> Result<()> {
    let spec = JobSpec::Resume { dir: a.dir.clone(), device, model: a.model.clone(), evaluations: a.evaluations };
    drive(job::spawn(spec, None), a.json)
}

/// Follow a job: a progress bar (or JSON lines), Ctrl-C stops it cleanly.
fn drive(handle: JobHandle, json: bool) -> Result<()> {
    let flag = handle.stop_flag();
    let first = std::sync::atomic::AtomicBool::new(false);
    let _ = ctrlc::set_handler(move || {
        if first.swap(true, Ordering::SeqCst) {
            // a second Ctrl-C: leave at once (the run folder is consistent at every line)
            std::process::exit(130);
        }
        flag.store(true, Ordering::SeqCst);
    });
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:24} {pos}/{len} evals  {msg}  ETA {eta}").context("progress template")?,
    );
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut failure = None;
    let mut final_front = None;
    let mut baselines = Vec::new();
    let mut run_dir = None;
    for event in handle.events.iter() {
        if json {
            println!("{}", serde_json::to_string(&event)?);
        }
        match event {
            Event::Started { run_dir: d, device, layers, calibration_hash, resumed } => {
                if !json {
                    eprintln!(
                        "{} {} ({} layers) on {device}; calibration {}",
                        if resumed { "resuming" } else { "searching" },
                        d.display(),
                        layers,
                        &calibration_hash[..16]
                    );
                }
                run_dir = Some(d);
            }
            Event::Baselines { solutions } => baselines = solutions,
            Event::Stage { message } => {
                if !json {
                    eprintln!("{message}...");
                }
            }
            Event::Progress(p) => {
                bar.set_length(p.budget as u64);
                bar.set_position(p.evaluations as u64);
                bar.set_message(format!(
                    "gen {}  {:.2} eval/s  cache hits {}  best {:.4}  front {}  HV {:.4}{}",
                    p.generation,
                    p.rate,
                    p.cache_hits,
                    p.best_fitness,
                    p.front_size,
                    p.hypervolume,
                    if p.paused { "  (paused)" } else { "" }
                ));
            }
            Event::Done { reason, front, run_dir: d } => {
                bar.finish_and_clear();
                if !json {
                    eprintln!("search ended ({reason:?}); run folder {}", d.display());
                }
                final_front = Some(front);
            }
            Event::Failed { error, .. } => {
                bar.finish_and_clear();
                failure = Some(error);
            }
            Event::Evaluated { .. } | Event::Generation { .. } => {}
        }
    }
    handle.join();
    if let Some(e) = failure {
        anyhow::bail!(e);
    }
    if let (false, Some(front)) = (json, final_front) {
        print_front(&front, &baselines);
        if let Some(d) = run_dir {
            eprintln!("(reprint with `gelaco front {}`)", d.display());
        }
    }
    Ok(())
}

fn print_front(front: &[FrontEntry], baselines: &[BaselineSolution]) {
    println!("{:>9} {:>11} {:>7} {:>9}  merges", "fitness", "compression", "layers", "params");
    for f in front {
        let r = &f.result;
        println!(
            "{:>9.4} {:>10.1}% {:>7} {:>8.1}%  {}",
            r.fitness,
            100.0 * r.compression,
            r.remaining_layers,
            100.0 * r.params_removed,
            if f.merges.is_empty() { "(none)" } else { &f.merges }
        );
    }
    if !baselines.is_empty() {
        println!("\nbaselines");
        for b in baselines {
            println!(
                "{:>9.4} {:>10.1}% {:>7} {:>8.1}%  {}  [{}]",
                b.result.fitness,
                100.0 * b.result.compression,
                b.result.remaining_layers,
                100.0 * b.result.params_removed,
                b.merges,
                b.method
            );
        }
    }
}

pub fn front(a: FrontArgs) -> Result<()> {
    let front = store::read_front(&a.dir)?;
    let baselines = store::read_baselines(&a.dir)?;
    if let Some(out) = &a.recipes {
        let info = store::read_info(&a.dir)?;
        std::fs::create_dir_all(out).map_err(|e| gelaco::Error::io(out, e))?;
        let mut written = 0;
        for (i, e) in front.iter().enumerate() {
            let origin = format!("{} front #{i}", a.dir.display());
            let r = Recipe::from_run(&info, &plan_of(&e.result), &e.result, origin);
            r.save(&out.join(format!("front-{i:02}-{}layers.json", e.result.remaining_layers)), a.force)?;
            written += 1;
        }
        for b in &baselines {
            let name: String = b.method.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
            let name = name.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-");
            let origin = format!("{} baseline {}", a.dir.display(), b.method);
            let r = Recipe::from_run(&info, &b.plan, &b.result, origin);
            r.save(&out.join(format!("baseline-{}.json", name.trim_matches('-'))), a.force)?;
            written += 1;
        }
        eprintln!("{written} recipes written to {}", out.display());
    }
    if a.json {
        super::print_json(&serde_json::json!({"front": front, "baselines": baselines, "run": store::read_info(&a.dir)?}))?;
    } else {
        let info = store::read_info(&a.dir)?;
        println!("{} ({:?}, {} evaluations budget, seed {})", a.dir.display(), info.status, info.settings.evaluations, info.settings.seed);
        print_front(&front, &baselines);
    }
    Ok(())
}

fn print_baseline(sol: &BaselineSolution, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&serde_json::json!({
            "method": sol.method,
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
            "{:<32} fitness {:.4}  compression {:.1}%  layers {}  merges {}",
            sol.method,
            sol.result.fitness,
            100.0 * sol.result.compression,
            sol.result.remaining_layers,
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
            let engine = FitnessEngine::new(&m.model, cal, calib.engine_options(MergeSettings::default()))?;
            let s = LacoSettings { window, threshold, interval, lowest, op };
            print_baseline(&baselines::laco(&engine, &s)?, json)
        }
        BaselineCommand::Shortgpt { model, calib, remove, seed, json } => {
            let m = super::load(&model, device)?;
            let cal = calib.load(&m, seed)?;
            let engine = FitnessEngine::new(&m.model, cal, calib.engine_options(MergeSettings::default()))?;
            let influence = baselines::block_influence(&m.model, &engine.calibration.samples, calib.batch_size)?;
            if !json {
                let shown: Vec<String> = influence.iter().map(|b| format!("{b:.3}")).collect();
                println!("block influence: {}", shown.join(" "));
            }
            for r in remove {
                print_baseline(&baselines::shortgpt(&engine, &influence, r)?, json)?;
            }
            Ok(())
        }
    }
}
