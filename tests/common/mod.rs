//! Tiny random-weight models written by the tests themselves: the same weights as a GGUF
//! file (llama.cpp layout, q/k rows permuted, matrices in Q8_0) and as a Hugging Face folder
//! (config.json, model.safetensors, tokenizer.json).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gelaco::model::gguf::{self, GgmlType, TensorOut, Value};
use gelaco::model::weights::{hf_to_gguf, permute_rows};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TinyArch {
    Llama,
    Qwen2,
    Qwen3,
}

pub struct Tiny {
    pub arch: TinyArch,
    pub layers: usize,
    pub hidden: usize,
    pub ff: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tied: bool,
    pub seed: u64,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny {
            arch: TinyArch::Llama,
            layers: 4,
            hidden: 64,
            ff: 96,
            heads: 4,
            kv_heads: 2,
            tied: false,
            seed: 1,
        }
    }
}

/// GPT-2's byte-to-character table.
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

/// A vocabulary of the 256 bytes, a few merges and two control tokens.
pub fn vocab() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let g = chars[b' ' as usize];
    let merges = vec![
        format!("{g} t"),
        "h e".to_string(),
        format!("{g}t he"),
        "a n".to_string(),
        format!("{g} an"),
    ];
    for m in &merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut types = vec![1; tokens.len()];
    tokens.push("<|bos|>".into());
    types.push(3);
    tokens.push("<|eos|>".into());
    types.push(3);
    (tokens, merges, types)
}

impl Tiny {
    pub fn vocab_size(&self) -> usize {
        vocab().0.len()
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Random weights in Hugging Face naming and layout, matrices rounded through Q8_0.
    pub fn weights(&self) -> BTreeMap<String, (Vec<usize>, Vec<f32>, bool)> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let (h, ff, hd) = (self.hidden, self.ff, self.head_dim());
        let (q, kv, v) = (self.heads * hd, self.kv_heads * hd, self.vocab_size());
        let mut out = BTreeMap::new();
        let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32, quant: bool, rng: &mut StdRng| {
            let n: usize = shape.iter().product();
            let mut data: Vec<f32> = (0..n).map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0)).collect();
            if quant {
                let bytes = gguf::quantize_q8_0(&data).unwrap();
                data = gguf::dequantize(GgmlType::Q8_0, &bytes, n).unwrap();
            }
            out.insert(name, (shape, data, quant));
        };
        add("model.embed_tokens.weight".into(), vec![v, h], 1.0, 0.0, true, &mut rng);
        add("model.norm.weight".into(), vec![h], 0.2, 1.0, false, &mut rng);
        if !self.tied {
            add("lm_head.weight".into(), vec![v, h], 0.3, 0.0, true, &mut rng);
        }
        for l in 0..self.layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let w = 0.35;
            add(p("input_layernorm.weight"), vec![h], 0.2, 1.0, false, &mut rng);
            add(p("post_attention_layernorm.weight"), vec![h], 0.2, 1.0, false, &mut rng);
            add(p("self_attn.q_proj.weight"), vec![q, h], w, 0.0, true, &mut rng);
            add(p("self_attn.k_proj.weight"), vec![kv, h], w, 0.0, true, &mut rng);
            add(p("self_attn.v_proj.weight"), vec![kv, h], w, 0.0, true, &mut rng);
            add(p("self_attn.o_proj.weight"), vec![h, q], w, 0.0, true, &mut rng);
            add(p("mlp.gate_proj.weight"), vec![ff, h], w, 0.0, true, &mut rng);
            add(p("mlp.up_proj.weight"), vec![ff, h], w, 0.0, true, &mut rng);
            add(p("mlp.down_proj.weight"), vec![h, ff], w, 0.0, true, &mut rng);
            if self.arch == TinyArch::Qwen2 {
                add(p("self_attn.q_proj.bias"), vec![q], 0.5, 0.0, false, &mut rng);
                add(p("self_attn.k_proj.bias"), vec![kv], 0.5, 0.0, false, &mut rng);
                add(p("self_attn.v_proj.bias"), vec![kv], 0.5, 0.0, false, &mut rng);
            }
            if self.arch == TinyArch::Qwen3 {
                add(p("self_attn.q_norm.weight"), vec![hd], 0.2, 1.0, false, &mut rng);
                add(p("self_attn.k_norm.weight"), vec![hd], 0.2, 1.0, false, &mut rng);
            }
        }
        out
    }

    fn arch_name(&self) -> &'static str {
        match self.arch {
            TinyArch::Llama => "llama",
            TinyArch::Qwen2 => "qwen2",
            TinyArch::Qwen3 => "qwen3",
        }
    }

    pub fn gguf_metadata(&self) -> Vec<(String, Value)> {
        let a = self.arch_name();
        let (tokens, merges, types) = vocab();
        let s = |x: &str| Value::String(x.to_string());
        vec![
            ("general.architecture".into(), s(a)),
            ("general.name".into(), s("tiny test model")),
            ("general.file_type".into(), Value::U32(7)),
            (format!("{a}.block_count"), Value::U32(self.layers as u32)),
            (format!("{a}.context_length"), Value::U32(256)),
            (format!("{a}.embedding_length"), Value::U32(self.hidden as u32)),
            (format!("{a}.feed_forward_length"), Value::U32(self.ff as u32)),
            (format!("{a}.attention.head_count"), Value::U32(self.heads as u32)),
            (format!("{a}.attention.head_count_kv"), Value::U32(self.kv_heads as u32)),
            (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
            (format!("{a}.rope.freq_base"), Value::F32(10000.0)),
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s("smollm")),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| s(t)).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(types.iter().map(|&t| Value::I32(t)).collect())),
            ("tokenizer.ggml.merges".into(), Value::Array(merges.iter().map(|m| s(m)).collect())),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(tokens.len() as u32 - 2)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(tokens.len() as u32 - 1)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ]
    }

    /// The GGUF tensors, in llama.cpp's layout.
    pub fn gguf_tensors(&self) -> Vec<TensorOut> {
        let mut out = Vec::new();
        for (name, (shape, data, quant)) in self.weights() {
            let gname = hf_to_gguf(&name).unwrap();
            let mut data = data;
            if self.arch == TinyArch::Llama {
                let heads = if name.contains("q_proj") {
                    Some(self.heads)
                } else if name.contains("k_proj") {
                    Some(self.kv_heads)
                } else {
                    None
                };
                if let Some(heads) = heads {
                    let cols = if shape.len() > 1 { shape[1] } else { 1 };
                    data = permute_rows(&data, shape[0], cols, heads);
                }
            }
            let (kind, bytes) = if quant {
                (GgmlType::Q8_0, gguf::quantize_q8_0(&data).unwrap())
            } else {
                (GgmlType::F32, gguf::f32_bytes(&data))
            };
            out.push(TensorOut {
                name: gname,
                dims: shape.iter().rev().map(|&d| d as u64).collect(),
                kind,
                data: bytes,
            });
        }
        out
    }

    pub fn write_gguf(&self, path: &Path) {
        gguf::write_file(path, &self.gguf_metadata(), &self.gguf_tensors()).unwrap();
    }

    pub fn hf_config(&self) -> serde_json::Value {
        let class = match self.arch {
            TinyArch::Llama => "LlamaForCausalLM",
            TinyArch::Qwen2 => "Qwen2ForCausalLM",
            TinyArch::Qwen3 => "Qwen3ForCausalLM",
        };
        let v = self.vocab_size();
        serde_json::json!({
            "architectures": [class],
            "model_type": self.arch_name(),
            "hidden_size": self.hidden,
            "intermediate_size": self.ff,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim(),
            "vocab_size": v,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 256,
            "tie_word_embeddings": self.tied,
            "bos_token_id": v - 2,
            "eos_token_id": v - 1,
        })
    }

    /// Write a Hugging Face folder; the tokenizer comes from the GGUF at `gguf_path`.
    pub fn write_hf(&self, dir: &Path, gguf_path: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&self.hf_config()).unwrap()).unwrap();
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
            self.weights().into_iter().map(|(n, (s, d, _))| (n, s, d)).collect();
        write_safetensors(&dir.join("model.safetensors"), &tensors);
        let g = gguf::GgufFile::open(gguf_path).unwrap();
        let t = gelaco::model::Tokenizer::from_gguf(&g).unwrap();
        t.inner().save(dir.join("tokenizer.json"), false).unwrap();
    }

    /// Both forms in a fresh temporary folder: (guard, gguf path, hf folder).
    pub fn write_both(&self) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("tiny.gguf");
        self.write_gguf(&g);
        let hf = dir.path().join("hf");
        self.write_hf(&hf, &g);
        (dir, g, hf)
    }
}

/// A minimal safetensors writer (f32 only).
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    write_safetensors_as(path, tensors, false);
}

/// A minimal safetensors writer, f32 or f16.
pub fn write_safetensors_as(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], f16: bool) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        for v in values {
            if f16 {
                data.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            } else {
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        let dtype = if f16 { "F16" } else { "F32" };
        header.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// Both backends: the CPU one and the best WGPU adapter, which must be present (software
/// Vulkan is enough); `GELACO_SKIP_WGPU=1` runs the CPU half alone on a machine without any.
pub fn devices() -> Vec<gelaco::backend::ComputeDevice> {
    use gelaco::backend::{self, DeviceChoice};
    let mut d = vec![backend::select(DeviceChoice::Cpu).unwrap()];
    if std::env::var("GELACO_SKIP_WGPU").is_err() {
        d.push(backend::select(DeviceChoice::Gpu).expect("no WGPU adapter: install mesa-vulkan-drivers or set GELACO_SKIP_WGPU=1"));
    }
    d
}

/// Where the demo model lives once the set-up has fetched it.
pub fn demo_model() -> PathBuf {
    if let Ok(p) = std::env::var("GELACO_DEMO_MODEL") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = PathBuf::from(home).join(".cache/gelaco/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "demo model not found at {} (run scripts/setup.sh, or set GELACO_DEMO_MODEL)",
        p.display()
    );
    p
}

/// The repository's root: the nearest folder above the test's crate with a `Cargo.lock`.
pub fn repo_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists())
        .unwrap_or(crate_dir)
        .to_path_buf()
}

/// The folder of the full benchmark files: `GELACO_DATA`, or `../shared/data` beside the
/// repository.
pub fn data_dir() -> PathBuf {
    std::env::var_os("GELACO_DATA").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared/data"))
}

/// A full benchmark file, which a clone alone does not have: a test without it fails,
/// naming it. Tests that read one are `#[ignore]`d, and `scripts/test.sh` runs them when
/// the folder exists.
pub fn data_file(relative: &str) -> PathBuf {
    let p = data_dir().join(relative);
    assert!(
        p.is_file(),
        "benchmark file {} is missing: this test reads the full benchmark files from GELACO_DATA (default ../shared/data beside the repository)",
        p.display()
    );
    p
}

/// A file of the repository's own small data (`assets/data`).
pub fn asset_file(relative: &str) -> PathBuf {
    repo_root().join("assets/data").join(relative)
}

/// A one-column Parquet file of strings.
pub fn write_parquet(path: &Path, column: &str, values: &[String]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let schema = std::sync::Arc::new(parse_message_type(&format!("message s {{ REQUIRED BYTE_ARRAY {column} (UTF8); }}")).unwrap());
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, Default::default()).unwrap();
    let mut group = writer.next_row_group().unwrap();
    while let Some(mut col) = group.next_column().unwrap() {
        let data: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(v.as_str())).collect();
        col.typed::<ByteArrayType>().write_batch(&data, None, None).unwrap();
        col.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

/// Write the Hugging Face weights of `tiny` as f16 in two shards with an index.
pub fn write_sharded_f16(tiny: &Tiny, dir: &Path) {
    let weights: Vec<(String, Vec<usize>, Vec<f32>)> = tiny.weights().into_iter().map(|(n, (s, d, _))| (n, s, d)).collect();
    let half = weights.len() / 2;
    let mut map = serde_json::Map::new();
    for (i, part) in [&weights[..half], &weights[half..]].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        for (name, _, _) in part.iter() {
            map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
        write_safetensors_as(&dir.join(&file), part, true);
    }
    std::fs::remove_file(dir.join("model.safetensors")).ok();
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({"metadata": {}, "weight_map": map}).to_string()).unwrap();
}

/// A NATS server with JetStream for one test, stopped when dropped.
pub struct Broker {
    child: Child,
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Server options beside the address and storage (authorisation, TLS).
    options: Vec<String>,
}

impl Broker {
    fn spawn(port: u16, store: &Path, options: &[String]) -> Child {
        let child = Command::new(nats_server().unwrap())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd", store.to_str().unwrap()])
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Kill the server (SIGKILL) and start it again on the same port and storage.
    pub fn restart(&mut self, down: Duration) {
        unsafe_kill(&self.child);
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Broker::spawn(self.port, self.dir.path(), &self.options);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")]).map(|d| d.join("nats-server")).find(|p| p.is_file())
}

/// `None` (with a message naming the package) where nats-server is not installed.
pub fn broker() -> Option<Broker> {
    broker_with(&[])
}

/// [`broker`] with server options (e.g. `--user`, `--pass`, `--tls`).
pub fn broker_with(options: &[String]) -> Option<Broker> {
    if nats_server().is_none() {
        eprintln!("SKIPPED: nats-server is not installed (Debian package nats-server; scripts/setup.sh installs it)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let child = Broker::spawn(port, dir.path(), options);
    Some(Broker { child, url: format!("nats://127.0.0.1:{port}"), port, dir, options: options.to_vec() })
}

/// SIGKILL: no chance to finish or release anything.
pub fn unsafe_kill(child: &Child) {
    let status = Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}
