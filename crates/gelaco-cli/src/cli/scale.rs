//! `gelaco bench --suite scale`: random-weight models of real shapes, and what each needs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::json;

use gelaco::model::synth::{self, SHAPES, Shape};
use gelaco::model::{self, ModelFiles};

fn chosen(names: &[String]) -> Result<Vec<&'static Shape>> {
    if names.is_empty() {
        return Ok(SHAPES.iter().collect());
    }
    names
        .iter()
        .map(|n| match synth::shape(n) {
            Some(s) => Ok(s),
            None => bail!(gelaco::Error::setting(
                "shapes",
                format!("'{n}' is not a shape this tool writes (one of {})", SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", "))
            )),
        })
        .collect()
}

pub fn write_models(vocab_model: &Path, dir: &Path, names: &[String], seed: u64, json_out: bool) -> Result<()> {
    let shapes = chosen(names)?;
    std::fs::create_dir_all(dir).map_err(|e| gelaco::Error::io(dir, e))?;
    let vocab = gelaco::model::gguf::GgufFile::open(vocab_model)?;
    // the host's memory: the table says what loads on the CPU backend, the budget's baseline
    let available = model::Available::host();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mut rows = Vec::new();
    if !json_out {
        println!("| shape | parameters | file | every parameter as f32 | least memory to run | embeddings, head and all layers as f32 | under the budget |");
        println!("|---|---|---|---|---|---|---|");
    }
    for shape in shapes {
        let path: PathBuf = dir.join(format!("{}.gguf", shape.name));
        if !path.exists() {
            eprintln!("writing {} ...", path.display());
            let t = Instant::now();
            synth::write_random(shape, &vocab, &path, seed)?;
            eprintln!("wrote {} in {:.0} s", path.display(), t.elapsed().as_secs_f64());
        }
        let files = ModelFiles::open(&path)?;
        let plan = model::estimate_memory(&files, super::memory_budget(), available, false);
        rows.push(json!({
            "shape": shape.name,
            "path": path,
            "parameters": files.config.total_params(),
            "file_bytes": plan.file_bytes,
            "memory": plan,
            "streams": plan.streams(),
            "f32_bytes": model::load_bytes(&files),
        }));
        if !json_out {
            println!(
                "| {} | {:.2} B | {:.2} GiB | {:.2} GiB | {:.2} GiB | {:.2} GiB | {} |",
                shape.name,
                files.config.total_params() as f64 / 1e9,
                gib(plan.file_bytes),
                gib(model::load_bytes(&files)),
                gib(plan.minimum()),
                gib(plan.fixed_bytes + plan.layers_bytes),
                if plan.budget < plan.minimum() { "does not fit" } else if plan.streams() { "streams" } else { "resident" }
            );
        }
    }
    if json_out {
        super::print_json(&json!(rows))?;
    }
    Ok(())
}
