//! The window's state and its frame loop: drain worker events, draw, apply the commands
//! the drawing emitted. Nothing here waits on a worker.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::worker::{ModelCard, Reply, Request, Worker};
use gelaco::export::{ExportFormat, Variant};
use gelaco::backend::DeviceChoice;
use gelaco::collapse::{MergeOp, MergeSettings, Plan};
use gelaco::eval::choice::TaskScore;
use gelaco::export::recipe::plan_of;
use gelaco::fitness::calibration::{CalibOptions, CalibSource};
use gelaco::eval::validation::{ValidationOptions, ValidationSource};
use gelaco::fitness::{EngineOptions, FitnessResult, Heal, Objective};
use gelaco::run::FrontEntry;
use gelaco::run::job::{self, Command, Event, JobHandle, JobSpec, Progress};
use gelaco::run::store;
use gelaco::search::baselines::BaselineSolution;
use gelaco::search::problem::{EvaluatedPlan, Mode};
use gelaco::search::{Init, SearchSettings};

/// How the calibration samples are chosen in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CalibKind {
    File,
    SelfGenerated,
}

/// Everything the user sets; kept between launches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub model: String,
    pub recent_models: Vec<PathBuf>,
    pub recent_runs: Vec<PathBuf>,
    pub device: DeviceChoice,
    pub pareto: bool,
    pub target_removed: usize,
    pub population: usize,
    pub evaluations: usize,
    pub seed: u64,
    pub init: Init,
    /// `None`: the search picks an operator per merge.
    pub merge_op: Option<MergeOp>,
    pub calib_kind: CalibKind,
    pub calib_file: String,
    pub samples: usize,
    pub max_tokens: usize,
    /// What the search's fitness measures.
    pub objective: Objective,
    /// Heal every candidate the search scores.
    pub heal: Heal,
    /// Multi-fidelity selection, `TOKENS:KEEP,...,full:1`.
    pub fidelity: String,
    /// Pick recommended solutions on the calibration file's unused lines.
    pub validation: bool,
    pub baselines: bool,
    /// Recipes taken in as baselines (and starting points of a warm or seeded search).
    pub imports: Vec<PathBuf>,
    pub runs_dir: String,
    pub dark: bool,
    pub eval_text: String,
    pub eval_windows: usize,
    pub bench_limit: usize,
    pub prompt: String,
    pub max_new_tokens: usize,
}

impl Default for Settings {
    fn default() -> Self {
        let data = bundled_data_dir();
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let demo = home.join(".cache/gelaco/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        Settings {
            model: if demo.exists() { demo.display().to_string() } else { String::new() },
            recent_models: Vec::new(),
            recent_runs: Vec::new(),
            device: DeviceChoice::Auto,
            pareto: true,
            target_removed: 8,
            population: 40,
            evaluations: 600,
            seed: 0,
            init: SearchSettings::default().init,
            merge_op: Some(gelaco::collapse::merge::DEFAULT_MERGE_OP),
            calib_kind: CalibKind::File,
            calib_file: data.as_ref().map(|d| d.join("wiki.valid.raw").display().to_string()).unwrap_or_default(),
            samples: 16,
            max_tokens: 128,
            objective: EngineOptions::default().objective,
            heal: EngineOptions::default().heal,
            fidelity: gelaco::search::DEFAULT_FIDELITY.into(),
            validation: true,
            baselines: true,
            imports: Vec::new(),
            runs_dir: home.join(".local/share/gelaco/runs").display().to_string(),
            dark: true,
            eval_text: data.as_ref().map(|d| d.join("wiki.test.head.raw").display().to_string()).unwrap_or_default(),
            eval_windows: 4,
            bench_limit: 100,
            prompt: "The three most important things about compressing a language model are".into(),
            max_new_tokens: 40,
        }
    }
}

/// The small data shipped in the repository (`assets/data`: WikiText-2 validation for
/// calibration, the head of WikiText-2 test for perplexity, 100 ARC-Easy questions), found
/// above the program.
fn bundled_data_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .map(|d| d.join("assets/data"))
        .find(|d| d.join("wiki.valid.raw").exists())
        .map(|d| d.canonicalize().unwrap_or(d))
}

/// Full benchmark files: the folder named by `GELACO_DATA` (the layout of lm-evaluation
/// data: `arc/`, `piqa/`, `hellaswag/`).
fn benchmark_data_dir() -> Option<PathBuf> {
    std::env::var_os("GELACO_DATA").map(PathBuf::from).filter(|d| d.is_dir())
}

/// One plotted evaluation.
#[derive(Debug, Clone)]
pub struct Point {
    pub compression: f64,
    pub fitness: f64,
    pub generation: usize,
    pub merges: String,
    pub result: Arc<FitnessResult>,
}

/// A solution the user can inspect, compare and export.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    pub label: String,
    pub merges: String,
    pub result: FitnessResult,
    /// Perplexity on the run's validation text, when the run has one.
    pub validation_perplexity: Option<f64>,
    /// The lowest validation perplexity of its size.
    pub recommended: bool,
}

impl Solution {
    pub fn plan(&self) -> Plan {
        plan_of(&self.result)
    }

    pub fn from_front(i: usize, e: &FrontEntry) -> Self {
        Solution {
            label: format!("front #{i} ({} layers)", e.result.remaining_layers),
            merges: e.merges.clone(),
            result: e.result.clone(),
            validation_perplexity: e.validation_perplexity,
            recommended: e.recommended,
        }
    }

    pub fn from_candidate(e: &FrontEntry) -> Self {
        Solution { label: format!("candidate ({} layers, off the front)", e.result.remaining_layers), ..Self::from_front(0, e) }
    }

    pub fn from_point(p: &Point) -> Self {
        Solution {
            label: format!("{} layers, gen {}", p.result.remaining_layers, p.generation),
            merges: p.merges.clone(),
            result: (*p.result).clone(),
            validation_perplexity: None,
            recommended: false,
        }
    }

    pub fn from_baseline(b: &BaselineSolution) -> Self {
        Solution {
            label: b.method.clone(),
            merges: b.merges.clone(),
            result: b.result.clone(),
            validation_perplexity: b.validation_perplexity,
            recommended: b.recommended,
        }
    }
}

/// Measurements of a model, by label.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub perplexity: Option<Result<f64, String>>,
    pub benchmarks: Option<Result<Vec<TaskScore>, String>>,
}

/// A line of the log panel.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub at: f64,
    pub error: bool,
    pub text: String,
}

/// Which view the central area shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Front,
    Compare,
}

/// What the window was started with (command-line flags of `gelaco gui`).
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub model: Option<PathBuf>,
    /// Start a search at once.
    pub run: bool,
    pub evaluations: Option<usize>,
    pub dark: Option<bool>,
    /// Select the best front solution as soon as there is one.
    pub select_best: bool,
    /// Run folder for the search (instead of a new one under the runs folder).
    pub out: Option<PathBuf>,
    /// Do not read or write settings (tests).
    pub ephemeral: bool,
    pub device: Option<DeviceChoice>,
    /// Show this run folder at start.
    pub load_run: Option<PathBuf>,
}

/// Frame timing of the window, for the responsiveness figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FrameStats {
    /// Milliseconds spent building each frame.
    pub build_ms: Vec<f64>,
    /// Milliseconds between the starts of consecutive frames while a search ran.
    pub interval_ms: Vec<f64>,
}

/// Things the drawing code asks for; applied after the frame is drawn.
#[derive(Debug, Clone)]
pub enum Action {
    OpenModel(PathBuf),
    BrowseModel,
    BrowseCalib,
    BrowseImport,
    BrowseRun,
    StartRun,
    Pause,
    Resume,
    Stop,
    ResumeRun(PathBuf),
    LoadRun(PathBuf),
    Select(Solution),
    ToggleCompare(Solution),
    MeasurePerplexity(Solution),
    RunBenchmarks(Solution),
    Cancel,
    Generate,
    Export(Solution, ExportFormat, Option<PathBuf>),
    SaveRecipe(Solution),
    ClearCompare,
}

pub struct App {
    pub settings: Settings,
    pub launch: Launch,
    pub card: Option<Result<ModelCard, String>>,
    pub job: Option<JobHandle>,
    pub run_dir: Option<PathBuf>,
    pub run_layers: usize,
    /// How the shown run heals its models.
    pub run_heal: Heal,
    /// The plot's y axis: validation perplexity instead of fitness.
    pub plot_validation: bool,
    pub paused: bool,
    pub stage: Option<String>,
    pub progress: Option<Progress>,
    pub points: Vec<Point>,
    seen: HashSet<String>,
    pub front: Vec<FrontEntry>,
    /// The other plans validation picked from: the fittest few of each size, off the front.
    pub candidates: Vec<FrontEntry>,
    pub baselines: Vec<BaselineSolution>,
    pub hypervolume: Vec<[f64; 2]>,
    pub selected: Option<Solution>,
    pub compare: Vec<Solution>,
    pub generated: BTreeMap<String, Result<String, String>>,
    pub measured: HashMap<String, Measured>,
    pub worker: Worker,
    pub busy: Option<String>,
    pub task_progress: Option<(usize, usize, String)>,
    pub log: VecDeque<LogLine>,
    pub banner: Option<(bool, String)>,
    pub tab: Tab,
    pub export_kind: ExportFormat,
    pub export_path: String,
    /// Replace an existing export output.
    pub export_force: bool,
    pub resume_path: String,
    pub actions: Vec<Action>,
    dialogs: (Sender<(DialogFor, Option<PathBuf>)>, Receiver<(DialogFor, Option<PathBuf>)>),
    ctx: egui::Context,
    started: Instant,
    last_frame: Option<Instant>,
    pub frames: FrameStats,
    pub searches_started: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialogFor {
    Model,
    Calib,
    Import,
    Run,
    Export,
}

const LOG_LINES: usize = 300;

impl App {
    pub fn new(ctx: &egui::Context, stored: Option<Settings>, launch: Launch) -> Self {
        let mut settings = stored.unwrap_or_default();
        if let Some(m) = &launch.model {
            settings.model = m.display().to_string();
        }
        if let Some(e) = launch.evaluations {
            settings.evaluations = e;
        }
        if let Some(d) = launch.device {
            settings.device = d;
        }
        if let Some(d) = launch.dark {
            settings.dark = d;
        }
        ctx.set_theme(if settings.dark { egui::Theme::Dark } else { egui::Theme::Light });
        let repaint_ctx = ctx.clone();
        let worker = Worker::spawn(Arc::new(move || repaint_ctx.request_repaint()));
        let mut app = App {
            settings,
            launch,
            card: None,
            job: None,
            run_dir: None,
            run_layers: 0,
            run_heal: Heal::None,
            plot_validation: false,
            paused: false,
            stage: None,
            progress: None,
            points: Vec::new(),
            seen: HashSet::new(),
            front: Vec::new(),
            candidates: Vec::new(),
            baselines: Vec::new(),
            hypervolume: Vec::new(),
            selected: None,
            compare: Vec::new(),
            generated: BTreeMap::new(),
            measured: HashMap::new(),
            worker,
            busy: None,
            task_progress: None,
            log: VecDeque::new(),
            banner: None,
            tab: Tab::Front,
            export_kind: ExportFormat::Gguf,
            export_path: String::new(),
            export_force: false,
            resume_path: String::new(),
            actions: Vec::new(),
            dialogs: channel(),
            ctx: ctx.clone(),
            started: Instant::now(),
            last_frame: None,
            frames: FrameStats::default(),
            searches_started: 0,
        };
        if !app.settings.model.is_empty() {
            let p = PathBuf::from(&app.settings.model);
            app.actions.push(Action::OpenModel(p));
        }
        if let Some(dir) = app.launch.load_run.clone() {
            app.actions.push(Action::LoadRun(dir));
        }
        if app.launch.run {
            app.actions.push(Action::StartRun);
        }
        app
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.push_log(false, text.into());
    }

    pub fn error(&mut self, text: impl Into<String>) {
        let t = text.into();
        self.banner = Some((true, t.clone()));
        self.push_log(true, t);
    }

    fn push_log(&mut self, error: bool, text: String) {
        if error {
            tracing::warn!("{text}");
        }
        self.log.push_back(LogLine { at: self.started.elapsed().as_secs_f64(), error, text });
        while self.log.len() > LOG_LINES {
            self.log.pop_front();
        }
    }

    pub fn running(&self) -> bool {
        self.job.as_ref().is_some_and(|j| !j.is_finished())
    }

    /// One frame: events in, drawing, actions out.
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let t0 = Instant::now();
        if let Some(last) = self.last_frame {
            if self.running() {
                self.frames.interval_ms.push(t0.duration_since(last).as_secs_f64() * 1e3);
            }
        }
        self.last_frame = Some(t0);
        self.drain();
        super::view::draw(self, ui);
        let actions = std::mem::take(&mut self.actions);
        for a in actions {
            self.apply(a);
        }
        if self.running() || self.busy.is_some() {
            // keep the plot and the progress moving between worker events
            ui.ctx().request_repaint_after(Duration::from_millis(100));
        }
        self.frames.build_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }

    /// Take everything the workers and dialogs sent since the last frame.
    fn drain(&mut self) {
        let mut events = Vec::new();
        if let Some(j) = &self.job {
            while let Ok(e) = j.events.try_recv() {
                events.push(e);
            }
        }
        for e in events {
            self.on_event(e);
        }
        while let Ok(r) = self.worker.replies.try_recv() {
            self.on_reply(r);
        }
        while let Ok((what, path)) = self.dialogs.1.try_recv() {
            match (what, path) {
                (_, None) => self.info("no file chosen (if no dialog appeared, type the path into the box instead)"),
                (DialogFor::Model, Some(p)) => self.actions.push(Action::OpenModel(p)),
                (DialogFor::Calib, Some(p)) => self.settings.calib_file = p.display().to_string(),
                (DialogFor::Import, Some(p)) => {
                    if !self.settings.imports.contains(&p) {
                        self.settings.imports.push(p);
                    }
                }
                (DialogFor::Run, Some(p)) => self.resume_path = p.display().to_string(),
                (DialogFor::Export, Some(p)) => {
                    self.export_path = p.display().to_string();
                    if let Some(s) = self.selected.clone() {
                        self.actions.push(Action::Export(s, self.export_kind, Some(p)));
                    }
                }
            }
        }
    }

    pub fn on_event(&mut self, e: Event) {
        match e {
            Event::Started { run_dir, device, layers, resumed, .. } => {
                self.run_layers = layers;
                self.info(format!("{} search in {} on {device}", if resumed { "resumed" } else { "started" }, run_dir.display()));
                self.run_dir = Some(run_dir.clone());
                remember(&mut self.settings.recent_runs, run_dir);
            }
            Event::Stage { message } => {
                self.info(message.clone());
                self.stage = Some(message);
            }
            Event::Baselines { solutions } => {
                self.info(format!("{} baseline solutions (LaCo, ShortGPT)", solutions.len()));
                self.baselines = solutions;
            }
            Event::Evaluated { evaluation } => self.add_point(&evaluation),
            Event::Progress(p) => {
                self.stage = None;
                self.paused = p.paused;
                self.progress = Some(p);
            }
            Event::Generation { generation, front, hypervolume, .. } => {
                self.front = front;
                self.hypervolume.push([generation as f64, hypervolume]);
                if self.launch.select_best && self.selected.is_none() {
                    self.select_best();
                }
            }
            Event::Done { reason, front, candidates, run_dir } => {
                self.front = front;
                self.candidates = candidates;
                self.stage = None;
                self.info(format!("search ended ({reason:?}); {} solutions on the front; run folder {}", self.front.len(), run_dir.display()));
                self.banner = Some((false, format!("Search finished: {} solutions on the front", self.front.len())));
            }
            Event::Failed { error, run_dir } => {
                self.stage = None;
                let where_ = run_dir.map(|d| format!(" (what was evaluated is kept in {})", d.display())).unwrap_or_default();
                self.error(format!("search failed: {}{where_}", crate::words(&error)));
            }
        }
    }

    fn add_point(&mut self, e: &EvaluatedPlan) {
        if !self.seen.insert(e.key.clone()) {
            return;
        }
        self.points.push(Point {
            compression: e.result.compression,
            fitness: e.result.fitness,
            generation: e.generation,
            merges: e.merges.clone(),
            result: e.result.clone(),
        });
    }

    pub fn on_reply(&mut self, r: Reply) {
        match r {
            Reply::Busy { what } => {
                self.busy = Some(what);
                self.task_progress = None;
            }
            Reply::Progress { done, total, what } => self.task_progress = Some((done, total, what)),
            Reply::Idle => {
                self.busy = None;
                self.task_progress = None;
            }
            Reply::Card(Ok(card)) => {
                self.info(format!("opened {} ({}, {} layers)", card.path.display(), card.architecture, card.layers));
                remember(&mut self.settings.recent_models, card.path.clone());
                self.settings.target_removed = self.settings.target_removed.min(card.layers.saturating_sub(1));
                self.card = Some(Ok(card));
            }
            Reply::Card(Err(e)) => {
                self.error(format!("cannot open the model: {e}"));
                self.card = Some(Err(e));
            }
            Reply::Perplexity { label, result } => {
                match &result {
                    Ok(p) => self.info(format!("perplexity of {label}: {p:.3}")),
                    Err(e) => self.error(format!("perplexity of {label}: {e}")),
                }
                self.measured.entry(label).or_default().perplexity = Some(result);
            }
            Reply::Benchmark { label, result } => {
                match &result {
                    Ok(s) => {
                        let t: Vec<String> = s.iter().map(|s| format!("{} {:.1}%", s.task, 100.0 * s.acc)).collect();
                        self.info(format!("benchmarks of {label}: {}", t.join(", ")));
                    }
                    Err(e) => self.error(format!("benchmarks of {label}: {e}")),
                }
                self.measured.entry(label).or_default().benchmarks = Some(result);
            }
            Reply::Generated { label, result } => {
                if let Err(e) = &result {
                    self.error(format!("generation: {e}"));
                }
                if !label.is_empty() {
                    self.generated.insert(label, result);
                }
            }
            Reply::Exported(Ok((rep, verification))) => {
                if let Some(v) = verification {
                    self.info(format!(
                        "export checked: reloaded, max |logit difference| {:.2e} (logits up to {:.1}){}",
                        v.max_abs_logit_difference,
                        v.max_abs_logit,
                        if v.tokenizer_matches { "" } else { "; the exported tokenizer encodes differently" }
                    ));
                }
                let msg = format!(
                    "exported {} layers to {} ({:.1} MB, {} layers copied, {} merged)",
                    rep.layers,
                    rep.path.display(),
                    rep.bytes as f64 / 1e6,
                    rep.copied_layers,
                    rep.merged_layers
                );
                for n in &rep.notices {
                    self.info(format!("export: {n}"));
                }
                self.info(msg.clone());
                self.banner = Some((false, msg));
            }
            Reply::Exported(Err(e)) => self.error(format!("export failed: {e}")),
        }
    }

    fn model_path(&self) -> Option<PathBuf> {
        let p = self.settings.model.trim();
        if p.is_empty() { None } else { Some(PathBuf::from(p)) }
    }

    /// The model a solution builds: as its run built it (operator, settings, healing) when
    /// the run folder is known, else from its plan.
    fn target(&self, s: Option<&Solution>) -> Variant {
        let op = self.settings.merge_op.unwrap_or(gelaco::collapse::merge::DEFAULT_MERGE_OP);
        let Some(s) = s else {
            let layers = self.card.as_ref().and_then(|c| c.as_ref().ok()).map_or(0, |c| c.layers);
            return Variant::original(layers);
        };
        let from_run = self.run_dir.as_ref().and_then(|d| {
            let info = store::read_info(d).ok()?;
            Variant::from_run(d, &info, &s.result, s.label.clone()).ok()
        });
        from_run.unwrap_or_else(|| Variant::from_plan(s.label.clone(), s.plan(), op, MergeSettings::default()))
    }

    fn dialog(&self, what: DialogFor, save_name: Option<String>) {
        let tx = self.dialogs.0.clone();
        let ctx = self.ctx.clone();
        let _ = std::thread::Builder::new().name("gelaco-dialog".into()).spawn(move || {
            let d = rfd::FileDialog::new();
            if what == DialogFor::Import {
                for p in d.add_filter("recipe", &["json"]).pick_files().unwrap_or_default() {
                    let _ = tx.send((what, Some(p)));
                }
                ctx.request_repaint();
                return;
            }
            let path = match what {
                DialogFor::Import => None,
                DialogFor::Model => d.add_filter("GGUF model", &["gguf"]).pick_file(),
                DialogFor::Calib => d.add_filter("text", &["txt", "jsonl", "parquet"]).pick_file(),
                DialogFor::Run => d.pick_folder(),
                DialogFor::Export => d.set_file_name(save_name.unwrap_or_default()).save_file(),
            };
            let _ = tx.send((what, path));
            ctx.request_repaint();
        });
    }

    pub fn apply(&mut self, a: Action) {
        match a {
            Action::OpenModel(p) => {
                if self.running() {
                    self.error("stop the search before opening another model");
                    return;
                }
                self.settings.model = p.display().to_string();
                self.card = None;
                self.worker.send(Request::Inspect { model: p, device: self.settings.device });
            }
            Action::BrowseModel => self.dialog(DialogFor::Model, None),
            Action::BrowseCalib => self.dialog(DialogFor::Calib, None),
            Action::BrowseImport => self.dialog(DialogFor::Import, None),
            Action::BrowseRun => self.dialog(DialogFor::Run, None),
            Action::StartRun => self.start_run(),
            Action::Pause => {
                if let Some(j) = &self.job {
                    j.send(Command::Pause);
                    self.paused = true;
                }
            }
            Action::Resume => {
                if let Some(j) = &self.job {
                    j.send(Command::Resume);
                    self.paused = false;
                }
            }
            Action::Stop => {
                if let Some(j) = &self.job {
                    j.send(Command::Stop);
                    self.info("stopping after the current evaluation");
                }
            }
            Action::ResumeRun(dir) => self.resume_run(dir),
            Action::LoadRun(dir) => self.load_run(&dir),
            Action::Select(s) => self.selected = Some(s),
            Action::ToggleCompare(s) => {
                if let Some(i) = self.compare.iter().position(|c| c.merges == s.merges) {
                    self.compare.remove(i);
                } else {
                    self.compare.push(s);
                }
            }
            Action::ClearCompare => {
                self.compare.clear();
                self.generated.clear();
            }
            Action::MeasurePerplexity(s) => {
                let Some(model) = self.model_path() else { return self.error("open a model first") };
                let text = PathBuf::from(self.settings.eval_text.trim());
                let target = if s.merges.is_empty() { self.target(None) } else { self.target(Some(&s)) };
                self.worker.send(Request::Perplexity {
                    model,
                    device: self.settings.device,
                    target,
                    text,
                    window: 512,
                    windows: self.settings.eval_windows.max(1),
                });
            }
            Action::RunBenchmarks(s) => {
                let Some(model) = self.model_path() else { return self.error("open a model first") };
                let tasks = benchmark_tasks();
                if tasks.is_empty() {
                    return self.error("no benchmark data found: set GELACO_DATA to a folder with arc/, piqa/ and hellaswag/");
                }
                let target = if s.merges.is_empty() { self.target(None) } else { self.target(Some(&s)) };
                self.worker.send(Request::Benchmark { model, device: self.settings.device, target, tasks, limit: self.settings.bench_limit.max(1) });
            }
            Action::Cancel => self.worker.cancel(),
            Action::Generate => {
                let Some(model) = self.model_path() else { return self.error("open a model first") };
                let mut targets = vec![self.target(None)];
                targets.extend(self.compare.iter().map(|s| self.target(Some(s))));
                self.generated.clear();
                self.worker.send(Request::Generate {
                    model,
                    device: self.settings.device,
                    targets,
                    prompt: self.settings.prompt.clone(),
                    max_new_tokens: self.settings.max_new_tokens,
                    seed: self.settings.seed,
                });
            }
            Action::Export(s, kind, path) => {
                let Some(model) = self.model_path() else { return self.error("open a model first") };
                let out = match path.or_else(|| {
                    let t = self.export_path.trim();
                    (!t.is_empty()).then(|| PathBuf::from(t))
                }) {
                    Some(p) => p,
                    None => {
                        let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
                        let name = match kind {
                            ExportFormat::Gguf => format!("{stem}-{}L.gguf", s.result.remaining_layers),
                            ExportFormat::Hf => format!("{stem}-{}L", s.result.remaining_layers),
                        };
                        self.dialog(DialogFor::Export, Some(name));
                        return;
                    }
                };
                let target = self.target(Some(&s));
                self.worker.send(Request::Export { model, device: self.settings.device, target, kind, out, force: self.export_force });
            }
            Action::SaveRecipe(s) => self.save_recipe(&s),
        }
    }

    fn save_recipe(&mut self, s: &Solution) {
        let Some(dir) = &self.run_dir else { return self.error("recipes are saved into a run folder; start or load a run first") };
        let info = match store::read_info(dir) {
            Ok(i) => i,
            Err(e) => return self.error(format!("cannot read the run: {e}")),
        };
        let r = match gelaco::export::Recipe::from_run(dir, &info, &s.result, format!("GeLaCo Studio: {}", s.label)) {
            Ok(r) => r,
            Err(e) => return self.error(format!("cannot make the recipe: {}", crate::words(&e))),
        };
        let recipes = dir.join("recipes");
        let _ = std::fs::create_dir_all(&recipes);
        let path = recipes.join(format!("{}layers-{}.json", s.result.remaining_layers, s.merges.replace([':', ','], "_")));
        match r.save(&path, true) {
            Ok(()) => {
                let msg = format!("recipe saved to {}", path.display());
                self.info(msg.clone());
                self.banner = Some((false, msg));
            }
            Err(e) => self.error(format!("saving the recipe: {e}")),
        }
    }

    fn reset_run_view(&mut self) {
        self.points.clear();
        self.seen.clear();
        self.front.clear();
        self.candidates.clear();
        self.baselines.clear();
        self.hypervolume.clear();
        self.selected = None;
        self.progress = None;
        self.stage = None;
        self.paused = false;
    }

    fn start_run(&mut self) {
        if self.running() {
            return self.error("a search is already running");
        }
        let Some(model) = self.model_path() else { return self.error("open a model first") };
        let s = &self.settings;
        let calib = match s.calib_kind {
            CalibKind::SelfGenerated => CalibSource::SelfGenerated,
            CalibKind::File => {
                let p = PathBuf::from(s.calib_file.trim());
                if s.calib_file.trim().is_empty() {
                    return self.error("choose a calibration file, or self-generated calibration");
                }
                CalibSource::File(p)
            }
        };
        // the rest of a calibration file picks the recommended solutions
        let validation = (s.validation && matches!(calib, CalibSource::File(_))).then_some(ValidationSource::Rest);
        let settings = SearchSettings {
            mode: if s.pareto { Mode::Pareto } else { Mode::Single { target_removed: s.target_removed } },
            population: s.population.max(2),
            evaluations: s.evaluations.max(s.population.max(2)),
            seed: s.seed,
            init: s.init,
            merge_op: s.merge_op,
            fidelity: Some(s.fidelity.trim().to_string()).filter(|f| !f.is_empty()),
            ..SearchSettings::default()
        };
        let out = match &self.launch.out {
            Some(o) => o.clone(),
            None => {
                let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                PathBuf::from(s.runs_dir.trim()).join(format!("run-{stamp}"))
            }
        };
        if let Some(parent) = out.parent() {
            if let Err(e) = std::fs::create_dir_all(parent) {
                return self.error(format!("cannot create the runs folder {}: {e}", parent.display()));
            }
        }
        let spec = JobSpec::New {
            model,
            device: s.device,
            calib,
            calib_options: CalibOptions {
                samples: s.samples.max(1),
                max_tokens: s.max_tokens.max(8),
                seed: s.seed,
                ..CalibOptions::default()
            },
            engine: EngineOptions { objective: s.objective, heal: s.heal, ..EngineOptions::default() },
            settings,
            out,
            baselines: s.baselines,
            validation: validation.map(|v| (v, ValidationOptions::default())),
            import: s.imports.clone(),
        };
        let heal = s.heal;
        self.reset_run_view();
        self.run_heal = heal;
        self.spawn(spec);
    }

    fn spawn(&mut self, spec: JobSpec) {
        let ctx = self.ctx.clone();
        self.searches_started += 1;
        self.stage = Some("starting".into());
        self.job = Some(job::spawn(spec, Some(Arc::new(move || ctx.request_repaint()))));
    }

    fn resume_run(&mut self, dir: PathBuf) {
        if self.running() {
            return self.error("a search is already running");
        }
        self.load_run(&dir);
        let model = self.model_path().filter(|p| p.exists());
        self.spawn(JobSpec::Resume { dir, device: self.settings.device, model, evaluations: None });
    }

    /// Show a run folder's evaluations, front and baselines (without running it).
    fn load_run(&mut self, dir: &Path) {
        let info = match store::read_info(dir) {
            Ok(i) => i,
            Err(e) => return self.error(format!("not a run folder: {e}")),
        };
        self.reset_run_view();
        self.run_dir = Some(dir.to_path_buf());
        self.run_layers = info.model.layers;
        if let Ok(text) = std::fs::read_to_string(dir.join("evaluations.jsonl")) {
            for line in text.lines() {
                if let Ok(e) = serde_json::from_str::<EvaluatedPlan>(line) {
                    self.add_point(&e);
                }
            }
        }
        self.front = store::read_front(dir).unwrap_or_default();
        self.candidates = store::read_candidates(dir).unwrap_or_default();
        self.baselines = store::read_baselines(dir).unwrap_or_default();
        if let Ok(text) = std::fs::read_to_string(dir.join("checkpoint.json")) {
            if let Ok(cp) = serde_json::from_str::<store::Checkpoint>(&text) {
                self.hypervolume = cp.hypervolume.iter().enumerate().map(|(g, h)| [g as f64, *h]).collect();
            }
        }
        self.run_heal = info.engine.heal;
        if self.settings.model.trim().is_empty() || !Path::new(self.settings.model.trim()).exists() {
            self.settings.model = info.model.path.display().to_string();
        }
        remember(&mut self.settings.recent_runs, dir.to_path_buf());
        if self.launch.select_best {
            self.select_best();
        }
        self.info(format!("loaded {} ({:?}): {} evaluations, {} on the front", dir.display(), info.status, self.points.len(), self.front.len()));
    }

    /// Select the front solution of highest fitness among those that remove at least a
    /// fifth of the layers (or the most compressed one, when none does).
    pub fn select_best(&mut self) {
        let best = self
            .front
            .iter()
            .enumerate()
            .filter(|(_, e)| e.result.compression >= 0.2)
            .max_by(|a, b| a.1.result.fitness.total_cmp(&b.1.result.fitness))
            .or_else(|| self.front.iter().enumerate().max_by(|a, b| a.1.result.compression.total_cmp(&b.1.result.compression)));
        if let Some((i, e)) = best {
            self.selected = Some(Solution::from_front(i, e));
        }
    }

    /// Select a front entry or baseline by its index in the drawing order.
    pub fn select_front(&mut self, i: usize) {
        if let Some(e) = self.front.get(i) {
            self.selected = Some(Solution::from_front(i, e));
        }
    }

    pub fn select_point(&mut self, i: usize) {
        if let Some(p) = self.points.get(i) {
            self.selected = Some(Solution::from_point(p));
        }
    }

    pub fn select_baseline(&mut self, i: usize) {
        if let Some(b) = self.baselines.get(i) {
            self.selected = Some(Solution::from_baseline(b));
        }
    }

    /// Median and worst of the frame figures, as text.
    pub fn frame_summary(&self) -> String {
        fn stats(v: &[f64]) -> (f64, f64) {
            if v.is_empty() {
                return (0.0, 0.0);
            }
            let mut s = v.to_vec();
            s.sort_by(f64::total_cmp);
            (s[s.len() / 2], s[s.len() - 1])
        }
        let (bm, bw) = stats(&self.frames.build_ms);
        let (im, iw) = stats(&self.frames.interval_ms);
        format!(
            "frames {}: build median {bm:.2} ms, worst {bw:.2} ms; while searching {} frames, interval median {im:.1} ms, worst {iw:.1} ms",
            self.frames.build_ms.len(),
            self.frames.interval_ms.len()
        )
    }
}

/// The benchmark files beside the program (ARC-Easy, PIQA, HellaSwag).
/// The benchmark tasks the window scores: the full files under `GELACO_DATA` where they
/// exist, else the 100 ARC-Easy questions shipped in `assets/data`.
pub fn benchmark_tasks() -> Vec<(String, PathBuf)> {
    let full: Vec<(String, PathBuf)> = match benchmark_data_dir() {
        Some(d) => [
            ("arc_easy", d.join("arc/ARC-Easy-Test.jsonl")),
            ("piqa", d.join("piqa/dev.jsonl")),
            ("hellaswag", d.join("hellaswag/hellaswag_val_full.txt")),
        ]
        .into_iter()
        .filter(|(_, p)| p.exists())
        .map(|(n, p)| (n.to_string(), p))
        .collect(),
        None => Vec::new(),
    };
    if !full.is_empty() {
        return full;
    }
    bundled_data_dir().map(|d| vec![("arc_easy (first 100)".to_string(), d.join("arc-easy-test-100.jsonl"))]).unwrap_or_default()
}

fn remember(list: &mut Vec<PathBuf>, p: PathBuf) {
    list.retain(|x| x != &p);
    list.insert(0, p);
    list.truncate(8);
}

/// The eframe shell around [`App`]: settings storage and the frame loop.
pub struct Shell {
    pub app: App,
    frame_stats: Option<PathBuf>,
    exit_after: Option<Duration>,
}

pub const SETTINGS_KEY: &str = "gelaco-settings";

impl Shell {
    pub fn new(cc: &eframe::CreationContext<'_>, launch: Launch, frame_stats: Option<PathBuf>, exit_after: Option<Duration>) -> Self {
        let stored = if launch.ephemeral { None } else { cc.storage.and_then(|s| eframe::get_value::<Settings>(s, SETTINGS_KEY)) };
        Shell { app: App::new(&cc.egui_ctx, stored, launch), frame_stats, exit_after }
    }
}

impl eframe::App for Shell {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.app.frame(ui);
        if let Some(limit) = self.exit_after {
            if self.app.started.elapsed() >= limit {
                if let Some(j) = &self.app.job {
                    j.send(Command::Stop);
                }
                ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
            }
            ui.ctx().request_repaint_after(Duration::from_millis(200));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if !self.app.launch.ephemeral {
            eframe::set_value(storage, SETTINGS_KEY, &self.app.settings);
        }
    }

    fn on_exit(&mut self) {
        // stop a running search and give it a moment to record its state in the run folder
        if let Some(j) = &self.app.job {
            j.send(Command::Stop);
            let start = Instant::now();
            while !j.is_finished() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        eprintln!("{}", self.app.frame_summary());
        if let Some(p) = &self.frame_stats {
            if let Ok(text) = serde_json::to_vec_pretty(&self.app.frames) {
                let _ = gelaco::util::write_atomic(p, &text);
            }
        }
    }
}
