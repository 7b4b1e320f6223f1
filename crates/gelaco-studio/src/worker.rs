//! The window's second worker: everything except the search that needs the model
//! (the model card, perplexity, benchmarks, side-by-side generation, export). One thread,
//! one request at a time, the loaded model kept between requests; every long request
//! reports progress and can be cancelled.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use gelaco::backend::{self, DeviceChoice};
use gelaco::error::{Error, Result};
use gelaco::eval::choice::{self, ChoiceOptions, Task, TaskScore};
use gelaco::eval::generate::{GenerateOptions, generate};
use gelaco::eval::perplexity::perplexity;
use gelaco::export::{ExportFormat, ExportReport, ExportRequest, Variant, Verification};
use gelaco::model::weights::ModelFiles;
use gelaco::model::{self, LoadedModel};
use gelaco::run::store::ModelIdentity;

/// What the model card shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    pub path: PathBuf,
    pub architecture: String,
    pub layers: usize,
    pub parameters: usize,
    pub hidden: usize,
    pub storage: String,
    pub types: String,
    pub file_bytes: u64,
    pub device: String,
    /// What the model needs in memory, and the budget it runs under.
    pub memory: String,
    pub budget: Option<String>,
}

/// Where a request's model runs: the device, and the memory budget it is loaded under
/// (`None`: what the machine reports available, or a discrete GPU's own memory where that
/// is less, less a quarter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub device: DeviceChoice,
    pub memory_budget: Option<u64>,
}

impl Placement {
    fn select(self) -> Result<backend::ComputeDevice> {
        let mut d = backend::select(self.device)?;
        d.memory_budget = self.memory_budget;
        Ok(d)
    }
}

/// A request to the worker.
#[derive(Debug, Clone)]
pub enum Request {
    Inspect { model: PathBuf, place: Placement },
    Perplexity { model: PathBuf, place: Placement, target: Variant, text: PathBuf, window: usize, windows: usize },
    Benchmark { model: PathBuf, place: Placement, target: Variant, tasks: Vec<(String, PathBuf)>, limit: usize },
    Generate { model: PathBuf, place: Placement, targets: Vec<Variant>, prompt: String, max_new_tokens: usize, seed: u64 },
    Export { model: PathBuf, place: Placement, target: Variant, kind: ExportFormat, out: PathBuf, force: bool },
}

impl Request {
    pub fn describe(&self) -> String {
        match self {
            Request::Inspect { model, .. } => format!("opening {}", model.display()),
            Request::Perplexity { target, .. } => format!("perplexity of {}", target.label),
            Request::Benchmark { target, .. } => format!("benchmarks of {}", target.label),
            Request::Generate { targets, .. } => format!("generating with {} models", targets.len()),
            Request::Export { out, .. } => format!("exporting to {}", out.display()),
        }
    }
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum Reply {
    Busy { what: String },
    Progress { done: usize, total: usize, what: String },
    Card(std::result::Result<ModelCard, String>),
    Perplexity { label: String, result: std::result::Result<f64, String> },
    Benchmark { label: String, result: std::result::Result<Vec<TaskScore>, String> },
    Generated { label: String, result: std::result::Result<String, String> },
    Exported(std::result::Result<(ExportReport, Option<Verification>), String>),
    Idle,
}

/// The handle the window holds.
pub struct Worker {
    requests: Sender<Request>,
    pub replies: Receiver<Reply>,
    cancel: Arc<AtomicBool>,
}

impl Worker {
    /// Start the worker; `repaint` is called after every reply.
    pub fn spawn(repaint: Arc<dyn Fn() + Send + Sync>) -> Self {
        let (rtx, rrx) = channel::<Request>();
        let (ptx, prx) = channel::<Reply>();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let _ = std::thread::Builder::new().name("gelaco-tools".into()).spawn(move || {
            // the device list of the run settings, found once away from the window's thread
            let _ = std::panic::catch_unwind(gelaco::backend::adapters);
            let mut state = State { loaded: None, cancel: flag };
            let send = |r: Reply| {
                let _ = ptx.send(r);
                repaint();
            };
            while let Ok(req) = rrx.recv() {
                state.cancel.store(false, Ordering::SeqCst);
                send(Reply::Busy { what: req.describe() });
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.handle(req.clone(), &send)));
                if let Err(p) = outcome {
                    state.loaded = None;
                    send(failure(&req, crate::words(&Error::from_panic("model", p.as_ref()))));
                }
                send(Reply::Idle);
            }
        });
        Worker { requests: rtx, replies: prx, cancel }
    }

    pub fn send(&self, r: Request) {
        let _ = self.requests.send(r);
    }

    /// Ask the running request to stop at its next check.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// The failure reply of a request.
fn failure(req: &Request, msg: String) -> Reply {
    match req {
        Request::Inspect { .. } => Reply::Card(Err(msg)),
        Request::Perplexity { target, .. } => Reply::Perplexity { label: target.label.clone(), result: Err(msg) },
        Request::Benchmark { target, .. } => Reply::Benchmark { label: target.label.clone(), result: Err(msg) },
        Request::Generate { .. } => Reply::Generated { label: String::new(), result: Err(msg) },
        Request::Export { .. } => Reply::Exported(Err(msg)),
    }
}

struct State {
    loaded: Option<(PathBuf, Placement, LoadedModel)>,
    cancel: Arc<AtomicBool>,
}

impl State {
    fn model(&mut self, path: &PathBuf, place: Placement) -> Result<&LoadedModel> {
        let fresh = !matches!(&self.loaded, Some((p, d, _)) if p == path && *d == place);
        if fresh {
            self.loaded = None;
            let m = model::load(path, place.select()?)?;
            self.loaded = Some((path.clone(), place, m));
        }
        Ok(&self.loaded.as_ref().expect("loaded above").2)
    }

    fn handle(&mut self, req: Request, send: &dyn Fn(Reply)) {
        let reply = match self.run(&req, send) {
            Ok(r) => r,
            Err(e) => failure(&req, crate::words(&e)),
        };
        send(reply);
    }

    fn run(&mut self, req: &Request, send: &dyn Fn(Reply)) -> Result<Reply> {
        let cancel = self.cancel.clone();
        match req {
            Request::Inspect { model, place } => {
                let files = ModelFiles::open(model)?;
                let c = &files.config;
                let (storage, types) = files.storage_summary();
                let mut types: Vec<(String, usize)> = types.into_iter().collect();
                types.sort_by(|a, b| b.1.cmp(&a.1));
                let d = place.select()?;
                let memory = gelaco::model::estimate_memory(&files, d.memory_budget, gelaco::model::Available::on(&d), d.codes_on_device);
                Ok(Reply::Card(Ok(ModelCard {
                    path: model.clone(),
                    architecture: c.arch.name().to_string(),
                    layers: c.num_layers,
                    parameters: c.total_params(),
                    hidden: c.hidden_size,
                    storage,
                    types: types.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join(", "),
                    file_bytes: files.file_bytes(),
                    device: d.description,
                    memory: memory.need_text(),
                    budget: memory.budget_text(),
                })))
            }
            Request::Perplexity { model, place, target, text, window, windows } => {
                let content = std::fs::read_to_string(text).map_err(|e| Error::io(text, e))?;
                let m = self.model(model, *place)?;
                let ids = m.tokenizer.encode(&content)?;
                let compressed = target.build(&m.model)?;
                let what = format!("perplexity of {}", target.label);
                let r = perplexity(&compressed, &ids, *window, Some(*windows), |done, total| {
                    send(Reply::Progress { done, total, what: what.clone() });
                    !cancel.load(Ordering::SeqCst)
                })?;
                Ok(Reply::Perplexity { label: target.label.clone(), result: Ok(r.perplexity) })
            }
            Request::Benchmark { model, place, target, tasks, limit } => {
                let loaded: Vec<Task> =
                    tasks.iter().map(|(n, p)| Task::load(n, p, Some(*limit))).collect::<Result<_>>()?;
                let m = self.model(model, *place)?;
                let compressed = target.build(&m.model)?;
                let mut scores = Vec::new();
                for t in &loaded {
                    let what = format!("{} on {}", t.name, target.label);
                    let s = choice::evaluate(&compressed, &m.tokenizer, t, ChoiceOptions::default(), |d, total| {
                        send(Reply::Progress { done: d, total, what: what.clone() });
                        !cancel.load(Ordering::SeqCst)
                    })?;
                    scores.push(s);
                }
                Ok(Reply::Benchmark { label: target.label.clone(), result: Ok(scores) })
            }
            Request::Generate { model, place, targets, prompt, max_new_tokens, seed } => {
                let m = self.model(model, *place)?;
                let ids = m.tokenizer.encode_prompt(prompt, true)?;
                let opts = GenerateOptions { max_new_tokens: *max_new_tokens, temperature: 0.0, seed: *seed, stop_at_eos: true };
                for (k, t) in targets.iter().enumerate() {
                    if cancel.load(Ordering::SeqCst) {
                        return Err(Error::Cancelled);
                    }
                    send(Reply::Progress { done: k, total: targets.len(), what: format!("generating with {}", t.label) });
                    let compressed = t.build(&m.model)?;
                    let result = generate(&compressed, &m.tokenizer, &ids, &opts, |_| {}).map(|g| g.text).map_err(|e| crate::words(&e));
                    send(Reply::Generated { label: t.label.clone(), result });
                }
                Ok(Reply::Idle)
            }
            Request::Export { model, place, target, kind, out, force } => {
                let m = self.model(model, *place)?;
                let mut recipe = target.recipe(ModelIdentity::of(&m.files)?);
                recipe.origin = format!("GeLaCo Studio: {}", target.label);
                send(Reply::Progress { done: 0, total: 1, what: format!("writing and checking {}", out.display()) });
                let request = ExportRequest { force: *force, ..ExportRequest::new(*kind, out.clone()) };
                Ok(Reply::Exported(Ok(gelaco::export::export_variant(m, target, &recipe, &request)?)))
            }
        }
    }
}
