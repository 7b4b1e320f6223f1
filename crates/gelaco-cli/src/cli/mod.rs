//! Command-line shell: clap commands, progress bars on stderr, `--json` on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use gelaco::backend::{self, ComputeDevice, DeviceChoice};
use gelaco::eval::generate::{GenerateOptions, generate};
use gelaco::eval::perplexity::perplexity;
use gelaco::model::{self, LoadedModel, ModelFiles};

mod baseline;
mod bench;
mod fitness;
mod judge;
mod scale;
mod search;
mod worker;
pub mod words;

#[derive(Parser)]
#[command(name = "gelaco", version, about = "Make language models smaller by collapsing transformer layers")]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// Without a command, the window opens.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Clone)]
pub struct Common {
    /// Compute device: a real GPU when present (auto, the default), the best WGPU adapter
    /// including software ones (gpu), adapter N as `gelaco devices` numbers them (gpu:N:
    /// one worker per GPU of a machine), or the CPU backend (cpu).
    #[arg(long, value_parser = words::device, global = true, value_name = "auto|gpu|gpu:N|cpu")]
    pub device: Option<DeviceChoice>,
    /// Show timing spans and debug messages on stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// The memory a model may use (e.g. 4G, 512M, 16GiB; binary units): its layers'
    /// weights stay as the file stores them and only as many are kept dequantised as fit,
    /// the rest dequantised from the file each time they are used. Default: what the
    /// machine reports available (on a discrete GPU, its own memory where that is less),
    /// less a quarter.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_budget)]
    pub memory_budget: Option<u64>,
    /// What the forward's matrix products compute in: f32 (the default), or f16 on a WGPU
    /// adapter whose shaders have it (`gelaco devices` marks them), with f16 operands for
    /// every projection and for attention's products, and norms, softmax, the residual
    /// stream and the LM head in f32.
    #[arg(long, global = true, value_name = "f32|f16", value_parser = parse_precision)]
    pub precision: Option<gelaco::backend::Precision>,
}

fn parse_precision(text: &str) -> std::result::Result<gelaco::backend::Precision, String> {
    text.parse()
}

/// The `--precision` of this command, once parsed.
static PRECISION: std::sync::OnceLock<gelaco::backend::Precision> = std::sync::OnceLock::new();

pub fn precision() -> gelaco::backend::Precision {
    PRECISION.get().copied().unwrap_or_default()
}

fn parse_budget(text: &str) -> std::result::Result<u64, String> {
    match gelaco::model::parse_size(text) {
        Some(0) => Err("a memory budget must be above zero".into()),
        Some(b) => Ok(b),
        None => Err(format!("'{text}' is not a size (write it as 4G, 512M or 16GiB)")),
    }
}

/// The `--memory-budget` of this command, once parsed.
static MEMORY_BUDGET: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

pub fn memory_budget() -> Option<u64> {
    MEMORY_BUDGET.get().copied().flatten()
}

#[derive(Subcommand)]
enum Command {
    /// Describe a model: architecture, sizes, storage types.
    Inspect {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Generate text from a prompt (greedy unless --temperature is given).
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Sampling temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Never put a BOS token in front of the prompt, even if the model asks for one.
        #[arg(long)]
        no_bos: bool,
        #[command(flatten)]
        compress: fitness::CompressArgs,
        #[arg(long)]
        json: bool,
    },
    /// Perplexity of a text file over non-overlapping windows (no BOS).
    Perplexity {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        text: PathBuf,
        #[arg(long, default_value_t = 512)]
        window: usize,
        #[arg(long)]
        max_windows: Option<usize>,
        #[command(flatten)]
        compress: fitness::CompressArgs,
        #[arg(long)]
        json: bool,
    },
    /// The GeLaCo fitness (module-wise similarity) of a collapse plan.
    Fitness(fitness::FitnessArgs),
    /// Search for collapse plans: a Pareto front (NSGA-II) or the best model of one size.
    Search(search::SearchArgs),
    /// Continue a stopped or killed search from its run folder.
    Resume(search::ResumeArgs),
    /// Print the front saved in a run folder.
    Front(search::FrontArgs),
    /// LaCo and ShortGPT, scored with the same fitness.
    Baseline {
        #[command(subcommand)]
        method: baseline::BaselineCommand,
    },
    /// Zero-shot multiple-choice accuracy (and perplexity) of the original and compressed models, as one table.
    Eval(judge::EvalArgs),
    /// Generate from the same prompt with the original and each compressed model.
    Compare(judge::CompareArgs),
    /// Write a compressed model as a Hugging Face folder or a GGUF file.
    Export(judge::ExportArgs),
    /// Open the GeLaCo Studio window (also what `gelaco` without a command does).
    Gui(GuiArgs),
    /// Prefill throughput on each backend (batch 16 x 64 and 1 x 512 tokens).
    Bench(bench::BenchArgs),
    /// List the WGPU adapters of this machine, numbered as `--device gpu:N` names them, and
    /// what --device auto would choose.
    Devices(DevicesArgs),
    /// Evaluate jobs of distributed searches (`gelaco search --nats URL`) pulled from a NATS
    /// JetStream server, on this machine's device, until stopped (SIGTERM or Ctrl-C finish
    /// the current job first).
    Worker(worker::WorkerArgs),
}

#[derive(Args, Debug, Default)]
pub struct DevicesArgs {
    /// Print them as JSON: {"adapters": [{"device", "name", "api", "type", "driver",
    /// "hardware", "f16", "memory" (a discrete GPU's own memory in bytes, else null),
    /// "device_local_heap" (as Vulkan reports it)}], "auto"}.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Default)]
pub struct GuiArgs {
    /// Open this model at start.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Start a search at once with the saved settings.
    #[arg(long)]
    run: bool,
    /// Evaluation budget of that search.
    #[arg(long)]
    evaluations: Option<usize>,
    /// Run folder of that search.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Show this run folder at start (its evaluations, front and baselines).
    #[arg(long)]
    load_run: Option<PathBuf>,
    /// Select a front solution as soon as there is one: the best that removes at least a
    /// fifth of the layers.
    #[arg(long)]
    select_best: bool,
    #[arg(long, value_parser = ["light", "dark"])]
    theme: Option<String>,
    /// Close the window after this many seconds (scripted screenshots).
    #[arg(long)]
    exit_after: Option<f64>,
    /// Write frame times (build and interval, in ms) to this JSON file on exit.
    #[arg(long)]
    frame_stats: Option<PathBuf>,
    /// Neither read nor save the window's settings.
    #[arg(long)]
    fresh: bool,
}

fn gui(a: GuiArgs, device: Option<DeviceChoice>) -> Result<()> {
    let launch = gelaco_studio::Launch {
        model: a.model,
        run: a.run,
        evaluations: a.evaluations,
        dark: a.theme.as_deref().map(|t| t == "dark"),
        select_best: a.select_best,
        out: a.out,
        ephemeral: a.fresh,
        device,
        load_run: a.load_run,
    };
    Ok(gelaco_studio::run(launch, a.frame_stats, a.exit_after.map(std::time::Duration::from_secs_f64))?)
}

pub fn init_logging(verbose: bool) {
    // CubeCL warns of every autotune candidate that failed to run, which tells a user nothing
    let filter = if verbose { "gelaco=debug,info" } else { "warn,cubecl_runtime=error" };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()))
        .try_init();
}

pub fn choose_device(choice: DeviceChoice) -> Result<ComputeDevice> {
    let mut d = backend::select(choice)?;
    d.memory_budget = memory_budget();
    d.precision = precision();
    if let Some(n) = &d.notice {
        eprintln!("note: {n}");
    }
    tracing::info!(device = %d.description, "device chosen");
    Ok(d)
}

/// The model file the command works on, once known: a numerical failure (NaN or infinite
/// values) is reported as a property of that file.
static MODEL_FILE: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

pub fn note_model(path: &Path) {
    if let Ok(mut m) = MODEL_FILE.lock() {
        *m = Some(path.to_path_buf());
    }
}

/// A numerical failure as an error of the model file the command worked on.
fn numerical_as_model(e: anyhow::Error) -> anyhow::Error {
    let Some(gelaco::Error::Numerical(message)) = e.chain().find_map(|c| c.downcast_ref::<gelaco::Error>()) else {
        return e;
    };
    match MODEL_FILE.lock().ok().and_then(|m| m.clone()) {
        Some(path) => gelaco::Error::weights(path, format!("{message}: the model gives non-finite values")).into(),
        None => e,
    }
}

pub fn load(path: &Path, choice: DeviceChoice) -> Result<LoadedModel> {
    note_model(path);
    let device = choose_device(choice)?;
    let t = std::time::Instant::now();
    let m = model::load(path, device)?;
    tracing::info!(seconds = t.elapsed().as_secs_f64(), "model loaded");
    Ok(m)
}

/// The token ids of a text read from `path` for perplexity in windows of `window`: a text
/// shorter than one window is an error of that file.
pub fn text_ids(m: &LoadedModel, path: &Path, content: &str, window: usize) -> Result<Vec<u32>> {
    let ids = m.tokenizer.encode(content)?;
    if ids.len() < window.max(2) {
        return Err(gelaco::Error::format(
            path,
            format!("has {} tokens, fewer than one window of {} (--window)", ids.len(), window.max(2)),
        )
        .into());
    }
    Ok(ids)
}

pub fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn try_main() -> Result<()> {
    dispatch().map_err(numerical_as_model)
}

fn dispatch() -> Result<()> {
    let cli = Cli::parse();
    let common = cli.common;
    init_logging(common.verbose);
    let _ = MEMORY_BUDGET.set(common.memory_budget);
    let _ = PRECISION.set(common.precision.unwrap_or_default());
    let device = common.device.unwrap_or_default();
    let Some(command) = cli.command else {
        return gui(GuiArgs::default(), common.device);
    };
    match command {
        Command::Gui(args) => gui(args, common.device),
        Command::Inspect { model, json } => {
            inspect(&model, json, device)
        }
        Command::Generate {
            model,
            prompt,
            max_new_tokens,
            temperature,
            seed,
            no_bos,
            compress,
            json
        } => {
            compress.check()?;
            let mut m = load(&model, device)?;
            compress.apply(&mut m)?;
            let ids = m.tokenizer.encode_prompt(&prompt, !no_bos)?;
            let opts = GenerateOptions {
                max_new_tokens,
                temperature,
                seed,
                stop_at_eos: true,
            };
            let mut shown = String::new();
            let mut so_far = Vec::new();
            let tokenizer = &m.tokenizer;
            if !json {
                print!("{prompt}");
                std::io::stdout().flush().ok();
            }
            let g = generate(&m.model, tokenizer, &ids, &opts, |id| {
                if json {
                    return;
                }
                so_far.push(id);
                if let Ok(text) = tokenizer.decode(&so_far) {
                    if text.len() > shown.len() && text.starts_with(&shown) {
                        print!("{}", &text[shown.len()..]);
                        std::io::stdout().flush().ok();
                        shown = text;
                    }
                }
            })?;
            if json {
                print_json(&json!({
                    "prompt": prompt,
                    "prompt_ids": g.prompt_ids,
                    "generated_ids": g.generated_ids,
                    "text": g.text,
                    "top_logits": g.top_logits,
                    "device": m.device.description,
                    "prefill_seconds": g.prefill_seconds,
                    "decode_seconds": g.decode_seconds,
                }))?;
            } else {
                println!();
                let n = g.generated_ids.len().max(1);
                eprintln!(
                    "[{} tokens, prefill {:.2}s, {:.1} tokens/s on {}]",
                    g.generated_ids.len(),
                    g.prefill_seconds,
                    n as f64 / g.decode_seconds.max(1e-9),
                    m.device.description
                );
            }
            Ok(())
        }
        Command::Perplexity {
            model,
            text,
            window,
            max_windows,
            compress,
            json
        } => {
            compress.check()?;
            let content = std::fs::read_to_string(&text).map_err(|e| gelaco::Error::io(&text, e))?;
            let mut m = load(&model, device)?;
            let variant = compress.apply(&mut m)?;
            let plan = variant.map(|v| v.plan).unwrap_or_else(|| gelaco::collapse::Plan::identity(m.model.num_layers()));
            let ids = text_ids(&m, &text, &content, window)?;
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{spinner} perplexity {bar:30} {pos}/{len} windows  {elapsed} < {eta}  {msg}")
                    .context("progress template")?,
            );
            let r = perplexity(&m.model, &ids, window, max_windows, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                true
            })?;
            bar.finish_and_clear();
            if json {
                print_json(&json!({
                    "perplexity": r.perplexity,
                    "windows": r.windows,
                    "tokens_scored": r.tokens_scored,
                    "window": r.window,
                    "text_tokens": ids.len(),
                    "merges": plan.merges_text(),
                    "remaining_layers": plan.remaining(),
                    "nll": r.nll,
                    "seconds": r.seconds,
                    "device": m.device.description,
                }))?;
            } else {
                println!(
                    "perplexity {:.4} over {} windows of {} tokens ({} tokens scored, {:.1}s on {})",
                    r.perplexity, r.windows, r.window, r.tokens_scored, r.seconds, m.device.description
                );
            }
            Ok(())
        }
        Command::Fitness(args) => fitness::run(args, device),
        Command::Search(args) => search::search(args, device),
        Command::Resume(args) => search::resume(args, device),
        Command::Worker(args) => worker::run(args, device),
        Command::Front(args) => search::front(args),
        Command::Baseline { method } => baseline::baseline(method, device),
        Command::Eval(args) => judge::eval(args, device),
        Command::Compare(args) => judge::compare(args, device),
        Command::Export(args) => judge::export(args, device),
        Command::Bench(args) => bench::run(args, common.device),
        Command::Devices(a) => {
            let all = backend::adapters();
            let auto = backend::select(DeviceChoice::Auto)?;
            if a.json {
                let adapters: Vec<serde_json::Value> = all
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        json!({
                            "device": DeviceChoice::Adapter(i as u16).to_string(),
                            "name": d.name,
                            "api": d.backend,
                            "type": format!("{:?}", d.device_type),
                            "driver": d.driver,
                            "hardware": d.is_hardware(),
                            "f16": d.shader_f16,
                            "memory": d.own_memory(),
                            "device_local_heap": d.heap,
                            "device_local_free": d.heap_free,
                        })
                    })
                    .collect();
                return print_json(&json!({ "adapters": adapters, "auto": auto.description }));
            }
            if all.is_empty() {
                println!("no WGPU adapter");
            }
            for (i, d) in all.iter().enumerate() {
                println!("gpu:{i}  {}{}", d.describe(), if d.is_hardware() { "" } else { "  (software)" });
            }
            println!("--device auto -> {}", auto.description);
            Ok(())
        }
    }
}

fn inspect(path: &Path, json_out: bool, device: DeviceChoice) -> Result<()> {
    let files = ModelFiles::open(path)?;
    let c = &files.config;
    let (storage, types) = files.storage_summary();
    let tokenizer = model::load_tokenizer(&files).ok();
    let params = c.total_params();
    let memory = model::estimate_memory(&files, memory_budget(), model::Available::for_choice(device), backend::codes_on_device(device));
    if json_out {
        print_json(&json!({
            "path": path,
            "architecture": c.arch.name(),
            "layers": c.num_layers,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "heads": c.num_heads,
            "kv_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab_size,
            "parameters": params,
            "parameters_per_layer": c.layer_params(),
            "context_length": c.max_position_embeddings,
            "rope_theta": c.rope_theta,
            "rope_scaling": c.rope_scaling,
            "tie_word_embeddings": c.tie_word_embeddings,
            "attention_bias": c.attention_bias,
            "qk_norm": c.qk_norm,
            "file_kind": files.kind(),
            "file_type": storage,
            "file_bytes": files.file_bytes(),
            "quantization_types": types,
            "memory": memory,
            "tokenizer": tokenizer.as_ref().map(|t| json!({
                "source": t.source, "vocab_size": t.vocab_size(), "bos_id": t.bos_id, "eos_ids": t.eos_ids, "add_bos": t.add_bos,
            })),
        }))?;
    } else {
        println!("model         {}", path.display());
        println!("architecture  {}", c.arch.name());
        println!("layers        {}", c.num_layers);
        println!("hidden        {} (MLP {})", c.hidden_size, c.intermediate_size);
        println!("heads         {} query, {} key/value, head dim {}", c.num_heads, c.num_kv_heads, c.head_dim);
        println!("vocabulary    {}", c.vocab_size);
        println!(
            "parameters    {} ({:.1} M; {:.2} M per layer)",
            params,
            params as f64 / 1e6,
            c.layer_params() as f64 / 1e6
        );
        println!("context       {} (RoPE theta {})", c.max_position_embeddings, c.rope_theta);
        println!("embeddings    {}", if c.tie_word_embeddings { "tied" } else { "untied" });
        println!("file          {} , {:.1} MB", storage, files.file_bytes() as f64 / 1e6);
        let t: Vec<String> = types.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        println!("tensor types  {}", t.join(", "));
        println!("memory        {}", memory.need_text());
        if let Some(b) = memory.budget_text() {
            println!("budget        {b}");
        }
        if let Some(t) = &tokenizer {
            println!("tokenizer     {} tokens, from {}", t.vocab_size(), t.source);
        }
    }
    Ok(())
}
