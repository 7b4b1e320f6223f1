//! The `gelaco` command line: bad input gives one clear line and exit code 2, never a
//! panic; good input gives the documented JSON fields.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Tiny;
use gelaco::model::gguf::{self, GgmlType, TensorOut, Value};

fn gelaco(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gelaco"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn inspect(path: &Path) -> Output {
    gelaco(&["inspect", "--model", path.to_str().unwrap()])
}

/// Exit code 2, one `error:` line naming `names`, and no panic.
fn assert_input_error(out: &Output, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line in {stderr}"));
    for n in names {
        assert!(line.contains(n), "'{n}' not in: {line}");
    }
}

#[test]
fn missing_file() {
    let out = inspect(Path::new("/nonexistent/model.gguf"));
    assert_input_error(&out, &["/nonexistent/model.gguf", "No such file"]);
}

#[test]
fn not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.gguf");
    std::fs::write(&p, "hello, this is text").unwrap();
    assert_input_error(&inspect(&p), &["notes.gguf", "not a GGUF file"]);
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    Tiny::default().write_gguf(&p);
    let bytes = std::fs::read(&p).unwrap();
    for cut in [bytes.len() / 2, 100, 30] {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert_input_error(&inspect(&p), &["tiny.gguf", "truncated"]);
    }
}

#[test]
fn tensor_larger_than_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.gguf");
    let tiny = Tiny::default();
    let mut tensors = tiny.gguf_tensors();
    // declare a huge matrix while storing a few bytes
    tensors[0].dims = vec![1 << 20, 1 << 20];
    std::fs::write(&p, gguf::encode(&tiny.gguf_metadata(), &tensors, 32)).unwrap();
    assert_input_error(&inspect(&p), &["big.gguf", "extends past the end of the file"]);
}

#[test]
fn truncated_safetensors() {
    let tiny = Tiny::default();
    let (_dir, _g, hf) = tiny.write_both();
    let st = hf.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 1000]).unwrap();
    assert_input_error(&inspect(&hf), &["model.safetensors", "truncated or corrupt"]);
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gpt2.gguf");
    let tiny = Tiny::default();
    let mut md = tiny.gguf_metadata();
    md[0].1 = Value::String("gpt2".into());
    std::fs::write(&p, gguf::encode(&md, &tiny.gguf_tensors(), 32)).unwrap();
    assert_input_error(&inspect(&p), &["gpt2.gguf", "unsupported architecture 'gpt2'"]);

    let (_d, _g, hf) = tiny.write_both();
    let cfg = hf.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("LlamaForCausalLM", "GemmaForCausalLM");
    std::fs::write(&cfg, text).unwrap();
    assert_input_error(&inspect(&hf), &["config.json", "GemmaForCausalLM"]);
}

#[test]
fn unsupported_quantisation_type() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("q2k.gguf");
    let tiny = Tiny {
        hidden: 256,
        ff: 256,
        layers: 1,
        ..Tiny::default()
    };
    let mut tensors = tiny.gguf_tensors();
    let t = tensors.iter_mut().find(|t| t.name == "blk.0.ffn_up.weight").unwrap();
    *t = TensorOut {
        name: t.name.clone(),
        dims: t.dims.clone(),
        kind: GgmlType::Q2K,
        data: vec![0u8; 256 * 256 / 256 * 84],
    };
    std::fs::write(&p, gguf::encode(&tiny.gguf_metadata(), &tensors, 32)).unwrap();
    assert_input_error(&inspect(&p), &["q2k.gguf", "blk.0.ffn_up", "Q2_K"]);
}

#[test]
fn config_missing_required_field() {
    let tiny = Tiny::default();
    let (_dir, _g, hf) = tiny.write_both();
    let cfg = hf.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("intermediate_size");
    std::fs::write(&cfg, v.to_string()).unwrap();
    assert_input_error(&inspect(&hf), &["config.json", "intermediate_size"]);

    // and in GGUF metadata
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nokey.gguf");
    let md: Vec<_> = tiny.gguf_metadata().into_iter().filter(|(k, _)| k != "llama.block_count").collect();
    std::fs::write(&p, gguf::encode(&md, &tiny.gguf_tensors(), 32)).unwrap();
    assert_input_error(&inspect(&p), &["nokey.gguf", "llama.block_count"]);
}

#[test]
fn gguf_block_count_beyond_its_tensors() {
    // 1,000 blocks is within the general bound, but four blocks' tensors cannot back it
    let tiny = Tiny::default();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("blocks.gguf");
    let md: Vec<_> = tiny
        .gguf_metadata()
        .into_iter()
        .map(|(k, v)| if k == "llama.block_count" { (k, gguf::Value::U32(1000)) } else { (k, v) })
        .collect();
    std::fs::write(&p, gguf::encode(&md, &tiny.gguf_tensors(), 32)).unwrap();
    assert_input_error(&inspect(&p), &["blocks.gguf", "block_count (1000)", "tensors"]);
}

#[test]
fn wrong_flag_is_a_usage_error() {
    let out = gelaco(&["inspect", "--modle", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let out = gelaco(&["generate", "--model", "x", "--prompt", "p", "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn inspect_generate_perplexity_json() {
    let tiny = Tiny::default();
    let (dir, g, hf) = tiny.write_both();
    for model in [&g, &hf] {
        let out = gelaco(&["inspect", "--model", model.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["architecture"], "llama");
        assert_eq!(v["layers"], 4);
        assert_eq!(v["heads"], 4);
        assert_eq!(v["kv_heads"], 2);
        assert_eq!(v["vocab_size"], tiny.vocab_size());
        assert!(v["parameters"].as_u64().unwrap() > 0);
    }
    let out = gelaco(&["inspect", "--model", g.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["quantization_types"]["Q8_0"].as_u64().unwrap(), 4 * 7 + 2);

    let out = gelaco(&[
        "generate", "--model", g.to_str().unwrap(), "--prompt", "the answer", "--max-new-tokens", "5", "--json", "--device", "cpu",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["prompt_ids"].as_array().unwrap().is_empty());
    assert!(v["text"].is_string());
    let top = v["top_logits"].as_array().unwrap();
    assert_eq!(top.len(), 10);
    assert!(top[0]["logit"].as_f64().unwrap() >= top[9]["logit"].as_f64().unwrap());
    assert!(top[0]["id"].is_u64() && top[0]["token"].is_string());

    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the hand and the thing. ".repeat(40)).unwrap();
    let out = gelaco(&[
        "perplexity", "--model", g.to_str().unwrap(), "--text", text.to_str().unwrap(), "--window", "64", "--max-windows", "3",
        "--json", "--device", "cpu",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["windows"], 3);
    assert_eq!(v["tokens_scored"], 3 * 63);
    assert!(v["perplexity"].as_f64().unwrap() > 1.0);

    // a text shorter than one window is refused clearly
    std::fs::write(&text, "short").unwrap();
    let out = gelaco(&["perplexity", "--model", g.to_str().unwrap(), "--text", text.to_str().unwrap(), "--device", "cpu"]);
    assert_input_error(&out, &["fewer than one window"]);
}

#[test]
fn fitness_bad_input() {
    let tiny = Tiny::default();
    let (dir, g, _) = tiny.write_both();
    let model = g.to_str().unwrap();
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, (0..10).map(|i| format!("a calibration line number {i}, long enough to count\n")).collect::<String>()).unwrap();
    let c = calib.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["fitness", "--model", model, "--device", "cpu"];
        if !extra.contains(&"--samples") {
            args.extend_from_slice(&["--samples", "4"]);
        }
        args.extend_from_slice(extra);
        gelaco(&args)
    };
    assert_input_error(&run(&["--calib", c, "--merges", "2:9"]), &["2:9", "out of range"]);
    assert_input_error(&run(&["--calib", c, "--merges", "3:1"]), &["3:1", "B < E"]);
    assert_input_error(&run(&["--calib", c, "--merges", "1-2"]), &["1-2", "B:E"]);
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_input_error(&run(&["--calib", empty.to_str().unwrap(), "--merges", "1:2"]), &["empty.txt", "0 sample(s)"]);
    assert_input_error(&run(&["--calib", c, "--samples", "11", "--merges", "1:2"]), &["calib.txt", "10 sample(s)", "11 asked"]);
    let pq = dir.path().join("data.parquet");
    common::write_parquet(&pq, "content", &["x".repeat(50)]);
    assert_input_error(&run(&["--calib", pq.to_str().unwrap(), "--merges", "1:2"]), &["data.parquet", "no column 'text'"]);
    let long = dir.path().join("long.txt");
    std::fs::write(&long, "word ".repeat(30_000) + "\n").unwrap();
    assert_input_error(
        &run(&["--calib", long.to_str().unwrap(), "--samples", "1", "--max-tokens", "100000", "--cache-mb", "1", "--merges", "1:2"]),
        &["--cache-mb 1"],
    );
    assert_input_error(&run(&["--calib", "/no/such/file.txt", "--merges", "1:2"]), &["/no/such/file.txt"]);

    // and a good run prints the documented fields
    let out = run(&["--calib", c, "--merges", "1:2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["fitness", "attention", "ffn", "hidden", "compression", "remaining_layers", "psi", "canonical", "calibration_hash"] {
        assert!(!v[k].is_null(), "{k} missing");
    }
    assert_eq!(v["remaining_layers"], 3);
    assert_eq!(v["psi"], serde_json::json!([0, 1, 1, 2]));
    // under a memory budget: the same fitness, and where the memory went
    let out = run(&["--calib", c, "--merges", "1:2", "--json", "--memory-budget", "1G"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["fitness"], v["fitness"]);
    let m = &b["memory"];
    assert_eq!((m["budget"].as_u64(), m["budget_given"].as_bool()), (Some(1 << 30), Some(true)), "{m}");
    assert!(m["weights_budget"].as_u64().unwrap() < 1 << 30, "{m}");
    assert!(m["reference_cache_bytes"].as_u64().unwrap() > 0 && m["reference_chunks_cached"] == m["reference_chunks"], "{m}");
    assert!(m["evaluation_activations_bytes"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["reference_layer_stride"], 1, "every layer's states fit: {m}");
    assert_eq!(v["memory"]["budget_given"], false);

    // a budget that holds the model but not the activations of scoring this many tokens at
    // once is refused before any work, with the numbers and what to change
    let wide = dir.path().join("wide.txt");
    std::fs::write(&wide, (0..200).map(|i| format!("line {i} {}\n", "word ".repeat(80))).collect::<String>()).unwrap();
    let w = wide.to_str().unwrap();
    let wide_run = |budget: &str| {
        run(&[
            "--calib", w, "--samples", "200", "--batch-size", "200", "--max-tokens", "256", "--objective", "similarity", "--merges", "1:2", "--json",
            "--memory-budget", budget,
        ])
    };
    let out = wide_run("4G");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let needed = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["memory"]["evaluation_activations_bytes"].as_u64().unwrap();
    assert!(needed > 700 << 20, "these settings hold more than the 512 MiB reserve: {needed}");
    assert_input_error(&wide_run("600M"), &["--memory-budget", "200 samples of 256 tokens", "GiB", "--batch-size", "--max-tokens"]);
}

#[test]
fn baselines_with_json_print_solutions_on_stdout_and_progress_on_stderr() {
    let tiny = Tiny::default();
    let (dir, g, _) = tiny.write_both();
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, (0..10).map(|i| format!("a calibration line number {i}, long enough to count\n")).collect::<String>()).unwrap();
    let recipes = dir.path().join("recipes");
    let common = ["--model", g.to_str().unwrap(), "--calib", calib.to_str().unwrap(), "--samples", "4", "--device", "cpu", "--json"];
    for (method, extra) in [("sleb", &[][..]), ("evopress", &["--generations", "2", "--offspring", "3"][..])] {
        let mut args = vec!["baseline", method, "--remove", "1,2", "--recipes", recipes.to_str().unwrap()];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        let out = gelaco(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{method}: {stderr}");
        // stdout: one solution a line, every size
        let sols: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(sols.iter().map(|s| s["remaining_layers"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3, 2], "{method}");
        // stderr: progress lines that count up to what was planned and end there
        let progress: Vec<serde_json::Value> =
            stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).filter(|v: &serde_json::Value| v["event"] == "progress").collect();
        assert!(!progress.is_empty(), "{method}: no progress lines in {stderr}");
        let last = progress.last().unwrap();
        assert_eq!(last["evaluations"], last["planned"], "{method}: {last}");
        assert!(last["planned"].as_u64().unwrap() > 0 && last["elapsed_seconds"].as_f64().unwrap() >= 0.0, "{last}");
        assert!(last["method"].as_str().unwrap().contains(if method == "sleb" { "SLEB" } else { "EvoPress r=2" }), "{last}");
        for w in progress.windows(2) {
            assert!(w[0]["evaluations"].as_u64() <= w[1]["evaluations"].as_u64() || w[0]["method"] != w[1]["method"], "{w:?}");
        }
        for layers in [3, 2] {
            assert!(recipes.join(format!("{method}-{layers}layers.json")).exists(), "{method}: recipe of {layers} layers");
        }
    }
}

#[test]
fn without_a_display_the_window_says_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_gelaco"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no display") && stderr.contains("gelaco --help"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_model_giving_nan_is_an_error_of_its_file() {
    let tiny = Tiny::default();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("nan-norm.gguf");
    let mut tensors = tiny.gguf_tensors();
    let norm = tensors.iter_mut().find(|t| t.name == "output_norm.weight").unwrap();
    norm.data = gguf::f32_bytes(&vec![f32::NAN; tiny.hidden]);
    gguf::write_file(&bad, &tiny.gguf_metadata(), &tensors).unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the hand and the thing. ".repeat(40)).unwrap();
    let out = gelaco(&["perplexity", "--model", bad.to_str().unwrap(), "--text", text.to_str().unwrap(), "--window", "64", "--device", "cpu"]);
    assert_input_error(&out, &["nan-norm.gguf", "non-finite"]);
}

/// The README's table of exit codes lists 0, 1 and 2, and each is what the command line
/// returns for a case of its row.
#[test]
fn the_readme_exit_code_table_holds() {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let table: Vec<i32> = readme
        .split("| exit code | meaning |")
        .nth(1)
        .expect("README.md has an exit code table")
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').next().unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(table, vec![0, 1, 2]);
    let tiny = Tiny::default();
    let (_dir, g, _) = tiny.write_both();
    assert_eq!(inspect(&g).status.code(), Some(0));
    // no display for the window: the machine, not the input
    let out = Command::new(env!("CARGO_BIN_EXE_gelaco")).env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(inspect(Path::new("/nonexistent/model.gguf")).status.code(), Some(2));
    assert_eq!(gelaco(&["search", "--population"]).status.code(), Some(2));
}

#[test]
fn a_model_larger_than_memory_is_refused_with_the_numbers_before_loading() {
    let tiny = Tiny::default();
    let (_dir, g, _) = tiny.write_both();
    let out = Command::new(env!("CARGO_BIN_EXE_gelaco"))
        .args(["generate", "--model", g.to_str().unwrap(), "--prompt", "the", "--max-new-tokens", "2", "--device", "cpu"])
        .env("GELACO_MEMORY_LIMIT", "16K")
        .output()
        .unwrap();
    assert_input_error(&out, &[g.file_name().unwrap().to_str().unwrap(), "one layer", "GiB of memory available"]);
    // a budget too small for one layer, and one that is not a size: input errors naming the flag
    let run = |budget: &str| {
        Command::new(env!("CARGO_BIN_EXE_gelaco"))
            .args(["generate", "--model", g.to_str().unwrap(), "--prompt", "the", "--max-new-tokens", "2", "--device", "cpu", "--memory-budget", budget])
            .output()
            .unwrap()
    };
    assert_input_error(&run("16K"), &["--memory-budget", "too small", "one layer"]);
    assert_input_error(&run("lots"), &["--memory-budget", "not a size"]);
    assert_input_error(&run("0"), &["--memory-budget", "above zero"]);
    let out = Command::new(env!("CARGO_BIN_EXE_gelaco"))
        .args(["generate", "--model", g.to_str().unwrap(), "--prompt", "the", "--max-new-tokens", "2", "--device", "cpu"])
        .env("GELACO_MEMORY_LIMIT", "1G")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn devices_are_numbered_as_device_gpu_n_names_them_and_a_missing_one_is_an_error() {
    let out = gelaco(&["devices", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let adapters = v["adapters"].as_array().unwrap();
    for (i, a) in adapters.iter().enumerate() {
        assert_eq!(a["device"], format!("gpu:{i}"), "{v}");
        assert!(a["name"].is_string() && a["api"].is_string() && a["hardware"].is_boolean(), "{v}");
        // own memory only on a discrete GPU, and then what its driver's budget leaves of its
        // device-local heap, or the heap where the driver reports no budget
        let discrete = a["type"] == "DiscreteGpu";
        let heap = a["device_local_heap"].as_u64();
        let free = a["device_local_free"].as_u64();
        assert!(if discrete { a["memory"].as_u64() == free.or(heap) } else { a["memory"].is_null() }, "{v}");
        if a["api"] == "Vulkan" {
            assert!(heap.is_some_and(|h| h > 0), "{v}");
        }
        assert!(free.is_none_or(|f| f > 0 && Some(f) <= heap), "{v}");
    }
    assert!(v["auto"].is_string(), "{v}");
    let text = String::from_utf8_lossy(&gelaco(&["devices"]).stdout).into_owned();
    assert_eq!(text.lines().filter(|l| l.starts_with("gpu:")).count(), adapters.len(), "{text}");

    let (_dir, model, _) = Tiny::default().write_both();
    let past = format!("gpu:{}", adapters.len());
    let out = gelaco(&["perplexity", "--model", model.to_str().unwrap(), "--text", "Cargo.toml", "--window", "16", "--device", &past]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("no WGPU adapter {past}")) && !stderr.contains("panicked"), "{stderr}");
    for bad in ["gpu:", "gpu:x", "gpu:-1"] {
        let out = gelaco(&["perplexity", "--model", model.to_str().unwrap(), "--text", "Cargo.toml", "--device", bad]);
        assert_input_error(&out, &["--device", "gpu:N"]);
    }
}

#[test]
fn inspect_plans_memory_for_the_device_it_names() {
    let (_dir, g, hf) = Tiny::default().write_both();
    let plan = |model: &Path, device: &str| {
        let out = gelaco(&["inspect", "--model", model.to_str().unwrap(), "--device", device, "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["memory"].clone()
    };
    let budget = |model: &Path, device: &str| {
        let out = gelaco(&["inspect", "--model", model.to_str().unwrap(), "--device", device, "--memory-budget", "8G"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find(|l| l.starts_with("budget")).unwrap_or_else(|| panic!("no budget line: {text}")).to_string()
    };
    // the CPU backend dequantises from the mapped file
    let m = plan(&g, "cpu");
    assert_eq!(m["codes_on_device"], false, "{m}");
    assert!(budget(&g, "cpu").ends_with("every layer's weights stay dequantised"));
    let adapters = serde_json::from_slice::<serde_json::Value>(&gelaco(&["devices", "--json"]).stdout).unwrap()["adapters"].as_array().unwrap().len();
    if adapters == 0 || std::env::var("GELACO_SKIP_WGPU").is_ok() {
        eprintln!("no WGPU adapter: only the CPU backend's plan is checked");
        return;
    }
    // a WGPU adapter keeps the Q8_0 layers as their codes, as loading the model does
    let m = plan(&g, "gpu:0");
    assert_eq!(m["codes_on_device"], true, "{m}");
    assert!(m["layers_codes_bytes"].as_u64().unwrap() < m["layers_bytes"].as_u64().unwrap(), "{m}");
    let line = budget(&g, "gpu:0");
    assert!(line.contains("every layer's weights stay on the device as codes, with room for 100% of them dequantised as well"), "{line}");
    // an f32 model has no codes: its layers stay dequantised on any device
    assert!(budget(&hf, "gpu:0").ends_with("every layer's weights stay dequantised"));
}

#[test]
fn bench_products_times_every_kept_type_against_an_f32_product_of_the_same_values() {
    let (_dir, model, _) = Tiny::default().write_both();
    let mut devices = vec!["cpu"];
    if std::env::var("GELACO_SKIP_WGPU").is_err() {
        devices.push("gpu");
    }
    let out = gelaco(&["bench", "--suite", "products", "--model", model.to_str().unwrap(), "--devices", &devices.join(","), "--repeats", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    // the tiny model's down-projection rows (96 wide) are whole blocks of 32, not of 256 (K types)
    let types = ["Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1", "F16", "BF16"];
    assert_eq!(rows.len(), types.len() * devices.len(), "{rows:?}");
    for (i, r) in rows.iter().enumerate() {
        let (device, kind) = (devices[i / types.len()], types[i % types.len()]);
        assert_eq!(r["type"], kind, "{r}");
        assert_eq!((r["tokens"].as_u64(), r["rows"].as_u64(), r["cols"].as_u64()), (Some(1024), Some(64), Some(96)), "{r}");
        assert!(r["seconds"].as_f64().unwrap() > 0.0 && r["gflops"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["difference"].as_f64().unwrap() <= 1e-5, "{r}");
        let (kept, f32) = (r["weights_bytes"].as_u64().unwrap(), r["f32_bytes"].as_u64().unwrap());
        assert_eq!(f32, 64 * 96 * 4, "{r}");
        let path = r["path"].as_str().unwrap();
        if device == "cpu" {
            assert_eq!((path, kept), ("f32 copy", f32), "{r}");
        } else {
            let want = if ["Q8_0", "Q4_0", "Q5_0"].contains(&kind) { "burn's quantised product" } else { "own kernel" };
            assert_eq!(path, want, "{r}");
            assert!(kept * 2 <= f32, "{r}");
        }
        assert_eq!(r["precision"], "f32", "{r}");
    }
    // f16 products: only on an adapter with f16 shaders, never on the CPU backend
    let out = gelaco(&["bench", "--suite", "products", "--model", model.to_str().unwrap(), "--devices", "cpu", "--precision", "f16", "--repeats", "1"]);
    assert_input_error(&out, &["--precision f16", "CPU backend"]);
    if devices.len() > 1 {
        let out = gelaco(&["bench", "--suite", "products", "--model", model.to_str().unwrap(), "--devices", "gpu", "--precision", "f16", "--repeats", "1", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows.len(), types.len(), "{rows:?}");
        for (r, kind) in rows.iter().zip(types) {
            assert_eq!(r["precision"], "f16", "{r}");
            // burn's quantised product takes f16 operands; the own kernel's types are
            // written as f16 for burn's f16 product
            let want = if ["Q8_0", "Q4_0", "Q5_0"].contains(&kind) { "burn's quantised product" } else { "f16 copy (own kernel)" };
            assert_eq!(r["path"], want, "{r}");
            assert!(r["difference"].as_f64().unwrap() <= 2e-3, "{r}");
        }
    }
}
