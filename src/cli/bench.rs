//! `gelaco bench`: prefill tokens per second per backend, with ratios measured in one run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use gelaco::backend::DeviceChoice;
use gelaco::model::llama::Llama;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long)]
    model: PathBuf,
    /// Backends to measure, in order (default: cpu,gpu, or the one given with --device).
    #[arg(long, value_enum, value_delimiter = ',')]
    devices: Vec<DeviceChoice>,
    /// Timed repetitions per shape (after one warm-up).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long)]
    json: bool,
}

const SHAPES: [(usize, usize); 2] = [(16, 64), (1, 512)];

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
