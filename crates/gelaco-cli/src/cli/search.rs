//! `gelaco search`, `gelaco resume` and `gelaco front`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::words::choice;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::fitness::{CalibArgs, MergeOpArg};
use gelaco::backend::DeviceChoice;
use gelaco::collapse::MergeSettings;
use gelaco::eval::validation::{ValidationOptions, ValidationSource};
use gelaco::export::Recipe;
use gelaco::export::recipe::plan_of;
use gelaco::fitness::Heal;
use gelaco::run::FrontEntry;
use gelaco::run::heal_picks::HealPicks;
use gelaco::run::job::{self, Event, JobHandle, JobSpec};
use gelaco::run::store;
use gelaco::search::baselines::BaselineSolution;
use gelaco::search::problem::Mode;
use gelaco::search::{Init, SearchSettings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// NSGA-II on (fitness, compression): a Pareto front.
    Nsga2,
    /// The best model of one size (--target-removed or --target-ratio).
    Single,
}

/// `--validation`: `none`, `rest` (for a file calibration; none for `--calib self`), or a file.
fn validation_source(text: &str, calib: &str) -> Option<ValidationSource> {
    match text {
        "none" => None,
        "rest" if calib == "self" => None,
        "rest" => Some(ValidationSource::Rest),
        path => Some(ValidationSource::File(PathBuf::from(path))),
    }
}

/// The core's default compression band, as `LO,HI`.
fn default_band() -> String {
    let (lo, hi) = SearchSettings::default().band;
    format!("{lo},{hi}")
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    calib: CalibArgs,
    #[command(flatten)]
    nats: super::worker::NatsArgs,
    #[arg(long, value_enum, default_value_t = ModeArg::Nsga2)]
    mode: ModeArg,
    /// Layers to remove (single mode).
    #[arg(long)]
    target_removed: Option<usize>,
    /// Share of layers to remove (single mode), e.g. 0.25.
    #[arg(long)]
    target_ratio: Option<f64>,
    #[arg(long, default_value_t = SearchSettings::default().population)]
    population: usize,
    /// Evaluation budget (each offspring counts, cache hits included).
    #[arg(long, default_value_t = SearchSettings::default().evaluations)]
    evaluations: usize,
    /// Stop after this many generations.
    #[arg(long)]
    generations: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    max_seconds: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// First population: ShortGPT's plans at sizes across the band plus banded plans
    /// (seeded), plans in a compression band (banded), uniform (paper), or the baselines'
    /// solutions plus banded plans (warm).
    #[arg(long, value_parser = choice::<Init>(), default_value_t = SearchSettings::default().init)]
    init: Init,
    /// Compression band of seeded, banded and warm plans, "LO,HI".
    #[arg(long, default_value_t = default_band())]
    band: String,
    #[arg(long, default_value_t = SearchSettings::default().crossover_probability)]
    crossover_probability: f64,
    #[arg(long, default_value_t = SearchSettings::default().crossover_eta)]
    crossover_eta: f64,
    /// Per-gene mutation probability (default 1/(3L)).
    #[arg(long)]
    mutation_probability: Option<f64>,
    #[arg(long, default_value_t = SearchSettings::default().mutation_eta)]
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
    /// A recipe of this model to take in as a baseline (repeatable): scored, validated and
    /// plotted with the others, and a starting point of --init warm or seeded. `gelaco
    /// baseline sleb|evopress|shortgpt --recipes DIR` writes them.
    #[arg(long = "import", value_name = "RECIPE")]
    import: Vec<PathBuf>,
    /// Held-out text that picks the recommended model of each size, never optimised:
    /// `rest` (the calibration file's lines the calibration did not take; the default), a
    /// text file, or `none`.
    #[arg(long, default_value = "rest")]
    validation: String,
    /// Validation windows scored per model.
    #[arg(long, default_value_t = ValidationOptions::default().windows)]
    validation_windows: usize,
    /// Tokens per validation window.
    #[arg(long, default_value_t = ValidationOptions::default().window)]
    validation_window: usize,
    /// Heal the best plans of each size (by validation perplexity) for the recommendation:
    /// a linear map per collapsed group fitted on calibration text that holds no validation
    /// text, kept where the healed model validates better. The search itself is not
    /// healed (see --heal). Needs a validation text.
    #[arg(long, value_parser = choice::<Heal>(), default_value_t = HealPicks::default().method)]
    heal_picks: Heal,
    /// Samples (of --max-tokens each) the picks are healed on, chosen as the calibration
    /// chooses its own (fewer when the text has fewer).
    #[arg(long, default_value_t = HealPicks::default().samples)]
    heal_samples: usize,
    /// The best plans of each size are healed on the first N of those samples first, and
    /// the one that then validates best on all of them (a fit costs in proportion to its
    /// text); 0 heals every one on all of them.
    #[arg(long, value_name = "N", default_value_t = HealPicks::default().screen)]
    heal_screen_samples: usize,
    /// How many plans of each size are healed, the best by validation perplexity unhealed
    /// (healing can reorder them).
    #[arg(long, value_name = "N", default_value_t = HealPicks::default().per_size)]
    heal_per_size: usize,
    /// Multi-fidelity selection: offspring scored on TOKENS calibration tokens first, the
    /// share KEEP going on, only full-set scores deciding survival ("256:0.25,full:1");
    /// "full:1" scores every offspring on the full set.
    #[arg(long, default_value = gelaco::search::DEFAULT_FIDELITY)]
    fidelity: String,
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
    #[command(flatten)]
    nats: super::worker::NatsArgs,
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
    super::note_model(&a.model);
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
        fidelity: Some(a.fidelity.clone()),
    };
    settings.validate(layers)?;
    let nats = a.nats.settings()?;
    let spec = JobSpec::New {
        model: a.model.clone(),
        device,
        memory_budget: super::memory_budget(),
        calib: gelaco::fitness::calibration::CalibSource::parse(&a.calib.calib),
        calib_options: a.calib.options(a.seed),
        engine: a.calib.engine_options(MergeSettings { keep_base_norms: a.keep_norms }),
        settings,
        out: a.out.clone(),
        baselines: a.baselines,
        validation: validation_source(&a.validation, &a.calib.calib)
            .map(|s| (s, ValidationOptions { window: a.validation_window, windows: a.validation_windows })),
        heal_picks: Some(HealPicks { method: a.heal_picks, samples: a.heal_samples, screen: a.heal_screen_samples, per_size: a.heal_per_size }),
        import: a.import.clone(),
    };
    drive(job::spawn_on(spec, nats, None), a.json)
}

pub fn resume(a: ResumeArgs, device: DeviceChoice) -> Result<()> {
    let nats = a.nats.settings()?;
    let spec = JobSpec::Resume { dir: a.dir.clone(), device, memory_budget: super::memory_budget(), model: a.model.clone(), evaluations: a.evaluations };
    drive(job::spawn_on(spec, nats, None), a.json)
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
                        gelaco::util::short_hash(&calibration_hash)
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
                    "gen {}  {:.2} eval/s  cache hits {}{}  best {:.4}  front {}  HV {:.4}{}",
                    p.generation,
                    p.rate,
                    p.cache_hits,
                    if p.screened > 0 { format!("  screened {}", p.screened) } else { String::new() },
                    p.best_fitness,
                    p.front_size,
                    p.hypervolume,
                    if p.paused { "  (paused)" } else { "" }
                ));
            }
            Event::Done { reason, front, candidates, run_dir: d } => {
                bar.finish_and_clear();
                if !json {
                    eprintln!("search ended ({reason:?}); run folder {}", d.display());
                }
                final_front = Some((front, candidates));
            }
            Event::Failed { error, .. } => {
                bar.finish_and_clear();
                failure = Some(std::sync::Arc::try_unwrap(error).unwrap_or_else(|shared| gelaco::Error::Invalid(shared.to_string())));
            }
            Event::Workers { workers } => {
                if !json {
                    bar.suspend(|| print_workers(&workers));
                }
            }
            Event::Evaluated { .. } | Event::Generation { .. } => {}
        }
    }
    handle.join();
    if let Some(e) = failure {
        return Err(e.into());
    }
    if let (false, Some((front, candidates))) = (json, final_front) {
        print_front(&front, &candidates, &baselines);
        if let Some(d) = run_dir {
            eprintln!("(reprint with `gelaco front {}`)", d.display());
        }
    }
    Ok(())
}

/// The workers of a distributed search, one line each.
fn print_workers(workers: &[gelaco::dist::WorkerStatus]) {
    eprintln!("workers: {}", if workers.is_empty() { "none connected".to_string() } else { workers.len().to_string() });
    for w in workers {
        eprintln!("  {} on {}: {}, {} evaluations, {:.2} eval/s{}", w.name, w.device, w.state, w.evaluations, w.rate,
            if w.refused.is_empty() { String::new() } else { format!("; refused {}", w.refused.join("; ")) });
    }
}

/// One table row: fitness, size, validation perplexity of the solution's model (`h`:
/// healed, `*`: recommended), removed layers in original indices, merges.
fn solution_row(r: &gelaco::fitness::FitnessResult, validation: Option<f64>, healed: bool, recommended: bool, merges: &str, note: &str) {
    let valid = validation.map_or("-".to_string(), |v| format!("{v:.2}{}{}", if healed { "h" } else { "" }, if recommended { "*" } else { " " }));
    println!(
        "{:>9.4} {:>10.1}% {:>7} {:>8.1}% {:>11}  {:<24} {}{note}",
        r.fitness,
        100.0 * r.compression,
        r.remaining_layers,
        100.0 * r.params_removed,
        valid,
        plan_of(r).removed_text(),
        if merges.is_empty() { "(none)" } else { merges }
    );
}

fn print_front(front: &[FrontEntry], candidates: &[FrontEntry], baselines: &[BaselineSolution]) {
    let header = || {
        println!("{:>9} {:>11} {:>7} {:>9} {:>11}  {:<24} merges", "fitness", "compression", "layers", "params", "valid ppl", "removed (original)")
    };
    header();
    for f in front {
        solution_row(&f.result, f.picked_perplexity(), f.healed(), f.recommended, &f.merges, "");
    }
    if !candidates.is_empty() {
        println!("\nother candidates (fittest of their size, off the front)");
        for f in candidates {
            solution_row(&f.result, f.picked_perplexity(), f.healed(), f.recommended, &f.merges, "");
        }
    }
    if !baselines.is_empty() {
        println!("\nbaselines");
        for b in baselines {
            solution_row(&b.result, b.picked_perplexity(), b.healed(), b.recommended, &b.merges, &format!("  [{}]", b.method));
        }
    }
    if front.iter().chain(candidates).any(|f| f.recommended) || baselines.iter().any(|b| b.recommended) {
        println!("\n* recommended: the lowest validation perplexity of its size");
    }
    if front.iter().chain(candidates).any(FrontEntry::healed) || baselines.iter().any(BaselineSolution::healed) {
        println!("h: healed (a linear map per collapsed group, fitted on text apart from the validation's); its recipe heals it");
    }
}

pub fn front(a: FrontArgs) -> Result<()> {
    let front = store::read_front(&a.dir)?;
    let candidates = store::read_candidates(&a.dir)?;
    let baselines = store::read_baselines(&a.dir)?;
    if let Some(out) = &a.recipes {
        let info = store::read_info(&a.dir)?;
        std::fs::create_dir_all(out).map_err(|e| gelaco::Error::io(out, e))?;
        let mut written = 0;
        let save = |r: &Recipe, name: String| r.save(&out.join(name), a.force);
        for (i, e) in front.iter().enumerate() {
            let origin = format!("{} front #{i}", a.dir.display());
            let mut r = Recipe::from_run(&a.dir, &info, &e.result, e.healed(), origin)?;
            r.validation_perplexity = e.picked_perplexity();
            save(&r, format!("front-{i:02}-{}layers.json", e.result.remaining_layers))?;
            if e.recommended {
                save(&r, format!("recommended-{}layers.json", e.result.remaining_layers))?;
                written += 1;
            }
            written += 1;
        }
        for (i, e) in candidates.iter().enumerate().filter(|(_, e)| e.recommended) {
            let origin = format!("{} candidate #{i}", a.dir.display());
            let mut r = Recipe::from_run(&a.dir, &info, &e.result, e.healed(), origin)?;
            r.validation_perplexity = e.picked_perplexity();
            save(&r, format!("recommended-{}layers.json", e.result.remaining_layers))?;
            written += 1;
        }
        for b in &baselines {
            let name: String = b.method.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
            let name = name.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-");
            let origin = format!("{} baseline {}", a.dir.display(), b.method);
            let mut r = Recipe::from_run(&a.dir, &info, &b.result, b.healed(), origin)?;
            r.validation_perplexity = b.picked_perplexity();
            save(&r, format!("baseline-{}.json", name.trim_matches('-')))?;
            if b.recommended {
                save(&r, format!("recommended-{}layers.json", b.result.remaining_layers))?;
                written += 1;
            }
            written += 1;
        }
        eprintln!("{written} recipes written to {}", out.display());
    }
    if a.json {
        super::print_json(&serde_json::json!({"front": front, "candidates": candidates, "baselines": baselines, "run": store::read_info(&a.dir)?}))?;
    } else {
        let info = store::read_info(&a.dir)?;
        println!("{} ({:?}, {} evaluations budget, seed {})", a.dir.display(), info.status, info.settings.evaluations, info.settings.seed);
        print_front(&front, &candidates, &baselines);
    }
    Ok(())
}
