//! Fuzzing every parser of the core, on stable Rust: seeded mutations of valid inputs
//! (byte flips, truncations, insertions, extreme integers written over the bytes, and for
//! JSON files structural changes: extreme numbers, wrong types, multi-byte strings, long
//! arrays, missing keys), plus the hostile inputs checked in under `tests/fuzz/`.
//!
//! Each case must end in `Ok` or an error, never a panic; the slowest case and the peak
//! memory of the process are printed per target. `GELACO_FUZZ_CASES` sets the cases per
//! target (default 300, a few seconds each); `GELACO_FUZZ_SEED` the seed. A failing input
//! is written to `target/fuzz-failures/` to replay.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Tiny;
use gelaco::backend::{self, DeviceChoice};
use gelaco::collapse::{MergeOp, MergeSettings, Plan};
use gelaco::eval::choice::Task;
use gelaco::export::Recipe;
use gelaco::fitness::calibration::{self, CalibOptions, CalibSource, Calibration};
use gelaco::model::{self, LoadedModel, ModelFiles};
use gelaco::run::heal_picks::{self, HealPicksInfo};
use gelaco::run::store::{self, ModelIdentity, RunInfo, RunStore, Status};
use gelaco::search::SearchSettings;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn cases() -> usize {
    std::env::var("GELACO_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

fn seed() -> u64 {
    std::env::var("GELACO_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// The most one case may raise the peak memory of the process, in MiB.
const MAX_GROWTH_MIB: u64 = 256;

/// Integers that break unchecked arithmetic and allocation.
const EXTREMES: [u64; 9] = [0, 1, 255, 65_535, 1 << 31, (1 << 32) - 1, 1 << 40, 1 << 62, u64::MAX];

fn mutate_bytes(rng: &mut StdRng, data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..rng.random_range(1..4) {
        let at = if d.is_empty() { 0 } else { rng.random_range(0..d.len()) };
        match rng.random_range(0..6) {
            0 if !d.is_empty() => d[at] ^= 1 << rng.random_range(0..8),
            1 if !d.is_empty() => d[at] = rng.random(),
            2 => d.truncate(at),
            3 => {
                let n = rng.random_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                d.splice(at..at, bytes);
            }
            4 => {
                let v = EXTREMES[rng.random_range(0..EXTREMES.len())].to_le_bytes();
                let n = [1, 2, 4, 8][rng.random_range(0..4)];
                for (i, b) in v.iter().take(n).enumerate() {
                    if at + i < d.len() {
                        d[at + i] = *b;
                    }
                }
            }
            _ if !d.is_empty() => {
                let end = (at + rng.random_range(1..64)).min(d.len());
                let copy = d[at..end].to_vec();
                d.splice(at..at, copy);
            }
            _ => {}
        }
    }
    d
}

fn hostile_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..12) {
        0 => json!(EXTREMES[rng.random_range(0..EXTREMES.len())]),
        1 => json!(-1),
        2 => json!(1e308),
        3 => json!(-1e308),
        4 => json!(0.5),
        5 => json!(""),
        6 => json!("é".repeat(rng.random_range(1..80))),
        7 => json!([]),
        8 => json!({}),
        9 => Value::Null,
        10 => json!(vec![0; 1000]),
        _ => json!(true),
    }
}

/// Replace one node of `v` (or remove one key) at random.
fn mutate_value(rng: &mut StdRng, v: &mut Value) {
    let children = match v {
        Value::Object(m) => m.len(),
        Value::Array(a) => a.len(),
        _ => 0,
    };
    if children == 0 || rng.random_range(0..4) == 0 {
        *v = hostile_value(rng);
        return;
    }
    let i = rng.random_range(0..children);
    match v {
        Value::Object(m) => {
            let key = m.keys().nth(i).cloned().unwrap_or_default();
            if rng.random_range(0..6) == 0 {
                m.remove(&key);
            } else if let Some(c) = m.get_mut(&key) {
                mutate_value(rng, c);
            }
        }
        Value::Array(a) => mutate_value(rng, &mut a[i]),
        _ => {}
    }
}

/// A mutation of a file: structural for JSON (most of the time), byte-level otherwise.
fn mutate_file(rng: &mut StdRng, name: &str, data: &[u8]) -> Vec<u8> {
    if name.ends_with(".json") && rng.random_range(0..3) > 0 {
        if let Ok(mut v) = serde_json::from_slice::<Value>(data) {
            for _ in 0..rng.random_range(1..3) {
                mutate_value(rng, &mut v);
            }
            return serde_json::to_vec(&v).unwrap();
        }
    }
    if name.ends_with(".jsonl") && rng.random_range(0..2) > 0 {
        let text = String::from_utf8_lossy(data);
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        if !lines.is_empty() {
            let i = rng.random_range(0..lines.len());
            if let Ok(mut v) = serde_json::from_str::<Value>(&lines[i]) {
                mutate_value(rng, &mut v);
                lines[i] = v.to_string();
                return (lines.join("\n") + "\n").into_bytes();
            }
        }
    }
    mutate_bytes(rng, data)
}

/// One parser: valid seed inputs (file sets: name -> bytes) and how to parse a file set
/// written in a folder.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<(String, Vec<u8>)>>,
    /// Parse the file set in a folder: whether it was refused with an error.
    parse: Box<dyn Fn(&Path) -> bool>,
}

/// The checked-in hostile inputs of a target, each a change of its first seed: every
/// `tests/fuzz/NAME/*.json` holds `{"file": F, "set": {JSON pointer: value, ...}}` (values
/// set in seed file F), every other file there replaces the seed file named after its `--`.
fn checked_in(name: &str, seed: &[(String, Vec<u8>)]) -> Vec<Vec<(String, Vec<u8>)>> {
    let dir = common::repo_root().join("tests/fuzz").join(name);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "{} holds no hostile inputs", dir.display());
    let mut out = Vec::new();
    for p in paths {
        let file_name = p.file_name().unwrap().to_string_lossy().into_owned();
        let mut set = seed.to_vec();
        if file_name.ends_with(".json") {
            let patch: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            let target = patch["file"].as_str().unwrap();
            let entry = set.iter_mut().find(|(n, _)| n == target).unwrap_or_else(|| panic!("{}: no seed file {target}", p.display()));
            let mut v: Value = serde_json::from_slice(&entry.1).unwrap();
            for (pointer, value) in patch["set"].as_object().unwrap() {
                *v.pointer_mut(pointer).unwrap_or_else(|| panic!("{}: no {pointer} in {target}", p.display())) = value.clone();
            }
            entry.1 = serde_json::to_vec(&v).unwrap();
        } else {
            let base = file_name.split_once("--").map_or(file_name.as_str(), |(_, b)| b).to_string();
            set.retain(|(n, _)| *n != base);
            set.push((base, std::fs::read(&p).unwrap()));
        }
        out.push(set);
    }
    out
}

fn write_set(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
}

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Run `target` on the checked-in inputs and `n` mutated ones; returns (cases, errors,
/// slowest case) and panics with the list of failing inputs.
fn fuzz(target: &Target, n: usize, rng: &mut StdRng) -> (usize, usize, Duration) {
    let work = tempfile::tempdir().unwrap();
    let failures_dir = common::repo_root().join("target/fuzz-failures");
    let mut failures = Vec::new();
    let (mut errors, mut slowest, mut total) = (0, Duration::ZERO, 0);
    // each mutated case is made when its turn comes: the harness holds one input at a time,
    // so the process's peak memory is what parsing takes
    let mutated = (0..n).map(|_| {
        let mut set = target.seeds[rng.random_range(0..target.seeds.len())].clone();
        let i = rng.random_range(0..set.len());
        let mutated = mutate_file(rng, &set[i].0, &set[i].1);
        set[i].1 = mutated;
        set
    });
    for (case, set) in checked_in(target.name, &target.seeds[0]).into_iter().chain(mutated).enumerate() {
        let set = &set;
        let dir = work.path().join(format!("case{case}"));
        std::fs::create_dir(&dir).unwrap();
        write_set(&dir, set);
        let start = Instant::now();
        let peak_before = peak_rss_mib();
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.parse)(&dir)));
        slowest = slowest.max(start.elapsed());
        total += 1;
        // inputs of kilobytes may not make the process take hundreds of megabytes
        let grew = peak_rss_mib().saturating_sub(peak_before);
        match outcome {
            Ok(_) if grew > MAX_GROWTH_MIB => {
                let keep = failures_dir.join(format!("{}-{case}-memory-{grew}MiB", target.name));
                let _ = std::fs::create_dir_all(&keep);
                write_set(&keep, set);
                failures.push(keep);
            }
            Ok(refused) => errors += refused as usize,
            Err(_) => {
                let keep = failures_dir.join(format!("{}-{case}", target.name));
                let _ = std::fs::create_dir_all(&keep);
                write_set(&keep, set);
                failures.push(keep);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(failures.is_empty(), "{}: {} panics or memory blow-ups, inputs kept in {:?}", target.name, failures.len(), failures);
    (total, errors, slowest)
}

fn parse_with(f: impl Fn(&Path) -> bool + 'static) -> Box<dyn Fn(&Path) -> bool> {
    Box::new(f)
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

/// A small valid run folder of a `layers`-layer model.
fn run_folder(dir: &Path, layers: usize) {
    let calibration = Calibration::from_samples(vec![vec![1, 2, 3, 4], vec![5, 6, 7]], CalibSource::SelfGenerated, CalibOptions::default());
    let healing = Calibration::from_samples(vec![vec![8, 9, 10], vec![11, 12]], CalibSource::SelfGenerated, CalibOptions::default());
    let info = RunInfo {
        tool_version: "0.1.0".into(),
        settings: SearchSettings { population: 4, ..SearchSettings::default() },
        engine: Default::default(),
        model: ModelIdentity { path: "m.gguf".into(), sha256: "ab".repeat(32), architecture: "llama".into(), layers },
        calibration_hash: calibration.hash.clone(),
        calibration_source: "self".into(),
        status: Status::Stopped,
        message: None,
        baselines: false,
        validation: None,
        heal_picks: Some(HealPicksInfo::of(&heal_picks::HealPicks { screen: 0, ..Default::default() }, &healing)),
        nonce: None,
    };
    let store = RunStore::create(dir, &info, &calibration).unwrap();
    drop(store);
    heal_picks::write(dir, &healing).unwrap();
    let plan = Plan::from_ranges(&[(1, 2)], layers, MergeOp::KeepFirst).unwrap();
    let result = json!({
        "fitness": 0.5, "attention": 0.0, "ffn": 0.0, "hidden": 0.0, "compression": plan.compression(),
        "params_removed": 0.1, "remaining_layers": plan.remaining(), "psi": plan.psi, "canonical": plan.canonical,
        "non_finite": false, "objective": "kl", "kl": 0.7
    });
    let genes = info.settings.encoding(layers).bounds().lower.len();
    let mut x = vec![0.0; genes];
    x[0] = 1.0;
    x[1] = 2.0;
    x[2] = 1.0;
    let line = json!({"index": 0, "generation": 0, "genes": x, "key": plan.model_key(), "merges": "1:2", "cached": false, "result": result});
    std::fs::write(dir.join("evaluations.jsonl"), format!("{line}\n")).unwrap();
    let ind = json!({"x": x, "eval": {"objectives": [0.5, 0.1], "violation": 0.0}, "rank": 0, "crowding": null});
    let cp = json!({"state": {"generation": 1, "evaluations": 1, "population": [ind.clone(), ind]}, "evaluated": 1, "cache_hits": 0, "unique": 1, "seconds": 1.0, "hypervolume": [0.1]});
    std::fs::write(dir.join("checkpoint.json"), cp.to_string()).unwrap();
    let mut entry = result.clone();
    entry["merges"] = json!("1:2");
    entry["genes"] = json!(x);
    entry["validation_perplexity"] = json!(40.0);
    std::fs::write(dir.join("front.json"), json!([entry]).to_string()).unwrap();
    let baseline = json!([{"method": "ShortGPT (r=1)", "kind": "shortgpt", "plan": plan, "merges": "1:2", "result": result}]);
    std::fs::write(dir.join("baselines.json"), baseline.to_string()).unwrap();
    let windows = vec![vec![1u32, 2, 3], vec![4, 5, 6]];
    let v = json!({"source": "v.txt", "hash": calibration::hash_ids(&windows), "windows": windows});
    std::fs::write(dir.join("validation.json"), v.to_string()).unwrap();
}

fn targets(work: &Path, tiny: Arc<LoadedModel>, gguf: &Path, hf: &Path) -> Vec<Target> {
    let cpu = tiny.device.clone();
    let load_model = {
        let cpu = cpu.clone();
        move |p: &Path| match ModelFiles::open(p) {
            Ok(_) => model::load(p, cpu.clone()).is_err(),
            Err(_) => true,
        }
    };
    let gguf_seed = vec![("model.gguf".to_string(), std::fs::read(gguf).unwrap())];
    let hf_seed = files_of(hf);

    // a recipe for the tiny model, healed on a small calibration
    let identity = ModelIdentity::of(&tiny.files).unwrap();
    let plan = Plan::from_ranges(&[(1, 2)], tiny.model.num_layers(), MergeOp::KeepFirst).unwrap();
    let mut recipe = Recipe::new(identity, &plan, MergeOp::KeepFirst, MergeSettings::default());
    let recipe_plain = serde_json::to_vec_pretty(&recipe).unwrap();
    let cal = Calibration::from_samples(vec![vec![3, 4, 5]], CalibSource::SelfGenerated, CalibOptions::default());
    recipe.heal = Some(gelaco::export::variant::Healing { method: gelaco::fitness::Heal::Linear, calibration: cal });
    recipe.validation_perplexity = Some(31.5);
    let recipe_healed = serde_json::to_vec_pretty(&recipe).unwrap();

    let run = work.join("run-seed");
    run_folder(&run, tiny.model.num_layers());

    let text: Vec<u8> = (0..30).map(|i| format!("the hand and the thing number {i} went out to the shop today\n")).collect::<String>().into_bytes();
    let jsonl: Vec<u8> = (0..20).map(|i| json!({"text": format!("the thing {i} and the hand went out to the shop again")}).to_string() + "\n").collect::<String>().into_bytes();
    let arc = (0..5)
        .map(|i| json!({"id": format!("q{i}"), "question": {"stem": "which is it?", "choices": [{"text": "a hand", "label": "A"}, {"text": "a thing", "label": "B"}]}, "answerKey": "A"}).to_string() + "\n")
        .collect::<String>()
        .into_bytes();
    let piqa = (0..5).map(|i| json!({"goal": format!("goal {i}"), "sol1": "the hand", "sol2": "the thing"}).to_string() + "\n").collect::<String>().into_bytes();
    let hellaswag = (0..5)
        .map(|i| json!({"ctx": format!("the hand {i}"), "endings": ["a", "b", "c", "d"], "label": 1, "activity_label": "x"}).to_string() + "\n")
        .collect::<String>()
        .into_bytes();

    let tokenizer_seed = hf_seed.iter().filter(|(n, _)| n == "tokenizer.json" || n == "config.json").cloned().collect::<Vec<_>>();
    let m = tiny.clone();
    vec![
        Target { name: "gguf", seeds: vec![gguf_seed], parse: parse_with({ let l = load_model.clone(); move |d: &Path| l(&d.join("model.gguf")) }) },
        Target {
            name: "safetensors",
            seeds: vec![hf_seed.iter().map(|(n, d)| (n.clone(), d.clone())).collect()],
            parse: parse_with({ let l = load_model.clone(); move |d: &Path| l(d) }),
        },
        Target { name: "config", seeds: vec![hf_seed.clone()], parse: parse_with({ let l = load_model.clone(); move |d: &Path| l(d) }) },
        Target {
            name: "tokenizer",
            seeds: vec![tokenizer_seed],
            parse: parse_with(|d: &Path| gelaco::model::Tokenizer::from_file(&d.join("tokenizer.json"), Some(1), vec![2]).map(|t| t.encode("the hand é 12")).is_err()),
        },
        Target {
            name: "recipe",
            seeds: vec![vec![("recipe.json".into(), recipe_plain)], vec![("recipe.json".into(), recipe_healed)]],
            parse: parse_with(|d: &Path| Recipe::load(&d.join("recipe.json")).and_then(|r| r.plan()).is_err()),
        },
        Target {
            name: "run-folder",
            seeds: vec![files_of(&run)],
            parse: parse_with(|d: &Path| {
                RunStore::open(d).is_err()
                    | store::read_front(d).is_err()
                    | store::read_baselines(d).is_err()
                    | store::read_validation(d).is_err()
                    | store::read_calibration(d).is_err()
                    | store::read_info(d).and_then(|i| heal_picks::read(d, &i)).is_err()
            }),
        },
        Target {
            name: "calibration",
            seeds: vec![vec![("calib.txt".into(), text)], vec![("calib.jsonl".into(), jsonl)]],
            parse: parse_with(move |d: &Path| {
                let file = if d.join("calib.txt").exists() { d.join("calib.txt") } else { d.join("calib.jsonl") };
                let opts = CalibOptions { samples: 4, max_tokens: 16, min_chars: 10, ..CalibOptions::default() };
                calibration::load(&CalibSource::File(file), &opts, &m.model, &m.tokenizer).is_err()
            }),
        },
        Target {
            name: "tasks",
            seeds: vec![
                vec![("arc.jsonl".into(), arc)],
                vec![("dev.jsonl".into(), piqa), ("dev-labels.lst".into(), b"0\n1\n0\n1\n0\n".to_vec())],
                vec![("hellaswag.jsonl".into(), hellaswag)],
            ],
            parse: parse_with(|d: &Path| {
                let mut err = false;
                for (name, file) in [("arc_easy", "arc.jsonl"), ("piqa", "dev.jsonl"), ("hellaswag", "hellaswag.jsonl")] {
                    if d.join(file).exists() {
                        err |= Task::load(name, &d.join(file), Some(50)).is_err();
                    }
                }
                err
            }),
        },
    ]
}

#[test]
fn every_parser_survives_mutated_and_hostile_inputs() {
    let tiny = Tiny { layers: 3, hidden: 32, ff: 64, ..Tiny::default() };
    let (dir, g, hf) = tiny.write_both();
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let loaded = Arc::new(model::load(&g, cpu).unwrap());
    let n = cases();
    let mut rng = StdRng::seed_from_u64(seed());
    let mut lines = Vec::new();
    for t in targets(dir.path(), loaded, &g, &hf) {
        let start = Instant::now();
        let (total, refused, slowest) = fuzz(&t, n, &mut rng);
        lines.push(format!(
            "{:<12} {total:>6} cases ({refused} refused) in {:>6.1} s, slowest {:>7.1} ms, peak memory of the process {} MiB",
            t.name,
            start.elapsed().as_secs_f64(),
            slowest.as_secs_f64() * 1e3,
            peak_rss_mib()
        ));
        assert!(slowest < Duration::from_secs(20), "{}: a case took {slowest:?}", t.name);
    }
    println!("{}", lines.join("\n"));
    assert!(peak_rss_mib() < 512, "peak memory {} MiB", peak_rss_mib());
}
