//! The language-modelling objectives, healing and the depth baselines on tiny random
//! models: against straightforward full forward passes, on the CPU backend and on WGPU.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::{Tiny, devices};
use gelaco::backend::{self, ComputeDevice, DeviceChoice};
use gelaco::collapse::{MergeOp, MergeSettings, Plan, build};
use gelaco::eval::perplexity::window_nll;
use gelaco::fitness::calibration::{CalibOptions, CalibSource, Calibration};
use gelaco::fitness::{EngineOptions, FitnessEngine, Heal, Objective};
use gelaco::model::llama::download;
use gelaco::model::{self, Llama, LoadedModel};
use gelaco::search::baselines::removal_plan;
use gelaco::search::depth::{self, EvoPressSettings};
use rand::{Rng, SeedableRng, rngs::StdRng};


fn calibration(samples: usize) -> Calibration {
    let mut rng = StdRng::seed_from_u64(5);
    let ids: Vec<Vec<u32>> = (0..samples)
        .map(|i| (0..(12 + (i * 5) % 11)).map(|_| rng.random_range(0..256)).collect())
        .collect();
    Calibration::from_samples(ids, CalibSource::SelfGenerated, CalibOptions::default())
}

fn loaded(tiny: &Tiny, d: &ComputeDevice) -> (tempfile::TempDir, LoadedModel) {
    let (dir, g, _) = tiny.write_both();
    (dir, model::load(&g, d.clone()).unwrap())
}

fn log_softmax_rows(logits: &[f32], vocab: usize) -> Vec<Vec<f64>> {
    logits
        .chunks(vocab)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z = row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
            row.iter().map(|&x| x as f64 - z).collect()
        })
        .collect()
}

/// Token-weighted KL(original || compressed) and NLL over the calibration, one sample at a
/// time through full forward passes.
fn straightforward(original: &Llama, compressed: &Llama, cal: &Calibration) -> (f64, f64) {
    let vocab = original.config.vocab_size;
    let (mut kl, mut nll, mut n_kl, mut n_nll) = (0.0, 0.0, 0usize, 0usize);
    for s in &cal.samples {
        let lp = log_softmax_rows(&download(original.logits(original.forward(&[s.clone()], None).unwrap())).unwrap().data, vocab);
        let lq = log_softmax_rows(&download(compressed.logits(compressed.forward(&[s.clone()], None).unwrap())).unwrap().data, vocab);
        for (t, (p, q)) in lp.iter().zip(&lq).enumerate() {
            kl += p.iter().zip(q).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
            n_kl += 1;
            if t + 1 < s.len() {
                nll -= q[s[t + 1] as usize];
                n_nll += 1;
            }
        }
    }
    (kl / n_kl as f64, nll / n_nll as f64)
}

#[test]
fn kl_and_nll_match_full_forward_passes_with_prefix_reuse_and_chunks() {
    let tiny = Tiny { layers: 6, ..Tiny::default() };
    for d in devices() {
        let (_dir, m) = loaded(&tiny, &d);
        let cal = calibration(7);
        for (cache_mb, batch) in [(64, 3), (1, 2)] {
            let kl_engine = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { objective: Objective::Kl, cache_mb, batch_size: batch, heal: Heal::None, ..Default::default() }).unwrap();
            let nll_engine = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { objective: Objective::Nll, cache_mb, batch_size: batch, heal: Heal::None, ..Default::default() }).unwrap();
            for ranges in [vec![], vec![(3, 4)], vec![(0, 1), (4, 5)]] {
                let plan = Plan::from_ranges(&ranges, 6, MergeOp::KeepFirst).unwrap();
                let compressed = build(&m.model, &plan, MergeSettings::default());
                let (kl, nll) = straightforward(&m.model, &compressed, &cal);
                let rk = kl_engine.evaluate(&plan).unwrap();
                let rn = nll_engine.evaluate(&plan).unwrap();
                let what = format!("{} {ranges:?} cache {cache_mb}", d.description);
                assert!((rk.kl.unwrap() - kl).abs() < 2e-4 * (1.0 + kl), "{what}: kl {} vs {kl}", rk.kl.unwrap());
                assert!((rk.nll.unwrap() - nll).abs() < 2e-4 * nll, "{what}: nll {} vs {nll}", rk.nll.unwrap());
                assert!((rn.nll.unwrap() - nll).abs() < 2e-4 * nll, "{what}: nll objective {} vs {nll}", rn.nll.unwrap());
                assert_eq!(rn.kl, None);
                assert!((rk.fitness - (-rk.kl.unwrap()).exp()).abs() < 1e-12 && (rn.fitness - (-nll).exp()).abs() < 1e-3, "{what}");
                if ranges.is_empty() {
                    assert!(rk.kl.unwrap().abs() < 1e-5, "{what}: the original's KL is {}", rk.kl.unwrap());
                }
            }
        }
    }
}

#[test]
fn nll_equals_the_perplexity_windows_nll() {
    let tiny = Tiny { layers: 4, ..Tiny::default() };
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = loaded(&tiny, &cpu);
    let cal = calibration(5);
    let engine = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { objective: Objective::Nll, heal: Heal::None, ..Default::default() }).unwrap();
    let r = engine.evaluate(&Plan::identity(4)).unwrap();
    let total: f64 = cal.samples.iter().map(|s| window_nll(&m.model, s).unwrap()).sum();
    let tokens: usize = cal.samples.iter().map(|s| s.len() - 1).sum();
    assert!((r.nll.unwrap() - total / tokens as f64).abs() < 1e-4, "{} vs {}", r.nll.unwrap(), total / tokens as f64);
}

#[test]
fn top_k_kl_approaches_the_full_kl_from_below() {
    let tiny = Tiny { layers: 5, ..Tiny::default() };
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = loaded(&tiny, &cpu);
    let vocab = m.model.config.vocab_size;
    let cal = calibration(4);
    let plan = Plan::from_ranges(&[(1, 3)], 5, MergeOp::KeepFirst).unwrap();
    let kl = |k: Option<usize>| {
        let e = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { objective: Objective::Kl, kl_top_k: k, heal: Heal::None, ..Default::default() }).unwrap();
        e.evaluate(&plan).unwrap().kl.unwrap()
    };
    let full = kl(None);
    assert!((kl(Some(vocab)) - full).abs() < 1e-9);
    // grouping the tail into one outcome can only lose divergence
    let (k8, k64) = (kl(Some(8)), kl(Some(64)));
    assert!(k8 <= full + 1e-5 && k64 <= full + 1e-5 && k8 <= k64 + 1e-5, "top-8 {k8}, top-64 {k64}, full {full}");
    assert!(k64 > 0.5 * full, "top-64 {k64} vs full {full}");
    for bad in [Some(0), Some(vocab + 1)] {
        let e = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { objective: Objective::Kl, kl_top_k: bad, heal: Heal::None, ..Default::default() }).err().unwrap();
        assert!(matches!(e, gelaco::Error::Setting { setting: "kl_top_k", .. }), "{e}");
    }
}

#[test]
fn healing_fits_the_removed_layers_output_and_keeps_the_architecture() {
    let tiny = Tiny { layers: 6, ..Tiny::default() };
    for d in devices() {
        let (_dir, m) = loaded(&tiny, &d);
        let cal = calibration(12);
        let plan = Plan::from_ranges(&[(2, 4)], 6, MergeOp::KeepFirst).unwrap();
        let plain = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { objective: Objective::Nll, heal: Heal::None, ..Default::default() }).unwrap();
        let healing = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { objective: Objective::Nll, heal: Heal::Linear, ..Default::default() }).unwrap();
        // too few tokens to fit a map of the hidden size on: refused before any work
        let e = FitnessEngine::new(&m.model, calibration(2), EngineOptions { heal: Heal::Linear, ..Default::default() }).err().unwrap();
        assert!(matches!(&e, gelaco::Error::Setting { setting: "heal", .. }) && e.to_string().contains("128"), "{e}");
        let unhealed = plain.build_on(&plan, usize::MAX).unwrap();
        let healed = healing.build_on(&plan, usize::MAX).unwrap();
        assert_eq!(healed.num_layers(), 4);
        // only the collapsed group's down projection changed
        for (i, (a, b)) in unhealed.layers.iter().zip(&healed.layers).enumerate() {
            let same = |x: &burn::tensor::Tensor<2>, y: &burn::tensor::Tensor<2>| download(x.clone()).unwrap().data == download(y.clone()).unwrap().data;
            assert!(same(&a.mlp.up.weight_t(), &b.mlp.up.weight_t()), "layer {i}: up changed");
            assert_eq!(same(&a.mlp.down.weight_t(), &b.mlp.down.weight_t()), i != 2, "layer {i}");
        }
        // the healed group's output is closer to the original's after layer 4, on the
        // calibration samples it was fitted on
        let err = |model: &Llama| {
            let mut total = 0.0;
            for s in &cal.samples {
                let ids = model.ids_tensor(&[s.clone()]).unwrap();
                let mut st = model.state(s.len());
                let h = model.run_layers(model.embed(ids.clone()), 0..3, &mut st, None, None);
                let mut so = m.model.state(s.len());
                let target = m.model.run_layers(m.model.embed(ids), 0..5, &mut so, None, None);
                total += download((h - target).square().sum()).unwrap().data[0] as f64;
            }
            total
        };
        let (before, after) = (err(&unhealed), err(&healed));
        assert!(after < 0.9 * before, "{}: squared error {before} before healing, {after} after", d.description);
        assert!(healing.evaluate(&Plan::identity(6)).is_ok());
        let e = healing.heal(&build(&m.model, &Plan::identity(6), MergeSettings::default()), &Plan::identity(6), 1).err().unwrap();
        assert!(matches!(e, gelaco::Error::Setting { setting: "heal", .. }), "{e}");
    }
}

#[test]
fn a_cache_keeping_every_few_layers_gives_the_same_fitness_and_healing_bit_for_bit() {
    let tiny = Tiny { layers: 12, ..Tiny::default() };
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = loaded(&tiny, &cpu);
    let cal = calibration(30);
    let plans: Vec<Plan> = [vec![], vec![(3, 4)], vec![(0, 1), (7, 9)], vec![(5, 8)], vec![(10, 11)]]
        .iter()
        .map(|r| Plan::from_ranges(r, 12, MergeOp::KeepFirst).unwrap())
        .collect();
    let engine = |objective, heal, cache_mb| {
        let e = FitnessEngine::new(&m.model, cal.clone(), EngineOptions { objective, heal, cache_mb, batch_size: 4, ..Default::default() }).unwrap();
        let (chunks, cached) = e.cache_state();
        assert_eq!(chunks, cached, "{objective:?} cache {cache_mb}: every chunk is cached");
        e
    };
    for objective in [Objective::Kl, Objective::Nll] {
        // 1 MiB holds every layer's states of a few hundred tokens of this model, not of all
        let (every, few) = (engine(objective, Heal::None, 64), engine(objective, Heal::None, 1));
        assert_eq!(every.cache_stride(), 1);
        assert!(few.cache_stride() > 1, "{objective:?}: the small cache keeps every layer's states");
        assert!(few.cache_bytes() < every.cache_bytes());
        for plan in &plans {
            let (a, b) = (every.evaluate(plan).unwrap(), few.evaluate(plan).unwrap());
            assert_eq!((a.kl, a.nll, a.fitness), (b.kl, b.nll, b.fitness), "{objective:?} {}", plan.merges_text());
        }
    }
    let (every, few) = (engine(Objective::Nll, Heal::Linear, 64), engine(Objective::Nll, Heal::Linear, 1));
    assert!(few.cache_stride() > 1);
    let weights = |model: &Llama| -> Vec<Vec<f32>> { model.layers.iter().map(|l| download(l.mlp.down.weight_t()).unwrap().data).collect() };
    for plan in plans.iter().filter(|p| p.removed() > 0) {
        let (a, b) = (every.build_on(plan, usize::MAX).unwrap(), few.build_on(plan, usize::MAX).unwrap());
        assert!(weights(&a) == weights(&b), "{}: healed differently", plan.merges_text());
        // on the first chunks only, as when the plans of a size are screened
        let chunks = every.chunks_holding(16);
        assert_eq!(chunks, 4);
        let (a, b) = (every.build_on(plan, chunks).unwrap(), few.build_on(plan, chunks).unwrap());
        assert!(weights(&a) == weights(&b), "{}: healed differently on {chunks} chunks", plan.merges_text());
    }
}

#[test]
fn sleb_and_evopress_remove_the_asked_layers() {
    let tiny = Tiny { layers: 8, ..Tiny::default() };
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let (_dir, m) = loaded(&tiny, &cpu);
    let cal = calibration(12);
    let score = FitnessEngine::new(&m.model, cal.clone(), EngineOptions::default()).unwrap();
    let nll = score.under(Objective::Nll).unwrap();
    let mut calls = Vec::new();
    let sols = depth::sleb(&nll, &score, &[1, 3], &mut |done, planned| {
        calls.push((done, planned));
        true
    })
    .unwrap();
    assert_eq!(sols.iter().map(|s| s.plan.removed()).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(calls.last(), Some(&(8 + 7 + 6, 8 + 7 + 6)));
    // each greedy step kept the earlier removals and chose the lowest NLL of its step
    let first = sols[0].plan.removed_layers();
    assert!(first.iter().all(|l| sols[1].plan.removed_layers().contains(l)));
    let best_single = (0..8)
        .map(|l| nll.evaluate(&removal_plan(8, &[l]).unwrap()).unwrap().nll.unwrap())
        .fold(f64::INFINITY, f64::min);
    assert!((nll.evaluate(&sols[0].plan).unwrap().nll.unwrap() - best_single).abs() < 1e-9);
    // the solutions are scored by the run's engine, whatever chose them
    assert_eq!(sols[0].result.objective, score.options.objective);

    let kl = score.under(Objective::Kl).unwrap();
    let s = EvoPressSettings { offspring: 4, generations: 3, fidelity: vec![(20, 0.5)], seed: 1 };
    let sol = depth::evopress(&kl, &score, 2, &s, &mut |_, _| true).unwrap();
    assert_eq!(sol.plan.removed(), 2);
    let stopped = depth::evopress(&kl, &score, 2, &s, &mut |done, _| done < 3).err().unwrap();
    assert!(matches!(stopped, gelaco::Error::Cancelled));
}
