//! What the panels show and edit, apart from the run settings: the run shown, the model
//! lab, the plot's options and the export form.

use super::*;

/// The run the window shows (live or loaded from its folder): what it evaluated, its front,
/// the other candidates and the baselines, and the search's progress.
#[derive(Default)]
pub struct RunView {
    pub dir: Option<PathBuf>,
    pub layers: usize,
    /// How the run heals its models.
    pub heal: Heal,
    pub paused: bool,
    pub stage: Option<String>,
    pub progress: Option<Progress>,
    pub points: Vec<Point>,
    pub(super) seen: HashSet<String>,
    pub front: Vec<FrontEntry>,
    /// The other plans validation picked from: the fittest few of each size, off the front.
    pub candidates: Vec<FrontEntry>,
    pub baselines: Vec<BaselineSolution>,
    pub hypervolume: Vec<[f64; 2]>,
    /// The workers of a distributed search, as last reported.
    pub workers: Vec<gelaco::dist::WorkerStatus>,
}

/// The model lab: generated text, measurements (perplexity, benchmarks) and the models
/// chosen for side-by-side comparison, with the work the model worker is doing.
#[derive(Default)]
pub struct Lab {
    pub compare: Vec<Solution>,
    pub generated: BTreeMap<String, Result<String, String>>,
    pub measured: HashMap<String, Measured>,
    pub busy: Option<String>,
    pub task_progress: Option<(usize, usize, String)>,
}

/// The plot panel's choices.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlotOptions {
    /// The y axis: validation perplexity instead of fitness.
    pub validation: bool,
}

/// The inspector's export form: the format, where to write, and whether to replace an
/// existing output.
#[derive(Debug, Clone)]
pub struct ExportForm {
    pub format: ExportFormat,
    /// Empty: a file dialog asks.
    pub path: String,
    pub force: bool,
}

impl Default for ExportForm {
    fn default() -> Self {
        ExportForm { format: ExportFormat::Gguf, path: String::new(), force: false }
    }
}
