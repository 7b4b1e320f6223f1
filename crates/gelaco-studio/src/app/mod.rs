//! The window's state and its frame loop: drain worker events, draw, apply the commands
//! the drawing emitted. Nothing here waits on a worker.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::worker::{ModelCard, Placement, Reply, Request, Worker};
use gelaco::export::{ExportFormat, Variant};
use gelaco::backend::{DeviceChoice, Precision};
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

mod run;
mod settings;
mod shell;
mod solution;
mod state;

pub use settings::*;
pub use shell::*;
pub use solution::*;
pub use state::*;

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
    /// The run shown: its folder, what it evaluated and found, and the search's progress.
    pub run: RunView,
    /// The plot panel's choices.
    pub plot: PlotOptions,
    pub selected: Option<Solution>,
    /// The model lab: what was measured, generated and compared of the solutions.
    pub lab: Lab,
    pub worker: Worker,
    pub log: VecDeque<LogLine>,
    pub banner: Option<(bool, String)>,
    pub tab: Tab,
    /// The inspector's export form.
    pub export: ExportForm,
    /// The run folder the settings panel's Resume button continues.
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
            run: RunView::default(),
            plot: PlotOptions::default(),
            selected: None,
            lab: Lab::default(),
            worker,
            log: VecDeque::new(),
            banner: None,
            tab: Tab::Front,
            export: ExportForm::default(),
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
        if self.running() || self.lab.busy.is_some() {
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
                    self.export.path = p.display().to_string();
                    if let Some(s) = self.selected.clone() {
                        self.actions.push(Action::Export(s, self.export.format, Some(p)));
                    }
                }
            }
        }
    }

    pub fn on_reply(&mut self, r: Reply) {
        match r {
            Reply::Busy { what } => {
                self.lab.busy = Some(what);
                self.lab.task_progress = None;
            }
            Reply::Progress { done, total, what } => self.lab.task_progress = Some((done, total, what)),
            Reply::Idle => {
                self.lab.busy = None;
                self.lab.task_progress = None;
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
                self.lab.measured.entry(label).or_default().perplexity = Some(result);
            }
            Reply::Benchmark { label, result } => {
                match &result {
                    Ok(s) => {
                        let t: Vec<String> = s.iter().map(|s| format!("{} {:.1}%", s.task, 100.0 * s.acc)).collect();
                        self.info(format!("benchmarks of {label}: {}", t.join(", ")));
                    }
                    Err(e) => self.error(format!("benchmarks of {label}: {e}")),
                }
                self.lab.measured.entry(label).or_default().benchmarks = Some(result);
            }
            Reply::Generated { label, result } => {
                if let Err(e) = &result {
                    self.error(format!("generation: {e}"));
                }
                if !label.is_empty() {
                    self.lab.generated.insert(label, result);
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
        let from_run = self.run.dir.as_ref().and_then(|d| {
            let info = store::read_info(d).ok()?;
            Variant::from_run(d, &info, &s.result, s.healed(), s.label.clone()).ok()
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
                let Some(place) = self.placement() else { return };
                self.worker.send(Request::Inspect { model: p, place });
            }
            Action::BrowseModel => self.dialog(DialogFor::Model, None),
            Action::BrowseCalib => self.dialog(DialogFor::Calib, None),
            Action::BrowseImport => self.dialog(DialogFor::Import, None),
            Action::BrowseRun => self.dialog(DialogFor::Run, None),
            Action::StartRun => self.start_run(),
            Action::Pause => {
                if let Some(j) = &self.job {
                    j.send(Command::Pause);
                    self.run.paused = true;
                }
            }
            Action::Resume => {
                if let Some(j) = &self.job {
                    j.send(Command::Resume);
                    self.run.paused = false;
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
                if let Some(i) = self.lab.compare.iter().position(|c| c.merges == s.merges) {
                    self.lab.compare.remove(i);
                } else {
                    self.lab.compare.push(s);
                }
            }
            Action::ClearCompare => {
                self.lab.compare.clear();
                self.lab.generated.clear();
            }
            Action::MeasurePerplexity(s) => {
                let Some(model) = self.model_path() else { return self.error("open a model first") };
                let text = PathBuf::from(self.settings.eval_text.trim());
                let target = if s.merges.is_empty() { self.target(None) } else { self.target(Some(&s)) };
                let Some(place) = self.placement() else { return };
                self.worker.send(Request::Perplexity {
                    model,
                    place,
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
                let Some(place) = self.placement() else { return };
                self.worker.send(Request::Benchmark { model, place, target, tasks, limit: self.settings.bench_limit.max(1) });
            }
            Action::Cancel => self.worker.cancel(),
            Action::Generate => {
                let Some(model) = self.model_path() else { return self.error("open a model first") };
                let mut targets = vec![self.target(None)];
                targets.extend(self.lab.compare.iter().map(|s| self.target(Some(s))));
                let Some(place) = self.placement() else { return };
                self.lab.generated.clear();
                self.worker.send(Request::Generate {
                    model,
                    place,
                    targets,
                    prompt: self.settings.prompt.clone(),
                    max_new_tokens: self.settings.max_new_tokens,
                    seed: self.settings.seed,
                });
            }
            Action::Export(s, kind, path) => {
                let Some(model) = self.model_path() else { return self.error("open a model first") };
                let out = match path.or_else(|| {
                    let t = self.export.path.trim();
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
                let Some(place) = self.placement() else { return };
                let target = self.target(Some(&s));
                self.worker.send(Request::Export { model, place, target, kind, out, force: self.export.force });
            }
            Action::SaveRecipe(s) => self.save_recipe(&s),
        }
    }

    /// Where the model runs, from the run settings; `None` (with the error shown) when the
    /// memory budget is not a size.
    pub(super) fn placement(&mut self) -> Option<Placement> {
        match self.settings.memory_budget() {
            Ok(memory_budget) => Some(Placement { device: self.settings.device, memory_budget }),
            Err(e) => {
                self.error(e);
                None
            }
        }
    }

    fn save_recipe(&mut self, s: &Solution) {
        let Some(dir) = &self.run.dir else { return self.error("recipes are saved into a run folder; start or load a run first") };
        let info = match store::read_info(dir) {
            Ok(i) => i,
            Err(e) => return self.error(format!("cannot read the run: {e}")),
        };
        let r = match gelaco::export::Recipe::from_run(dir, &info, &s.result, s.healed(), format!("GeLaCo Studio: {}", s.label)) {
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
