//! Models: configuration, weights (GGUF, safetensors), tokenizer and the burn decoder.

pub mod config;
pub mod gguf;
pub mod kernel;
pub mod layer;
pub mod llama;
pub mod stored;
pub mod synth;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

use crate::backend::ComputeDevice;
use crate::error::{Error, Result};

pub use config::{Arch, ModelConfig};
pub use llama::Llama;
pub use tokenizer::Tokenizer;
pub use weights::ModelFiles;

/// A model ready to run: files, device tensors and tokenizer.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub device: ComputeDevice,
    pub memory: MemoryPlan,
}

/// The tokenizer that goes with a model: `tokenizer.json` beside a Hugging Face model,
/// or the vocabulary inside a GGUF file.
pub fn load_tokenizer(files: &ModelFiles) -> Result<Tokenizer> {
    let cfg = &files.config;
    match files.gguf() {
        Some(g) => Tokenizer::from_gguf(g),
        None => {
            let p = files.path.join("tokenizer.json");
            if !p.exists() {
                return Err(Error::format(&files.path, "no tokenizer.json in this folder"));
            }
            Tokenizer::from_file(&p, cfg.bos_token_id, cfg.eos_token_ids.clone())
        }
    }
}

/// Bytes a loaded model holds with every parameter as f32.
pub fn load_bytes(files: &ModelFiles) -> u64 {
    files.config.total_params() as u64 * 4
}

/// What a model needs in memory, and how much of its layers' weights may stay dequantised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPlan {
    /// The model file(s): the stored weights, memory-mapped.
    pub file_bytes: u64,
    /// Embeddings, head, norms and biases, as f32 tensors on the device.
    pub fixed_bytes: u64,
    /// Every layer's projection weights dequantised to f32.
    pub layers_bytes: u64,
    /// One layer's.
    pub layer_bytes: u64,
    /// The memory budget, and whether it was given (or is the default: what the machine
    /// reports available, or a discrete GPU's own memory where that is less, less a quarter
    /// for activations and everything else).
    pub budget: u64,
    pub given: bool,
    /// What the default budget is taken from.
    pub available: Available,
    /// What the budget leaves for dequantised layer weights.
    pub resident_budget: u64,
    /// Every layer's projection weights on a device that keeps block-quantised matrices as
    /// their codes and 16-bit ones as 16 bits (and the rest as f32).
    pub layers_codes_bytes: u64,
    /// Whether the device keeps them so (WGPU), making f32 copies from the codes on the
    /// device instead of dequantising from the file.
    pub codes_on_device: bool,
}

impl MemoryPlan {
    /// What a budget keeps apart beside the weights it holds dequantised: the forward
    /// pass's activations, and one more layer being dequantised while another is used.
    pub fn reserve(&self) -> u64 {
        ACTIVATIONS_RESERVE + self.layer_bytes
    }

    /// The least budget that runs the model: the fixed tensors, one layer and the reserve.
    pub fn minimum(&self) -> u64 {
        self.fixed_bytes + self.layer_bytes + self.reserve()
    }

    /// Whether the layers' weights do not all fit, so that some are dequantised each time
    /// they are used (streamed from the file).
    pub fn streams(&self) -> bool {
        self.resident_budget < self.resident_need()
    }

    /// Whether the device keeps some of the layers' weights in fewer bytes than f32 (as their
    /// codes, or 16 bits): not so on the CPU backend, or for a model stored in f32.
    fn keeps_codes(&self) -> bool {
        self.codes_on_device && self.layers_codes_bytes < self.layers_bytes
    }

    /// What the layers' weights take when all of them stay on the device: as codes where
    /// the device keeps them, else dequantised.
    fn resident_need(&self) -> u64 {
        if self.codes_on_device { self.layers_codes_bytes } else { self.layers_bytes }
    }

    /// What the model needs, in words: "at least 1.23 GiB (...); all layers dequantised ...".
    pub fn need_text(&self) -> String {
        let codes = if self.layers_codes_bytes < self.layers_bytes {
            format!(", as codes on a GPU {}", gib(self.layers_codes_bytes))
        } else {
            String::new()
        };
        format!(
            "at least {} (embeddings, head and norms {}, one layer {}, activations and dequantisation {}); all layers dequantised {}{codes}",
            gib(self.minimum()),
            gib(self.fixed_bytes),
            gib(self.layer_bytes),
            gib(self.reserve()),
            gib(self.layers_bytes)
        )
    }

    /// The budget and what it means for this model, in words; `None` where no budget is
    /// known (no flag, and the machine does not report its memory).
    pub fn budget_text(&self) -> Option<String> {
        if self.budget == u64::MAX {
            return None;
        }
        let effect = if self.budget < self.minimum() {
            "too small to run it".to_string()
        } else if self.streams() {
            let what = if self.keeps_codes() { "stay on the device as codes" } else { "stay dequantised" };
            format!(
                "{:.0}% of the layers' weights {what}, the rest are read from the file when used",
                100.0 * self.resident_budget as f64 / self.resident_need().max(1) as f64
            )
        } else if self.keeps_codes() {
            let dequantised = (self.resident_budget - self.layers_codes_bytes).min(self.layers_bytes);
            format!(
                "every layer's weights stay on the device as codes, with room for {:.0}% of them dequantised as well",
                100.0 * dequantised as f64 / self.layers_bytes.max(1) as f64
            )
        } else {
            "every layer's weights stay dequantised".to_string()
        };
        let source = if self.given {
            "the memory budget"
        } else if self.available.device_bounds() {
            "the GPU's own memory, less a quarter"
        } else {
            "available memory, less a quarter"
        };
        Some(format!("{} ({source}): {effect}", gib(self.budget)))
    }
}

pub(crate) fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The memory plan of `files` under `budget` (bytes; `None`: the default from `available`)
/// on a device that keeps block-quantised weights as their codes or not (see
/// [`MemoryPlan::codes_on_device`]), or an error with the numbers when even the fixed
/// tensors and one layer do not fit.
pub fn plan_memory(files: &ModelFiles, budget: Option<u64>, available: Available, codes_on_device: bool) -> Result<MemoryPlan> {
    let plan = estimate_memory(files, budget, available, codes_on_device);
    let c = &files.config;
    let what = format!(
        "running it needs at least {} (embeddings, head and norms {} as f32, one layer's weights {} and {} for activations and dequantisation; all {} layers dequantised would take {})",
        gib(plan.minimum()),
        gib(plan.fixed_bytes),
        gib(plan.layer_bytes),
        gib(plan.reserve()),
        c.num_layers,
        gib(plan.layers_bytes)
    );
    if plan.given && plan.budget < plan.minimum() {
        return Err(Error::setting("memory_budget", format!("{} is too small for {}: {what}", gib(plan.budget), files.path.display())));
    }
    if let Some(have) = available.bytes().filter(|&a| !plan.given && plan.minimum() > a) {
        let whose = if available.device_bounds() { "the GPU's own memory" } else { "memory available" };
        return Err(Error::weights(&files.path, format!("{what}, more than the {} of {whose}", gib(have))));
    }
    Ok(plan)
}

/// The memory plan of `files` under `budget`, whether or not the model fits.
pub fn estimate_memory(files: &ModelFiles, budget: Option<u64>, available: Available, codes_on_device: bool) -> MemoryPlan {
    let c = &files.config;
    let embed = (c.vocab_size * c.hidden_size) as u64 * 4;
    let layer_bytes = layer_matrix_bytes(c);
    let heads = if c.tie_word_embeddings { 1 } else { 2 };
    let fixed_bytes = heads * embed + (c.hidden_size as u64 + c.num_layers as u64 * layer_vector_params(c)) * 4;
    let given = budget.is_some();
    let budget = budget.unwrap_or_else(|| available.bytes().map(|a| a / 4 * 3).unwrap_or(u64::MAX));
    let mut plan = MemoryPlan {
        file_bytes: files.file_bytes(),
        fixed_bytes,
        layers_bytes: layer_bytes * c.num_layers as u64,
        layer_bytes,
        budget,
        given,
        available,
        resident_budget: 0,
        layers_codes_bytes: files.layers_codes_bytes(),
        codes_on_device,
    };
    plan.resident_budget = budget.saturating_sub(fixed_bytes + plan.reserve());
    plan
}

/// What a budget keeps apart for a forward pass's activations (logits, hidden states and
/// the reference cache's working set), beside a layer's room for dequantisation, so that
/// the budget bounds the whole process and not only its weights.
pub const ACTIVATIONS_RESERVE: u64 = 512 << 20;

/// One layer's projection weights dequantised to f32, in bytes.
pub fn layer_matrix_bytes(c: &ModelConfig) -> u64 {
    (c.layer_params() as u64 - layer_vector_params(c)) * 4
}

fn layer_vector_params(c: &ModelConfig) -> u64 {
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let mut n = 2 * c.hidden_size;
    if c.attention_bias {
        n += q + 2 * kv;
    }
    if c.qk_norm {
        n += 2 * c.head_dim;
    }
    n as u64
}

/// The memory a default budget is taken from: what the host has available, and the own
/// memory of a device that has memory apart from the host's (a discrete GPU, where the
/// weights, the reference cache and the activations live).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Available {
    /// [`available_memory`], in bytes.
    pub host: Option<u64>,
    /// The device's own memory, in bytes ([`crate::backend::AdapterDesc::own_memory`]).
    pub device: Option<u64>,
}

impl Available {
    /// The host's alone (the CPU backend's).
    pub fn host() -> Self {
        Available { host: available_memory(), device: None }
    }

    /// For a model on `device`.
    pub fn on(device: &ComputeDevice) -> Self {
        Available { host: available_memory(), device: device.device_memory }
    }

    /// For a model on the device `choice` selects, without starting it.
    pub fn for_choice(choice: crate::backend::DeviceChoice) -> Self {
        Available { host: available_memory(), device: crate::backend::own_memory(choice) }
    }

    /// The lesser of the two that are known.
    pub fn bytes(&self) -> Option<u64> {
        match (self.host, self.device) {
            (Some(h), Some(d)) => Some(h.min(d)),
            (h, d) => h.or(d),
        }
    }

    /// Whether the device's own memory is what bounds a default budget.
    pub fn device_bounds(&self) -> bool {
        self.device.is_some_and(|d| self.host.is_none_or(|h| d < h))
    }
}

/// Memory this process may use, in bytes: what the system reports available, or
/// `GELACO_MEMORY_LIMIT` (bytes, or with a K, M or G suffix) when that is lower; `None`
/// where neither is known.
pub fn available_memory() -> Option<u64> {
    let system = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let limit = std::env::var("GELACO_MEMORY_LIMIT").ok().and_then(|v| parse_size(&v));
    match (system, limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `123`, `64K`, `512M`, `16G`, `4GB`, `4GiB` (binary units, a trailing `B` or `iB`
/// optional) as bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let t = if upper.ends_with("IB") && t.len() > 2 {
        &t[..t.len() - 2]
    } else if upper.ends_with('B') && t.len() > 1 && t[..t.len() - 1].ends_with(|c: char| c.is_ascii_alphabetic()) {
        &t[..t.len() - 1]
    } else {
        t
    };
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return None,
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Open, validate and load a model onto `device`, within its memory budget.
pub fn load(path: &Path, device: ComputeDevice) -> Result<LoadedModel> {
    crate::backend::check_precision(&device.device, device.precision)?;
    let files = ModelFiles::open(path)?;
    let plan = plan_memory(&files, device.memory_budget, Available::on(&device), device.codes_on_device)?;
    if plan.streams() {
        tracing::info!(budget = plan.budget, layers = plan.layers_bytes, "the layers' weights do not all fit: streaming them from the file");
    }
    let tokenizer = load_tokenizer(&files)?;
    // the precision was checked for this device before the file was opened
    let mut model = Llama::load(&files, &device.device, plan.resident_budget, device.codes_on_device)?;
    model.precision = device.precision;
    Ok(LoadedModel {
        files,
        model,
        tokenizer,
        device,
        memory: plan,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size(" 16g "), Some(16 << 30));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        assert_eq!(parse_size("4GB"), Some(4 << 30));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("512mb"), Some(512 << 20));
        assert_eq!(parse_size("100B"), Some(100));
        assert_eq!(parse_size("B"), None);
        assert_eq!(parse_size("4 GB x"), None);
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
