//! The collapse and fitness engine on tiny random models: against the straightforward
//! evaluation, across backends, cached and chunked, with shared tensors.

mod common;

use std::sync::Arc;

use common::{Tiny, TinyArch, devices};
use gelaco::backend::{self, ComputeDevice, DeviceChoice};
use gelaco::collapse::{MergeOp, MergeSettings, Plan, Triple, build};
use gelaco::fitness::calibration::{self, CalibOptions, CalibSource, Calibration, Pick};
use gelaco::fitness::{EngineOptions, FitnessEngine, FitnessResult, Heal, Objective, naive};
use gelaco::model::{self, LoadedModel};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The paper's fitness: module-wise similarity, no healing.
fn similarity() -> EngineOptions {
    EngineOptions { objective: Objective::Similarity, heal: Heal::None, ..EngineOptions::default() }
}


fn calibration(samples: usize) -> Calibration {
    let mut rng = StdRng::seed_from_u64(3);
    let ids: Vec<Vec<u32>> = (0..samples)
        .map(|i| (0..(5 + (i * 7) % 13)).map(|_| rng.random_range(0..256)).collect())
        .collect();
    Calibration::from_samples(ids, CalibSource::SelfGenerated, CalibOptions::default())
}

fn plans(layers: usize) -> Vec<(&'static str, Vec<(usize, usize)>)> {
    vec![
        ("identity", vec![]),
        ("one span", vec![(1, 2)]),
        ("two spans", vec![(0, 1), (layers - 3, layers - 1)]),
        ("overlap through psi", vec![(1, 2), (2, 4)]),
        ("long span", vec![(1, layers - 1)]),
    ]
}

fn close(a: &FitnessResult, b: &FitnessResult, tol: f64, what: &str) {
    for (x, y, name) in [
        (a.fitness, b.fitness, "fitness"),
        (a.attention, b.attention, "attention"),
        (a.ffn, b.ffn, "ffn"),
        (a.hidden, b.hidden, "hidden"),
    ] {
        assert!((x - y).abs() < tol, "{what}: {name} {x} vs {y}");
    }
    for (j, (p, q)) in a.per_layer.iter().zip(&b.per_layer).enumerate() {
        assert!((p.attention - q.attention).abs() < tol && (p.ffn - q.ffn).abs() < tol, "{what}: layer {j}");
    }
    assert_eq!(a.psi, b.psi);
    assert_eq!(a.canonical, b.canonical);
}

fn tiny_loaded(tiny: &Tiny, d: &ComputeDevice) -> (tempfile::TempDir, LoadedModel) {
    let (dir, g, _) = tiny.write_both();
    let m = model::load(&g, d.clone()).unwrap();
    (dir, m)
}

#[test]
fn engine_equals_straightforward_evaluation() {
    let tiny = Tiny { layers: 6, arch: TinyArch::Qwen2, ..Tiny::default() };
    let cal = calibration(6);
    for d in devices() {
        let (_dir, m) = tiny_loaded(&tiny, &d);
        for keep_base_norms in [false, true] {
            let settings = MergeSettings { keep_base_norms };
            let opts = EngineOptions { batch_size: 4, cache_mb: 64, merge: settings, ..similarity() };
            let engine = FitnessEngine::new(&m.model, cal.clone(), opts).unwrap();
            for op in MergeOp::ALL {
                for (label, ranges) in plans(6) {
                    let plan = Plan::from_ranges(&ranges, 6, op).unwrap();
                    let fast = engine.evaluate(&plan).unwrap();
                    let slow = naive::evaluate(&m.model, &cal, &plan, settings).unwrap();
                    close(&fast, &slow, 2e-4, &format!("{} {label} {op} norms={keep_base_norms}", d.description));
                    if ranges.is_empty() {
                        assert_eq!(fast.fitness, 1.0, "identity must score exactly 1");
                    } else {
                        assert!(fast.fitness < 1.0);
                    }
                }
            }
        }
    }
}

#[test]
fn chunked_reference_gives_the_same_numbers() {
    // wide enough that 1 MiB holds only some of the samples' activations
    let tiny = Tiny { layers: 5, hidden: 256, ff: 512, ..Tiny::default() };
    let cal = calibration(7);
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = tiny_loaded(&tiny, &cpu);
    let cached = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { batch_size: 3, cache_mb: 64, ..similarity() }).unwrap();
    assert_eq!(cached.cache_state(), (3, 3));
    let chunked = FitnessEngine::new(&m.model, cal, EngineOptions { batch_size: 3, cache_mb: 1, ..similarity() }).unwrap();
    let (chunks, kept) = chunked.cache_state();
    assert!(kept < chunks, "{kept} of {chunks} cached");
    for (label, ranges) in plans(5) {
        let plan = Plan::from_ranges(&ranges, 5, MergeOp::Rdsc).unwrap();
        close(&cached.evaluate(&plan).unwrap(), &chunked.evaluate(&plan).unwrap(), 1e-6, label);
    }
}

#[test]
fn a_first_chunk_of_the_screening_size_scores_exactly_those_tokens() {
    let tiny = Tiny { layers: 5, ..Tiny::default() };
    let cal = calibration(9);
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = tiny_loaded(&tiny, &cpu);
    let kl = EngineOptions { batch_size: 4, objective: Objective::Kl, heal: Heal::None, ..EngineOptions::default() };
    let whole = FitnessEngine::new(&m.model, cal.clone(), kl).unwrap();
    let small_first = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { first_chunk_tokens: Some(30), ..kl }).unwrap();
    // the longest samples first: enough of them for 30 tokens
    let mut sorted = cal.samples.clone();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let n = (1..=sorted.len()).find(|&n| sorted[..n].iter().map(Vec::len).sum::<usize>() >= 30).unwrap();
    assert!(n < 4, "the test needs a first chunk smaller than a batch");
    assert_eq!(small_first.cache_state().0, 1 + (9 - n).div_ceil(4));
    assert_eq!(small_first.chunk_count(Some(30)), 1);
    let head = FitnessEngine::new(&m.model, Calibration::from_samples(sorted[..n].to_vec(), CalibSource::SelfGenerated, CalibOptions::default()), kl).unwrap();
    for (label, ranges) in plans(5) {
        let plan = Plan::from_ranges(&ranges, 5, MergeOp::KeepFirst).unwrap();
        // the full score does not depend on the chunking; the estimate is that of the head
        let (a, b) = (whole.evaluate(&plan).unwrap(), small_first.evaluate(&plan).unwrap());
        assert!((a.fitness - b.fitness).abs() < 1e-6, "{label}: {} vs {}", a.fitness, b.fitness);
        let (p, q) = (small_first.evaluate_partial(&plan, Some(30)).unwrap(), head.evaluate(&plan).unwrap());
        assert!((p.fitness - q.fitness).abs() < 1e-6, "{label}: {} vs {}", p.fitness, q.fitness);
    }
}

#[test]
fn budget_too_small_is_refused() {
    let tiny = Tiny::default();
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = tiny_loaded(&tiny, &cpu);
    let long = Calibration::from_samples(vec![vec![1; 20_000]], CalibSource::SelfGenerated, CalibOptions::default());
    let e = FitnessEngine::new(&m.model, long, EngineOptions { cache_mb: 1, ..similarity() }).err().unwrap();
    assert!(matches!(e, gelaco::Error::Setting { setting: "cache_mb", .. }), "{e}");
}

#[test]
fn untouched_layers_share_the_original_tensors() {
    let tiny = Tiny { layers: 6, ..Tiny::default() };
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = tiny_loaded(&tiny, &cpu);
    let plan = Plan::from_ranges(&[(1, 3)], 6, MergeOp::Rdsc).unwrap();
    let c = build(&m.model, &plan, MergeSettings::default());
    assert_eq!(c.num_layers(), 4);
    assert!(Arc::ptr_eq(&c.layers[0], &m.model.layers[0]));
    assert!(!Arc::ptr_eq(&c.layers[1], &m.model.layers[1]));
    assert!(Arc::ptr_eq(&c.layers[2], &m.model.layers[4]));
    assert!(Arc::ptr_eq(&c.layers[3], &m.model.layers[5]));
    // keep-first creates nothing new at all
    let c = build(&m.model, &Plan::from_ranges(&[(1, 3)], 6, MergeOp::KeepFirst).unwrap(), MergeSettings::default());
    assert!(Arc::ptr_eq(&c.layers[1], &m.model.layers[1]));
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn two_hundred_plans_do_not_grow_memory() {
    // measured in a process of its own: other tests share this one's memory
    const CHILD: &str = "GELACO_MEMORY_TEST_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "two_hundred_plans_do_not_grow_memory", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("after 200 plans"), "{text}");
        return;
    }
    // about 17 MB of weights: copying the model per evaluation would show
    let tiny = Tiny { layers: 8, hidden: 256, ff: 512, heads: 4, kv_heads: 2, ..Tiny::default() };
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = tiny_loaded(&tiny, &cpu);
    let engine = FitnessEngine::new(&m.model, calibration(8), similarity()).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let mut random_plan = || {
        let g: Vec<Triple> = (0..8)
            .map(|_| {
                let b = rng.random_range(0..8);
                Triple { b, e: (b + rng.random_range(1..4)).min(7), active: rng.random_bool(0.3), op: Some(MergeOp::ALL[rng.random_range(0..4)]) }
            })
            .collect();
        Plan::decode(&g, 8, MergeOp::Rdsc)
    };
    for _ in 0..20 {
        engine.evaluate(&random_plan()).unwrap();
    }
    let warm = rss_bytes();
    for _ in 0..200 {
        let r = engine.evaluate(&random_plan()).unwrap();
        assert!(r.fitness.is_finite());
    }
    let after = rss_bytes();
    let grown = after.saturating_sub(warm) as f64 / 1e6;
    eprintln!("RSS after warm-up {:.1} MB, after 200 plans {:.1} MB", warm as f64 / 1e6, after as f64 / 1e6);
    // one copy of this model is 17 MB: copying it per evaluation would grow by gigabytes
    assert!(grown < 16.0, "memory grew by {grown:.1} MB over 200 evaluations");
}

#[test]
fn non_finite_activations_give_the_worst_fitness() {
    let tiny = Tiny::default();
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = tiny_loaded(&tiny, &cpu);
    let engine = FitnessEngine::new(&m.model, calibration(4), similarity()).unwrap();
    let plan = Plan::from_ranges(&[(1, 2)], 4, MergeOp::KeepFirst).unwrap();
    let mut broken = build(&m.model, &plan, MergeSettings::default());
    let mut layer = (*broken.layers[1]).clone();
    layer.mlp.up.weight = gelaco::model::layer::Weight::Dense(layer.mlp.up.weight_t().mul_scalar(f32::NAN));
    broken.layers[1] = Arc::new(layer);
    let r = engine.evaluate_model(&broken, &plan).unwrap();
    assert!(r.non_finite);
    assert_eq!(r.fitness, gelaco::fitness::WORST_FITNESS);
    assert!(r.per_layer.iter().all(|l| l.attention.is_finite() && l.ffn.is_finite()));
    serde_json::to_string(&r).unwrap();
}

#[test]
fn calibration_sources_are_reproducible() {
    let tiny = Tiny::default();
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (dir, m) = tiny_loaded(&tiny, &cpu);
    let lines: Vec<String> = (0..30).map(|i| format!("line number {i} is long enough to be a calibration sample")).collect();
    let txt = dir.path().join("c.txt");
    std::fs::write(&txt, format!("short\n\n{}\n", lines.join("\n"))).unwrap();
    let jsonl = dir.path().join("c.jsonl");
    std::fs::write(&jsonl, lines.iter().map(|l| serde_json::json!({"text": l}).to_string() + "\n").collect::<String>()).unwrap();
    let pq = dir.path().join("c.parquet");
    common::write_parquet(&pq, "text", &lines);

    let opts = CalibOptions { samples: 10, max_tokens: 40, ..CalibOptions::default() };
    let load = |p: &std::path::Path, o: &CalibOptions| calibration::load(&CalibSource::File(p.to_path_buf()), o, &m.model, &m.tokenizer).unwrap();
    let a = load(&txt, &opts);
    assert_eq!(a.samples.len(), 10);
    assert!(a.samples.iter().all(|s| s.len() <= 40));
    assert_eq!(a.samples[0], m.tokenizer.encode(&lines[0]).unwrap()[..40].to_vec());
    assert_eq!(load(&jsonl, &opts).hash, a.hash);
    assert_eq!(load(&pq, &opts).hash, a.hash);

    let random = CalibOptions { pick: Pick::Random, seed: 9, ..opts.clone() };
    let r1 = load(&txt, &random);
    assert_eq!(r1.hash, load(&txt, &random).hash);
    assert_ne!(r1.hash, a.hash);
    assert_ne!(load(&txt, &CalibOptions { seed: 10, ..random.clone() }).hash, r1.hash);

    let selfgen = CalibOptions { samples: 5, max_tokens: 10, seed: 4, ..CalibOptions::default() };
    let s1 = calibration::load(&CalibSource::SelfGenerated, &selfgen, &m.model, &m.tokenizer).unwrap();
    let s2 = calibration::load(&CalibSource::SelfGenerated, &selfgen, &m.model, &m.tokenizer).unwrap();
    assert_eq!(s1.samples.len(), 5);
    assert_eq!(s1.hash, s2.hash);
    assert!(s1.samples.iter().all(|s| !s.is_empty() && s.len() <= 10));

    // too few usable lines, missing column
    let e = calibration::load(&CalibSource::File(txt.clone()), &CalibOptions { samples: 31, ..opts.clone() }, &m.model, &m.tokenizer).unwrap_err();
    assert!(e.to_string().contains("30 sample(s)"), "{e}");
    let e = calibration::load(&CalibSource::File(pq.clone()), &CalibOptions { text_field: "body".into(), ..opts.clone() }, &m.model, &m.tokenizer).unwrap_err();
    assert!(e.to_string().contains("no column 'body'"), "{e}");
}

#[test]
fn the_reference_cache_shares_the_memory_budget_with_the_weights_and_gives_it_back() {
    let tiny = Tiny { layers: 6, ..Tiny::default() };
    let (_dir, g, _hf) = tiny.write_both();
    let cal = calibration(6);
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let opts = EngineOptions { batch_size: 2, objective: Objective::Kl, heal: Heal::None, ..EngineOptions::default() };
    let whole = model::load(&g, cpu.clone()).unwrap();
    let free = FitnessEngine::new(&whole.model, cal.clone(), opts).unwrap();
    let (chunks, cached) = free.cache_state();
    let need = free.cache_bytes();
    assert!(chunks == 3 && cached == 3 && need > 0, "without a budget every chunk is cached: {chunks} {cached} {need}");
    assert_eq!(whole.model.weights_budget(), whole.memory.resident_budget - need, "the default budget holds the cache too");
    let minimum = whole.memory.minimum();
    let layer = whole.memory.layer_bytes;
    // (budget above the minimum, chunks cached, what the weights keep while the engine lives)
    for (extra, expect_cached) in [(2 * need, Some(3)), (need, None), (0, Some(0))] {
        let m = model::load(&g, ComputeDevice { memory_budget: Some(minimum + extra), ..cpu.clone() }).unwrap();
        let before = m.model.weights_budget();
        assert_eq!(before, layer + extra);
        let e = FitnessEngine::new(&m.model, cal.clone(), opts).unwrap();
        let (_, cached) = e.cache_state();
        match expect_cached {
            Some(n) => assert_eq!(cached, n, "budget minimum + {extra}"),
            None => assert!(cached < 3, "half of {extra} bytes cannot hold all {need}: {cached} cached"),
        }
        assert!(e.cache_bytes() <= extra / 2, "the cache takes at most half of what is spare: {} of {extra}", e.cache_bytes());
        assert_eq!(m.model.weights_budget(), before - e.cache_bytes(), "the cache comes out of the weights' share");
        for (label, ranges) in plans(6) {
            let plan = Plan::from_ranges(&ranges, 6, MergeOp::KeepFirst).unwrap();
            let (x, y) = (free.evaluate(&plan).unwrap(), e.evaluate(&plan).unwrap());
            assert_eq!(x.fitness.to_bits(), y.fitness.to_bits(), "{label}, budget minimum + {extra}: cached and recomputed reference activations agree");
        }
        assert!(m.model.resident_stats().peak_bytes <= before, "{:?}", m.model.resident_stats());
        drop(e);
        assert_eq!(m.model.weights_budget(), before, "the engine gives its share back");
    }
}

#[test]
fn a_model_streamed_under_a_small_memory_budget_scores_bit_for_bit_as_when_resident() {
    let tiny = Tiny { layers: 6, ..Tiny::default() };
    let (_dir, g, hf) = tiny.write_both();
    let cal = calibration(6);
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    // the GGUF file's Q8_0 blocks also as codes kept on the device and dequantised there, and
    // on WGPU multiplied as burn's quantised tensors
    let mut cases: Vec<(&std::path::PathBuf, ComputeDevice)> =
        vec![(&g, cpu.clone()), (&g, ComputeDevice { codes_on_device: true, ..cpu.clone() }), (&hf, cpu.clone())];
    cases.extend(devices().into_iter().skip(1).map(|gpu| (&g, gpu)));
    for (path, device) in cases {
        let codes_on_device = device.codes_on_device;
        // on the CPU backend, codes give what the host's dequantisation gives, bit for bit
        let baseline = model::load(path, if device.backend == cpu.backend { cpu.clone() } else { device.clone() }).unwrap();
        let cpu = device;
        let resident = model::load(path, cpu.clone()).unwrap();
        assert!(!resident.memory.streams(), "the default budget holds a tiny model");
        // room for the embeddings, the head and one layer, and not one byte more
        let minimum = resident.memory.minimum();
        let streamed = model::load(path, ComputeDevice { memory_budget: Some(minimum), ..cpu.clone() }).unwrap();
        assert!(streamed.memory.streams());
        assert_eq!(streamed.memory.resident_budget, resident.memory.layer_bytes);
        for objective in [Objective::Kl, Objective::Nll, Objective::Similarity] {
            let opts = EngineOptions { batch_size: 4, objective, heal: Heal::None, ..EngineOptions::default() };
            let base = FitnessEngine::new(&baseline.model, cal.clone(), opts).unwrap();
            let a = FitnessEngine::new(&resident.model, cal.clone(), opts).unwrap();
            let b = FitnessEngine::new(&streamed.model, cal.clone(), opts).unwrap();
            for op in [MergeOp::KeepFirst, MergeOp::Mean] {
                for (label, ranges) in plans(6) {
                    let plan = Plan::from_ranges(&ranges, 6, op).unwrap();
                    let (w, x, y) = (base.evaluate(&plan).unwrap(), a.evaluate(&plan).unwrap(), b.evaluate(&plan).unwrap());
                    let what = format!("{} on {} codes on device {codes_on_device} {objective:?} {op} {label}", path.display(), cpu.description);
                    for z in [&x, &y] {
                        if cpu.backend != backend::BackendKind::Cpu {
                            // WGPU's autotune may pick another kernel for a shape as it learns,
                            // which changes the order of the sums
                            close(&w, z, 1e-6, &what);
                            continue;
                        }
                        assert_eq!(w.fitness.to_bits(), z.fitness.to_bits(), "{what}: {} vs {}", w.fitness, z.fitness);
                        assert_eq!((w.kl, w.nll), (z.kl, z.nll), "{what}");
                        close(&w, z, f64::MIN_POSITIVE, &what);
                    }
                }
            }
        }
        let (r, s) = (resident.model.resident_stats(), streamed.model.resident_stats());
        let matrices = 7 * 6;
        let kept = if codes_on_device { 2 * matrices } else { matrices };
        assert_eq!((r.loads, r.evictions), (kept, 0), "resident: each matrix dequantised once ({r:?})");
        assert!(s.loads > kept && s.peak_bytes <= streamed.memory.resident_budget, "streamed: {s:?}");
        assert!(s.hits > 0, "the most used layer stays resident: {s:?}");
        assert!(s.read_ahead > 0, "streamed layers are read ahead of their use: {s:?}");
        if codes_on_device {
            assert!(r.codes_bytes > 0 && r.codes_bytes * 3 < r.bytes, "Q8_0 codes take about a quarter of f32: {r:?}");
            assert!(s.codes_bytes > 0, "codes outrank f32 copies in a small budget: {s:?}");
        } else {
            assert_eq!(r.codes_bytes, 0);
        }
    }
    // less than one layer beside the fixed tensors: refused, with the numbers
    let need = model::load(&g, cpu.clone()).unwrap().memory.minimum();
    let e = model::load(&g, ComputeDevice { memory_budget: Some(need - 1), ..cpu }).err().unwrap();
    assert!(matches!(e, gelaco::Error::Setting { setting: "memory_budget", .. }), "{e}");
    assert!(e.to_string().contains("one layer") && e.to_string().contains("GiB"), "{e}");
}

#[test]
fn merged_and_healed_weights_are_kept_in_f16_where_the_device_computes_in_f16_and_score_as_in_f32() {
    let tiny = Tiny { layers: 6, ..Tiny::default() };
    let (_dir, g, hf) = tiny.write_both();
    let cal = calibration(16);
    let plan = Plan::from_ranges(&[(1, 3)], 6, MergeOp::Rdsc).unwrap();
    let mut nll = Vec::new();
    for d in devices() {
        // the GGUF file's layers are Q8_0, the Hugging Face folder's f32
        for (path, narrow) in [(&g, true), (&hf, false)] {
            let m = model::load(path, d.clone()).unwrap();
            let kept_f16 = narrow && backend::computes_f16(&d.device);
            let what = format!("{} {}", d.description, path.display());
            let merged = build(&m.model, &plan, MergeSettings::default());
            let merged_layer = &merged.layers[1];
            for w in [&merged_layer.attention.q.weight, &merged_layer.mlp.gate.weight, &merged_layer.mlp.down.weight] {
                assert_eq!(w.is_f16(), kept_f16, "{what}: merged");
            }
            assert!(!merged.layers[0].mlp.down.weight.is_f16(), "{what}: an untouched layer stays the file's");
            let opts = EngineOptions { batch_size: 4, objective: Objective::Nll, heal: Heal::Linear, ..EngineOptions::default() };
            let engine = FitnessEngine::new(&m.model, cal.clone(), opts).unwrap();
            let healed = engine.heal(&merged, &plan, 1).unwrap();
            assert_eq!(healed.layers[1].mlp.down.weight.is_f16(), kept_f16, "{what}: healed");
            // the merged layer's weights read back as the f32 values they hold
            let host = healed.layers[1].mlp.down.weight.host().unwrap();
            assert!(host.data.iter().all(|v| v.is_finite()) && host.data.iter().any(|&v| v != 0.0), "{what}");
            nll.push((what, narrow, engine.evaluate(&plan).unwrap().nll.unwrap()));
        }
    }
    // f16 keeps about 3 decimal digits of each weight: the score moves by far less than that
    let cpu: Vec<f64> = nll.iter().take(2).map(|r| r.2).collect();
    for (i, (what, _, x)) in nll.iter().enumerate() {
        let base = cpu[i % 2];
        assert!((x - base).abs() / base < 1e-3, "{what}: nll {x} against {base} on the CPU backend");
    }
}

#[test]
fn a_gpus_own_memory_bounds_the_default_budget_where_it_is_less_than_the_hosts() {
    let tiny = Tiny { layers: 6, ..Tiny::default() };
    let (_dir, g, _) = tiny.write_both();
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let host = model::load(&g, cpu.clone()).unwrap().memory;
    assert!(!host.available.device_bounds() && host.budget_text().unwrap().contains("available memory"));
    // a device with room for the fixed tensors, the reserve and two layers of its own
    let own = (host.minimum() + host.layer_bytes) / 3 * 4;
    let m = model::load(&g, ComputeDevice { device_memory: Some(own), ..cpu.clone() }).unwrap();
    assert!(m.memory.available.device_bounds(), "{:?}", m.memory.available);
    assert_eq!(m.memory.budget, own / 4 * 3);
    assert!(m.memory.streams(), "six layers do not fit in two layers' room");
    let text = m.memory.budget_text().unwrap();
    assert!(text.contains("the GPU's own memory, less a quarter"), "{text}");
    // a given budget is the budget, whatever the device has
    let given = model::load(&g, ComputeDevice { device_memory: Some(own), memory_budget: Some(host.budget), ..cpu.clone() }).unwrap();
    assert_eq!(given.memory.budget, host.budget);
    // a device too small for one layer: refused before loading, naming the GPU's memory
    let e = model::load(&g, ComputeDevice { device_memory: Some(host.layer_bytes), ..cpu }).err().unwrap().to_string();
    assert!(e.contains("the GPU's own memory") && e.contains("one layer") && e.contains("GiB"), "{e}");
}

#[test]
fn an_evaluation_counts_the_matmul_work_of_the_layers_it_runs_and_of_the_head() {
    let tiny = Tiny { layers: 6, ..Tiny::default() };
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = tiny_loaded(&tiny, &cpu);
    let c = m.model.config.clone();
    let cal = calibration(5);
    // one chunk: every sample padded to the longest
    let rows = (cal.samples.len() * cal.samples.iter().map(Vec::len).max().unwrap()) as f64;
    let sim = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { batch_size: 8, ..similarity() }).unwrap();
    let kl = FitnessEngine::new(&m.model, cal, EngineOptions { batch_size: 8, objective: Objective::Kl, heal: Heal::None, ..EngineOptions::default() }).unwrap();
    let identity = Plan::from_ranges(&[], 6, MergeOp::KeepFirst).unwrap();
    assert_eq!(sim.matmul_flops(&identity), 0.0, "nothing changed, nothing runs");
    let head = 2.0 * rows * (c.hidden_size * c.vocab_size) as f64;
    assert_eq!(kl.matmul_flops(&identity), head, "kl runs only the head on the cached final state");
    // merging layers 0-1 runs the five layers left; merging 3-4 runs the two from layer 3 up
    let low = Plan::from_ranges(&[(0, 1)], 6, MergeOp::KeepFirst).unwrap();
    let high = Plan::from_ranges(&[(3, 4)], 6, MergeOp::KeepFirst).unwrap();
    let (a, b) = (sim.matmul_flops(&low), sim.matmul_flops(&high));
    assert!((a / b - 5.0 / 2.0).abs() < 1e-12, "{a} vs {b}");
    assert_eq!(kl.matmul_flops(&low) - head, a, "the layers cost the same under either objective");
    // a layer's weight matrices hold all but its norms' parameters: two operations per
    // parameter and token, plus attention, which grows with the sequence
    let per_layer = a / 5.0;
    let weights = 2.0 * rows * (c.layer_params() - 2 * c.hidden_size) as f64;
    assert!(per_layer > weights && per_layer < 1.5 * weights, "{per_layer} against {weights} for the weights alone");
}

#[test]
fn healing_on_reference_activations_recomputed_per_use_equals_healing_on_cached_ones() {
    let tiny = Tiny { layers: 6, ..Tiny::default() };
    let (_dir, g, _hf) = tiny.write_both();
    let cal = calibration(16);
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let whole = model::load(&g, cpu.clone()).unwrap();
    let tight = model::load(&g, ComputeDevice { memory_budget: Some(whole.memory.minimum()), ..cpu.clone() }).unwrap();
    for objective in [Objective::Nll, Objective::Kl, Objective::Similarity] {
        let opts = EngineOptions { batch_size: 4, objective, heal: Heal::Linear, ..EngineOptions::default() };
        let cached = FitnessEngine::new(&whole.model, cal.clone(), opts).unwrap();
        let recomputed = FitnessEngine::new(&tight.model, cal.clone(), opts).unwrap();
        let (chunks, all) = cached.cache_state();
        assert!(chunks > 1 && all == chunks, "{objective}: {chunks} chunks, {all} cached");
        assert_eq!(recomputed.cache_state().1, 0, "{objective}: at the least budget nothing is cached");
        // one group, two groups (the second fitted on what the first leaves), a group at the top
        for ranges in [vec![(1, 2)], vec![(0, 1), (3, 4)], vec![(3, 5)]] {
            let plan = Plan::from_ranges(&ranges, 6, MergeOp::KeepFirst).unwrap();
            let (a, b) = (cached.evaluate(&plan).unwrap(), recomputed.evaluate(&plan).unwrap());
            assert_eq!(a.fitness.to_bits(), b.fitness.to_bits(), "{objective} {ranges:?}: {} vs {}", a.fitness, b.fitness);
        }
    }
}

#[test]
fn span_distances_compare_the_states_entering_layers_n_apart() {
    let tiny = Tiny { layers: 6, ..Tiny::default() };
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = tiny_loaded(&tiny, &cpu);
    let layers = m.model.num_layers();
    let samples = calibration(5).samples;
    // the states of each sample alone, on the host: states[j][token] enters layer j
    let mut cos_sum = vec![vec![0f64; layers + 1]; 5];
    let mut angle_sum = cos_sum.clone();
    let mut tokens = 0usize;
    for s in &samples {
        let ids = m.model.ids_tensor(std::slice::from_ref(s)).unwrap();
        let mut state = m.model.state(s.len());
        let mut h = m.model.embed(ids);
        let mut states = vec![gelaco::model::llama::download(h.clone()).unwrap().data];
        for j in 0..layers {
            h = m.model.run_layers(h, j..j + 1, &mut state, None, None);
            states.push(gelaco::model::llama::download(h.clone()).unwrap().data);
        }
        let width = states[0].len() / s.len();
        for n in 1..=4 {
            for l in 0..=layers - n {
                for t in 0..s.len() {
                    let a = &states[l][t * width..(t + 1) * width];
                    let b = &states[l + n][t * width..(t + 1) * width];
                    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
                    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                    let c = (dot / (na * nb)).clamp(-1.0, 1.0);
                    cos_sum[n][l] += c;
                    angle_sum[n][l] += c.acos() / std::f64::consts::PI;
                }
            }
        }
        tokens += s.len();
    }
    // on every backend, in batches of two: padded rows, and a last batch of one
    for d in devices() {
        let (_dir, on) = tiny_loaded(&tiny, &d);
        let got = gelaco::search::baselines::span_distances(&on.model, &samples, 2, 4).unwrap();
        assert_eq!(got.cosine.len(), 4);
        assert_eq!(got.angular[3].len(), layers - 3);
        for n in 1..=4 {
            for l in 0..=layers - n {
                let (c, a) = (cos_sum[n][l] / tokens as f64, angle_sum[n][l] / tokens as f64);
                assert!((got.cosine[n - 1][l] - c).abs() < 1e-4, "{}: cosine over {n} from {l}: {} vs {c}", d.description, got.cosine[n - 1][l]);
                assert!((got.angular[n - 1][l] - a).abs() < 1e-4, "{}: angle over {n} from {l}: {} vs {a}", d.description, got.angular[n - 1][l]);
                assert!(a > 0.0 && a < 1.0);
            }
        }
    }
    let got = gelaco::search::baselines::span_distances(&m.model, &samples, 2, 4).unwrap();
    // a memory bound of one byte runs one sample at a time, to the same figures
    let one = gelaco::search::baselines::span_distances_within(&m.model, &samples, 2, 4, 1).unwrap();
    for (x, y) in one.angular.iter().flatten().zip(got.angular.iter().flatten()) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    // Block Influence is one minus the cosine over one layer
    let influence = gelaco::search::baselines::block_influence(&m.model, &samples, 3).unwrap();
    for (i, c) in influence.iter().zip(&got.cosine[0]) {
        assert!((i - (1.0 - c)).abs() < 1e-5);
    }
}

#[test]
fn validation_run_on_from_the_first_changed_layer_equals_a_full_forward_bit_for_bit() {
    use gelaco::eval::validation::Validation;
    use gelaco::run::pick::Picker;
    let tiny = Tiny { layers: 8, ..Tiny::default() };
    let cal = calibration(16);
    let mut rng = StdRng::seed_from_u64(11);
    let windows: Vec<Vec<u32>> = (0..3).map(|_| (0..24).map(|_| rng.random_range(0..256)).collect()).collect();
    let validation = Validation { source: "random ids".into(), hash: calibration::hash_ids(&windows), windows };
    // the whole forward of `gelaco perplexity` over the same windows
    let whole_text = |model: &gelaco::model::llama::Llama| {
        let ids: Vec<u32> = validation.windows.concat();
        gelaco::eval::perplexity::perplexity(model, &ids, 24, None, |_, _| true).unwrap().perplexity
    };
    for d in devices() {
        let on = &d.description;
        // the CPU backend runs the same kernels for any shape: bit for bit; WGPU's matrix
        // products are autotuned by timing per shape, and the whole text is batched
        // otherwise than the validation windows, so a busy machine can pick other kernels
        let same = |a: f64, b: f64| if gelaco::backend::is_cpu(&d.device) { a.to_bits() == b.to_bits() } else { (a - b).abs() <= 1e-5 * b.abs() };
        let (_dir, m) = tiny_loaded(&tiny, &d);
        let engine = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { batch_size: 4, ..EngineOptions::default() }).unwrap();
        let mut picker = Picker::new(validation.clone(), &engine);
        let healer = FitnessEngine::healer(&m.model, cal.clone(), MergeSettings::default(), Heal::Linear).unwrap();
        // the first changed layer: 8 (nothing kept yet), 3 (from the embeddings), 5 (on from
        // the states kept at 3), 0 (before every kept layer), 3 again (kept)
        for ranges in [vec![], vec![(3, 4)], vec![(5, 7)], vec![(0, 1), (4, 6)], vec![(3, 5)]] {
            let plan = Plan::from_ranges(&ranges, 8, MergeOp::KeepFirst).unwrap();
            let result = engine.evaluate(&plan).unwrap();
            let full = whole_text(&engine.build_on(&plan, usize::MAX).unwrap());
            let picked = picker.perplexity(&result).unwrap().unwrap();
            assert!(same(picked, full), "{on} {ranges:?}: {picked} vs {full}");
            if ranges.is_empty() {
                continue;
            }
            // a healed model keeps the original's layers before its first change too
            let healed = healer.build_on(&plan, usize::MAX).unwrap();
            let first = plan.first_changed_layer();
            let entering = validation.entering(&m.model, None, first).unwrap();
            let from = validation.perplexity_from(&healed, first, &entering).unwrap();
            let whole = whole_text(&healed);
            assert!(same(from, whole), "{on} {ranges:?} healed: {from} vs {whole}");
            assert!(same(validation.perplexity(&healed).unwrap(), whole), "{on} {ranges:?} healed, from the embeddings");
            assert_ne!(whole.to_bits(), full.to_bits(), "{on} {ranges:?}: healing changed nothing");
        }
        // states for another number of windows, or from past the model's end, are refused
        let entering = validation.entering(&m.model, None, 2).unwrap();
        assert!(validation.perplexity_from(&m.model, 2, &entering[..2]).is_err());
        assert!(validation.entering(&m.model, None, 9).is_err());
    }
}
