//! A worker: pulls evaluation jobs of every run described on the broker, evaluates them on
//! its device with the engine a local search uses, publishes each result and only then
//! acknowledges its job.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures_util::{FutureExt, StreamExt};
use serde::Serialize;

use super::{Connection, JobMessage, MAX_JOB_BYTES, NatsSettings, RUNS_STREAM, RunSpec, WORKERS_STREAM, WorkerStatus, check_job, decode};
use crate::backend::DeviceChoice;
use crate::error::{Error, Result};
use crate::fitness::FitnessEngine;
use crate::fitness::calibration::{CalibOptions, CalibSource, Calibration};
use crate::model::LoadedModel;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub nats: NatsSettings,
    pub device: DeviceChoice,
    pub memory_budget: Option<u64>,
    /// How it is named in statuses and results (default: host and device).
    pub name: Option<String>,
    /// Model files it may use, found by SHA-256 (a run's own path is tried otherwise).
    pub models: Vec<PathBuf>,
}

/// What a worker reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    Connected { server: String, name: String, device: String },
    /// A job taken.
    Job { run: String, key: String, tokens: Option<usize>, delivered: i64 },
    /// A job's result published, and the job acknowledged.
    Evaluated { run: String, key: String, tokens: Option<usize>, seconds: f64 },
    /// A run this worker cannot serve (its model differs, or is not there); its jobs are
    /// left to other workers.
    Refused { run: String, reason: String },
    /// A message that was not a usable job, and why; it is not delivered again.
    Rejected { reason: String },
    /// The worker ended (asked to stop, after finishing its job).
    Stopped { evaluations: usize },
}

/// A run this worker serves.
struct Served {
    spec: RunSpec,
    jobs: jetstream::consumer::PullConsumer,
    /// Jobs waiting, as last seen.
    pending: u64,
    /// Its job consumer was made within the last hour (a run that is starting, rather than
    /// one that ended days ago).
    fresh: bool,
}

/// The model it holds, and the engines built on it by calibration hash.
struct Loaded {
    sha256: String,
    model: LoadedModel,
    engines: HashMap<String, FitnessEngine>,
}

/// The model files whose hashes are known, and the model held with its engines.
struct Holding {
    known: HashMap<PathBuf, String>,
    loaded: Option<Loaded>,
}

impl Holding {
    /// The run's model loaded and its engine built (`Err`: why this worker cannot serve it);
    /// `true` when either had to be done now.
    fn ready(&mut self, spec: &RunSpec, models: &[PathBuf], device: &crate::backend::ComputeDevice) -> std::result::Result<bool, String> {
        let mut work = false;
        if self.loaded.as_ref().is_none_or(|l| l.sha256 != spec.model_sha256) {
            work = true;
            self.loaded = None;
            self.loaded = Some(load_model(spec, models, &mut self.known, device)?);
        }
        let l = self.loaded.as_mut().expect("loaded above");
        if l.model.model.num_layers() != spec.layers {
            return Err(format!("run {} describes a model of {} layers where its file has {}", spec.run, spec.layers, l.model.model.num_layers()));
        }
        if !l.engines.contains_key(&spec.calibration_hash) {
            spec.engine.check().map_err(|m| format!("run {} describes engine settings that cannot be used: {m}", spec.run))?;
            let calibration = Calibration::from_samples(spec.samples.clone(), CalibSource::SelfGenerated, CalibOptions::default());
            if calibration.hash != spec.calibration_hash {
                return Err(format!("run {} describes calibration tokens whose hash is not the one it names", spec.run));
            }
            let engine = FitnessEngine::new(&l.model.model, calibration, spec.engine).map_err(|e| e.to_string())?;
            l.engines.insert(spec.calibration_hash.clone(), engine);
            work = true;
        }
        Ok(work)
    }

    /// [`Holding::ready`], adding the time it took to `startup[run]` when it had work to do.
    fn ready_timed(&mut self, spec: &RunSpec, models: &[PathBuf], device: &crate::backend::ComputeDevice, startup: &mut HashMap<String, f64>) -> std::result::Result<(), String> {
        let start = Instant::now();
        if self.ready(spec, models, device)? {
            *startup.entry(spec.run.clone()).or_default() += start.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// The engine of a run made [`Holding::ready`].
    fn engine(&self, spec: &RunSpec) -> &FitnessEngine {
        &self.loaded.as_ref().expect("ready").engines[&spec.calibration_hash]
    }
}

/// The job a worker is evaluating, which can be handed back to the queue from another
/// thread (a second Ctrl-C): it goes to another worker at once instead of when its
/// acknowledgement wait runs out.
#[derive(Clone, Default)]
pub struct CurrentJob(Arc<Mutex<Option<(Arc<jetstream::message::Acker>, async_nats::Client, tokio::runtime::Handle)>>>);

impl CurrentJob {
    fn set(&self, job: Option<(Arc<jetstream::message::Acker>, async_nats::Client, tokio::runtime::Handle)>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = job;
    }

    /// Hand the current job back (a negative acknowledgement); `true` when there was one
    /// and the server took it. Called from outside the worker's runtime.
    pub fn release(&self) -> bool {
        let Some((acker, client, handle)) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() else { return false };
        // sent before the process may end: the acknowledgement is only queued until flushed
        let nak = async {
            acker.ack_with(jetstream::AckKind::Nak(None)).await.map_err(|e| e.to_string())?;
            client.flush().await.map_err(|e| e.to_string())
        };
        handle.block_on(async { tokio::time::timeout(Duration::from_secs(5), nak).await }).is_ok_and(|r| r.is_ok())
    }
}

/// Serve jobs until `stop` is set; a job taken is finished (result published, job
/// acknowledged) before the worker ends.
pub fn run(options: &WorkerOptions, stop: &AtomicBool, on_event: &mut dyn FnMut(WorkerEvent)) -> Result<()> {
    run_with(options, stop, &CurrentJob::default(), on_event)
}

/// [`run`], showing the job being evaluated in `current`.
pub fn run_with(options: &WorkerOptions, stop: &AtomicBool, current: &CurrentJob, on_event: &mut dyn FnMut(WorkerEvent)) -> Result<()> {
    let mut device = crate::backend::select(options.device)?;
    device.memory_budget = options.memory_budget;
    let description = device.description.clone();
    let name = options.name.clone().unwrap_or_else(|| format!("{} {}", super::coordinator::hostname(), options.device));
    let conn = Connection::open(&options.nats, &format!("gelaco worker {name}"))?;
    let status = Arc::new(Mutex::new(WorkerStatus {
        name: name.clone(),
        device: description.clone(),
        state: "idle".into(),
        run: None,
        evaluations: 0,
        rate: 0.0,
        refused: Vec::new(),
    }));
    let status_subject = super::worker_subject(&status_key(&name));
    let reporter = {
        let status = status.clone();
        let subject = status_subject.clone();
        let js = conn.js.clone();
        conn.rt.spawn(async move {
            let mut interval = tokio::time::interval(super::STATUS_EVERY);
            loop {
                interval.tick().await;
                let bytes = serde_json::to_vec(&*status.lock().unwrap_or_else(|e| e.into_inner())).unwrap_or_default();
                if let Err(e) = js.publish(subject.clone(), bytes.into()).await {
                    tracing::debug!("worker status: {e}");
                }
            }
        })
    };
    on_event(WorkerEvent::Connected { server: conn.server.clone(), name: name.clone(), device: description });
    let mut served: Vec<Served> = Vec::new();
    let mut refused: HashMap<String, String> = HashMap::new();
    let mut state = Holding { known: HashMap::new(), loaded: None };
    // start-up seconds of each run not reported yet: they go with its next result
    let mut startup: HashMap<String, f64> = HashMap::new();
    // runs described (or described again, as a resumed one is) wake the worker at once
    let mut announced = conn.rt.block_on(conn.client.subscribe(super::run_subject("*"))).map_err(|e| conn.broker("cannot follow the runs described", e))?;
    let mut looked = None::<Instant>;
    let mut busy = 0.0f64;
    let mut done = 0usize;
    let mut turn = 0usize;
    // the run whose jobs are being taken: fetched with a long wait, which returns as soon
    // as a job comes
    let mut active: Option<(String, Instant)> = None;
    let set = |f: &dyn Fn(&mut WorkerStatus)| f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
    let refuse = |served: &mut Vec<Served>, refused: &mut HashMap<String, String>, run: &str, reason: String, on_event: &mut dyn FnMut(WorkerEvent)| {
        refused.insert(run.to_string(), reason.clone());
        served.retain(|s| s.spec.run != run);
        set(&|s| {
            s.refused.push(format!("{run}: {reason}"));
            s.state = "idle".into();
        });
        on_event(WorkerEvent::Refused { run: run.to_string(), reason });
    };
    let outcome = (|| -> Result<()> {
        while !stop.load(Ordering::SeqCst) {
            let news = conn.rt.block_on(async { std::iter::from_fn(|| announced.next().now_or_never().flatten()).count() }) > 0;
            if news || looked.is_none_or(|t: Instant| t.elapsed() > Duration::from_secs(1)) {
                looked = Some(Instant::now());
                let new = discover(&conn, &mut served, &refused)?;
                // a new run's model and reference activations are made ready before its
                // first job is taken
                for run in new {
                    let Some(spec) = served.iter().find(|s| s.spec.run == run && (s.pending > 0 || s.fresh)).map(|s| s.spec.clone()) else { continue };
                    set(&|s| s.state = "loading".into());
                    if let Err(reason) = state.ready_timed(&spec, &options.models, &device, &mut startup) {
                        refuse(&mut served, &mut refused, &run, reason, on_event);
                    }
                    set(&|s| s.state = "idle".into());
                }
            }
            // another run with jobs waiting first, else a long wait on the run of the last job
            // (for a minute after it), which returns as soon as the next one comes
            let waiting = (1..=served.len()).map(|k| (turn + k) % served.len()).find(|&i| served[i].pending > 0);
            let recent = active
                .as_ref()
                .filter(|(_, at)| at.elapsed() < Duration::from_secs(60))
                .and_then(|(run, _)| served.iter().position(|s| &s.spec.run == run));
            let index = match (waiting, recent) {
                (Some(i), _) => Some((i, Duration::from_millis(200))),
                (None, Some(i)) => Some((i, Duration::from_millis(500))),
                (None, None) => None,
            };
            let Some((i, wait)) = index else {
                match conn.rt.block_on(async { tokio::time::timeout(Duration::from_millis(50), announced.next()).await }) {
                    Ok(Some(_)) => looked = None,
                    // the subscription ended: the polling goes on alone
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    Err(_) => {}
                }
                continue;
            };
            turn = i;
            let Some(message) = fetch(&conn, &served[i].jobs, wait)? else {
                served[i].pending = 0;
                continue;
            };
            active = Some((served[i].spec.run.clone(), Instant::now()));
            let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
            let (message, acker) = message.split();
            let acker = Arc::new(acker);
            let spec = served[i].spec.clone();
            let job = match decode::<JobMessage>(&message.payload, MAX_JOB_BYTES, "job").and_then(|j| check_job(&j, &spec).map(|_| j)) {
                Ok(j) => j,
                Err(reason) => {
                    tracing::warn!("refused {reason}");
                    let _ = conn.rt.block_on(acker.ack_with(jetstream::AckKind::Term));
                    on_event(WorkerEvent::Rejected { reason });
                    continue;
                }
            };
            set(&|s| s.state = "loading".into());
            let ready = super::with_progress(&conn, &acker, ack_every(&spec), || state.ready_timed(&spec, &options.models, &device, &mut startup));
            if let Err(reason) = ready {
                // left to the other workers
                let _ = conn.rt.block_on(acker.ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1)))));
                active = None;
                refuse(&mut served, &mut refused, &spec.run, reason, on_event);
                continue;
            }
            let engine = state.engine(&spec);
            set(&|s| {
                s.state = "evaluating".into();
                s.run = Some(spec.run.clone());
            });
            on_event(WorkerEvent::Job { run: spec.run.clone(), key: job.key.clone(), tokens: job.tokens, delivered });
            current.set(Some((acker.clone(), conn.client.clone(), conn.rt.handle().clone())));
            let start = Instant::now();
            let outcome = super::with_progress(&conn, &acker, ack_every(&spec), || super::evaluate_job(engine, &job));
            let seconds = start.elapsed().as_secs_f64();
            let result = super::result_message(&spec, &job, &name, seconds, startup.remove(&spec.run), outcome);
            current.set(None);
            conn.rt.block_on(super::publish_result(&conn, &result, &acker))?;
            busy += seconds;
            done += 1;
            set(&|s| {
                s.state = "idle".into();
                s.evaluations = done;
                s.rate = if busy > 0.0 { done as f64 / busy } else { 0.0 };
            });
            on_event(WorkerEvent::Evaluated { run: spec.run.clone(), key: job.key.clone(), tokens: job.tokens, seconds });
        }
        Ok(())
    })();
    reporter.abort();
    // the worker's status goes with it
    conn.rt.block_on(conn.forget(WORKERS_STREAM, &status_subject));
    outcome?;
    on_event(WorkerEvent::Stopped { evaluations: done });
    Ok(())
}

/// Progress reports at a third of the run's acknowledgement wait.
fn ack_every(spec: &RunSpec) -> Duration {
    let wait = if spec.ack_wait_seconds.is_finite() { spec.ack_wait_seconds } else { super::DEFAULT_ACK_WAIT.as_secs_f64() };
    Duration::from_secs_f64((wait / 3.0).clamp(0.2, 3600.0))
}

/// A key-value key for a worker's name (letters, digits, `-` and `_` kept).
fn status_key(name: &str) -> String {
    let key: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("{key}-{}", std::process::id())
}

/// Take in the runs described on the broker that this worker does not serve yet.
/// The runs taken in, by name.
fn discover(conn: &Connection, served: &mut Vec<Served>, refused: &HashMap<String, String>) -> Result<Vec<String>> {
    conn.rt.block_on(async {
        let mut new = Vec::new();
        let runs = match conn.last_values(RUNS_STREAM, "gelaco.runs.*").await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("runs: {e}");
                return Ok(new);
            }
        };
        for s in served.iter_mut() {
            s.pending = match s.jobs.get_info().await {
                // jobs held by workers count too: they come back when a worker dies
                Ok(info) => info.num_pending + info.num_ack_pending as u64,
                Err(e) => {
                    tracing::debug!("run {}: {e}", s.spec.run);
                    0
                }
            };
        }
        for (subject, bytes) in runs {
            let run = subject.trim_start_matches("gelaco.runs.").to_string();
            if served.iter().any(|s| s.spec.run == run) || refused.contains_key(&run) {
                continue;
            }
            let spec: RunSpec = match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("run {run}: a malformed description: {e}");
                    continue;
                }
            };
            if spec.run != run {
                tracing::warn!("run {run}: its description names run {}", spec.run);
                continue;
            }
            let Ok(stream) = conn.js.get_stream(super::JOBS_STREAM).await else { continue };
            match stream.get_consumer::<pull::Config>(&format!("jobs-{run}")).await {
                Ok(jobs) => {
                    let info = jobs.cached_info();
                    let pending = info.num_pending + info.num_ack_pending as u64;
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
                    let fresh = now - info.created.unix_timestamp() < 3600;
                    served.push(Served { spec, jobs, pending, fresh });
                    new.push(run);
                }
                Err(e) => tracing::debug!("run {run}: no job consumer yet: {e}"),
            }
        }
        Ok::<_, Error>(new)
    })
}

fn fetch(conn: &Connection, jobs: &jetstream::consumer::PullConsumer, wait: Duration) -> Result<Option<jetstream::Message>> {
    conn.rt.block_on(async {
        let mut batch = match jobs.fetch().max_messages(1).expires(wait).messages().await {
            Ok(b) => b,
            Err(e) => {
                // the server may be restarting: try again shortly
                tracing::debug!("fetching a job: {e}");
                tokio::time::sleep(wait).await;
                return Ok(None);
            }
        };
        match batch.next().await {
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => {
                tracing::debug!("fetching a job: {e}");
                Ok(None)
            }
            None => Ok(None),
        }
    })
}

/// The run's model: a given file of its SHA-256, else its own path when that file has it.
fn load_model(spec: &RunSpec, models: &[PathBuf], known: &mut HashMap<PathBuf, String>, device: &crate::backend::ComputeDevice) -> std::result::Result<Loaded, String> {
    let mut candidates: Vec<PathBuf> = models.to_vec();
    candidates.push(spec.model_path.clone());
    let mut why = Vec::new();
    for path in candidates {
        let sha = match known.get(&path) {
            Some(s) => s.clone(),
            None => match crate::model::weights::ModelFiles::open(&path).and_then(|f| f.sha256()) {
                Ok(s) => {
                    known.insert(path.clone(), s.clone());
                    s
                }
                Err(e) => {
                    why.push(e.to_string());
                    continue;
                }
            },
        };
        if sha != spec.model_sha256 {
            why.push(format!("{} has SHA-256 {}, not the run's {}", path.display(), crate::util::short_hash(&sha), crate::util::short_hash(&spec.model_sha256)));
            continue;
        }
        let model = crate::model::load(&path, device.clone()).map_err(|e| e.to_string())?;
        return Ok(Loaded { sha256: sha, model, engines: HashMap::new() });
    }
    Err(why.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ack_wait_seconds: f64) -> RunSpec {
        RunSpec {
            run: "r".into(),
            model_sha256: String::new(),
            model_path: PathBuf::new(),
            layers: 2,
            calibration_hash: String::new(),
            samples: Vec::new(),
            engine: crate::fitness::EngineOptions::default(),
            ack_wait_seconds,
        }
    }

    #[test]
    fn progress_is_reported_at_a_third_of_the_wait_whatever_a_run_describes() {
        assert_eq!(ack_every(&spec(30.0)), Duration::from_secs(10));
        assert_eq!(ack_every(&spec(f64::NAN)), Duration::from_secs(10));
        assert_eq!(ack_every(&spec(-5.0)), Duration::from_millis(200));
        assert_eq!(ack_every(&spec(f64::INFINITY)), Duration::from_secs(10));
        assert_eq!(ack_every(&spec(1e12)), Duration::from_secs(3600));
    }

    #[test]
    fn status_subjects_hold_only_safe_characters() {
        let key = status_key("gpu box.1 > *");
        assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{key}");
    }
}
