//! Distributed evaluation over NATS JetStream. A search (the coordinator, [`coordinator`])
//! publishes the evaluations of each generation as jobs on a work queue; workers
//! ([`worker`]) on other devices and machines pull them, evaluate them with the same engine
//! and publish the results, which the coordinator takes in by the plan's position, so a
//! distributed search gives the same evaluations as a local one.
//!
//! What lives on the broker (made when missing, by whichever process comes first):
//! - stream `GELACO_JOBS`: a work queue, subjects `gelaco.jobs.<run>`, file storage; one
//!   durable pull consumer per run (`jobs-<run>`) with explicit acknowledgement, so a job
//!   whose worker dies is delivered again once its acknowledgement wait runs out; a job's
//!   message id names its run, tokens and model, so a job published twice inside the
//!   duplicate window is dropped;
//! - stream `GELACO_RESULTS`: subjects `gelaco.results.<run>`, kept a week; a coordinator
//!   reads its run's results from the start, so one resumed after a crash finds what was
//!   published while it was down;
//! - stream `GELACO_RUNS` (the last message of each subject `gelaco.runs.<run>`, kept a
//!   week): what a worker needs to evaluate a run's jobs (the model's SHA-256 and path, the
//!   calibration tokens and their hash, the engine settings);
//! - stream `GELACO_WORKERS` (the last message of each `gelaco.workers.<worker>`): each
//!   worker's status, refreshed every 2 seconds and gone 15 seconds after a worker stops
//!   refreshing it.
//!
//! Plain streams keep the last value per subject, rather than JetStream's key-value
//! buckets, so that servers from 2.9 on serve it.
//!
//! Every message is checked before use: its size, its form, its run, the run's model and
//! calibration hashes, and the plan against its model key. Credentials in a server address
//! are taken out of it before it is used anywhere else, and never printed or written.

pub mod coordinator;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::collapse::Plan;
use crate::error::{Error, Result};
use crate::fitness::{EngineOptions, FitnessEngine, FitnessResult};

/// The work queue of evaluation jobs.
pub const JOBS_STREAM: &str = "GELACO_JOBS";
/// Where workers publish results.
pub const RESULTS_STREAM: &str = "GELACO_RESULTS";
/// What a worker needs to evaluate a run's jobs, the last message of each run's subject.
pub const RUNS_STREAM: &str = "GELACO_RUNS";
/// Each worker's status, the last message of each worker's subject.
pub const WORKERS_STREAM: &str = "GELACO_WORKERS";
/// How long JetStream drops a job published again with the same message id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);
/// How long results and run descriptions are kept.
pub const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a worker refreshes its status, and when a silent worker's status expires.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);
pub const STATUS_EXPIRES: Duration = Duration::from_secs(15);
/// The largest job and result messages taken in; larger ones are rejected unread.
pub const MAX_JOB_BYTES: usize = 256 * 1024;
pub const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;
/// The default acknowledgement wait of a run's jobs: a job not acknowledged (nor reported in
/// progress) for this long goes to another worker.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// How to reach the broker.
#[derive(Clone, PartialEq)]
pub struct NatsSettings {
    /// `nats://[user:password@|token@]host[:port]` (or `tls://...`, or `host:port`); the
    /// credentials are taken out before the address is used.
    pub url: String,
    /// A NATS credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// A PEM file of the certificate authority that signed the server's certificate (TLS).
    pub ca: Option<PathBuf>,
    /// Acknowledgement wait of a run's jobs (see [`DEFAULT_ACK_WAIT`]).
    pub ack_wait: Duration,
    /// The coordinator evaluates jobs itself too while it waits for results.
    pub local: bool,
}

impl NatsSettings {
    pub fn new(url: impl Into<String>) -> Self {
        NatsSettings { url: url.into(), creds: None, ca: None, ack_wait: DEFAULT_ACK_WAIT, local: true }
    }

    /// The server's address without credentials: what messages name.
    pub fn server(&self) -> String {
        Address::parse(&self.url).map(|a| a.display()).unwrap_or_else(|_| "(an address that is not a NATS URL)".into())
    }
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("server", &self.server())
            .field("creds", &self.creds.as_ref().map(|_| "(a credentials file)"))
            .field("ca", &self.ca)
            .field("ack_wait", &self.ack_wait)
            .field("local", &self.local)
            .finish()
    }
}

/// A server address taken apart.
#[derive(Debug, Clone, PartialEq)]
struct Address {
    tls: bool,
    /// `host:port`.
    host: String,
    user: Option<(String, String)>,
    token: Option<String>,
}

impl Address {
    fn parse(url: &str) -> std::result::Result<Self, String> {
        let url = url.trim();
        let (tls, rest) = if let Some(r) = url.strip_prefix("tls://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("nats://") {
            (false, r)
        } else if url.contains("://") {
            return Err("must start with nats:// or tls://".into());
        } else {
            (false, url)
        };
        let rest = rest.trim_end_matches('/');
        let (auth, host) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            return Err("has no host".into());
        }
        let host = if host.starts_with('[') || host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            host.to_string()
        } else if host.contains(':') {
            return Err("has a port that is not a number".into());
        } else {
            format!("{host}:4222")
        };
        let decode = |s: &str| percent_decode(s);
        let (user, token) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (Some((decode(u)?, decode(p)?)), None),
                None => (None, Some(decode(a)?)),
            },
        };
        Ok(Address { tls, host, user, token })
    }

    fn display(&self) -> String {
        format!("{}://{}", if self.tls { "tls" } else { "nats" }, self.host)
    }
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("has a malformed %-escape in its credentials")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "has credentials that are not UTF-8".into())
}

/// A connection to the broker with its JetStream context, on a runtime of its own (the
/// search and the workers are not async; this is where the asynchronous client runs).
pub struct Connection {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    /// The address without credentials.
    pub server: String,
}

impl Connection {
    /// Connect as `name` (shown in the server's monitoring), and make the streams and
    /// buckets when missing.
    pub fn open(settings: &NatsSettings, name: &str) -> Result<Self> {
        let address = Address::parse(&settings.url).map_err(|m| Error::setting("nats", format!("'{}' {m}", redacted(&settings.url))))?;
        let server = address.display();
        let broker = |message: String| Error::Broker { server: server.clone(), message };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gelaco-nats")
            .enable_all()
            .build()
            .map_err(|e| broker(format!("cannot start the client's runtime: {e}")))?;
        let client = rt.block_on(async {
            let mut options = async_nats::ConnectOptions::new().name(name).connection_timeout(Duration::from_secs(10));
            if let Some((user, password)) = &address.user {
                options = options.user_and_password(user.clone(), password.clone());
            }
            if let Some(token) = &address.token {
                options = options.token(token.clone());
            }
            if let Some(path) = &settings.creds {
                options = options.credentials_file(path).await.map_err(|e| Error::setting("nats_creds", format!("{}: {e}", path.display())))?;
            }
            if let Some(ca) = &settings.ca {
                if !ca.is_file() {
                    return Err(Error::setting("nats_ca", format!("{} is not a file", ca.display())));
                }
                options = options.add_root_certificates(ca.clone()).require_tls(true);
            }
            if address.tls {
                options = options.require_tls(true);
            }
            let url = format!("{}://{}", if address.tls { "tls" } else { "nats" }, address.host);
            options.connect(url).await.map_err(|e| broker(format!("cannot connect: {e}{}", connect_hint(&e.to_string()))))
        })?;
        let js = {
            let _inside = rt.enter();
            jetstream::new(client.clone())
        };
        let conn = Connection { rt, client, js, server };
        conn.rt.block_on(conn.prepare())?;
        Ok(conn)
    }

    pub(crate) fn broker(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Broker { server: self.server.clone(), message: format!("{what}: {e}") }
    }

    async fn prepare(&self) -> Result<()> {
        let streams = [
            stream::Config {
                name: JOBS_STREAM.into(),
                subjects: vec!["gelaco.jobs.>".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            },
            stream::Config {
                name: RESULTS_STREAM.into(),
                subjects: vec!["gelaco.results.>".into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: KEEP,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            },
            stream::Config {
                name: RUNS_STREAM.into(),
                subjects: vec!["gelaco.runs.*".into()],
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                max_age: KEEP,
                ..Default::default()
            },
            stream::Config {
                name: WORKERS_STREAM.into(),
                subjects: vec!["gelaco.workers.*".into()],
                max_messages_per_subject: 1,
                storage: stream::StorageType::Memory,
                max_age: STATUS_EXPIRES,
                duplicate_window: Duration::from_secs(10),
                ..Default::default()
            },
        ];
        for config in streams {
            let name = config.name.clone();
            if self.js.get_stream(&name).await.is_err() {
                self.js.get_or_create_stream(config).await.map_err(|e| self.broker(&format!("cannot make the stream {name}"), e))?;
            }
        }
        Ok(())
    }

    /// Publish `payload` as the value of `subject` (a stream that keeps the last message
    /// of each subject).
    pub(crate) async fn put_last(&self, subject: String, payload: Vec<u8>) -> Result<()> {
        let ack = self.js.publish(subject, payload.into()).await.map_err(|e| self.broker("cannot publish", e))?;
        ack.await.map_err(|e| self.broker("the server did not keep a message", e))?;
        Ok(())
    }

    /// The last value of each subject of `stream` matching `filter`.
    pub(crate) async fn last_values(&self, stream: &str, filter: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let s = self.js.get_stream(stream).await.map_err(|e| self.broker(&format!("the stream {stream}"), e))?;
        let mut subjects = Vec::new();
        let mut info = s.info_with_subjects(filter).await.map_err(|e| self.broker(&format!("the stream {stream}"), e))?;
        while let Some((subject, _)) = info.try_next().await.map_err(|e| self.broker(&format!("the stream {stream}"), e))? {
            subjects.push(subject);
        }
        subjects.sort();
        let mut out = Vec::with_capacity(subjects.len());
        for subject in subjects {
            // gone in the meantime (expired, purged): left out
            if let Ok(m) = s.get_last_raw_message_by_subject(&subject).await {
                out.push((subject, m.payload.to_vec()));
            }
        }
        Ok(out)
    }

    /// Remove the values of `subject` from `stream`.
    pub(crate) async fn forget(&self, stream: &str, subject: &str) {
        if let Ok(s) = self.js.get_stream(stream).await {
            if let Err(e) = s.purge().filter(subject).await {
                tracing::debug!("purging {subject}: {e}");
            }
        }
    }

    /// The largest message the server takes.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }
}

/// `url` with any credentials replaced by `***`.
pub fn redacted(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, host)) => {
            let scheme = before.split_once("://").map(|(s, _)| format!("{s}://")).unwrap_or_default();
            format!("{scheme}***@{host}")
        }
        None => url.to_string(),
    }
}

/// What a worker needs to evaluate a run's jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub run: String,
    pub model_sha256: String,
    /// Where the coordinator has the model; a worker uses the file of the same SHA-256 it
    /// was given, or this path.
    pub model_path: PathBuf,
    pub layers: usize,
    pub calibration_hash: String,
    pub samples: Vec<Vec<u32>>,
    pub engine: EngineOptions,
    /// The acknowledgement wait of the run's jobs, in seconds: workers report progress at
    /// a third of it.
    pub ack_wait_seconds: f64,
}

/// One evaluation job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobMessage {
    pub run: String,
    pub model_sha256: String,
    pub calibration_hash: String,
    /// The model key of `plan`.
    pub key: String,
    /// Calibration tokens (`None`: all).
    pub tokens: Option<usize>,
    pub plan: Plan,
}

/// The outcome of one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultMessage {
    pub run: String,
    pub model_sha256: String,
    pub calibration_hash: String,
    pub key: String,
    pub tokens: Option<usize>,
    /// The worker's name.
    pub worker: String,
    /// Seconds the evaluation took.
    pub seconds: f64,
    /// Seconds the worker spent making the run ready (loading its model, computing the
    /// reference activations) before this job: on the first result of a run it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<FitnessResult>,
    /// Why the evaluation failed, where it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a worker says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub name: String,
    pub device: String,
    /// `idle`, `loading`, `evaluating` or `stopping`.
    pub state: String,
    /// The run of its current or last job.
    #[serde(default)]
    pub run: Option<String>,
    /// Jobs it evaluated.
    pub evaluations: usize,
    /// Its evaluations per second while evaluating.
    pub rate: f64,
    /// Runs it refused, each with why (`RUN: reason`).
    #[serde(default)]
    pub refused: Vec<String>,
}

/// A name for a new run, different from every other run's.
pub fn nonce() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let text = format!("{} {} {}", now.as_nanos(), std::process::id(), coordinator::hostname());
    crate::util::sha256_hex(text.as_bytes())[..16].to_string()
}

/// The name of a run on the broker: its nonce (see [`nonce`]), its model, its calibration,
/// what the engine computes and the settings that decide which plans are proposed (not the
/// limits, which a resumed run may change), so a resumed run finds its own jobs and results.
pub fn run_id(model_sha256: &str, calibration_hash: &str, engine: &EngineOptions, settings: &crate::search::SearchSettings, nonce: Option<&str>) -> String {
    let settings = crate::search::SearchSettings { evaluations: 0, generations: None, max_seconds: None, ..settings.clone() };
    let text = format!(
        "{}\n{model_sha256}\n{calibration_hash}\n{}\n{}",
        nonce.unwrap_or_default(),
        serde_json::to_string(engine).unwrap_or_default(),
        serde_json::to_string(&settings).unwrap_or_default()
    );
    crate::util::sha256_hex(text.as_bytes())[..16].to_string()
}

/// The subject of a run's description.
pub fn run_subject(run: &str) -> String {
    format!("gelaco.runs.{run}")
}

/// The subject of a worker's status.
pub fn worker_subject(key: &str) -> String {
    format!("gelaco.workers.{key}")
}

/// The subject of a run's jobs, and of its results.
pub fn jobs_subject(run: &str) -> String {
    format!("gelaco.jobs.{run}")
}

pub fn results_subject(run: &str) -> String {
    format!("gelaco.results.{run}")
}

/// The message id of a job (and of its result): its run, tokens and model.
pub fn job_id(run: &str, tokens: Option<usize>, key: &str) -> String {
    let tokens = tokens.map_or_else(|| "full".to_string(), |t| t.to_string());
    format!("{run}.{tokens}.{}", &crate::util::sha256_hex(key.as_bytes())[..24])
}

/// A message read as `T`, refused (with why) when larger than `limit` bytes or malformed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize, what: &str) -> std::result::Result<T, String> {
    if bytes.len() > limit {
        return Err(format!("a {what} of {} bytes, more than the {limit} taken", bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("a malformed {what}: {e}"))
}

/// A job checked against the run it names: model, calibration and plan.
pub fn check_job(job: &JobMessage, spec: &RunSpec) -> std::result::Result<(), String> {
    if job.run != spec.run {
        return Err(format!("a job of run {} among those of run {}", job.run, spec.run));
    }
    if job.model_sha256 != spec.model_sha256 {
        return Err(format!("a job for model {} in run {} of model {}", short(&job.model_sha256), spec.run, short(&spec.model_sha256)));
    }
    if job.calibration_hash != spec.calibration_hash {
        return Err(format!("a job for calibration {} in run {} of calibration {}", short(&job.calibration_hash), spec.run, short(&spec.calibration_hash)));
    }
    job.plan.check(spec.layers).map_err(|m| format!("a job with an impossible plan: {m}"))?;
    if job.plan.model_key() != job.key {
        return Err(format!("a job whose plan does not build the model it names ({})", crate::util::short_text(&job.key, 40)));
    }
    Ok(())
}

/// A result checked against the run: its run, hashes, and a plan that builds the model it names.
pub fn check_result(r: &ResultMessage, spec: &RunSpec) -> std::result::Result<(), String> {
    if r.run != spec.run {
        return Err(format!("a result for run {}, not this run ({})", r.run, spec.run));
    }
    if r.model_sha256 != spec.model_sha256 || r.calibration_hash != spec.calibration_hash {
        return Err(format!("a result from worker '{}' for another model or calibration", r.worker));
    }
    if !(r.seconds.is_finite() && r.seconds >= 0.0) {
        return Err(format!("a result from worker '{}' with a time of {} seconds", r.worker, r.seconds));
    }
    if let Some(ready) = r.ready_seconds.filter(|s| !(s.is_finite() && *s >= 0.0)) {
        return Err(format!("a result from worker '{}' with a start-up time of {ready} seconds", r.worker));
    }
    match (&r.result, &r.error) {
        (Some(result), None) => {
            result.check(spec.layers).map_err(|m| format!("a result from worker '{}' that is not possible: {m}", r.worker))?;
            let plan = Plan { num_layers: spec.layers, canonical: result.canonical.clone(), psi: result.psi.clone() };
            if plan.model_key() != r.key {
                return Err(format!("a result from worker '{}' whose plan does not build the model it names", r.worker));
            }
            Ok(())
        }
        (None, Some(_)) => Ok(()),
        _ => Err(format!("a result from worker '{}' with neither a result nor an error", r.worker)),
    }
}

/// What to do about a failed connection, where its message says.
fn connect_hint(message: &str) -> &'static str {
    if message.contains("UnknownIssuer") || message.contains("invalid peer certificate") {
        " (the server's certificate is not signed by an authority this machine trusts: pass the authority's certificate with --nats-ca)"
    } else if message.contains("authorization violation") {
        " (the server wants other credentials: user:password@ or token@ in the address, or --nats-creds)"
    } else {
        ""
    }
}

fn short(hash: &str) -> &str {
    crate::util::short_hash(hash)
}

/// Evaluate a checked job with `engine`, as a local search would.
pub fn evaluate_job(engine: &FitnessEngine, job: &JobMessage) -> Result<FitnessResult> {
    match job.tokens {
        None => engine.evaluate(&job.plan),
        Some(t) => engine.evaluate_partial(&job.plan, Some(t)),
    }
}

/// Run `work` (on this thread) while telling the server every `every` that the job of
/// `acker` is in progress, so that a long evaluation is not delivered to another worker.
pub(crate) fn with_progress<T>(conn: &Connection, acker: &Arc<jetstream::message::Acker>, every: Duration, work: impl FnOnce() -> T) -> T {
    let acker = acker.clone();
    let ticker = conn.rt.spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.tick().await;
        loop {
            interval.tick().await;
            if let Err(e) = acker.ack_with(jetstream::AckKind::Progress).await {
                tracing::warn!("cannot report a job in progress: {e}");
            }
        }
    });
    let out = work();
    ticker.abort();
    out
}

/// The message of a finished job: its result or why it failed.
pub(crate) fn result_message(spec: &RunSpec, job: &JobMessage, worker: &str, seconds: f64, ready_seconds: Option<f64>, outcome: Result<FitnessResult>) -> ResultMessage {
    let (result, error) = match outcome {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e.to_string())),
    };
    ResultMessage {
        run: spec.run.clone(),
        model_sha256: spec.model_sha256.clone(),
        calibration_hash: spec.calibration_hash.clone(),
        key: job.key.clone(),
        tokens: job.tokens,
        worker: worker.to_string(),
        seconds,
        ready_seconds,
        result,
        error,
    }
}

/// How long a message that cannot be published (the server restarting, a network cut) is
/// tried again before the failure counts.
pub const RETRY_FOR: Duration = Duration::from_secs(120);

/// Publish `payload` on `subject` with message id `id` until the server confirms it keeps
/// it (the id makes a message published twice count once), trying again for [`RETRY_FOR`].
pub(crate) async fn publish_kept(conn: &Connection, subject: String, id: &str, payload: Vec<u8>, what: &str) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let publish = jetstream::message::PublishMessage::build().payload(payload.clone().into()).message_id(id);
        let outcome = match conn.js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() < RETRY_FOR => {
                tracing::warn!("cannot publish {what} yet ({e}); trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(conn.broker(&format!("cannot publish {what}"), e)),
        }
    }
}

/// Publish a result and wait for the server to have it; then acknowledge its job (and wait
/// for the server to confirm), so a job is acknowledged only once its result is kept. An
/// acknowledgement that does not get through leaves the job to be delivered again; its
/// second result is the same and counts once.
pub(crate) async fn publish_result(conn: &Connection, result: &ResultMessage, acker: &jetstream::message::Acker) -> Result<()> {
    let payload = serde_json::to_vec(result).map_err(|e| conn.broker("cannot write a result", e))?;
    let id = job_id(&result.run, result.tokens, &result.key);
    publish_kept(conn, results_subject(&result.run), &id, payload, "a result").await?;
    if let Err(e) = acker.double_ack().await {
        tracing::warn!("cannot acknowledge a job whose result is published ({e}); it may be delivered again");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_server_addresses() {
        let a = Address::parse("nats://alice:s%40cret@broker.lan:4333").unwrap();
        assert_eq!(a.user, Some(("alice".into(), "s@cret".into())));
        assert_eq!(a.display(), "nats://broker.lan:4333");
        let t = Address::parse("tls://tok3n@10.0.0.2").unwrap();
        assert_eq!((t.token.as_deref(), t.tls, t.display().as_str()), (Some("tok3n"), true, "tls://10.0.0.2:4222"));
        assert_eq!(Address::parse("127.0.0.1:4222").unwrap().display(), "nats://127.0.0.1:4222");
        for bad in ["http://x", "nats://", "nats://host:port", "nats://a b"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        let settings = NatsSettings::new("nats://alice:secret@broker.lan");
        assert!(!format!("{settings:?}").contains("secret"));
        assert_eq!(settings.server(), "nats://broker.lan:4222");
        assert_eq!(redacted("nats://alice:secret@broker.lan"), "nats://***@broker.lan");
    }

    #[test]
    fn messages_larger_than_their_limit_or_malformed_are_refused_with_why() {
        let big = vec![b' '; 100];
        assert!(decode::<JobMessage>(&big, 10, "job").unwrap_err().contains("100 bytes"));
        assert!(decode::<JobMessage>(b"{\"run\": 3}", 1000, "job").unwrap_err().contains("malformed job"));
    }
}
