//! A search in a worker thread: commands in (pause, resume, stop), events out (progress,
//! each evaluation, each generation, baselines, done, failed). The GUI and the command line
//! drive the same [`JobHandle`].
//!
//! Every evaluation is appended to the run folder as it is made and every generation is
//! checkpointed, so an error, a panic or a killed process loses at most the evaluation in
//! flight; a panic or error becomes a `Failed` event.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::FrontEntry;
use super::pick::{Picker, candidate_entries, front_entries};
use super::store::{Checkpoint, ModelIdentity, RunInfo, RunStore, Status, ValidationInfo};
use crate::backend::{self, DeviceChoice};
use crate::collapse::MergeSettings;
use crate::error::{Error, Result};
use crate::fitness::calibration::{self, CalibOptions, CalibSource};
use crate::eval::validation::{Validation, ValidationOptions, ValidationSource};
use crate::fitness::{EngineOptions, FitnessEngine};
use crate::model::{self, LoadedModel};
use crate::search::algorithm::{Algorithm, StepOutcome};
use crate::search::baselines::{self, BaselineSolution};
use crate::search::problem::{EvaluatedPlan, PlanProblem};
use crate::search::fidelity::Fidelity;
use crate::search::{Init, SearchSettings, hypervolume, initial_population};

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
    Baselines { solutions: Vec<BaselineSolution> },
    Evaluated { evaluation: EvaluatedPlan },
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
        /// Recipes of this model (for instance the ones `gelaco baseline sleb --recipes`
        /// writes) to score and take in as baselines: plotted and validated like the
        /// computed ones, and starting points of a warm or seeded search.
        import: Vec<PathBuf>,
    },
    Resume {
        dir: PathBuf,
        device: DeviceChoice,
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
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(spec, &out, &crx, &flag)));
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

struct Outbox {
    tx: Sender<Event>,
    repaint: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Outbox {
    fn send(&self, e: Event) {
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
fn import_recipes(paths: &[PathBuf], m: &LoadedModel, identity: &ModelIdentity) -> Result<Vec<(String, Option<baselines::BaselineMethod>, crate::collapse::Plan)>> {
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

/// Validation perplexities and the recommended flags of a front, candidates and the
/// baselines.
fn pick(
    picker: Option<&mut Picker>,
    front: &mut [FrontEntry],
    candidates: &mut [FrontEntry],
    baselines: &mut [BaselineSolution],
    store: &RunStore,
    out: &Outbox,
) -> Result<()> {
    let Some(p) = picker else { return Ok(()) };
    let missing = p.missing(front, baselines) + p.missing(candidates, &[]);
    if missing > 0 {
        out.send(Event::Stage { message: format!("validation perplexity of {missing} new solutions") });
    }
    let before: Vec<bool> = baselines.iter().map(|b| b.recommended).collect();
    p.annotate(front, candidates, baselines)?;
    if baselines.iter().map(|b| b.recommended).ne(before) {
        store.write_baselines(baselines)?;
    }
    Ok(())
}

fn front_hypervolume(front: &[FrontEntry]) -> f64 {
    hypervolume(&front.iter().map(|f| [f.result.fitness, f.result.compression]).collect::<Vec<_>>())
}

fn run(spec: JobSpec, out: &Outbox, commands: &Receiver<Command>, stop: &AtomicBool) -> Result<()> {
    let (device_choice, resumed) = match &spec {
        JobSpec::New { device, .. } => (*device, false),
        JobSpec::Resume { device, .. } => (*device, true),
    };
    let device = backend::select(device_choice)?;
    let description = device.description.clone();

    let (m, store, mut info, calibration, logged, checkpoint, want_baselines, validation, imports) = match spec {
        JobSpec::New { model: path, calib, calib_options, engine, settings, out: dir, baselines, validation, import, .. } => {
            let m = model::load(&path, device)?;
            settings.validate(m.model.num_layers())?;
            let identity = model_identity(&m)?;
            let imports = import_recipes(&import, &m, &identity)?;
            let calibration = calibration::load(&calib, &calib_options, &m.model, &m.tokenizer)?;
            let validation = match &validation {
                Some((source, options)) => match Validation::load(source, &calib, &calib_options, options, &m.tokenizer) {
                    Ok(v) => Some(v),
                    // the default validation text may be too short: the run goes on without
                    Err(Error::Setting { setting: "validation", message }) if *source == ValidationSource::Rest => {
                        out.send(Event::Stage { message: format!("no validation text, nothing will be recommended: {message}") });
                        None
                    }
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let mut engine = engine;
            if let (Some(text), None) = (&settings.fidelity, engine.first_chunk_tokens) {
                // the screening's tokens in a chunk of their own: screening costs what it says
                engine.first_chunk_tokens = Fidelity::parse(text, calibration.tokens())?.screening_steps().next().map(|s| s.tokens);
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
                validation: validation
                    .as_ref()
                    .map(|v| ValidationInfo { source: v.source.clone(), hash: v.hash.clone(), tokens: v.tokens() }),
            };
            let store = RunStore::create(&dir, &info, &calibration)?;
            if let Some(v) = &validation {
                store.write_validation(v)?;
            }
            (m, store, info, calibration, Vec::new(), None, baselines, validation, imports)
        }
        JobSpec::Resume { dir, model: override_path, evaluations, .. } => {
            let (store, mut info, calibration, logged, checkpoint) = RunStore::open(&dir)?;
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
            let want = info.baselines;
            let validation = super::store::read_validation(&store.dir)?;
            // the token ids must belong to the model's vocabulary
            let vocab = Some(m.model.config.vocab_size);
            crate::limits::token_samples("samples", &calibration.samples, &calibration.hash, vocab)
                .map_err(|msg| Error::format(store.dir.join("calibration.json"), msg))?;
            if let Some(v) = &validation {
                crate::limits::token_samples("windows", &v.windows, &v.hash, vocab)
                    .map_err(|msg| Error::format(store.dir.join("validation.json"), msg))?;
            }
            // imported recipes are in baselines.json since the run began
            (m, store, info, calibration, logged, checkpoint, want, validation, Vec::new())
        }
    };
    let settings = info.settings.clone();
    let layers = m.model.num_layers();
    let engine = FitnessEngine::new(&m.model, calibration, EngineOptions { merge: MergeSettings { keep_base_norms: settings.keep_norms }, ..info.engine })?;
    let fidelity = settings.fidelity.as_deref().map(|t| Fidelity::parse(t, engine.total_tokens())).transpose()?;
    out.send(Event::Started { run_dir: store.dir.clone(), device: description, layers, calibration_hash: engine.calibration.hash.clone(), resumed });

    // a resumed run reuses its baselines (a warm start must see the same seeds)
    let mut baselines = super::store::read_baselines(&store.dir)?;
    if baselines.is_empty() && (want_baselines || settings.init == Init::Warm) {
        out.send(Event::Stage { message: "computing the LaCo and ShortGPT baselines".into() });
        let op = settings.merge_op.unwrap_or(crate::collapse::merge::DEFAULT_MERGE_OP);
        match baselines::compute_baselines(&engine, op, &|| stop.load(Ordering::SeqCst))? {
            Some(b) => baselines = b,
            None => {
                // stopped before the search began: nothing evaluated, resumable from the start
                store.set_status(&mut info, Status::Stopped, None)?;
                out.send(Event::Done { reason: StopReason::Stopped, front: Vec::new(), candidates: Vec::new(), run_dir: store.dir.clone() });
                return Ok(());
            }
        }
        store.write_baselines(&baselines)?;
    }
    if !imports.is_empty() {
        out.send(Event::Stage { message: format!("scoring {} imported recipes", imports.len()) });
        for (label, method, plan) in imports {
            let result = engine.evaluate(&plan)?;
            let merges = plan.merges_text();
            baselines.push(BaselineSolution { method: label, kind: method, merges, plan, result, validation_perplexity: None, recommended: false });
        }
        store.write_baselines(&baselines)?;
    }
    let mut seed_plans: Vec<_> = baselines.iter().map(|s| s.plan.clone()).collect();
    if settings.init == Init::Seeded && checkpoint.is_none() {
        out.send(Event::Stage { message: "ShortGPT plans to start from (Block Influence)".into() });
        let influence = baselines::block_influence(engine.model(), &engine.calibration.samples, engine.options.batch_size)?;
        for r in settings.seed_sizes(layers) {
            seed_plans.push(baselines::shortgpt_plan(&influence, r)?);
        }
    }
    let known: Vec<_> = baselines.iter().map(|b| (b.plan.model_key(), Arc::new(b.result.clone()))).collect();
    let mut picker = validation.map(|v| Picker::new(v, &engine));
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

    let encoding = settings.encoding(layers);
    let budget = settings.evaluations;
    let session_start = Instant::now();
    let previous_seconds = checkpoint.as_ref().map_or(0.0, |c| c.seconds);
    let elapsed = || previous_seconds + session_start.elapsed().as_secs_f64();
    let mut hv_history = checkpoint.as_ref().map_or_else(Vec::new, |c| c.hypervolume.clone());

    // shared between the evaluation callback and the generation loop
    let store = RefCell::new(store);
    let shown = Cell::new((0f64, 0usize, 0f64)); // best fitness, front size, hypervolume
    let counters = Cell::new((0usize, 0usize)); // cache hits, unique models
    let screened = Cell::new(0usize);
    let generation_now = Cell::new(checkpoint.as_ref().map_or(0, |c| c.state.generation));
    let session_done = Cell::new(0usize);
    let evals_now = Cell::new(checkpoint.as_ref().map_or(0, |c| c.state.evaluations));
    let last_progress = Cell::new(Instant::now() - Duration::from_secs(1));
    let paused = Cell::new(false);
    let reason: Cell<Option<StopReason>> = Cell::new(None);

    let progress = |evaluations: usize, force: bool| {
        if !force && last_progress.get().elapsed() < Duration::from_millis(200) {
            return;
        }
        last_progress.set(Instant::now());
        let rate = session_done.get() as f64 / session_start.elapsed().as_secs_f64().max(1e-9);
        let (best, size, hv) = shown.get();
        let (hits, unique) = counters.get();
        out.send(Event::Progress(Progress {
            generation: generation_now.get(),
            evaluations,
            budget,
            rate,
            cache_hits: hits,
            unique,
            best_fitness: best,
            front_size: size,
            hypervolume: hv,
            screened: screened.get(),
            eta_seconds: (rate > 0.0).then(|| budget.saturating_sub(evaluations) as f64 / rate),
            paused: paused.get(),
        }));
    };

    let mut problem = PlanProblem::new(
        &engine,
        encoding,
        settings.mode,
        Box::new(|e: &EvaluatedPlan| {
            store.borrow_mut().append(e)?;
            session_done.set(session_done.get() + 1);
            evals_now.set(e.index + 1);
            out.send(Event::Evaluated { evaluation: e.clone() });
            progress(e.index + 1, false);
            Ok(())
        }),
    );
    problem.fidelity = fidelity;
    problem.vary_repeats = settings.init != Init::Paper;
    for e in &logged {
        problem.preload_logged(e);
    }
    for (key, result) in known {
        problem.preload(key, result);
    }
    if let Some(cp) = &checkpoint {
        problem.evaluated = cp.evaluated;
        problem.cache_hits = cp.cache_hits;
    }

    let should_stop = || {
        loop {
            while let Ok(c) = commands.try_recv() {
                match c {
                    Command::Pause => paused.set(true),
                    Command::Resume => paused.set(false),
                    Command::Stop => stop.store(true, Ordering::SeqCst),
                }
            }
            if stop.load(Ordering::SeqCst) {
                reason.set(Some(StopReason::Stopped));
                return true;
            }
            if settings.max_seconds.is_some_and(|m| elapsed() >= m) {
                reason.set(Some(StopReason::WallTime));
                return true;
            }
            if !paused.get() {
                return false;
            }
            progress(evals_now.get(), true);
            match commands.recv_timeout(Duration::from_millis(250)) {
                Ok(Command::Pause) => {}
                Ok(Command::Resume) => paused.set(false),
                Ok(Command::Stop) => stop.store(true, Ordering::SeqCst),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop.store(true, Ordering::SeqCst),
            }
        }
    };

    let mut algo = match &checkpoint {
        Some(cp) => Algorithm::resume(settings.algorithm(layers), cp.state.clone()),
        None => Algorithm::new(settings.algorithm(layers)),
    };
    let mut initialized = checkpoint.is_some();
    if initialized {
        // the candidates of an earlier session are picked again when this one ends
        store.borrow().write_candidates(&[])?;
    }
    loop {
        if initialized {
            let evals = algo.state.evaluations;
            if evals >= budget {
                reason.set(Some(StopReason::Evaluations));
            } else if settings.generations.is_some_and(|g| algo.state.generation >= g) {
                reason.set(Some(StopReason::Generations));
            }
            if reason.get().is_some() || should_stop() {
                break;
            }
        }
        let outcome = if initialized {
            algo.step(&mut problem, Some(budget - algo.state.evaluations), &should_stop)?
        } else {
            let start = initial_population(&settings, &encoding, &seed_plans);
            let size = start.len().max(settings.population).min(budget);
            out.send(Event::Stage { message: format!("evaluating the first population ({size})") });
            algo.initialize(&mut problem, start, Some(budget), &should_stop)?
        };
        if outcome == StepOutcome::Interrupted {
            break;
        }
        initialized = true;
        let mut front = front_entries(&problem);
        pick(picker.as_mut(), &mut front, &mut [], &mut baselines, &store.borrow(), out)?;
        let hv = front_hypervolume(&front);
        hv_history.push(hv);
        let best = front.iter().map(|f| f.result.fitness).fold(f64::NEG_INFINITY, f64::max);
        shown.set((best, front.len(), hv));
        counters.set((problem.cache_hits, problem.unique()));
        screened.set(problem.screened);
        generation_now.set(algo.state.generation);
        {
            let store = store.borrow();
            store.checkpoint(&Checkpoint {
                state: algo.state.clone(),
                evaluated: problem.evaluated,
                cache_hits: problem.cache_hits,
                unique: problem.unique(),
                seconds: elapsed(),
                hypervolume: hv_history.clone(),
            })?;
            store.write_front(&front)?;
        }
        let population = algo
            .state
            .population
            .iter()
            .map(|i| [i.eval.objectives[0], problem.encoding.decode(&i.x).compression()])
            .collect();
        out.send(Event::Generation { generation: algo.state.generation, evaluations: algo.state.evaluations, front, population, hypervolume: hv });
        progress(algo.state.evaluations, true);
    }
    let reason = reason.get().unwrap_or(StopReason::Stopped);
    // a search stopped inside a generation keeps the front of what it evaluated
    let mut front = front_entries(&problem);
    let mut candidates = if picker.is_some() { candidate_entries(&problem, &front) } else { Vec::new() };
    drop(problem);
    let store = store.into_inner();
    pick(picker.as_mut(), &mut front, &mut candidates, &mut baselines, &store, out)?;
    store.write_front(&front)?;
    store.write_candidates(&candidates)?;
    let status = if reason == StopReason::Stopped { Status::Stopped } else { Status::Finished };
    store.set_status(&mut info, status, None)?;
    out.send(Event::Done { reason, front, candidates, run_dir: store.dir.clone() });
    Ok(())
}

