//! `gelaco worker`, and the NATS settings a distributed search shares with it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use gelaco::backend::DeviceChoice;
use gelaco::dist::NatsSettings;
use gelaco::dist::worker::{WorkerEvent, WorkerOptions};

/// Where the NATS JetStream server is, and how to reach it.
#[derive(Args, Debug, Clone)]
pub struct NatsArgs {
    /// Evaluate through the NATS JetStream server at this address:
    /// nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT] or tls://... (credentials are never
    /// printed or written to the run folder). Workers (`gelaco worker`) pull the jobs.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// A NATS credentials file (JWT and NKey seed) to connect with.
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// The certificate authority (PEM) of the server's TLS certificate; implies TLS.
    #[arg(long, value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// Seconds a job may go without an acknowledgement (workers report progress at a third
    /// of it) before it is delivered to another worker.
    #[arg(long, value_name = "SECONDS", default_value_t = gelaco::dist::DEFAULT_ACK_WAIT.as_secs_f64())]
    pub nats_ack_wait: f64,
    /// Leave every evaluation to the workers (by default the search evaluates jobs too
    /// while it waits for results).
    #[arg(long)]
    pub no_local_evaluation: bool,
}

impl NatsArgs {
    /// The settings, when `--nats` is given.
    pub fn settings(&self) -> Result<Option<NatsSettings>> {
        let Some(url) = &self.nats else {
            if self.nats_creds.is_some() || self.nats_ca.is_some() || self.no_local_evaluation {
                return Err(gelaco::Error::Invalid("--nats-creds, --nats-ca and --no-local-evaluation need --nats URL".into()).into());
            }
            return Ok(None);
        };
        if !(self.nats_ack_wait.is_finite() && (1.0..=86_400.0).contains(&self.nats_ack_wait)) {
            return Err(gelaco::Error::Invalid(format!("--nats-ack-wait {} must be between 1 and 86400 seconds", self.nats_ack_wait)).into());
        }
        Ok(Some(NatsSettings {
            url: url.clone(),
            creds: self.nats_creds.clone(),
            ca: self.nats_ca.clone(),
            ack_wait: Duration::from_secs_f64(self.nats_ack_wait),
            local: !self.no_local_evaluation,
        }))
    }
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The NATS JetStream server: nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT] or tls://...
    #[arg(long, value_name = "URL")]
    nats: String,
    #[arg(long, value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    nats_ca: Option<PathBuf>,
    /// This worker's name in statuses and results (default: the host and device).
    #[arg(long)]
    name: Option<String>,
    /// A model file this worker may use for runs of its SHA-256 (repeatable); otherwise
    /// the path the run names is used when it holds the same file.
    #[arg(long)]
    model: Vec<PathBuf>,
    /// One JSON event per line on standard output.
    #[arg(long)]
    json: bool,
}

pub fn run(a: WorkerArgs, device: DeviceChoice) -> Result<()> {
    let nats = NatsArgs {
        nats: Some(a.nats.clone()),
        nats_creds: a.nats_creds.clone(),
        nats_ca: a.nats_ca.clone(),
        nats_ack_wait: gelaco::dist::DEFAULT_ACK_WAIT.as_secs_f64(),
        no_local_evaluation: false,
    };
    // the acknowledgement wait is each run's, set by its search
    let Some(settings) = nats.settings()? else { unreachable!("--nats is required") };
    let options = WorkerOptions { nats: settings, device, memory_budget: super::memory_budget(), name: a.name.clone(), models: a.model.clone() };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let json = a.json;
    let current = gelaco::dist::worker::CurrentJob::default();
    let job = current.clone();
    let _ = ctrlc::set_handler(move || {
        // the handler runs on one thread, one signal at a time
        if flag.load(Ordering::SeqCst) {
            // the job goes back to the queue for another worker
            let released = job.release();
            if json {
                println!("{}", serde_json::json!({"event": "left", "released": released}));
            } else if released {
                eprintln!("left; the current job is back on the queue");
            }
            std::process::exit(130);
        }
        // said before the worker can see the flag, so before it says it stopped
        if json {
            println!("{}", serde_json::json!({"event": "stopping"}));
        } else {
            eprintln!("stopping once the current job is done (again to leave at once, handing the job back)");
        }
        flag.store(true, Ordering::SeqCst);
    });
    gelaco::dist::worker::run_with(&options, &stop, &current, &mut |event| {
        if json {
            if let Ok(line) = serde_json::to_string(&event) {
                println!("{line}");
            }
            return;
        }
        match event {
            WorkerEvent::Connected { server, name, device } => eprintln!("worker '{name}' on {device}, connected to {server}; waiting for jobs"),
            WorkerEvent::Job { .. } => {}
            WorkerEvent::Evaluated { run, key, tokens, seconds } => eprintln!(
                "run {run}: {} {} in {seconds:.2} s",
                gelaco::util::short_text(&key, 48),
                tokens.map_or_else(|| "(all tokens)".to_string(), |t| format!("({t} tokens)"))
            ),
            WorkerEvent::Refused { run, reason } => eprintln!("refused run {run}: {reason}"),
            WorkerEvent::Rejected { reason } => eprintln!("rejected {reason}"),
            WorkerEvent::Stopped { evaluations } => eprintln!("stopped after {evaluations} evaluations"),
        }
    })?;
    Ok(())
}
