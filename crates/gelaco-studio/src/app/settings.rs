//! The run settings the window keeps between sessions, and where its data files are.

use super::*;

/// How the calibration samples are chosen in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CalibKind {
    File,
    SelfGenerated,
}

/// Everything the user sets; kept between launches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub model: String,
    pub recent_models: Vec<PathBuf>,
    pub recent_runs: Vec<PathBuf>,
    pub device: DeviceChoice,
    /// The memory a model may use, as `gelaco --memory-budget` takes it (`4G`, `512M`);
    /// empty: what the machine reports available (a discrete GPU's own memory where that is
    /// less), less a quarter.
    pub memory_budget: String,
    /// What the search's matrix products compute in (f16 on an adapter with f16 shaders).
    pub precision: Precision,
    pub pareto: bool,
    pub target_removed: usize,
    pub population: usize,
    pub evaluations: usize,
    pub seed: u64,
    pub init: Init,
    /// `None`: the search picks an operator per merge.
    pub merge_op: Option<MergeOp>,
    pub calib_kind: CalibKind,
    pub calib_file: String,
    pub samples: usize,
    pub max_tokens: usize,
    /// What the search's fitness measures.
    pub objective: Objective,
    /// Heal every candidate the search scores.
    pub heal: Heal,
    /// Heal the best plans of each size for the recommendation, on text apart from the
    /// validation's.
    pub heal_picks: bool,
    /// Multi-fidelity selection, `TOKENS:KEEP,...,full:1`.
    pub fidelity: String,
    /// Pick recommended solutions on the calibration file's unused lines.
    pub validation: bool,
    pub baselines: bool,
    /// Recipes taken in as baselines (and starting points of a warm or seeded search).
    pub imports: Vec<PathBuf>,
    pub runs_dir: String,
    /// Evaluate through the NATS JetStream server at `nats_url` (workers on other machines
    /// pull the jobs) rather than on this machine alone.
    pub use_nats: bool,
    /// The server's address; it may carry credentials, so it is not kept between launches.
    #[serde(skip)]
    pub nats_url: String,
    pub dark: bool,
    pub eval_text: String,
    pub eval_windows: usize,
    pub bench_limit: usize,
    pub prompt: String,
    pub max_new_tokens: usize,
}

impl Default for Settings {
    fn default() -> Self {
        let data = bundled_data_dir();
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let demo = home.join(".cache/gelaco/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        Settings {
            model: if demo.exists() { demo.display().to_string() } else { String::new() },
            recent_models: Vec::new(),
            recent_runs: Vec::new(),
            device: DeviceChoice::Auto,
            memory_budget: String::new(),
            precision: Precision::F32,
            pareto: true,
            target_removed: 8,
            population: 40,
            evaluations: 600,
            seed: 0,
            init: SearchSettings::default().init,
            merge_op: Some(gelaco::collapse::merge::DEFAULT_MERGE_OP),
            calib_kind: CalibKind::File,
            calib_file: data.as_ref().map(|d| d.join("wiki.valid.raw").display().to_string()).unwrap_or_default(),
            samples: 16,
            max_tokens: 128,
            objective: EngineOptions::default().objective,
            heal: EngineOptions::default().heal,
            heal_picks: gelaco::run::heal_picks::HealPicks::default().method == Heal::Linear,
            fidelity: gelaco::search::DEFAULT_FIDELITY.into(),
            validation: true,
            baselines: true,
            imports: Vec::new(),
            runs_dir: home.join(".local/share/gelaco/runs").display().to_string(),
            use_nats: false,
            nats_url: String::new(),
            dark: true,
            eval_text: data.as_ref().map(|d| d.join("wiki.test.head.raw").display().to_string()).unwrap_or_default(),
            eval_windows: 4,
            bench_limit: 100,
            prompt: "The three most important things about compressing a language model are".into(),
            max_new_tokens: 40,
        }
    }
}

impl Settings {
    /// The memory budget in bytes (`None`: the default), or what is wrong with its text.
    pub fn memory_budget(&self) -> Result<Option<u64>, String> {
        let t = self.memory_budget.trim();
        if t.is_empty() {
            return Ok(None);
        }
        match gelaco::model::parse_size(t) {
            Some(0) => Err("Memory budget: a budget must be above zero".into()),
            Some(b) => Ok(Some(b)),
            None => Err(format!("Memory budget: '{t}' is not a size (write it as 4G, 512M or 16GiB, or leave it empty for the default)")),
        }
    }

    /// Whether the chosen device computes in f16, as far as the adapters found so far tell
    /// (the CPU backend never does; `auto` takes the first hardware adapter).
    pub fn device_has_f16(&self) -> bool {
        let adapters = gelaco::backend::known_adapters().unwrap_or_default();
        gelaco::backend::chosen_adapter(self.device, &adapters).is_some_and(|a| a.shader_f16)
    }

    /// Where evaluations go: `None` on this machine alone.
    pub fn nats(&self) -> Result<Option<gelaco::dist::NatsSettings>, String> {
        if !self.use_nats {
            return Ok(None);
        }
        let url = self.nats_url.trim();
        if url.is_empty() {
            return Err("Workers: give the NATS server's address (nats://host:4222), or choose this machine".into());
        }
        Ok(Some(gelaco::dist::NatsSettings::new(url)))
    }
}

/// The small data shipped in the repository (`assets/data`: WikiText-2 validation for
/// calibration, the head of WikiText-2 test for perplexity, 100 ARC-Easy questions), found
/// above the program.
pub(super) fn bundled_data_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .map(|d| d.join("assets/data"))
        .find(|d| d.join("wiki.valid.raw").exists())
        .map(|d| d.canonicalize().unwrap_or(d))
}

/// Full benchmark files: the folder named by `GELACO_DATA` (the layout of lm-evaluation
/// data: `arc/`, `piqa/`, `hellaswag/`).
pub(super) fn benchmark_data_dir() -> Option<PathBuf> {
    std::env::var_os("GELACO_DATA").map(PathBuf::from).filter(|d| d.is_dir())
}

/// The benchmark tasks the window scores: the full files under `GELACO_DATA` where they
/// exist, else the 100 ARC-Easy questions shipped in `assets/data`.
pub fn benchmark_tasks() -> Vec<(String, PathBuf)> {
    let full: Vec<(String, PathBuf)> = match benchmark_data_dir() {
        Some(d) => [
            ("arc_easy", d.join("arc/ARC-Easy-Test.jsonl")),
            ("piqa", d.join("piqa/dev.jsonl")),
            ("hellaswag", d.join("hellaswag/hellaswag_val_full.txt")),
        ]
        .into_iter()
        .filter(|(_, p)| p.exists())
        .map(|(n, p)| (n.to_string(), p))
        .collect(),
        None => Vec::new(),
    };
    if !full.is_empty() {
        return full;
    }
    bundled_data_dir().map(|d| vec![("arc_easy (first 100)".to_string(), d.join("arc-easy-test-100.jsonl"))]).unwrap_or_default()
}

pub(super) fn remember(list: &mut Vec<PathBuf>, p: PathBuf) {
    list.retain(|x| x != &p);
    list.insert(0, p);
    list.truncate(8);
}
