//! `gelaco bench`: prefill tokens per second per backend, with ratios measured in one run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use gelaco::backend::DeviceChoice;
use gelaco::collapse::merge::DEFAULT_MERGE_OP;
use gelaco::collapse::{MergeSettings, Plan, Triple};
use gelaco::fitness::calibration::{self, CalibOptions, CalibSource};
use gelaco::fitness::{EngineOptions, FitnessEngine, naive};
use gelaco::util::Choice;
use gelaco::model::llama::Llama;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// Prefill tokens per second (16 x 64 and 1 x 512 tokens).
    Prefill,
    /// Fitness evaluations per second: the straightforward way against the engine.
    Fitness,
    /// Initial populations: uniform (paper) against banded, by compression and fitness.
    Init,
    /// Every merge operator on single spans of 2, 3 and 5 layers at three depths: fitness
    /// components and perplexity, as Markdown tables.
    MergeOps,
    /// How well each objective ranks random plans (1 to 15 layers removed) by held-out
    /// perplexity: Spearman correlations per size band, as a Markdown table.
    Objectives,
    /// Random-weight GGUF models of real shapes (Llama 3.2 1B and 3B, Llama 2 7B, Llama 3
    /// 8B, Mistral 7B) with `--model`'s vocabulary, written to `--scale-dir` where missing,
    /// and what each needs in memory (`scripts/scale.sh` then runs them).
    Scale,
    /// Matrix products with the weights kept on the device as they are stored (every GGUF
    /// block type, F16, BF16) against an f32 matrix product of the same values: 1,024
    /// tokens times a random matrix of `--model`'s MLP down-projection shape, GFLOP/s and
    /// the ratio, per device.
    Products,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value_t = Suite::Prefill)]
    suite: Suite,
    /// Calibration text for `--suite fitness` (16 samples of 64 tokens are taken).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Random plans evaluated by the engine (`--suite fitness`); the straightforward
    /// evaluation runs a quarter as many, at least 2.
    #[arg(long, default_value_t = 12)]
    plans: usize,
    /// Text for the perplexity column of `--suite merge-ops`.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Windows of 512 tokens scored per model by `--suite merge-ops`.
    #[arg(long, default_value_t = 8)]
    max_windows: usize,
    /// Backends to measure, in order (default: cpu,gpu, or the one given with --device).
    #[arg(long, value_parser = super::words::device, value_delimiter = ',')]
    devices: Vec<DeviceChoice>,
    /// Timed repetitions per shape (after one warm-up).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seed of the random plans (`--suite objectives`) and weights (`--suite scale`).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where `--suite scale` keeps its models.
    #[arg(long, default_value = "runs/scale")]
    scale_dir: PathBuf,
    /// The shapes `--suite scale` writes (default: all).
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    /// Objective of the engine in `--suite fitness` (default: the paper's similarity, the
    /// one the straightforward evaluation computes; under another, the ratio compares the
    /// engine's objective with the straightforward similarity).
    #[arg(long, value_parser = super::words::choice::<gelaco::fitness::Objective>())]
    objective: Option<gelaco::fitness::Objective>,
    #[arg(long)]
    json: bool,
}

const SHAPES: [(usize, usize); 2] = [(16, 64), (1, 512)];

/// The paper's fitness (module-wise similarity, no healing), which the fitness, merge-ops
/// and init suites measure.
fn paper_options() -> EngineOptions {
    EngineOptions { objective: gelaco::fitness::Objective::Similarity, heal: gelaco::fitness::Heal::None, precision: super::precision(), ..EngineOptions::default() }
}

fn prefill_seconds(model: &Llama, batch: usize, seq: usize) -> Result<f64> {
    let vocab = model.config.vocab_size as u32;
    let ids: Vec<Vec<u32>> = (0..batch)
        .map(|b| (0..seq).map(|i| ((b * 7919 + i * 104_729) as u32 + 11) % vocab).collect())
        .collect();
    let t = Instant::now();
    let h = model.forward(&ids, None)?;
    // reading a scalar back waits for the device to finish
    let _ = h.sum().into_scalar::<f32>();
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(args: BenchArgs, device: Option<DeviceChoice>) -> Result<()> {
    let devices = match (args.devices.is_empty(), device) {
        (false, _) => args.devices.clone(),
        (true, Some(d)) => vec![d],
        (true, None) => vec![DeviceChoice::Cpu, DeviceChoice::Gpu],
    };
    match args.suite {
        Suite::Fitness => return fitness_bench(&args, &devices),
        Suite::MergeOps => return merge_ops(&args, devices[0]),
        Suite::Objectives => return objectives_bench(&args, devices[0]),
        Suite::Init => return init_bench(&args, devices[0]),
        Suite::Scale => return super::scale::write_models(&args.model, &args.scale_dir, &args.shapes, args.seed, args.json),
        Suite::Products => return products_bench(&args, &devices),
        Suite::Prefill => {}
    }
    let mut rows = Vec::new();
    for choice in &devices {
        let m = super::load(&args.model, *choice)?;
        for (b, s) in SHAPES {
            let warm = prefill_seconds(&m.model, b, s)?;
            let mut times = Vec::new();
            for _ in 0..args.repeats.max(1) {
                times.push(prefill_seconds(&m.model, b, s)?);
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let tps = (b * s) as f64 / median;
            if !args.json {
                eprintln!(
                    "{:<60} {:>2} x {:<3}  {:>9.1} tokens/s  (median of {}, warm-up {:.2}s)",
                    m.device.description,
                    b,
                    s,
                    tps,
                    times.len(),
                    warm
                );
            }
            rows.push((m.device.description.clone(), *choice, b, s, tps));
        }
    }
    let mut out = Vec::new();
    for (desc, choice, b, s, tps) in &rows {
        let base = rows
            .iter()
            .find(|r| r.2 == *b && r.3 == *s)
            .map(|r| r.4)
            .unwrap_or(*tps);
        out.push(json!({"device": desc, "choice": choice, "batch": b, "seq": s, "tokens_per_second": tps, "ratio_to_first": tps / base}));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{:<60} {:>8} {:>14} {:>8}", "device", "shape", "tokens/s", "ratio");
        for r in &out {
            println!(
                "{:<60} {:>8} {:>14.1} {:>8.3}",
                r["device"].as_str().unwrap_or(""),
                format!("{}x{}", r["batch"], r["seq"]),
                r["tokens_per_second"].as_f64().unwrap_or(0.0),
                r["ratio_to_first"].as_f64().unwrap_or(0.0)
            );
        }
        println!("(ratio: throughput relative to the first device listed, same shape)");
    }
    Ok(())
}

/// Tokens a product in `--suite products` multiplies: a fitness evaluation's 16 x 64.
const PRODUCT_TOKENS: usize = 1024;

fn products_bench(args: &BenchArgs, devices: &[DeviceChoice]) -> Result<()> {
    let mut out = Vec::new();
    for choice in devices {
        let m = super::load(&args.model, *choice)?;
        let (rows, cols) = (m.model.config.hidden_size, m.model.config.intermediate_size);
        let flops = 2.0 * (PRODUCT_TOKENS * rows * cols) as f64;
        for kind in gelaco::model::stored::KEPT_TYPES {
            if cols % kind.block_layout().map_or(1, |(b, _)| b) != 0 {
                if !args.json {
                    eprintln!("{}: rows of {cols} are not whole blocks of {}; left out", m.device.description, kind.name());
                }
                continue;
            }
            let t = gelaco::model::stored::time_product(kind, PRODUCT_TOKENS, rows, cols, &m.device.device, m.model.precision, args.repeats, args.seed)?;
            out.push(json!({
                "device": m.device.description,
                "choice": choice,
                "type": kind.name(),
                "path": t.path,
                "precision": m.model.precision.to_string(),
                "tokens": PRODUCT_TOKENS,
                "rows": rows,
                "cols": cols,
                "weights_bytes": t.codes_bytes,
                "f32_bytes": t.f32_bytes,
                "seconds": t.codes_seconds,
                "f32_seconds": t.f32_seconds,
                "gflops": flops / t.codes_seconds / 1e9,
                "f32_gflops": flops / t.f32_seconds / 1e9,
                "ratio_to_f32": t.f32_seconds / t.codes_seconds,
                "difference": t.difference,
            }));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("| device | type | product | precision | weights (MiB, f32) | GFLOP/s | f32 GFLOP/s | speed against f32 | largest difference |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for r in &out {
            let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {} | {} | {} | {} | {:.1} ({:.1}) | {:.1} | {:.1} | {:.2}x | {:.1e} |",
                r["device"].as_str().unwrap_or(""),
                r["type"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or(""),
                r["precision"].as_str().unwrap_or(""),
                f("weights_bytes") / 1048576.0,
                f("f32_bytes") / 1048576.0,
                f("gflops"),
                f("f32_gflops"),
                f("ratio_to_f32"),
                f("difference"),
            );
        }
        if let Some(r) = out.first() {
            println!("({} tokens x a {} x {} matrix; median of {} runs after a warm-up; difference relative to the largest output)", PRODUCT_TOKENS, r["rows"], r["cols"], args.repeats.max(1));
        }
    }
    Ok(())
}

fn random_plans(layers: usize, n: usize, seed: u64) -> Vec<Plan> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let spans = rng.random_range(1..=3);
            let triples: Vec<Triple> = (0..spans)
                .map(|_| {
                    let b = rng.random_range(1..layers - 2);
                    Triple { b, e: (b + rng.random_range(1..=3)).min(layers - 1), active: true, op: None }
                })
                .collect();
            Plan::decode(&triples, layers, DEFAULT_MERGE_OP)
        })
        .collect()
}

fn fitness_bench(args: &BenchArgs, devices: &[DeviceChoice]) -> Result<()> {
    let calib = args
        .calib
        .clone()
        .ok_or_else(|| gelaco::Error::Invalid("--suite fitness needs --calib FILE".into()))?;
    let opts = CalibOptions { samples: 16, max_tokens: 64, ..CalibOptions::default() };
    let mut out = Vec::new();
    for choice in devices {
        let m = super::load(&args.model, *choice)?;
        let cal = calibration::load(&CalibSource::File(calib.clone()), &opts, &m.model, &m.tokenizer)?;
        let layers = m.model.num_layers();
        let plans = random_plans(layers, args.plans.max(2), 7);
        let naive_plans = &plans[..(plans.len() / 4).max(2)];
        let settings = MergeSettings::default();

        let t = Instant::now();
        for p in naive_plans {
            naive::evaluate(&m.model, &cal, p, settings)?;
        }
        let naive_rate = naive_plans.len() as f64 / t.elapsed().as_secs_f64();

        let t = Instant::now();
        let options = EngineOptions { objective: args.objective.unwrap_or(gelaco::fitness::Objective::Similarity), ..paper_options() };
        let engine = FitnessEngine::new(&m.model, cal.clone(), options)?;
        let setup = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for p in &plans {
            engine.evaluate(p)?;
        }
        let engine_seconds = t.elapsed().as_secs_f64();
        let engine_rate = plans.len() as f64 / engine_seconds;
        // the bound the device's matmul rate sets, measured on the model's widest
        // projection at the calibration's token count, in this same run
        let flops = plans.iter().map(|p| engine.matmul_flops(p)).sum::<f64>() / plans.len() as f64;
        let c = &m.model.config;
        let matmul = gelaco::backend::matmul_rate(&m.model.device, (cal.tokens().max(1), c.hidden_size, c.intermediate_size), args.repeats)?;
        let bound = flops / matmul;
        let per_evaluation = engine_seconds / plans.len() as f64;
        let row = json!({
            "device": m.device.description,
            "objective": engine.options.objective.name(),
            "precision": engine.options.precision.to_string(),
            "naive_evaluations_per_second": naive_rate,
            "engine_evaluations_per_second": engine_rate,
            "ratio": engine_rate / naive_rate,
            "engine_setup_seconds": setup,
            "engine_seconds_per_evaluation": per_evaluation,
            "matmul_flops_per_evaluation": flops,
            "matmul_flops_per_second": matmul,
            "matmul_bound_seconds": bound,
            "ratio_to_matmul_bound": per_evaluation / bound,
            "plans": plans.len(),
            "naive_plans": naive_plans.len(),
            "samples": cal.samples.len(),
            "tokens": cal.tokens(),
        });
        if !args.json {
            println!(
                "{:<60} naive {:>7.3} eval/s   engine {:>7.3} eval/s   ratio {:>6.1}x   (reference set-up {:.1}s, {} + {} plans)",
                m.device.description, naive_rate, engine_rate, engine_rate / naive_rate, setup, naive_plans.len(), plans.len()
            );
            println!(
                "{:<60} engine {:.3} s per evaluation ({}): {:.2}x the {:.3} s its {:.1} GFLOP of matrix products need at the {:.1} GFLOP/s measured here",
                "",
                per_evaluation,
                engine.options.objective,
                per_evaluation / bound,
                bound,
                flops / 1e9,
                matmul / 1e9
            );
        }
        out.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// The model, 16 calibration samples of 64 tokens from `--calib`, and the token ids of
/// `--text`: what the merge-ops and objectives suites measure on.
fn model_calib_text(args: &BenchArgs, suite: &str, device: DeviceChoice) -> Result<(gelaco::model::LoadedModel, gelaco::fitness::calibration::Calibration, Vec<u32>)> {
    let need = |p: &Option<PathBuf>, flag: &str| p.clone().ok_or_else(|| gelaco::Error::Invalid(format!("--suite {suite} needs {flag} FILE")));
    let (calib, text) = (need(&args.calib, "--calib")?, need(&args.text, "--text")?);
    let m = super::load(&args.model, device)?;
    let cal = calibration::load(&CalibSource::File(calib), &CalibOptions { samples: 16, max_tokens: 64, ..CalibOptions::default() }, &m.model, &m.tokenizer)?;
    let content = std::fs::read_to_string(&text).map_err(|e| gelaco::Error::io(&text, e))?;
    let ids = m.tokenizer.encode(&content)?;
    Ok((m, cal, ids))
}

fn merge_ops(args: &BenchArgs, device: DeviceChoice) -> Result<()> {
    let (m, cal, ids) = model_calib_text(args, "merge-ops", device)?;
    let layers = m.model.num_layers();
    let engine = FitnessEngine::new(&m.model, cal, paper_options())?;
    let base = gelaco::eval::perplexity::perplexity(&m.model, &ids, 512, Some(args.max_windows), |_, _| true)?;
    println!("original model: perplexity {:.2} ({} windows of 512 tokens)\n", base.perplexity, base.windows);
    println!("| span | layers removed | operator | fitness | attention | mlp | hidden | perplexity |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for size in [2usize, 3, 5] {
        for start in [layers / 6, layers / 2, (3 * layers) / 4] {
            let end = (start + size - 1).min(layers - 1);
            for op in gelaco::collapse::MergeOp::ALL {
                let plan = Plan::from_ranges(&[(start, end)], layers, op)?;
                let r = engine.evaluate(&plan)?;
                let compressed = gelaco::collapse::build(&m.model, &plan, MergeSettings::default());
                let ppl = match gelaco::eval::perplexity::perplexity(&compressed, &ids, 512, Some(args.max_windows), |_, _| true) {
                    Ok(p) => format!("{:.4e}", p.perplexity),
                    Err(gelaco::Error::Numerical(_)) => "non-finite".to_string(),
                    Err(e) => return Err(e.into()),
                };
                println!(
                    "| {start}:{end} | {} | {op} | {:.4} | {:.4} | {:.4} | {:.4} | {ppl} |",
                    plan.removed(), r.fitness, r.attention, r.ffn, r.hidden
                );
                rows.push((op, r.fitness));
            }
        }
    }
    println!("\nmean fitness per operator over these spans:");
    for op in gelaco::collapse::MergeOp::ALL {
        let v: Vec<f64> = rows.iter().filter(|r| r.0 == op).map(|r| r.1).collect();
        println!("  {op:<10} {:.4}", v.iter().sum::<f64>() / v.len() as f64);
    }
    Ok(())
}

/// Ranks (1-based, ties averaged) of `v`.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for k in i..=j {
            r[idx[k]] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation of `a` and `b`.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 { 0.0 } else { cov / (va * vb).sqrt() }
}

fn objectives_bench(args: &BenchArgs, device: DeviceChoice) -> Result<()> {
    use gelaco::fitness::Objective;
    let (m, cal, ids) = model_calib_text(args, "objectives", device)?;
    let layers = m.model.num_layers();
    let objectives = [Objective::Similarity, Objective::Kl, Objective::Nll];
    let engines: Vec<FitnessEngine> = objectives
        .iter()
        .map(|&objective| FitnessEngine::new(&m.model, cal.clone(), EngineOptions { objective, heal: gelaco::fitness::Heal::None, precision: m.model.precision, ..EngineOptions::default() }))
        .collect::<gelaco::Result<_>>()?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let max_removed = 15.min(layers - 1);
    // (removed, log perplexity, fitness per objective)
    let mut rows: Vec<(usize, f64, Vec<f64>)> = Vec::new();
    let t = Instant::now();
    for i in 0..args.plans {
        let removed = 1 + i % max_removed;
        let plan = gelaco::search::random_plan_removing(layers, removed, DEFAULT_MERGE_OP, &mut rng);
        let fitness: Vec<f64> = engines.iter().map(|e| e.evaluate(&plan).map(|r| r.fitness)).collect::<gelaco::Result<_>>()?;
        let compressed = gelaco::collapse::build(&m.model, &plan, MergeSettings::default());
        let log_ppl = match gelaco::eval::perplexity::perplexity(&compressed, &ids, 512, Some(args.max_windows), |_, _| true) {
            Ok(p) => p.perplexity.ln(),
            Err(gelaco::Error::Numerical(_)) => f64::INFINITY,
            Err(e) => return Err(e.into()),
        };
        let shown: Vec<String> = fitness.iter().map(|f| format!("{f:.6e}")).collect();
        eprintln!("[{}/{}] removed {removed:>2} ({}): log ppl {log_ppl:.4}, fitness [{}]  ({:.0}s)", i + 1, args.plans, plan.removed_text(), shown.join(", "), t.elapsed().as_secs_f64());
        rows.push((plan.removed(), log_ppl, fitness));
    }
    println!("Spearman correlation of each objective's fitness with held-out quality (-log perplexity), {} random plans, calibration {} tokens, held-out {} windows of 512:\n", rows.len(), cal.tokens(), args.max_windows);
    println!("| layers removed | plans | similarity | kl | nll |");
    println!("|---|---|---|---|---|");
    for (lo, hi) in [(1, 5), (6, 10), (11, 15), (1, 15)] {
        let band: Vec<&(usize, f64, Vec<f64>)> = rows.iter().filter(|r| r.0 >= lo && r.0 <= hi).collect();
        if band.len() < 3 {
            continue;
        }
        let quality: Vec<f64> = band.iter().map(|r| -r.1).collect();
        let cells: Vec<String> = (0..objectives.len())
            .map(|k| format!("{:.3}", spearman(&band.iter().map(|r| r.2[k]).collect::<Vec<_>>(), &quality)))
            .collect();
        println!("| {lo}-{hi} | {} | {} |", band.len(), cells.join(" | "));
    }
    Ok(())
}

fn init_bench(args: &BenchArgs, device: DeviceChoice) -> Result<()> {
    use gelaco::search::{Init, SearchSettings, initial_population};
    let calib = args.calib.clone().ok_or_else(|| gelaco::Error::Invalid("--suite init needs --calib FILE".into()))?;
    let m = super::load(&args.model, device)?;
    let cal = calibration::load(&CalibSource::File(calib), &CalibOptions { samples: 16, max_tokens: 64, ..CalibOptions::default() }, &m.model, &m.tokenizer)?;
    let layers = m.model.num_layers();
    let engine = FitnessEngine::new(&m.model, cal, paper_options())?;
    println!("| initialisation | plans | mean layers removed | plans removing > half | mean fitness | fitness < 0.5 | non-finite |");
    println!("|---|---|---|---|---|---|---|");
    for init in [Init::Paper, Init::Banded] {
        let settings = SearchSettings { population: args.plans.max(2), init, seed: 1, ..SearchSettings::default() };
        let encoding = settings.encoding(layers);
        let genes: Vec<Vec<f64>> = match init {
            Init::Paper => {
                let bounds = encoding.bounds();
                let mut rng = StdRng::seed_from_u64(1);
                (0..settings.population).map(|_| bounds.sample(&mut rng)).collect()
            }
            _ => initial_population(&settings, &encoding, &[]),
        };
        let (mut removed, mut over_half, mut fit, mut low, mut bad) = (0usize, 0usize, 0f64, 0usize, 0usize);
        for g in &genes {
            let plan = encoding.decode(g);
            let r = engine.evaluate(&plan)?;
            removed += plan.removed();
            over_half += (plan.removed() * 2 > layers) as usize;
            fit += r.fitness;
            low += (r.fitness < 0.5) as usize;
            bad += r.non_finite as usize;
        }
        let n = genes.len();
        println!(
            "| {init:?} | {n} | {:.1} of {layers} | {:.0}% | {:.3} | {:.0}% | {:.0}% |",
            removed as f64 / n as f64,
            100.0 * over_half as f64 / n as f64,
            fit / n as f64,
            100.0 * low as f64 / n as f64,
            100.0 * bad as f64 / n as f64
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::spearman;

    #[test]
    fn spearman_ranks_with_ties() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // a monotone transform keeps the correlation; ties share their rank
        let r = spearman(&[1.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!(r > 0.9 && r < 1.0, "{r}");
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0);
    }
}
