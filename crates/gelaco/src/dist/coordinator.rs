//! The search's side: a [`Farm`] that publishes each batch's evaluations as jobs and takes
//! the results in by the jobs' order.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;

use super::{
    Connection, JobMessage, MAX_JOB_BYTES, MAX_RESULT_BYTES, NatsSettings, ResultMessage, RunSpec, WORKERS_STREAM, WorkerStatus,
    check_job, check_result, decode, job_id, jobs_subject, results_subject,
};
use crate::error::{Error, Result};
use crate::fitness::{FitnessEngine, FitnessResult};
use crate::search::problem::{Farm, FarmJob};

/// Results taken in, by (tokens, model key).
#[derive(Default)]
struct Inbox {
    results: HashMap<(Option<usize>, String), ResultMessage>,
    /// Messages read from the results stream so far (valid or not).
    read: u64,
    /// The stream sequence of the last message read.
    last_sequence: u64,
    rejected: usize,
}

/// What the farm did, for the end of a run.
#[derive(Debug, Clone, Default)]
pub struct FarmStats {
    /// Jobs published (jobs whose result was already on the broker are not).
    pub published: usize,
    /// Results taken in (each once, however many batches use it), and of them those
    /// evaluated by this process.
    pub results: usize,
    pub here: usize,
    /// Seconds spent waiting for batches, and the evaluation seconds of their results.
    pub waiting_seconds: f64,
    pub evaluation_seconds: f64,
    /// Seconds the workers spent making the run ready (model and reference activations),
    /// once each, as their results say.
    pub startup_seconds: f64,
    /// The batches without a worker's start-up in them (with one worker, what the broker
    /// costs).
    pub steady: SteadyBatches,
    /// Results refused (malformed, another run's, impossible).
    pub rejected: usize,
    /// Workers that sent results, by name.
    pub workers: Vec<String>,
}

/// Batches of a farmed search whose results carry no worker's start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SteadyBatches {
    /// Seconds waited for them.
    pub waiting_seconds: f64,
    /// Their results' evaluation seconds.
    pub evaluation_seconds: f64,
    /// Their results, each counted once.
    pub results: usize,
}

impl FarmStats {
    /// One line: who evaluated what, and what the broker cost beside the evaluations.
    pub fn summary(&self) -> String {
        let remote = self.results.saturating_sub(self.here);
        let mut line = format!(
            "through NATS: {} results ({} here, {} by {} worker{}), {} jobs published",
            self.results,
            self.here,
            remote,
            self.workers.iter().filter(|w| !w.ends_with("(coordinator)")).count(),
            if self.workers.len() == 1 { "" } else { "s" },
            self.published
        );
        if self.results > 0 {
            line.push_str(&format!(
                "; {:.2} s waiting for {:.2} s of evaluation and {:.2} s of worker start-up",
                self.waiting_seconds, self.evaluation_seconds, self.startup_seconds
            ));
        }
        let SteadyBatches { waiting_seconds, evaluation_seconds, results: n } = self.steady;
        if self.workers.len() == 1 && n > 0 {
            let per_result = 1000.0 * (waiting_seconds - evaluation_seconds) / n as f64;
            line.push_str(&format!("; past start-up {per_result:.1} ms per result beyond its evaluation over {n} results"));
        }
        if self.rejected > 0 {
            line.push_str(&format!("; {} results refused", self.rejected));
        }
        line
    }
}

/// A search's evaluations farmed out through NATS JetStream (see [`crate::dist`]).
pub struct NatsFarm<'e> {
    conn: Connection,
    engine: &'e FitnessEngine,
    spec: RunSpec,
    settings: NatsSettings,
    jobs: jetstream::consumer::PullConsumer,
    inbox: Arc<(Mutex<Inbox>, Condvar)>,
    reader: tokio::task::JoinHandle<()>,
    name: String,
    on_workers: Box<dyn Fn(&[WorkerStatus]) + 'e>,
    workers: Mutex<(Option<Instant>, Vec<WorkerStatus>)>,
    stats: Mutex<FarmStats>,
}

impl<'e> NatsFarm<'e> {
    /// Connect, describe the run for workers, and read what the broker already holds of its
    /// results (a resumed run's). `on_workers` hears the connected workers whenever they change.
    pub fn open(settings: &NatsSettings, engine: &'e FitnessEngine, spec: RunSpec, on_workers: Box<dyn Fn(&[WorkerStatus]) + 'e>) -> Result<Self> {
        let name = format!("gelaco search {} on {}", spec.run, hostname());
        let conn = Connection::open(settings, &name)?;
        let description = serde_json::to_vec(&spec).map_err(|e| conn.broker("cannot describe the run", e))?;
        if description.len() > conn.max_payload() {
            return Err(Error::Invalid(format!(
                "the calibration set ({} tokens) makes a run description of {} bytes, more than the {} bytes the NATS server at {} takes in one message (its max_payload): use fewer calibration samples or tokens, or raise the server's max_payload",
                engine.total_tokens(),
                description.len(),
                conn.max_payload(),
                conn.server
            )));
        }
        let inbox: Arc<(Mutex<Inbox>, Condvar)> = Arc::default();
        let (jobs, reader, pending) = conn.rt.block_on(async {
            conn.put_last(super::run_subject(&spec.run), description).await?;
            let stream = conn.js.get_stream(super::JOBS_STREAM).await.map_err(|e| conn.broker("the jobs stream", e))?;
            let durable = format!("jobs-{}", spec.run);
            let config = pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: jobs_subject(&spec.run),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: -1,
                ..Default::default()
            };
            let jobs = stream.get_or_create_consumer(&durable, config).await.map_err(|e| conn.broker("cannot make the run's job consumer", e))?;
            let (reader, pending) = read_results(&conn, &spec, inbox.clone(), 0).await?;
            Ok::<_, Error>((jobs, reader, pending))
        })?;
        // what was published before this process started (a resumed run's results) is
        // taken in before any job is published, so none is evaluated again
        let deadline = Instant::now() + Duration::from_secs(60);
        let (lock, cv) = &*inbox;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        while state.read < pending && Instant::now() < deadline {
            state = cv.wait_timeout(state, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        drop(state);
        let farm = NatsFarm {
            conn,
            engine,
            spec,
            settings: settings.clone(),
            jobs,
            inbox,
            reader,
            name: format!("{} (coordinator)", hostname()),
            on_workers,
            workers: Mutex::new((None, Vec::new())),
            stats: Mutex::new(FarmStats::default()),
        };
        farm.refresh_workers(true);
        Ok(farm)
    }

    pub fn server(&self) -> &str {
        &self.conn.server
    }

    /// What the farm did; the workers' list is brought up to date first.
    pub fn stats(&self) -> FarmStats {
        self.refresh_workers(true);
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.rejected = self.inbox.0.lock().unwrap_or_else(|e| e.into_inner()).rejected;
        s
    }

    /// The workers whose status is on the broker now.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    fn refresh_workers(&self, force: bool) {
        let mut w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if !force && w.0.is_some_and(|t| t.elapsed() < super::STATUS_EVERY) {
            return;
        }
        w.0 = Some(Instant::now());
        let found = self.conn.rt.block_on(self.conn.last_values(WORKERS_STREAM, "gelaco.workers.*")).map(|values| {
            values
                .into_iter()
                .filter_map(|(subject, bytes)| match decode::<WorkerStatus>(&bytes, MAX_JOB_BYTES, "worker status") {
                    Ok(s) => Some(s),
                    Err(why) => {
                        tracing::warn!("{subject}: {why}");
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        match found {
            Ok(mut found) => {
                found.sort_by(|a, b| a.name.cmp(&b.name));
                if found != w.1 {
                    w.1 = found;
                    (self.on_workers)(&w.1);
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// Publish the jobs whose results are not in yet.
    fn publish(&self, jobs: &[FarmJob<'_>]) -> Result<()> {
        let missing: Vec<&FarmJob> = {
            let state = self.inbox.0.lock().unwrap_or_else(|e| e.into_inner());
            jobs.iter().filter(|j| !state.results.contains_key(&(j.tokens, j.key.to_string()))).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        self.conn.rt.block_on(async {
            for j in &missing {
                let message = JobMessage {
                    run: self.spec.run.clone(),
                    model_sha256: self.spec.model_sha256.clone(),
                    calibration_hash: self.spec.calibration_hash.clone(),
                    key: j.key.to_string(),
                    tokens: j.tokens,
                    plan: j.plan.clone(),
                };
                let payload = serde_json::to_vec(&message).map_err(|e| self.conn.broker("cannot write a job", e))?;
                super::publish_kept(&self.conn, jobs_subject(&self.spec.run), &job_id(&self.spec.run, j.tokens, j.key), payload, "a job").await?;
            }
            Ok::<_, Error>(())
        })?;
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).published += missing.len();
        Ok(())
    }

    /// Take one of the run's jobs and evaluate it here; `false` when none was waiting.
    fn evaluate_one_here(&self) -> Result<bool> {
        let message = self.conn.rt.block_on(async {
            let mut batch = match self.jobs.fetch().max_messages(1).expires(Duration::from_millis(100)).messages().await {
                Ok(b) => b,
                Err(e) => {
                    // the server may be restarting: the wait goes on
                    tracing::debug!("fetching a job: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Ok(None);
                }
            };
            match batch.next().await {
                Some(Ok(m)) => Ok::<_, Error>(Some(m)),
                Some(Err(e)) => {
                    tracing::debug!("fetching a job: {e}");
                    Ok(None)
                }
                None => Ok(None),
            }
        })?;
        let Some(message) = message else { return Ok(false) };
        let (message, acker) = message.split();
        let acker = Arc::new(acker);
        let job = match decode::<JobMessage>(&message.payload, MAX_JOB_BYTES, "job").and_then(|j| check_job(&j, &self.spec).map(|_| j)) {
            Ok(j) => j,
            Err(why) => {
                tracing::warn!("refused {why}");
                let _ = self.conn.rt.block_on(acker.ack_with(jetstream::AckKind::Term));
                return Ok(true);
            }
        };
        let start = Instant::now();
        let every = self.settings.ack_wait / 3;
        let outcome = super::with_progress(&self.conn, &acker, every, || super::evaluate_job(self.engine, &job));
        let result = super::result_message(&self.spec, &job, &self.name, start.elapsed().as_secs_f64(), None, outcome);
        self.conn.rt.block_on(super::publish_result(&self.conn, &result, &acker))?;
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).here += 1;
        Ok(true)
    }
}

impl Farm for NatsFarm<'_> {
    fn evaluate(&self, jobs: &[FarmJob<'_>], should_stop: &dyn Fn() -> bool) -> Result<Option<Vec<FitnessResult>>> {
        let start = Instant::now();
        let wanted: Vec<(Option<usize>, String)> = jobs.iter().map(|j| (j.tokens, j.key.to_string())).collect();
        // results already in (an earlier batch's, a resumed run's) cost nothing now and are
        // not counted again
        let mut counted: std::collections::HashSet<&(Option<usize>, String)> = {
            let state = self.inbox.0.lock().unwrap_or_else(|e| e.into_inner());
            wanted.iter().filter(|k| state.results.contains_key(*k)).collect()
        };
        self.publish(jobs)?;
        loop {
            {
                let state = self.inbox.0.lock().unwrap_or_else(|e| e.into_inner());
                if wanted.iter().all(|k| state.results.contains_key(k)) {
                    let mut out = Vec::with_capacity(wanted.len());
                    let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                    let (mut evaluated, mut startup, mut fresh) = (0.0, false, 0);
                    for k in &wanted {
                        let r = &state.results[k];
                        if let Some(error) = &r.error {
                            return Err(Error::Invalid(format!("worker '{}' could not evaluate {}: {error}", r.worker, crate::util::short_text(&r.key, 60))));
                        }
                        if counted.insert(k) {
                            fresh += 1;
                            evaluated += r.seconds;
                            stats.startup_seconds += r.ready_seconds.unwrap_or(0.0);
                            startup |= r.ready_seconds.is_some_and(|s| s > 0.0);
                            if !stats.workers.contains(&r.worker) {
                                stats.workers.push(r.worker.clone());
                            }
                        }
                        out.extend(r.result.clone());
                    }
                    stats.results += fresh;
                    stats.evaluation_seconds += evaluated;
                    let waited = start.elapsed().as_secs_f64();
                    stats.waiting_seconds += waited;
                    if !startup {
                        stats.steady.waiting_seconds += waited;
                        stats.steady.evaluation_seconds += evaluated;
                        stats.steady.results += fresh;
                    }
                    return Ok(Some(out));
                }
            }
            if should_stop() {
                return Ok(None);
            }
            if self.reader.is_finished() {
                return Err(Error::Broker { server: self.conn.server.clone(), message: "the results stream could not be read any longer".into() });
            }
            self.refresh_workers(false);
            if !(self.settings.local && self.evaluate_one_here()?) {
                let (lock, cv) = &*self.inbox;
                let state = lock.lock().unwrap_or_else(|e| e.into_inner());
                let _ = cv.wait_timeout(state, Duration::from_millis(100));
            }
        }
    }
}

impl Drop for NatsFarm<'_> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Read the run's results from the stream (from `after`, a stream sequence) into `inbox`,
/// going on where it stopped when the server goes away and comes back; also the number of
/// results already there when it started.
async fn read_results(conn: &Connection, spec: &RunSpec, inbox: Arc<(Mutex<Inbox>, Condvar)>, after: u64) -> Result<(tokio::task::JoinHandle<()>, u64)> {
    let js = conn.js.clone();
    let consumer = results_consumer(&js, &spec.run, after).await.map_err(|e| conn.broker("cannot read the results stream", e))?;
    let pending = {
        let mut c = consumer;
        let n = c.info().await.map_err(|e| conn.broker("cannot read the results stream", e))?.num_pending;
        (c, n)
    };
    let (consumer, n) = pending;
    let spec = spec.clone();
    let reader = conn.rt.spawn(async move {
        let mut consumer = consumer;
        loop {
            match consumer.messages().await {
                Ok(mut messages) => {
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(m) => take_result(&spec, &inbox, &m),
                            Err(e) => {
                                tracing::debug!("results stream: {e}");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!("results stream: {e}"),
            }
            // the server went away (or dropped the consumer): read on from the last one seen
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = inbox.0.lock().unwrap_or_else(|e| e.into_inner()).last_sequence;
            match results_consumer(&js, &spec.run, after).await {
                Ok(c) => consumer = c,
                Err(e) => tracing::debug!("results stream: {e}"),
            }
        }
    });
    Ok((reader, n))
}

async fn results_consumer(js: &jetstream::Context, run: &str, after: u64) -> std::result::Result<jetstream::consumer::PullConsumer, async_nats::Error> {
    let stream = js.get_stream(super::RESULTS_STREAM).await?;
    let deliver_policy = if after == 0 {
        jetstream::consumer::DeliverPolicy::All
    } else {
        jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 }
    };
    let config = pull::Config {
        filter_subject: results_subject(run),
        deliver_policy,
        ack_policy: jetstream::consumer::AckPolicy::None,
        inactive_threshold: Duration::from_secs(120),
        ..Default::default()
    };
    Ok(stream.create_consumer(config).await?)
}

fn take_result(spec: &RunSpec, inbox: &Arc<(Mutex<Inbox>, Condvar)>, m: &jetstream::Message) {
    let sequence = m.info().map(|i| i.stream_sequence).unwrap_or(0);
    let checked = decode::<ResultMessage>(&m.payload, MAX_RESULT_BYTES, "result").and_then(|r| check_result(&r, spec).map(|_| r));
    let (lock, cv) = &**inbox;
    let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
    state.read += 1;
    state.last_sequence = state.last_sequence.max(sequence);
    match checked {
        Ok(r) => {
            // the first result of a job counts; one delivered again is the same and ignored
            state.results.entry((r.tokens, r.key.clone())).or_insert(r);
        }
        Err(why) => {
            state.rejected += 1;
            tracing::warn!("ignored {why}");
        }
    }
    cv.notify_all();
}

pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "this machine".into())
}
