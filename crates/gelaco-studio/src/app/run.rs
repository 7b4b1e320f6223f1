//! The search as the window runs it: starting, resuming and loading run folders, the
//! worker's events, and selection in the results.

use super::*;

impl App {
    pub fn on_event(&mut self, e: Event) {
        match e {
            Event::Started { run_dir, device, layers, resumed, .. } => {
                self.run.layers = layers;
                self.info(format!("{} search in {} on {device}", if resumed { "resumed" } else { "started" }, run_dir.display()));
                self.run.dir = Some(run_dir.clone());
                remember(&mut self.settings.recent_runs, run_dir);
            }
            Event::Stage { message } => {
                self.info(message.clone());
                self.run.stage = Some(message);
            }
            Event::Baselines { solutions } => {
                // sent again when validation changes their recommendation or healing
                if self.run.baselines.is_empty() {
                    self.info(format!("{} baseline solutions", solutions.len()));
                }
                self.run.baselines = solutions;
            }
            Event::Evaluated { evaluation } => self.add_point(&evaluation),
            Event::Workers { workers } => self.run.workers = workers,
            Event::Progress(p) => {
                self.run.stage = None;
                self.run.paused = p.paused;
                self.run.progress = Some(p);
            }
            Event::Generation { generation, front, hypervolume, .. } => {
                self.run.front = front;
                self.run.hypervolume.push([generation as f64, hypervolume]);
                if self.launch.select_best && self.selected.is_none() {
                    self.select_best();
                }
            }
            Event::Done { reason, front, candidates, run_dir } => {
                self.run.front = front;
                self.run.candidates = candidates;
                self.run.stage = None;
                self.info(format!("search ended ({reason:?}); {} solutions on the front; run folder {}", self.run.front.len(), run_dir.display()));
                self.banner = Some((false, format!("Search finished: {} solutions on the front", self.run.front.len())));
            }
            Event::Failed { error, run_dir } => {
                self.run.stage = None;
                let where_ = run_dir.map(|d| format!(" (what was evaluated is kept in {})", d.display())).unwrap_or_default();
                self.error(format!("search failed: {}{where_}", crate::words(&error)));
            }
        }
    }

    pub(super) fn add_point(&mut self, e: &EvaluatedPlan) {
        if !self.run.seen.insert(e.key.clone()) {
            return;
        }
        self.run.points.push(Point {
            compression: e.result.compression,
            fitness: e.result.fitness,
            generation: e.generation,
            merges: e.merges.clone(),
            result: e.result.clone(),
        });
    }

    pub(super) fn reset_run_view(&mut self) {
        self.run.points.clear();
        self.run.seen.clear();
        self.run.front.clear();
        self.run.candidates.clear();
        self.run.baselines.clear();
        self.run.hypervolume.clear();
        self.run.workers.clear();
        self.selected = None;
        self.run.progress = None;
        self.run.stage = None;
        self.run.paused = false;
    }

    pub(super) fn start_run(&mut self) {
        if self.running() {
            return self.error("a search is already running");
        }
        let Some(model) = self.model_path() else { return self.error("open a model first") };
        let Some(place) = self.placement() else { return };
        let s = &self.settings;
        let calib = match s.calib_kind {
            CalibKind::SelfGenerated => CalibSource::SelfGenerated,
            CalibKind::File => {
                let p = PathBuf::from(s.calib_file.trim());
                if s.calib_file.trim().is_empty() {
                    return self.error("choose a calibration file, or self-generated calibration");
                }
                CalibSource::File(p)
            }
        };
        // the rest of a calibration file picks the recommended solutions
        let validation = (s.validation && matches!(calib, CalibSource::File(_))).then_some(ValidationSource::Rest);
        let settings = SearchSettings {
            mode: if s.pareto { Mode::Pareto } else { Mode::Single { target_removed: s.target_removed } },
            population: s.population.max(2),
            evaluations: s.evaluations.max(s.population.max(2)),
            seed: s.seed,
            init: s.init,
            merge_op: s.merge_op,
            fidelity: Some(s.fidelity.trim().to_string()).filter(|f| !f.is_empty()),
            ..SearchSettings::default()
        };
        let out = match &self.launch.out {
            Some(o) => o.clone(),
            None => {
                let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                PathBuf::from(s.runs_dir.trim()).join(format!("run-{stamp}"))
            }
        };
        if let Some(parent) = out.parent() {
            if let Err(e) = std::fs::create_dir_all(parent) {
                return self.error(format!("cannot create the runs folder {}: {e}", parent.display()));
            }
        }
        let spec = JobSpec::New {
            model,
            device: place.device,
            memory_budget: place.memory_budget,
            calib,
            calib_options: CalibOptions {
                samples: s.samples.max(1),
                max_tokens: s.max_tokens.max(8),
                seed: s.seed,
                ..CalibOptions::default()
            },
            engine: EngineOptions { objective: s.objective, heal: s.heal, precision: s.precision, ..EngineOptions::default() },
            settings,
            out,
            baselines: s.baselines,
            validation: validation.map(|v| (v, ValidationOptions::default())),
            heal_picks: s.heal_picks.then(gelaco::run::heal_picks::HealPicks::default),
            import: s.imports.clone(),
        };
        let heal = s.heal;
        self.reset_run_view();
        self.run.heal = heal;
        self.spawn(spec);
    }

    pub(super) fn spawn(&mut self, spec: JobSpec) {
        let nats = match self.settings.nats() {
            Ok(n) => n,
            Err(e) => return self.error(e),
        };
        let ctx = self.ctx.clone();
        self.searches_started += 1;
        self.run.stage = Some(match &nats {
            Some(n) => format!("starting, evaluating through NATS at {}", n.server()),
            None => "starting".into(),
        });
        self.job = Some(job::spawn_on(spec, nats, Some(Arc::new(move || ctx.request_repaint()))));
    }

    pub(super) fn resume_run(&mut self, dir: PathBuf) {
        if self.running() {
            return self.error("a search is already running");
        }
        self.load_run(&dir);
        let model = self.model_path().filter(|p| p.exists());
        let Some(place) = self.placement() else { return };
        self.spawn(JobSpec::Resume { dir, device: place.device, memory_budget: place.memory_budget, model, evaluations: None });
    }

    /// Show a run folder's evaluations, front and baselines (without running it).
    pub(super) fn load_run(&mut self, dir: &Path) {
        let info = match store::read_info(dir) {
            Ok(i) => i,
            Err(e) => return self.error(format!("not a run folder: {e}")),
        };
        self.reset_run_view();
        self.run.dir = Some(dir.to_path_buf());
        self.run.layers = info.model.layers;
        // what a damaged file spoils is named; the rest of the folder still shows
        let mut problems = Vec::new();
        fn keep<T: Default>(problems: &mut Vec<String>, r: gelaco::Result<T>) -> T {
            r.unwrap_or_else(|e| {
                problems.push(e.to_string());
                T::default()
            })
        }
        for e in keep(&mut problems, store::read_evaluations(dir)) {
            self.add_point(&e);
        }
        if dir.join("front.json").exists() {
            self.run.front = keep(&mut problems, store::read_front(dir));
        }
        self.run.candidates = keep(&mut problems, store::read_candidates(dir));
        self.run.baselines = keep(&mut problems, store::read_baselines(dir));
        if let Some(cp) = keep(&mut problems, store::read_checkpoint(dir)) {
            self.run.hypervolume = cp.hypervolume.iter().enumerate().map(|(g, h)| [g as f64, *h]).collect();
        }
        self.run.heal = info.engine.heal;
        if self.settings.model.trim().is_empty() || !Path::new(self.settings.model.trim()).exists() {
            self.settings.model = info.model.path.display().to_string();
        }
        remember(&mut self.settings.recent_runs, dir.to_path_buf());
        if self.launch.select_best {
            self.select_best();
        }
        let summary = format!("loaded {} ({:?}): {} evaluations, {} on the front", dir.display(), info.status, self.run.points.len(), self.run.front.len());
        if problems.is_empty() {
            self.info(summary);
        } else {
            self.error(format!("{summary}; not shown: {}", problems.join("; ")));
        }
    }

    /// Select the front solution of highest fitness among those that remove at least a
    /// fifth of the layers (or the most compressed one, when none does).
    pub fn select_best(&mut self) {
        let best = self.run.front
            .iter()
            .enumerate()
            .filter(|(_, e)| e.result.compression >= 0.2)
            .max_by(|a, b| a.1.result.fitness.total_cmp(&b.1.result.fitness))
            .or_else(|| self.run.front.iter().enumerate().max_by(|a, b| a.1.result.compression.total_cmp(&b.1.result.compression)));
        if let Some((i, e)) = best {
            self.selected = Some(Solution::from_front(i, e));
        }
    }

    /// Select a front entry or baseline by its index in the drawing order.
    pub fn select_front(&mut self, i: usize) {
        if let Some(e) = self.run.front.get(i) {
            self.selected = Some(Solution::from_front(i, e));
        }
    }

    pub fn select_point(&mut self, i: usize) {
        if let Some(p) = self.run.points.get(i) {
            self.selected = Some(Solution::from_point(p));
        }
    }

    pub fn select_baseline(&mut self, i: usize) {
        if let Some(b) = self.run.baselines.get(i) {
            self.selected = Some(Solution::from_baseline(b));
        }
    }
}
