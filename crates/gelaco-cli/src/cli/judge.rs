//! `gelaco eval`, `gelaco compare` and `gelaco export`: judging compressed models against
//! the original and writing them out.

use std::path::PathBuf;

use super::words::choice as named;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use gelaco::backend::DeviceChoice;
use gelaco::eval::choice::{self, ChoiceOptions, Task, TaskScore};
use gelaco::eval::generate::{GenerateOptions, generate};
use gelaco::eval::perplexity::{PerplexityReport, perplexity};
use gelaco::collapse::merge::DEFAULT_MERGE_OP;
use gelaco::export::hf::HfDtype;
use gelaco::export::{ExportFormat, ExportRequest, Variant};
use gelaco::model::{LoadedModel, Llama};

use super::fitness::{CompressArgs, MergeOpArg, ModelHash};

/// Several compressed models: any number of recipes and merge lists.
#[derive(Args, Clone, Debug)]
pub struct VariantsArgs {
    /// A recipe file; repeat for more models.
    #[arg(long)]
    pub recipe: Vec<PathBuf>,
    /// Merges "B:E,..." of one more model; repeat for more.
    #[arg(long)]
    pub merges: Vec<String>,
    /// Operator of the --merges models.
    #[arg(long, value_enum, default_value_t = MergeOpArg::default_arg())]
    pub merge_op: MergeOpArg,
    /// Leave the RMSNorm weights of the base layer unmerged (--merges models).
    #[arg(long)]
    pub keep_norms: bool,
    /// Apply recipes to a model file other than the one they were made for.
    #[arg(long)]
    pub any_model: bool,
}

impl VariantsArgs {
    fn check(&self) -> Result<()> {
        for r in &self.recipe {
            gelaco::export::Recipe::load(r)?;
        }
        for m in &self.merges {
            super::fitness::check_merges(m, self.merge_op)?;
        }
        Ok(())
    }

    fn variants(&self, m: &LoadedModel) -> Result<Vec<Variant>> {
        let hash = ModelHash::default();
        let settings = gelaco::collapse::MergeSettings { keep_base_norms: self.keep_norms };
        let mut out = Vec::new();
        for r in &self.recipe {
            out.push(Variant::from_recipe_file(r, &m.files, hash.get(m)?, self.any_model)?);
        }
        for text in &self.merges {
            let (_, op) = super::fitness::check_merges(text, self.merge_op)?;
            out.push(Variant::from_merges(text, op, settings, m.model.num_layers())?);
        }
        Ok(out)
    }
}

/// A model of the comparison: the original or a compressed one.
struct Entry {
    label: String,
    layers: usize,
    merges: String,
    model: Llama,
}

fn entries(m: &LoadedModel, variants: &[Variant], original: bool) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    if original {
        out.push(Entry { label: "original".into(), layers: m.model.num_layers(), merges: String::new(), model: m.model.clone() });
    }
    for v in variants {
        out.push(Entry { label: v.label.clone(), layers: v.plan.remaining(), merges: v.plan.merges_text_with_ops(v.merge_op), model: v.build(&m.model)? });
    }
    Ok(out)
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub variants: VariantsArgs,
    /// A task as NAME=FILE (arc_easy, arc_challenge, piqa, hellaswag, winogrande, boolq,
    /// or any name for a JSONL of {"context", "choices", "label"}); repeat for more.
    #[arg(long = "task", value_name = "NAME=FILE")]
    pub tasks: Vec<String>,
    /// Score only the first N items of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also measure perplexity on this text file (non-overlapping windows, no BOS).
    #[arg(long)]
    pub perplexity: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Leave the original model out of the table.
    #[arg(long)]
    pub no_original: bool,
    /// Requests per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long)]
    pub json: bool,
}

fn parse_task(spec: &str) -> Result<(String, PathBuf)> {
    let (name, file) = spec
        .split_once('=')
        .ok_or_else(|| gelaco::Error::Invalid(format!("--task '{spec}': expected NAME=FILE")))?;
    if name.is_empty() || file.is_empty() {
        return Err(gelaco::Error::Invalid(format!("--task '{spec}': expected NAME=FILE")).into());
    }
    Ok((name.to_string(), PathBuf::from(file)))
}

fn bar(len: u64, what: &str) -> Result<ProgressBar> {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} {what} {{bar:30}} {{pos}}/{{len}} {{msg}}  {{elapsed}} < {{eta}}"))
            .context("progress template")?,
    );
    Ok(b)
}

pub fn eval(a: EvalArgs, device: DeviceChoice) -> Result<()> {
    if a.tasks.is_empty() && a.perplexity.is_none() {
        return Err(gelaco::Error::Invalid("nothing to evaluate: give --task NAME=FILE and/or --perplexity FILE".into()).into());
    }
    a.variants.check()?;
    // every input is read before the model is loaded
    let mut tasks = Vec::new();
    for spec in &a.tasks {
        let (name, path) = parse_task(spec)?;
        tasks.push(Task::load(&name, &path, a.limit)?);
    }
    let text = match &a.perplexity {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| gelaco::Error::io(p, e))?),
        None => None,
    };
    let m = super::load(&a.model, device)?;
    let variants = a.variants.variants(&m)?;
    let list = entries(&m, &variants, !a.no_original)?;
    if list.is_empty() {
        return Err(gelaco::Error::Invalid("--no-original with no --recipe or --merges leaves nothing to evaluate".into()).into());
    }
    let ids = match (&text, &a.perplexity) {
        (Some(t), Some(p)) => Some(super::text_ids(&m, p, t, a.window)?),
        _ => None,
    };
    let opts = ChoiceOptions { batch_size: a.batch_size.max(1), ..ChoiceOptions::default() };
    let mut rows: Vec<(String, usize, String, Option<PerplexityReport>, Vec<TaskScore>)> = Vec::new();
    for e in &list {
        let ppl = match &ids {
            Some(ids) => {
                let b = bar(0, &format!("{} perplexity", e.label))?;
                let r = perplexity(&e.model, ids, a.window, a.max_windows, |d, t| {
                    b.set_length(t as u64);
                    b.set_position(d as u64);
                    true
                })?;
                b.finish_and_clear();
                Some(r)
            }
            None => None,
        };
        let mut scores = Vec::new();
        for t in &tasks {
            let b = bar(t.requests() as u64, &format!("{} {}", e.label, t.name))?;
            let s = choice::evaluate(&e.model, &m.tokenizer, t, opts, |d, _| {
                b.set_position(d as u64);
                true
            })?;
            b.finish_and_clear();
            scores.push(s);
        }
        rows.push((e.label.clone(), e.layers, e.merges.clone(), ppl, scores));
    }
    if a.json {
        let models: Vec<_> = rows
            .iter()
            .map(|(label, layers, merges, ppl, scores)| {
                json!({
                    "label": label,
                    "layers": layers,
                    "merges": merges,
                    "perplexity": ppl,
                    "tasks": scores,
                })
            })
            .collect();
        super::print_json(&json!({
            "model": a.model,
            "device": m.device.description,
            "limit": a.limit,
            "tasks": tasks.iter().map(|t| json!({"name": t.name, "path": t.path, "items": t.items.len()})).collect::<Vec<_>>(),
            "models": models,
        }))?;
        return Ok(());
    }
    let mut header = format!("{:<24} {:>6}", "model", "layers");
    if ids.is_some() {
        header.push_str(&format!(" {:>10}", "ppl"));
    }
    for t in &tasks {
        header.push_str(&format!("  {:>26}", format!("{} ({})", t.name, t.items.len())));
    }
    println!("{header}");
    for (label, layers, _, ppl, scores) in &rows {
        let mut line = format!("{:<24} {:>6}", truncate(label, 24), layers);
        if let Some(p) = ppl {
            line.push_str(&format!(" {:>10.3}", p.perplexity));
        }
        for s in scores {
            line.push_str(&format!(
                "  {:>26}",
                format!("{:.1}±{:.1} / {:.1}±{:.1}", 100.0 * s.acc, 100.0 * s.acc_stderr, 100.0 * s.acc_norm, 100.0 * s.acc_norm_stderr)
            ));
        }
        println!("{line}");
    }
    println!("(acc / acc_norm in %, ± standard error; {})", m.device.description);
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let cut: String = s.chars().take(n - 1).collect();
        format!("{cut}…")
    }
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub variants: VariantsArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy. Every model uses the same seed.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

pub fn compare(a: CompareArgs, device: DeviceChoice) -> Result<()> {
    a.variants.check()?;
    if a.variants.recipe.is_empty() && a.variants.merges.is_empty() {
        return Err(gelaco::Error::Invalid("compare needs at least one --recipe or --merges".into()).into());
    }
    let m = super::load(&a.model, device)?;
    let variants = a.variants.variants(&m)?;
    let ids = m.tokenizer.encode_prompt(&a.prompt, true)?;
    let opts = GenerateOptions { max_new_tokens: a.max_new_tokens, temperature: a.temperature, seed: a.seed, stop_at_eos: true };
    let mut out = Vec::new();
    let mut reference: Option<Vec<u32>> = None;
    for e in entries(&m, &variants, true)? {
        let g = generate(&e.model, &m.tokenizer, &ids, &opts, |_| {})?;
        let agree = reference
            .as_ref()
            .map(|r| r.iter().zip(&g.generated_ids).take_while(|(a, b)| a == b).count())
            .unwrap_or(g.generated_ids.len());
        if reference.is_none() {
            reference = Some(g.generated_ids.clone());
        }
        let rate = g.generated_ids.len() as f64 / g.decode_seconds.max(1e-9);
        if !a.json {
            println!("── {} ({} layers{}) ── {:.1} tokens/s, first {} tokens as the original", e.label, e.layers,
                if e.merges.is_empty() { String::new() } else { format!(", merges {}", e.merges) }, rate, agree);
            println!("{}{}\n", a.prompt, g.text);
        }
        out.push(json!({
            "label": e.label, "layers": e.layers, "merges": e.merges, "text": g.text,
            "generated_ids": g.generated_ids, "tokens_per_second": rate, "tokens_as_original": agree,
        }));
    }
    if a.json {
        super::print_json(&json!({"prompt": a.prompt, "seed": a.seed, "temperature": a.temperature, "models": out, "device": m.device.description}))?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub compress: CompressArgs,
    #[arg(long, value_parser = named::<ExportFormat>())]
    pub format: ExportFormat,
    /// Output: a folder for hf, a file for gguf.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Weight type of an hf export (default: the source's safetensors type, f16 from GGUF).
    #[arg(long, value_parser = named::<HfDtype>())]
    pub dtype: Option<HfDtype>,
    /// Largest safetensors shard in MB; bigger models are split, with an index.
    #[arg(long, default_value_t = 5000)]
    pub max_shard_mb: u64,
    /// Skip reloading the export and comparing its logits with the in-memory model.
    #[arg(long)]
    pub no_verify: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn export(a: ExportArgs, device: DeviceChoice) -> Result<()> {
    a.compress.check()?;
    gelaco::export::refuse_existing(&a.out, a.force)?;
    let m = super::load(&a.model, device)?;
    let hash = ModelHash::default();
    let variant = match a.compress.variant(&m, &hash)? {
        Some(v) => v,
        None => Variant::from_plan("original", gelaco::collapse::Plan::identity(m.model.num_layers()), DEFAULT_MERGE_OP, a.compress.settings()),
    };
    let mut recipe = variant.recipe(hash.identity(&m)?);
    if recipe.origin.is_empty() {
        recipe.origin = "gelaco export".into();
    }
    if a.dtype.is_some() && a.format == ExportFormat::Gguf {
        eprintln!("note: --dtype applies to hf exports; GGUF keeps each tensor's type");
    }
    let request = ExportRequest {
        format: a.format,
        out: a.out.clone(),
        force: a.force,
        dtype: a.dtype,
        max_shard_bytes: a.max_shard_mb.max(1) * 1_000_000,
        verify: !a.no_verify,
    };
    let spinner = bar(0, &format!("writing {}", a.out.display()))?;
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let t = std::time::Instant::now();
    let (report, verify) = gelaco::export::export_variant(&m, &variant, &recipe, &request)?;
    spinner.finish_and_clear();
    let seconds = t.elapsed().as_secs_f64();
    if verify.is_some_and(|v| !v.tokenizer_matches) {
        eprintln!("warning: the exported tokenizer encodes the check text differently");
    }
    let verify = verify.map(|v| (v.max_abs_logit_difference, v.max_abs_logit));
    if a.json {
        super::print_json(&json!({
            "report": report,
            "seconds": seconds,
            "merges": variant.plan.merges_text(),
            "verify": verify.map(|(d, s)| json!({"max_abs_logit_difference": d, "max_abs_logit": s})),
        }))?;
    } else {
        println!(
            "wrote {} ({}, {} layers: {} copied, {} merged; {:.1} MB in {:.1}s)",
            report.path.display(),
            report.format,
            report.layers,
            report.copied_layers,
            report.merged_layers,
            report.bytes as f64 / 1e6,
            seconds
        );
        for n in &report.notices {
            println!("note: {n}");
        }
        if let Some((d, s)) = verify {
            println!("verify: reloaded; max |logit difference| vs the in-memory model {d:.3e} (logits up to {s:.1})");
        }
    }
    Ok(())
}
