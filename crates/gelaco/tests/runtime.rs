//! The runtime on tiny random models written by the tests, on the CPU backend and on WGPU.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::{Tiny, TinyArch, devices};
use gelaco::backend::{self, ComputeDevice, DeviceChoice};
use gelaco::eval::generate::{GenerateOptions, generate};
use gelaco::model::llama::{KvCache, Llama, download};
use gelaco::model::{self, LoadedModel};

fn load(path: &std::path::Path, device: &ComputeDevice) -> LoadedModel {
    model::load(path, device.clone()).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn logits_of(m: &Llama, ids: &[Vec<u32>]) -> Vec<f32> {
    let h = m.forward(ids, None).unwrap();
    download(m.logits(h)).unwrap().data
}

const PROMPT: [u32; 7] = [5, 200, 17, 256, 43, 99, 3];

#[test]
fn gguf_and_safetensors_give_the_same_model() {
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    for arch in [TinyArch::Llama, TinyArch::Qwen2, TinyArch::Qwen3] {
        for tied in [false, true] {
            let tiny = Tiny { arch, tied, ..Tiny::default() };
            let (_dir, g, hf) = tiny.write_both();
            let a = load(&g, &cpu);
            let b = load(&hf, &cpu);
            assert_eq!(a.files.config.arch, b.files.config.arch);
            let la = logits_of(&a.model, &[PROMPT.to_vec()]);
            let lb = logits_of(&b.model, &[PROMPT.to_vec()]);
            let d = max_abs_diff(&la, &lb);
            assert!(d < 1e-4, "{arch:?} tied={tied}: GGUF and safetensors logits differ by {d}");
            // the tokenizers agree as well
            let text = "the answer is 42, then 7";
            assert_eq!(a.tokenizer.encode(text).unwrap(), b.tokenizer.encode(text).unwrap());
        }
    }
}

#[test]
fn backends_agree() {
    let tiny = Tiny::default();
    let (_dir, g, _) = tiny.write_both();
    let devs = devices();
    let reference = logits_of(&load(&g, &devs[0]).model, &[PROMPT.to_vec()]);
    for d in &devs[1..] {
        let other = logits_of(&load(&g, d).model, &[PROMPT.to_vec()]);
        let diff = max_abs_diff(&reference, &other);
        assert!(diff < 1e-3, "{}: logits differ from CPU by {diff}", d.description);
    }
}

#[test]
fn padded_batch_equals_single_samples() {
    let tiny = Tiny { arch: TinyArch::Qwen2, ..Tiny::default() };
    let (_dir, g, _) = tiny.write_both();
    let rows = vec![vec![1, 2, 3, 4, 5, 6, 7, 8], vec![9, 10, 11], vec![12, 13, 14, 15, 16]];
    for d in devices() {
        let m = load(&g, &d).model;
        let (padded, lens) = Llama::pad_batch(&rows, 0);
        let h = m.forward(&padded, None).unwrap();
        let batch = download(h).unwrap();
        let hidden = m.config.hidden_size;
        let seq = padded[0].len();
        for (i, row) in rows.iter().enumerate() {
            let single = download(m.forward(&[row.clone()], None).unwrap()).unwrap().data;
            let start = i * seq * hidden;
            let part = &batch.data[start..start + lens[i] * hidden];
            let diff = max_abs_diff(part, &single);
            assert!(diff < 1e-4, "{}: row {i} differs by {diff}", d.description);
        }
    }
}

#[test]
fn forward_resumes_mid_model() {
    let tiny = Tiny { layers: 5, ..Tiny::default() };
    let (_dir, g, _) = tiny.write_both();
    for d in devices() {
        let m = load(&g, &d).model;
        let ids = vec![PROMPT.to_vec(), PROMPT.iter().rev().copied().collect()];
        let full = download(m.forward(&ids, None).unwrap()).unwrap().data;
        for k in [0, 2, 5] {
            let mut state = m.state(16);
            let h = m.embed(m.ids_tensor(&ids).unwrap());
            let mid = m.run_layers(h, 0..k, &mut state, None, None);
            // hand the hidden state over to a fresh pass
            let mid = m.hidden_from_host(&download(mid).unwrap());
            let mut state = m.state(16);
            let out = m.final_norm(m.run_layers(mid, k..m.num_layers(), &mut state, None, None));
            let diff = max_abs_diff(&download(out).unwrap().data, &full);
            assert!(diff < 1e-5, "{}: resuming at layer {k} differs by {diff}", d.description);
        }
    }
}

#[test]
fn taps_record_every_module_before_rope() {
    let tiny = Tiny::default();
    let (_dir, g, _) = tiny.write_both();
    let files = gelaco::model::ModelFiles::open(&g).unwrap();
    for d in devices() {
        let m = load(&g, &d).model;
        let mut taps = Vec::new();
        let ids = vec![PROMPT.to_vec()];
        m.forward(&ids, Some(&mut taps)).unwrap();
        assert_eq!(taps.len(), tiny.layers);
        let c = &m.config;
        let widths = [
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.hidden_size,
            c.intermediate_size,
            c.intermediate_size,
            c.hidden_size,
        ];
        for t in &taps {
            for (tap, w) in t.all().iter().zip(widths) {
                assert_eq!(tap.dims(), [1, PROMPT.len(), w]);
            }
        }
        // layer 0's q tap is q_proj(rms_norm(embedding)) on the host, before RoPE
        let emb = files.tensor("model.embed_tokens.weight").unwrap();
        let norm = files.tensor("model.layers.0.input_layernorm.weight").unwrap();
        let wq = files.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
        let h = c.hidden_size;
        let q_tap = download(taps[0].q.clone()).unwrap().data;
        let qw = wq.shape[0];
        for (pos, &tok) in PROMPT.iter().enumerate() {
            let x = &emb.data[tok as usize * h..(tok as usize + 1) * h];
            let ms = x.iter().map(|v| v * v).sum::<f32>() / h as f32;
            let r = 1.0 / (ms + 1e-5).sqrt();
            let xn: Vec<f32> = x.iter().zip(&norm.data).map(|(v, w)| v * r * w).collect();
            for o in 0..qw {
                let want: f32 = (0..h).map(|i| wq.data[o * h + i] * xn[i]).sum();
                let got = q_tap[pos * qw + o];
                assert!((want - got).abs() < 1e-3, "{}: q tap [{pos},{o}] {got} != {want}", d.description);
            }
        }
        // no taps asked: none recorded, same output (on WGPU to the order of the sums, which
        // autotune may change between two passes while it learns the quantised product)
        let a = download(m.forward(&ids, None).unwrap()).unwrap().data;
        let b = download(m.forward(&ids, Some(&mut Vec::new())).unwrap()).unwrap().data;
        if d.backend == gelaco::backend::BackendKind::Cpu {
            assert_eq!(a, b);
        } else {
            assert!(max_abs_diff(&a, &b) < 1e-5, "{}: {}", d.description, max_abs_diff(&a, &b));
        }
    }
}

#[test]
fn kv_cache_matches_full_recompute() {
    let tiny = Tiny { arch: TinyArch::Qwen3, ..Tiny::default() };
    let (_dir, g, _) = tiny.write_both();
    for d in devices() {
        let lm = load(&g, &d);
        let m = &lm.model;
        let opts = GenerateOptions {
            max_new_tokens: 6,
            stop_at_eos: false,
            ..GenerateOptions::default()
        };
        let out = generate(m, &lm.tokenizer, &PROMPT, &opts, |_| {}).unwrap();
        assert_eq!(out.generated_ids.len(), 6);
        // greedy without a cache: each next token is the argmax of a full forward
        let mut seq = PROMPT.to_vec();
        for &want in &out.generated_ids {
            let logits = logits_of(m, &[seq.clone()]);
            let v = m.config.vocab_size;
            let last = &logits[(seq.len() - 1) * v..];
            let best = gelaco::eval::generate::top_k(last, 1)[0].0;
            assert_eq!(best, want, "{}: cached and uncached generation differ", d.description);
            seq.push(want);
        }
        // a cache grows by one position per step
        let mut cache = KvCache::new(m.num_layers());
        let mut state = m.state(4);
        let h = m.embed(m.ids_tensor(&[PROMPT.to_vec()]).unwrap());
        m.run_layers(h, 0..m.num_layers(), &mut state, Some(&mut cache), None);
        assert_eq!(cache.len(), PROMPT.len());
    }
}

#[test]
fn seeded_sampling_repeats() {
    let tiny = Tiny::default();
    let (_dir, g, _) = tiny.write_both();
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let lm = load(&g, &cpu);
    let opts = GenerateOptions {
        max_new_tokens: 8,
        temperature: 1.5,
        seed: 42,
        stop_at_eos: false,
    };
    let a = generate(&lm.model, &lm.tokenizer, &PROMPT, &opts, |_| {}).unwrap();
    let b = generate(&lm.model, &lm.tokenizer, &PROMPT, &opts, |_| {}).unwrap();
    assert_eq!(a.generated_ids, b.generated_ids);
}

#[test]
fn sharded_f16_safetensors_load() {
    let tiny = Tiny::default();
    let (_dir, g, hf) = tiny.write_both();
    common::write_sharded_f16(&tiny, &hf);
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let a = logits_of(&load(&g, &cpu).model, &[PROMPT.to_vec()]);
    let b = logits_of(&load(&hf, &cpu).model, &[PROMPT.to_vec()]);
    let d = max_abs_diff(&a, &b);
    // f16 keeps about 3 decimal digits of every weight
    assert!(d < 0.05, "sharded f16 logits differ by {d}");
    assert!(d > 0.0, "the f16 shards were not what got loaded");
    // on WGPU the f16 matrices stay 16-bit on the device, and give the CPU's model
    let m = load(&hf, &cpu);
    assert_eq!(m.memory.layers_codes_bytes * 2, m.memory.layers_bytes, "16-bit matrices take half of f32");
    for d in &devices()[1..] {
        let on_gpu = load(&hf, d);
        let c = logits_of(&on_gpu.model, &[PROMPT.to_vec()]);
        let diff = max_abs_diff(&b, &c);
        assert!(diff < 1e-3, "{}: f16 logits differ from CPU by {diff}", d.description);
        let s = on_gpu.model.resident_stats();
        assert_eq!(s.codes_bytes, m.memory.layers_codes_bytes, "{s:?}");
    }
}

#[test]
fn mistral_sliding_window_limits_attention() {
    let tiny = Tiny { layers: 2, ..Tiny::default() };
    let (_dir, _g, hf) = tiny.write_both();
    let cfg = hf.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    v["model_type"] = serde_json::json!("mistral");
    v["sliding_window"] = serde_json::json!(3);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let cpu = backend::select(DeviceChoice::Cpu).unwrap();
    let m = load(&hf, &cpu).model;
    assert_eq!(m.config.sliding_window, Some(3));
    let a: Vec<u32> = (10..22).collect();
    let mut b = a.clone();
    b[0] = 99;
    let ha = download(m.forward(&[a], None).unwrap()).unwrap().data;
    let hb = download(m.forward(&[b], None).unwrap()).unwrap().data;
    let h = m.config.hidden_size;
    let diff = |pos: usize| max_abs_diff(&ha[pos * h..(pos + 1) * h], &hb[pos * h..(pos + 1) * h]);
    // two layers with a window of 3 reach back at most 4 positions
    assert!(diff(1) > 1e-4);
    for pos in 5..12 {
        assert_eq!(diff(pos), 0.0, "position {pos} saw token 0 through the window");
    }
}
