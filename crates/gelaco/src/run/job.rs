//! A search in a worker thread: commands in (pause, resume, stop), events out (progress,
//! each evaluation, each generation, baselines, done, failed). The GUI and the command line
//! drive the same [`JobHandle`].
//!
//! Every evaluation is appended to the run folder as it is made and every generation is
//! checkpointed, so an error, a panic or a killed process loses at most the evaluation in
//! flight; a panic or error becomes a `Failed` event.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use serde::Serialize;

use super::FrontEntry;
use super::heal_picks::{self, HealPicks, HealPicksInfo};
use super::pick::Picker;
use super::session::Session;
use super::store::{Checkpoint, ModelIdentity, RunInfo, RunStore, Status, ValidationInfo};
use crate::backend::{self, ComputeDevice, DeviceChoice};
use crate::collapse::{MergeSettings, Plan};
use crate::error::{Error, Result};
use crate::fitness::calibration::{self, CalibOptions, CalibSource, Calibration};
use crate::eval::validation::{Validation, ValidationOptions, ValidationSource};
use crate::fitness::{EngineOptions, FitnessEngine};
use crate::model::{self, LoadedModel};
use crate::search::algorithm::{Algorithm, StepOutcome};
use crate::search::baselines::{self, BaselineSolution};
use crate::search::problem::{EvaluatedPlan, PlanProblem};
use crate::search::fidelity::Fidelity;
use crate::search::{Init, SearchSettings, initial_population};

/// Commands to a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Stop,
}

/// Why a search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Evaluations,
    Generations,
    WallTime,
    Stopped,
}

/// Progress, sent at most a few times per second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    pub generation: usize,
    pub evaluations: usize,
    pub budget: usize,
    /// Evaluations per second in this session.
    pub rate: f64,
    pub cache_hits: usize,
    pub unique: usize,
    pub best_fitness: f64,
    pub front_size: usize,
    pub hypervolume: f64,
    /// Cheap evaluations of multi-fidelity selection, apart from `evaluations`.
    pub screened: usize,
    pub eta_seconds: Option<f64>,
    pub paused: bool,
}

/// What a job reports.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started { run_dir: PathBuf, device: String, layers: usize, calibration_hash: String, resumed: bool },
    /// What the job is doing before the search proper starts.
    Stage { message: String },
    /// The baselines; sent again whenever validation changes what is recommended or healed.
    Baselines { solutions: Vec<BaselineSolution> },
    Evaluated { evaluation: EvaluatedPlan },
    /// The workers of a distributed search (see [`crate::dist`]), whenever they change.
    Workers { workers: Vec<crate::dist::WorkerStatus> },
    Progress(Progress),
    Generation { generation: usize, evaluations: usize, front: Vec<FrontEntry>, population: Vec<[f64; 2]>, hypervolume: f64 },
    /// The search ended: its front, and the other plans validation picked from (the
    /// fittest few of each size, see [`CANDIDATES_PER_SIZE`]).
    Done { reason: StopReason, front: Vec<FrontEntry>, candidates: Vec<FrontEntry>, run_dir: PathBuf },
    /// The error keeps its kind, so a shell can tell input errors (exit code 2) from others.
    Failed {
        #[serde(serialize_with = "as_text")]
        error: Arc<Error>,
        run_dir: Option<PathBuf>,
    },
}

fn as_text<S: serde::Serializer>(e: &Arc<Error>, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(e)
}

/// What to run.
#[derive(Debug, Clone)]
pub enum JobSpec {
    New {
        model: PathBuf,
        device: DeviceChoice,
        /// The memory the model may use, in bytes (`None`: what the machine has available, or
        /// a discrete GPU's own memory where that is less, less a quarter).
        memory_budget: Option<u64>,
        calib: CalibSource,
        calib_options: CalibOptions,
        engine: EngineOptions,
        settings: SearchSettings,
        out: PathBuf,
        /// Compute LaCo and ShortGPT reference solutions first.
        baselines: bool,
        /// Held-out text that picks the recommended solution of each size (`None`: no
        /// validation, nothing is recommended).
        validation: Option<(ValidationSource, ValidationOptions)>,
        /// Heal the best plans of each size for the recommendation (with validation only,
        /// and only when the search does not heal its candidates itself).
        heal_picks: Option<HealPicks>,
        /// Recipes of this model (for instance the ones `gelaco baseline sleb --recipes`
        /// writes) to score and take in as baselines: plotted and validated like the
        /// computed ones, and starting points of a warm or seeded search.
        import: Vec<PathBuf>,
    },
    Resume {
        dir: PathBuf,
        device: DeviceChoice,
        memory_budget: Option<u64>,
        /// Use the model at this path instead of the one recorded (it must be the same file).
        model: Option<PathBuf>,
        /// New limits for the continued run.
        evaluations: Option<usize>,
    },
}

/// A handle on a running job.
pub struct JobHandle {
    commands: Sender<Command>,
    pub events: Receiver<Event>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl JobHandle {
    pub fn send(&self, c: Command) {
        if c == Command::Stop {
            self.stop.store(true, Ordering::SeqCst);
        }
        let _ = self.commands.send(c);
    }

    /// A flag that stops the job when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Wait for the worker to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

/// Start a job; `repaint` is called after every event (the GUI asks for a new frame).
pub fn spawn(spec: JobSpec, repaint: Option<Arc<dyn Fn() + Send + Sync>>) -> JobHandle {
    spawn_on(spec, None, repaint)
}

/// Start a job whose evaluations are farmed out through NATS (`None`: all done here).
pub fn spawn_on(spec: JobSpec, nats: Option<crate::dist::NatsSettings>, repaint: Option<Arc<dyn Fn() + Send + Sync>>) -> JobHandle {
    let (ctx, crx) = channel();
    let (etx, erx) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("gelaco-search".into())
        .spawn(move || {
            let out = Outbox { tx: etx, repaint };
            let run_dir = match &spec {
                JobSpec::New { out, .. } => Some(out.clone()),
                JobSpec::Resume { dir, .. } => Some(dir.clone()),
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(spec, nats.as_ref(), &out, &crx, &flag)));
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(panic) => Some(Error::from_panic("search", panic.as_ref())),
            };
            if let Some(error) = error {
                if let Some(dir) = &run_dir {
                    if let Ok(mut info) = super::store::read_info(dir) {
                        if let Ok((store, ..)) = RunStore::open(dir) {
                            let _ = store.set_status(&mut info, Status::Failed, Some(error.to_string()));
                        }
                    }
                }
                out.send(Event::Failed { error: Arc::new(error), run_dir });
            }
        })
        .expect("spawning the search thread");
    JobHandle { commands: ctx, events: erx, stop, thread: Some(thread) }
}

pub(super) struct Outbox {
    tx: Sender<Event>,
    repaint: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Outbox {
    pub(super) fn send(&self, e: Event) {
        let _ = self.tx.send(e);
        if let Some(r) = &self.repaint {
            r();
        }
    }
}

/// SHA-256 of the model's files (the GGUF file, or config and safetensors of a folder).
pub fn model_identity(m: &LoadedModel) -> Result<ModelIdentity> {
    ModelIdentity::of(&m.files)
}

/// Recipes to take in as baselines, checked against the model before the run begins:
/// (label, the method that wrote the recipe, plan).
fn import_recipes(paths: &[PathBuf], m: &LoadedModel, identity: &ModelIdentity) -> Result<Vec<Import>> {
    let sha = &identity.sha256;
    let mut out = Vec::new();
    for path in paths {
        let recipe = crate::export::recipe::Recipe::load(path)?;
        recipe.check_model(&m.files, sha, false).map_err(|e| Error::setting("import", format!("{}: {e}", path.display())))?;
        let plan = recipe.plan()?;
        let name = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        let label = if recipe.origin.is_empty() { name } else { format!("{} ({name})", recipe.origin) };
        out.push((label, recipe.method, plan));
    }
    Ok(out)
}

/// A recipe taken in as a baseline: its label, the method that wrote it, its plan.
type Import = (String, Option<baselines::BaselineMethod>, Plan);

/// A run folder opened for a search: the model, what the folder records, and what a
/// resumed run had done before.
struct Opened {
    m: LoadedModel,
    store: RunStore,
    info: RunInfo,
    calibration: Calibration,
    fidelity: Option<Fidelity>,
    validation: Option<Validation>,
    /// The samples the picks are healed on, when they are.
    heal_calibration: Option<Calibration>,
    logged: Vec<EvaluatedPlan>,
    checkpoint: Option<Checkpoint>,
    imports: Vec<Import>,
}

fn run(spec: JobSpec, nats: Option<&crate::dist::NatsSettings>, out: &Outbox, commands: &Receiver<Command>, stop: &AtomicBool) -> Result<()> {
    let (device_choice, memory_budget, resumed) = match &spec {
        JobSpec::New { device, memory_budget, .. } => (*device, *memory_budget, false),
        JobSpec::Resume { device, memory_budget, .. } => (*device, *memory_budget, true),
    };
    let mut device = backend::select(device_choice)?;
    device.memory_budget = memory_budget;
    let description = device.description.clone();
    let Opened { m, store, mut info, calibration, fidelity, validation, heal_calibration, logged, checkpoint, imports } = open(spec, device, out)?;
    let layers = m.model.num_layers();
    let options = EngineOptions { merge: MergeSettings { keep_base_norms: info.settings.keep_norms }, ..info.engine };
    let engine = FitnessEngine::new(&m.model, calibration, options)?;
    out.send(Event::Started { run_dir: store.dir.clone(), device: description, layers, calibration_hash: engine.calibration.hash.clone(), resumed });

    let Some(mut baselines) = prepare_baselines(&engine, &store, &info, imports, out, stop)? else {
        // stopped before the search began: nothing evaluated, resumable from the start
        store.set_status(&mut info, Status::Stopped, None)?;
        out.send(Event::Done { reason: StopReason::Stopped, front: Vec::new(), candidates: Vec::new(), run_dir: store.dir.clone() });
        return Ok(());
    };
    let mut seeds: Vec<Plan> = baselines.iter().map(|s| s.plan.clone()).collect();
    // a resumed run finds its starting points again (the same numbers), for validation
    let mut starting_points = Vec::new();
    if info.settings.init == Init::Seeded {
        out.send(Event::Stage { message: "plans to start from: ShortGPT's (Block Influence) and the closest blocks of layers (angular distance)".into() });
        let sizes = info.settings.seed_sizes(layers);
        let span = sizes.iter().copied().max().unwrap_or(1);
        let distances = baselines::span_distances(engine.model(), &engine.calibration.samples, engine.options.batch_size, span)?;
        let influence = distances.block_influence();
        for &r in &sizes {
            starting_points.push(baselines::shortgpt_plan(&influence, r)?);
            starting_points.push(baselines::closest_block_plan(&distances, r)?);
        }
        seeds.extend(starting_points.iter().cloned());
    }
    let mut picker = validation.map(|v| Picker::new(v, &engine));
    if let (Some(cal), Some(h)) = (heal_calibration, &info.heal_picks) {
        let (lo, hi) = info.settings.removed_range(layers);
        picker = picker.map(|p| p.with_healing(h.method, cal, lo..=hi, h.screen_samples, h.per_size));
    }
    if let Some(p) = picker.as_mut() {
        if p.missing(&[], &baselines) > 0 {
            out.send(Event::Stage { message: format!("validation perplexity of {} baseline solutions", baselines.len()) });
            p.annotate(&mut [], &mut [], &mut baselines)?;
            store.write_baselines(&baselines)?;
        }
    }
    if !baselines.is_empty() {
        out.send(Event::Baselines { solutions: baselines.clone() });
    }

    let farm = match nats {
        Some(nats) => {
            out.send(Event::Stage { message: format!("connecting to NATS at {}", nats.server()) });
            let spec = crate::dist::RunSpec {
                run: crate::dist::run_id(&info.model.sha256, &engine.calibration.hash, &engine.options, &info.settings, info.nonce.as_deref()),
                model_sha256: info.model.sha256.clone(),
                model_path: info.model.path.clone(),
                layers,
                calibration_hash: engine.calibration.hash.clone(),
                samples: engine.calibration.samples.clone(),
                engine: engine.options,
                ack_wait_seconds: nats.ack_wait.as_secs_f64(),
            };
            let run = spec.run.clone();
            let farm = crate::dist::coordinator::NatsFarm::open(nats, &engine, spec, Box::new(|w| out.send(Event::Workers { workers: w.to_vec() })))?;
            out.send(Event::Stage { message: format!("evaluating through NATS at {} as run {run}{}", farm.server(), if nats.local { ", here too" } else { "" }) });
            Some(farm)
        }
        None => None,
    };
    let farmed = |farm: &Option<crate::dist::coordinator::NatsFarm>| {
        if let Some(f) = farm {
            let s = f.stats();
            out.send(Event::Stage { message: s.summary() });
        }
    };
    let settings = info.settings.clone();
    let session = Session::new(store, &settings, checkpoint.as_ref(), out, commands, stop);
    let mut problem = PlanProblem::new(&engine, settings.encoding(layers), settings.mode, Box::new(|e: &EvaluatedPlan| session.record(e)));
    problem.fidelity = fidelity;
    problem.farm = farm.as_ref().map(|f| f as &dyn crate::search::problem::Farm);
    problem.vary_repeats = settings.init != Init::Paper;
    let baseline_models: std::collections::HashSet<String> = baselines.iter().map(|b| b.plan.model_key()).collect();
    problem.starting_points = starting_points.into_iter().filter(|p| !baseline_models.contains(&p.model_key())).collect();
    for e in &logged {
        problem.preload_logged(e);
    }
    for b in &baselines {
        problem.preload(b.plan.model_key(), Arc::new(b.result.clone()));
    }
    if let Some(cp) = &checkpoint {
        problem.evaluated = cp.evaluated;
        problem.cache_hits = cp.cache_hits;
    }
    let mut algo = match &checkpoint {
        Some(cp) => Algorithm::resume(settings.algorithm(layers), cp.state.clone()),
        None => Algorithm::new(settings.algorithm(layers)),
    };
    if checkpoint.is_some() {
        session.clear_candidates()?;
    } else {
        let start = initial_population(&settings, &problem.encoding, &seeds);
        let size = start.len().max(settings.population).min(settings.evaluations);
        out.send(Event::Stage { message: format!("evaluating the first population ({size})") });
        if algo.initialize(&mut problem, start, Some(settings.evaluations), &|| session.should_stop())? == StepOutcome::Interrupted {
            farmed(&farm);
            return session.finish(&problem, picker.as_mut(), &mut baselines, &mut info);
        }
        session.generation_done(&algo, &problem, picker.as_mut(), &mut baselines)?;
    }
    while session.may_continue(&algo) {
        let left = settings.evaluations - algo.state.evaluations;
        if algo.step(&mut problem, Some(left), &|| session.should_stop())? == StepOutcome::Interrupted {
            break;
        }
        session.generation_done(&algo, &problem, picker.as_mut(), &mut baselines)?;
    }
    farmed(&farm);
    session.finish(&problem, picker.as_mut(), &mut baselines, &mut info)
}

/// Open the model and its run folder: a new folder for a new search (model, settings,
/// imports and calibration checked first), the recorded one to resume.
fn open(spec: JobSpec, device: ComputeDevice, out: &Outbox) -> Result<Opened> {
    let (path, calib, calib_options, mut engine, settings, dir, baselines, validation, heal_picks, import) = match spec {
        JobSpec::New { model, calib, calib_options, engine, settings, out, baselines, validation, heal_picks, import, .. } => {
            (model, calib, calib_options, engine, settings, out, baselines, validation, heal_picks, import)
        }
        JobSpec::Resume { dir, model, evaluations, .. } => return open_resumed(&dir, model, evaluations, device),
    };
    if let Some(h) = &heal_picks {
        h.check()?;
    }
    let m = model::load(&path, device)?;
    settings.validate(m.model.num_layers())?;
    let identity = model_identity(&m)?;
    let imports = import_recipes(&import, &m, &identity)?;
    let calibration = calibration::load(&calib, &calib_options, &m.model, &m.tokenizer)?;
    let (validation, free) = match &validation {
        Some((source, options)) => match Validation::load_split(source, &calib, &calib_options, options, &m.tokenizer) {
            Ok((v, free)) => (Some(v), free),
            // the default validation text may be too short: the run goes on without
            Err(Error::Setting { setting: "validation", message }) if *source == ValidationSource::Rest => {
                out.send(Event::Stage { message: format!("no validation text, nothing will be recommended: {message}") });
                (None, None)
            }
            Err(e) => return Err(e),
        },
        None => (None, None),
    };
    let heal_calibration = match heal_picks {
        Some(h) if h.method != crate::fitness::Heal::None && engine.heal == crate::fitness::Heal::None && validation.is_some() => {
            match heal_picks::calibration(free.as_deref(), &calibration, h.samples, &m.tokenizer, m.model.config.hidden_size) {
                Ok(c) => Some((h, c)),
                // too little text besides the validation's: the picks are not healed
                Err(Error::Setting { setting: "heal_picks", message }) => {
                    out.send(Event::Stage { message: format!("the picks will not be healed: {message}") });
                    None
                }
                Err(e) => return Err(e),
            }
        }
        _ => None,
    };
    let fidelity = settings.fidelity.as_deref().map(|t| Fidelity::parse(t, calibration.tokens())).transpose()?;
    if let (Some(f), None) = (&fidelity, engine.first_chunk_tokens) {
        // the screening's tokens in a chunk of their own: screening costs what it says
        engine.first_chunk_tokens = f.screening_steps().next().map(|s| s.tokens);
    }
    let info = RunInfo {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        settings,
        engine,
        model: identity,
        calibration_hash: calibration.hash.clone(),
        calibration_source: calib.describe(),
        status: Status::Running,
        message: None,
        baselines,
        validation: validation.as_ref().map(|v| ValidationInfo { source: v.source.clone(), hash: v.hash.clone(), tokens: v.tokens() }),
        heal_picks: heal_calibration.as_ref().map(|(h, c)| HealPicksInfo::of(h, c)),
        nonce: Some(crate::dist::nonce()),
    };
    let store = RunStore::create(&dir, &info, &calibration)?;
    if let Some(v) = &validation {
        store.write_validation(v)?;
    }
    let heal_calibration = heal_calibration.map(|(_, c)| c);
    if let Some(c) = &heal_calibration {
        heal_picks::write(&store.dir, c)?;
    }
    Ok(Opened { m, store, info, calibration, fidelity, validation, heal_calibration, logged: Vec::new(), checkpoint: None, imports })
}

/// Open a run folder to go on with its search, on the model it was made with.
fn open_resumed(dir: &Path, override_path: Option<PathBuf>, evaluations: Option<usize>, device: ComputeDevice) -> Result<Opened> {
    let (store, mut info, calibration, logged, checkpoint) = RunStore::open(dir)?;
    let path = override_path.unwrap_or_else(|| info.model.path.clone());
    let m = model::load(&path, device)?;
    let identity = model_identity(&m)?;
    if identity.sha256 != info.model.sha256 {
        return Err(Error::Invalid(format!(
            "{} is not the model this run was made with (SHA-256 {} differs from the recorded {})",
            path.display(),
            crate::util::short_hash(&identity.sha256),
            crate::util::short_hash(&info.model.sha256)
        )));
    }
    if let Some(n) = evaluations {
        info.settings.evaluations = n;
    }
    store.set_status(&mut info, Status::Running, None)?;
    let validation = super::store::read_validation(&store.dir)?;
    // the token ids must belong to the model's vocabulary
    let vocab = Some(m.model.config.vocab_size);
    crate::limits::token_samples("samples", &calibration.samples, &calibration.hash, vocab)
        .map_err(|msg| Error::format(store.dir.join("calibration.json"), msg))?;
    if let Some(v) = &validation {
        crate::limits::token_samples("windows", &v.windows, &v.hash, vocab)
            .map_err(|msg| Error::format(store.dir.join("validation.json"), msg))?;
    }
    let heal_calibration = heal_picks::read(&store.dir, &info)?;
    if let Some(c) = &heal_calibration {
        crate::limits::token_samples("samples", &c.samples, &c.hash, vocab).map_err(|msg| Error::format(store.dir.join(heal_picks::FILE), msg))?;
    }
    let fidelity = info.settings.fidelity.as_deref().map(|t| Fidelity::parse(t, calibration.tokens())).transpose()?;
    // imported recipes are in baselines.json since the run began
    Ok(Opened { m, store, info, calibration, fidelity, validation, heal_calibration, logged, checkpoint, imports: Vec::new() })
}

/// The run's baselines: those of its folder, or computed (when asked for, or for a warm
/// start), then the imported recipes scored. `None` when stopped while computing.
fn prepare_baselines(
    engine: &FitnessEngine,
    store: &RunStore,
    info: &RunInfo,
    imports: Vec<Import>,
    out: &Outbox,
    stop: &AtomicBool,
) -> Result<Option<Vec<BaselineSolution>>> {
    // a resumed run reuses its baselines (a warm start must see the same seeds)
    let mut baselines = super::store::read_baselines(&store.dir)?;
    if baselines.is_empty() && (info.baselines || info.settings.init == Init::Warm) {
        out.send(Event::Stage { message: "computing the LaCo and ShortGPT baselines".into() });
        let op = info.settings.merge_op.unwrap_or(crate::collapse::merge::DEFAULT_MERGE_OP);
        match baselines::compute_baselines(engine, op, &|| stop.load(Ordering::SeqCst))? {
            Some(b) => baselines = b,
            None => return Ok(None),
        }
        store.write_baselines(&baselines)?;
    }
    if !imports.is_empty() {
        out.send(Event::Stage { message: format!("scoring {} imported recipes", imports.len()) });
        for (label, method, plan) in imports {
            let result = engine.evaluate(&plan)?;
            let merges = plan.merges_text();
            baselines.push(BaselineSolution { method: label, kind: method, merges, plan, result, validation_perplexity: None, healed_validation_perplexity: None, recommended: false });
        }
        store.write_baselines(&baselines)?;
    }
    Ok(Some(baselines))
}
