//! Recipes, multiple-choice scoring and export on tiny models: what is written loads back
//! as the same compressed model, untouched tensors are copied byte for byte, and outputs
//! are never half-written or silently replaced.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Tiny, TinyArch};
use gelaco::backend::{self, DeviceChoice};
use gelaco::collapse::{MergeOp, MergeSettings, Plan, build};
use gelaco::eval::choice::loglikelihoods;
use gelaco::eval::perplexity::window_nll;
use gelaco::export::gguf::GgufOptions;
use gelaco::export::hf::{HfDtype, HfOptions};
use gelaco::export::{ExportSource, Recipe};
use gelaco::model::gguf::{GgmlType, GgufFile, Value};
use gelaco::model::llama::{Layer, Llama, download};
use gelaco::model::weights::LayerParam;
use gelaco::model::{self, LoadedModel};
use gelaco::run::store::ModelIdentity;

fn gelaco(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gelaco")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn cpu_load(p: &Path) -> LoadedModel {
    model::load(p, backend::select(DeviceChoice::Cpu).unwrap()).unwrap()
}

fn logits(m: &Llama, ids: &[u32]) -> Vec<f32> {
    download(m.logits(m.forward(&[ids.to_vec()], None).unwrap())).unwrap().data
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

const IDS: [u32; 9] = [5, 200, 17, 256, 43, 99, 3, 120, 64];

fn plan(m: &LoadedModel, merges: &str) -> Plan {
    Plan::from_triples(&Plan::parse_merges(merges).unwrap(), m.model.num_layers(), MergeOp::KeepFirst).unwrap()
}

/// A tiny GGUF with one extra per-layer metadata array, and its Hugging Face twin.
fn models(layers: usize) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tiny = Tiny { layers, ..Tiny::default() };
    let (dir, _, hf) = tiny.write_both();
    let mut meta = tiny.gguf_metadata();
    meta.push(("llama.test_per_layer".into(), Value::Array((0..layers as u32).map(Value::U32).collect())));
    let g = dir.path().join("tiny-meta.gguf");
    gelaco::model::gguf::write_file(&g, &meta, &tiny.gguf_tensors()).unwrap();
    (dir, g, hf)
}

#[test]
fn hf_export_loads_back_as_the_compressed_model() {
    let (dir, g, hf) = models(6);
    for (source, merges) in [(&g, "1:2:mean,3:4"), (&hf, "2:4:rdsc"), (&g, "")] {
        let m = cpu_load(source);
        let p = plan(&m, merges);
        let compressed = build(&m.model, &p, MergeSettings::default());
        let src = ExportSource { source: &m, plan: &p, settings: MergeSettings::default(), compressed: &compressed, recipe: None, healed: false };
        let out = dir.path().join(format!("out-{}", merges.replace([':', ','], "_")));
        // a tiny shard limit forces several shards and an index
        let opts = HfOptions { dtype: Some(HfDtype::F32), max_shard_bytes: 60_000, force: false };
        let r = gelaco::export::hf::export(&src, &out, &opts).unwrap();
        assert_eq!(r.layers, p.remaining());
        assert!(out.join("model.safetensors.index.json").exists(), "{:?}", r.files);
        for f in ["config.json", "tokenizer.json"] {
            assert!(out.join(f).exists(), "{f} missing");
        }
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["num_hidden_layers"], p.remaining());
        let back = cpu_load(&out);
        let d = max_diff(&logits(&compressed, &IDS), &logits(&back.model, &IDS));
        assert!(d < 1e-5, "{merges}: exported logits differ by {d}");
        let text = "the answer is 42";
        assert_eq!(m.tokenizer.encode(text).unwrap(), back.tokenizer.encode(text).unwrap());
        // untouched layers of a safetensors source of the same type are byte-identical
        if source == &hf {
            let a = m.files.raw_safetensor("model.layers.5.mlp.down_proj.weight").unwrap();
            let b = back.files.raw_safetensor("model.layers.3.mlp.down_proj.weight").unwrap();
            assert_eq!(a.2, b.2);
        }
        // an existing output is kept unless forced
        let e = gelaco::export::hf::export(&src, &out, &opts).unwrap_err();
        assert!(matches!(e, gelaco::Error::OutputExists { .. }), "{e}");
        gelaco::export::hf::export(&src, &out, &HfOptions { force: true, ..opts.clone() }).unwrap();
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

#[test]
fn gguf_export_copies_untouched_tensors_and_requantises_merged_ones() {
    let (dir, g, _) = models(6);
    let m = cpu_load(&g);
    let p = plan(&m, "1:2:mean,4:5");
    let compressed = build(&m.model, &p, MergeSettings::default());
    let src = ExportSource { source: &m, plan: &p, settings: MergeSettings::default(), compressed: &compressed, recipe: None, healed: false };
    let out = dir.path().join("small.gguf");
    let r = gelaco::export::gguf::export(&src, &out, &GgufOptions::default()).unwrap();
    assert_eq!((r.layers, r.merged_layers), (4, 1));
    let a = GgufFile::open(&g).unwrap();
    let b = GgufFile::open(&out).unwrap();
    assert_eq!(b.get("llama.block_count").and_then(Value::as_u64), Some(4));
    let per_layer: Vec<u64> = b.get("llama.test_per_layer").and_then(Value::as_array).unwrap().iter().filter_map(Value::as_u64).collect();
    assert_eq!(per_layer, vec![0, 1, 3, 4]);
    assert_eq!(b.alignment, a.alignment);
    assert_eq!(b.tensors.len(), 3 + 4 * 9);
    // output layer k comes from source layer: 0 -> 0, 2 -> 3, 3 -> 4 (keep-first of 4:5)
    for (new, old) in [(0, 0), (2, 3), (3, 4)] {
        for t in a.tensors.iter().filter(|t| t.name.starts_with(&format!("blk.{old}."))) {
            let name = t.name.replacen(&format!("blk.{old}."), &format!("blk.{new}."), 1);
            let u = b.tensor(&name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(u.kind, t.kind);
            assert_eq!(b.raw(u), a.raw(t), "{name} is not a byte copy of {}", t.name);
        }
    }
    for name in ["token_embd.weight", "output_norm.weight", "output.weight"] {
        assert_eq!(b.raw(b.tensor(name).unwrap()), a.raw(a.tensor(name).unwrap()), "{name}");
    }
    assert_eq!(b.tensor("blk.1.ffn_down.weight").unwrap().kind, GgmlType::Q8_0);
    // the export runs, close to the in-memory model (Q8_0 re-quantisation of one layer)
    let back = cpu_load(&out);
    let (x, y) = (logits(&compressed, &IDS), logits(&back.model, &IDS));
    let d = max_diff(&x, &y);
    let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(d > 0.0 && d < 0.02 * scale, "re-quantisation error {d} (logits up to {scale})");
    // a Hugging Face source cannot become GGUF here, and nothing is written
    let (_d2, _, hf) = models(4);
    let mh = cpu_load(&hf);
    let ph = plan(&mh, "1:2");
    let ch = build(&mh.model, &ph, MergeSettings::default());
    let sh = ExportSource { source: &mh, plan: &ph, settings: MergeSettings::default(), compressed: &ch, recipe: None, healed: false };
    let bad = dir.path().join("from-hf.gguf");
    let e = gelaco::export::gguf::export(&sh, &bad, &GgufOptions::default()).unwrap_err();
    assert!(e.to_string().contains("convert_hf_to_gguf"), "{e}");
    assert!(!bad.exists());
}

#[test]
fn choice_loglikelihood_equals_the_difference_of_window_nlls() {
    let (_dir, g, _) = models(4);
    let m = cpu_load(&g);
    // the first three share a context (one of them a single token), as an item's choices do
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = vec![
        (vec![5, 200, 17], vec![256, 43]),
        (vec![5, 200, 17], vec![7]),
        (vec![5, 200, 17], vec![260, 2, 9, 11]),
        (vec![9, 8, 7, 6, 5, 4, 3], vec![99]),
        (vec![1, 2], vec![3, 4, 5, 6, 7, 8]),
        (vec![1, 2], vec![3]),
    ];
    for batch in [1, 3] {
        let ll = loglikelihoods(&m.model, &pairs, gelaco::eval::choice::ChoiceOptions { batch_size: batch, max_length: 64 }, |_| true).unwrap();
        for ((c, x), l) in pairs.iter().zip(&ll) {
            let whole: Vec<u32> = c.iter().chain(x).copied().collect();
            let expect = -(window_nll(&m.model, &whole).unwrap() - window_nll(&m.model, c).unwrap());
            assert!((l - expect).abs() < 1e-3, "batch {batch}: {l} vs {expect}");
        }
    }
    // a continuation token outside the vocabulary is an error, not a panic
    let e = loglikelihoods(&m.model, &[(vec![1, 2], vec![3, 100_000])], Default::default(), |_| true).unwrap_err();
    assert!(e.to_string().contains("100000"), "{e}");
}

#[test]
fn cli_recipes_eval_compare_and_safe_export() {
    let (dir, g, _) = models(6);
    let gs = g.to_str().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    // a recipe from hand-chosen merges, with its fitness
    let calib = d("calib.txt");
    std::fs::write(&calib, "the answer to the question is there and then the end of it\n".repeat(4)).unwrap();
    let recipe = d("r.json");
    // unhealed: its export copies every tensor (healed exports are checked on their own)
    let out = gelaco(&["fitness", "--model", gs, "--calib", &calib, "--samples", "4", "--merges", "1:3", "--heal", "none", "--save-recipe", &recipe, "--device", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = Recipe::load(Path::new(&recipe)).unwrap();
    assert_eq!(r.remaining_layers, 4);
    assert!(r.fitness.is_some() && r.calibration.is_some());
    assert_eq!(r.model.sha256, gelaco::model::ModelFiles::open(&g).unwrap().sha256().unwrap());

    // eval: one table with the original and the recipe, JSON with the documented fields
    let task = d("task.jsonl");
    std::fs::write(&task, "{\"context\": \"the\", \"choices\": [\"answer\", \"end\"], \"label\": 0}\n{\"context\": \"then\", \"choices\": [\" the\", \"an\", \"x\"], \"label\": 2}\n").unwrap();
    let out = gelaco(&["eval", "--model", gs, "--recipe", &recipe, "--task", &format!("mine={task}"), "--json", "--device", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["label"], "original");
    assert_eq!(models[1]["layers"], 4);
    for f in ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "items"] {
        assert!(models[1]["tasks"][0].get(f).is_some(), "{f}");
    }

    // compare: the original and the recipe generate from one prompt
    let out = gelaco(&["compare", "--model", gs, "--recipe", &recipe, "--merges", "2:5", "--prompt", "the answer", "--max-new-tokens", "4", "--json", "--device", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"].as_array().unwrap().len(), 3);

    // export: verified, refused over an existing output, replaced with --force
    let target = d("exported");
    let out = gelaco(&["export", "--model", gs, "--recipe", &recipe, "--format", "hf", "--dtype", "f32", "--out", &target, "--device", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("verify: reloaded"), "{stdout}");
    assert!(Path::new(&target).join("gelaco_recipe.json").exists());
    let out = gelaco(&["export", "--model", gs, "--recipe", &recipe, "--format", "hf", "--out", &target, "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let gg = d("exported.gguf");
    let out = gelaco(&["export", "--model", gs, "--recipe", &recipe, "--format", "gguf", "--out", &gg, "--device", "cpu", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verify"]["max_abs_logit_difference"], 0.0, "keep-first copies every tensor");
    let out = gelaco(&["export", "--model", gs, "--recipe", &recipe, "--format", "gguf", "--out", &gg, "--force", "--device", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // a failed export (the folder to write into is a file) leaves nothing and says why
    let blocker = d("blocker");
    std::fs::write(&blocker, "x").unwrap();
    let out = gelaco(&["export", "--model", gs, "--merges", "1:2", "--format", "gguf", "--out", &format!("{blocker}/m.gguf"), "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("blocker"));
    let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "partial output left: {names:?}");

    // a recipe applied to another model file is refused, unless asked for
    let other = dir.path().join("other.gguf");
    Tiny { layers: 6, seed: 9, ..Tiny::default() }.write_gguf(&other);
    let os = other.to_str().unwrap();
    let out = gelaco(&["generate", "--model", os, "--recipe", &recipe, "--prompt", "the", "--max-new-tokens", "2", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another model file") && err.contains("--any-model"), "{err}");
    let out = gelaco(&["generate", "--model", os, "--recipe", &recipe, "--any-model", "--prompt", "the", "--max-new-tokens", "2", "--device", "cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // and to a model of another shape, always
    let short = dir.path().join("short.gguf");
    Tiny { layers: 4, ..Tiny::default() }.write_gguf(&short);
    let out = gelaco(&["perplexity", "--model", short.to_str().unwrap(), "--recipe", &recipe, "--any-model", "--text", &calib, "--window", "8", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("6 layers"));
}

#[test]
fn recipe_identity_is_checked_against_the_model() {
    let (_dir, g, _) = models(4);
    let m = cpu_load(&g);
    let id = ModelIdentity::of(&m.files).unwrap();
    let p = plan(&m, "0:1");
    let r = Recipe::new(id.clone(), &p, MergeOp::KeepFirst, MergeSettings::default());
    r.check_model(&m.files, &id.sha256, false).unwrap();
    assert!(r.check_model(&m.files, "00", false).is_err());
    r.check_model(&m.files, "00", true).unwrap();
}

#[test]
fn healed_exports_reload_with_the_healed_logits_and_their_recipe_rebuilds_them() {
    use gelaco::export::{ExportFormat, ExportRequest, Variant};
    use gelaco::fitness::Heal;
    use gelaco::fitness::calibration::{CalibOptions, CalibSource, Calibration};
    let (dir, g, hf) = models(6);
    let samples: Vec<Vec<u32>> = (0..12u32).map(|i| (0..12).map(|t| (i * 31 + t * 7) % 250).collect()).collect();
    let cal = Calibration::from_samples(samples, CalibSource::SelfGenerated, CalibOptions::default());
    for (source, format) in [(&g, ExportFormat::Gguf), (&hf, ExportFormat::Hf), (&g, ExportFormat::Hf)] {
        let m = cpu_load(source);
        let plain = Variant::from_merges("2:4", MergeOp::KeepFirst, MergeSettings::default(), 6).unwrap();
        let healed = plain.clone().healed(Heal::Linear, cal.clone()).unwrap();
        let recipe = healed.recipe(ModelIdentity::of(&m.files).unwrap());
        let out = dir.path().join(format!("healed-{format}-{}", source.file_name().unwrap().to_string_lossy()));
        let (report, check) = gelaco::export::export_variant(&m, &healed, &recipe, &ExportRequest::new(format, out.clone())).unwrap();
        // the healed group is written from new weights, the rest copied
        assert_eq!((report.merged_layers, report.copied_layers), (1, 3), "{format}");
        let check = check.unwrap();
        assert!(check.max_abs_logit_difference < 0.05 * check.max_abs_logit.max(1.0), "{format}: {check:?}");
        let back = cpu_load(&out);
        let want = logits(&healed.build(&m.model).unwrap(), &IDS);
        assert!(max_diff(&logits(&back.model, &IDS), &want) < 0.05 * want.iter().fold(1f32, |a, x| a.max(x.abs())));
        // healing changed the model, and the recipe alone builds it again
        assert!(max_diff(&want, &logits(&plain.build(&m.model).unwrap(), &IDS)) > 1e-4);
        let path = dir.path().join(format!("healed-{format}.json"));
        recipe.save(&path, true).unwrap();
        let again = Variant::from_recipe_file(&path, &m.files, &m.files.sha256().unwrap(), false).unwrap();
        assert_eq!(max_diff(&logits(&again.build(&m.model).unwrap(), &IDS), &want), 0.0);
        // nothing to heal in the original
        let e = Variant::original(6).healed(Heal::Linear, cal.clone()).unwrap_err();
        assert!(matches!(e, gelaco::Error::Setting { setting: "heal", .. }), "{e}");
    }
}

#[test]
fn recipes_written_by_the_earlier_release_still_load() {
    let dir = common::repo_root().join("docs/recipes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let r = Recipe::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let plan = r.plan().unwrap();
        assert_eq!(plan.remaining(), r.remaining_layers, "{}", p.display());
        assert!(r.heal.is_none() && r.validation_perplexity.is_none());
        n += 1;
    }
    assert!(n >= 3, "no recipes in {}", dir.display());
}

/// A write that fails in the middle (the file-size limit of the process, `ulimit -f`, makes
/// the kernel refuse it, as a full disk does): the export fails naming its output, the file
/// it was to replace is intact, and no partial file is left beside it.
#[test]
fn an_export_whose_write_fails_keeps_the_old_file_and_leaves_no_partial_file() {
    let (dir, g, _) = models(6);
    let out = dir.path().join("exports");
    std::fs::create_dir(&out).unwrap();
    for (format, name) in [("gguf", "small.gguf"), ("hf", "small-hf")] {
        let dest = out.join(name);
        let ok = gelaco(&["export", "--model", g.to_str().unwrap(), "--merges", "2:4", "--format", format, "--out", dest.to_str().unwrap(), "--device", "cpu"]);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        let before = snapshot(&dest);
        // the same export again, replacing it, under a 64 KiB file-size limit (SIGXFSZ
        // ignored, so the write returns EFBIG)
        let script = format!(
            "ulimit -f 64; trap '' XFSZ; exec '{}' export --model '{}' --merges 1:4 --format {format} --out '{}' --force --device cpu",
            env!("CARGO_BIN_EXE_gelaco"),
            g.display(),
            dest.display()
        );
        let failed = Command::new("bash").args(["-c", &script]).output().unwrap();
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(!failed.status.success() && !stderr.contains("panicked"), "{format}: {stderr}");
        assert!(stderr.contains("error:") && stderr.contains(name), "{format}: {stderr}");
        assert_eq!(snapshot(&dest), before, "{format}: the previous export changed");
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(left.iter().all(|n| !n.starts_with('.')), "{format}: left behind: {left:?}");
    }
}

/// Every file under `path` (or the file itself) with its bytes.
fn snapshot(path: &Path) -> Vec<(String, Vec<u8>)> {
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
            })
            .collect();
        files.sort();
        files
    } else {
        vec![(String::new(), std::fs::read(path).unwrap())]
    }
}

/// What exports write of a layer is the model's own parameters, named and shaped by the one
/// table of layer tensors: every parameter the model file has, and nothing else.
#[test]
fn a_layers_parameters_come_from_the_layer_table() {
    for arch in [TinyArch::Llama, TinyArch::Qwen2, TinyArch::Qwen3] {
        let tiny = Tiny { arch, ..Tiny::default() };
        let (_dir, _g, hf) = tiny.write_both();
        let m = cpu_load(&hf);
        let got = gelaco::export::merged_layer_tensors(&m.model.layers[1]).unwrap();
        let want: Vec<(String, Vec<usize>, Vec<f32>)> = tiny
            .weights()
            .into_iter()
            .filter_map(|(name, (shape, data, _))| name.strip_prefix("model.layers.1.").map(|s| (s.to_string(), shape, data)))
            .collect();
        assert_eq!(got.len(), want.len(), "{arch:?}: {:?}", got.iter().map(|(n, _)| *n).collect::<Vec<_>>());
        for (name, t) in &got {
            let (_, shape, data) = want.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("{arch:?}: {name} is not a tensor of the model"));
            assert_eq!(&t.shape, shape, "{arch:?} {name}");
            assert_eq!(&t.data, data, "{arch:?} {name}");
        }
        // the same table builds and maps layers: rebuilt from its own tensors, or mapped
        // tensor by tensor, a layer keeps every parameter
        let layer = &m.model.layers[1];
        let rebuilt = Layer::from_params(|t| Ok(layer.tensor(t.param))).unwrap();
        let mapped = layer.map(|_, v| v.clone(), |_, w| w.dense_t());
        for copy in [&rebuilt, &mapped] {
            let again = gelaco::export::merged_layer_tensors(copy).unwrap();
            assert_eq!(again.len(), got.len(), "{arch:?}");
            for ((n1, t1), (n2, t2)) in got.iter().zip(&again) {
                assert_eq!((n1, &t1.data), (n2, &t2.data), "{arch:?}");
            }
        }
        let e = Layer::from_params(|t| Ok(if t.param == LayerParam::Up { None } else { layer.tensor(t.param) })).unwrap_err();
        assert!(e.to_string().contains("Up is missing"), "{e}");
        let e = Layer::from_params(|t| Ok(if t.param == LayerParam::Down { layer.tensor(LayerParam::InputNorm) } else { layer.tensor(t.param) })).unwrap_err();
        assert!(e.to_string().contains("Down is a vector"), "{e}");
    }
}
