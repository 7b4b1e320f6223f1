//! Searches on a tiny model: determinism, the job API, and a run killed with SIGKILL and
//! resumed.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Tiny;
use gelaco::backend::DeviceChoice;
use gelaco::fitness::EngineOptions;
use gelaco::fitness::calibration::{CalibOptions, CalibSource};
use gelaco::run::job::{self, Event, JobSpec};
use gelaco::run::{FrontEntry, store};
use gelaco::search::problem::{EvaluatedPlan, Mode};
use gelaco::search::{Init, SearchSettings};

struct Fixture {
    _dir: tempfile::TempDir,
    model: PathBuf,
    calib: PathBuf,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let tiny = Tiny { layers: 8, ..Tiny::default() };
    let (dir, g, _) = tiny.write_both();
    let calib = dir.path().join("calib.txt");
    let lines: String = (0..12).map(|i| format!("the thing and the hand number {i} went to the shop\n")).collect();
    std::fs::write(&calib, lines).unwrap();
    let root = dir.path().to_path_buf();
    Fixture { _dir: dir, model: g, calib, root }
}

fn spec(f: &Fixture, out: &Path, settings: SearchSettings) -> JobSpec {
    JobSpec::New {
        model: f.model.clone(),
        device: DeviceChoice::Cpu,
        memory_budget: None,
        calib: CalibSource::File(f.calib.clone()),
        calib_options: CalibOptions { samples: 6, max_tokens: 32, ..CalibOptions::default() },
        engine: EngineOptions::default(),
        settings,
        out: out.to_path_buf(),
        baselines: false,
        validation: None,
        heal_picks: None,
        import: Vec::new(),
    }
}

fn settings(evaluations: usize) -> SearchSettings {
    SearchSettings { population: 12, evaluations, seed: 3, ..SearchSettings::default() }
}

/// Run a job to the end and return its events.
fn run_to_end(spec: JobSpec) -> Vec<Event> {
    let h = job::spawn(spec, None);
    let events: Vec<Event> = h.events.iter().collect();
    h.join();
    events
}

fn final_front(events: &[Event]) -> Vec<FrontEntry> {
    for e in events {
        match e {
            Event::Done { front, .. } => return front.clone(),
            Event::Failed { error, .. } => panic!("search failed: {error}"),
            _ => {}
        }
    }
    panic!("no Done event");
}

#[test]
fn same_seed_same_front_and_a_complete_run_folder() {
    let f = fixture();
    let a = run_to_end(spec(&f, &f.root.join("a"), settings(60)));
    let b = run_to_end(spec(&f, &f.root.join("b"), settings(60)));
    let (fa, fb) = (final_front(&a), final_front(&b));
    assert!(!fa.is_empty());
    assert_eq!(fa, fb);
    // the run folder holds every evaluation, the checkpoint and the front
    let log = std::fs::read_to_string(f.root.join("a/evaluations.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 60);
    assert_eq!(store::read_front(&f.root.join("a")).unwrap(), fa);
    let info = store::read_info(&f.root.join("a")).unwrap();
    assert_eq!(info.status, store::Status::Finished);
    // events: one per evaluation, generations with a front, cache hits counted
    let evaluated = a.iter().filter(|e| matches!(e, Event::Evaluated { .. })).count();
    assert_eq!(evaluated, 60);
    let generations = a.iter().filter(|e| matches!(e, Event::Generation { .. })).count();
    assert_eq!(generations, 5);
    let cached = a.iter().filter(|e| matches!(e, Event::Evaluated { evaluation } if evaluation.cached)).count();
    let unique: std::collections::HashSet<String> = a
        .iter()
        .filter_map(|e| match e {
            Event::Evaluated { evaluation } => Some(evaluation.key.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(cached + unique.len(), 60, "every evaluation is either new or a cache hit");
    // a different seed explores differently (the front itself may converge to the same)
    let c = run_to_end(spec(&f, &f.root.join("c"), SearchSettings { seed: 4, ..settings(60) }));
    let keys = |events: &[Event]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Evaluated { evaluation } => Some(evaluation.key.clone()),
                _ => None,
            })
            .collect()
    };
    assert!(!final_front(&c).is_empty());
    assert_ne!(keys(&c), keys(&a));
    // an existing run folder is not overwritten
    let again = run_to_end(spec(&f, &f.root.join("a"), settings(60)));
    assert!(again.iter().any(|e| matches!(e, Event::Failed { error, .. } if matches!(**error, gelaco::Error::RunExists { .. }))));
}

#[test]
fn single_objective_search_hits_the_target_size() {
    let f = fixture();
    let s = SearchSettings { mode: Mode::Single { target_removed: 3 }, init: Init::Paper, ..settings(72) };
    let front = final_front(&run_to_end(spec(&f, &f.root.join("s"), s)));
    assert_eq!(front.len(), 1);
    assert_eq!(front[0].result.remaining_layers, 5);
}

#[test]
fn stop_pause_and_failure_are_events() {
    let f = fixture();
    let h = job::spawn(spec(&f, &f.root.join("p"), settings(100_000)), None);
    let mut seen = 0;
    let mut paused_progress = false;
    let start = Instant::now();
    let mut done = None;
    for e in h.events.iter() {
        match e {
            Event::Evaluated { .. } => {
                seen += 1;
                if seen == 20 {
                    h.send(job::Command::Pause);
                }
            }
            Event::Progress(p) if p.paused => {
                paused_progress = true;
                h.send(job::Command::Stop);
            }
            Event::Done { reason, .. } => {
                done = Some(reason);
                break;
            }
            Event::Failed { error, .. } => panic!("{error}"),
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the job did not stop");
    }
    h.join();
    assert!(paused_progress);
    assert_eq!(done, Some(job::StopReason::Stopped));
    assert_eq!(store::read_info(&f.root.join("p")).unwrap().status, store::Status::Stopped);

    // a model that cannot be read fails the job, it does not panic the caller
    let mut bad = spec(&f, &f.root.join("q"), settings(10));
    if let JobSpec::New { model, .. } = &mut bad {
        *model = f.root.join("missing.gguf");
    }
    assert_refused(&run_to_end(bad), "missing.gguf");
}

/// The job ended with an input error whose message names `what`.
fn assert_refused(events: &[Event], what: &str) {
    assert!(
        matches!(events.last(), Some(Event::Failed { error, .. }) if error.is_input_error() && error.to_string().contains(what)),
        "expected an input error naming {what}: {:?}",
        events.last()
    );
}

fn gelaco_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gelaco"));
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn log_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("evaluations.jsonl")).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn a_killed_search_resumes_to_the_same_front() {
    let f = fixture();
    let (model, calib) = (f.model.to_str().unwrap(), f.calib.to_str().unwrap());
    let args = |out: &Path| -> Vec<String> {
        ["search", "--model", model, "--calib", calib, "--samples", "6", "--max-tokens", "32", "--heal", "linear", "--population", "10", "--evaluations", "120", "--seed", "9", "--device", "cpu", "--out", out.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let whole = f.root.join("whole");
    let out = gelaco_cmd(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let killed = f.root.join("killed");
    let mut child = gelaco_cmd(&args(&killed).iter().map(String::as_str).collect::<Vec<_>>()).spawn().unwrap();
    // kill it in the middle of its third generation
    let start = Instant::now();
    while log_lines(&killed) < 25 {
        assert!(start.elapsed() < Duration::from_secs(120), "the search made no progress");
        assert!(child.try_wait().unwrap().is_none(), "the search ended before it could be killed");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = log_lines(&killed);
    assert!(at_kill < 120);

    let out = gelaco_cmd(&["resume", killed.to_str().unwrap(), "--device", "cpu"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(store::read_front(&killed).unwrap(), store::read_front(&whole).unwrap());
    // nothing logged twice, nothing lost: the same evaluations in the same order
    let keys = |d: &Path| -> Vec<(usize, String)> {
        std::fs::read_to_string(d.join("evaluations.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["index"].as_u64().unwrap() as usize, v["key"].as_str().unwrap().to_string())
            })
            .collect()
    };
    assert_eq!(keys(&killed), keys(&whole));
    assert_eq!(store::read_info(&killed).unwrap().status, store::Status::Finished);
}

/// A run killed after some of a screened generation's offspring were logged: the resumed
/// generation screens the same offspring as the uninterrupted run (those logged in it are
/// not yet "known" to the screening), so it evaluates the same plans, no more.
#[test]
fn a_run_killed_inside_a_screened_generation_resumes_to_the_same_evaluations() {
    let f = fixture();
    let screened = |evaluations| SearchSettings { fidelity: Some("64:0.25,full:1".into()), ..settings(evaluations) };
    let whole = f.root.join("whole");
    let front = final_front(&run_to_end(spec(&f, &whole, screened(48))));
    // the same run stopped after its first generation, then the first part of the second
    // generation's log written as a killed run leaves it
    let killed = f.root.join("killed");
    final_front(&run_to_end(spec(&f, &killed, screened(24))));
    let lines: Vec<String> = std::fs::read_to_string(whole.join("evaluations.jsonl")).unwrap().lines().map(String::from).collect();
    let before = log_lines(&killed);
    assert_eq!(lines[..before].join("\n") + "\n", std::fs::read_to_string(killed.join("evaluations.jsonl")).unwrap());
    let second: Vec<&String> = lines[before..].iter().filter(|l| l.contains("\"generation\":2,")).collect();
    // up to the first model the second generation evaluated afresh (not one known before it)
    let first_new = second.iter().position(|l| l.contains("\"cached\":false")).expect("the second generation evaluated no new model");
    let mut log = std::fs::OpenOptions::new().append(true).open(killed.join("evaluations.jsonl")).unwrap();
    for l in &second[..=first_new] {
        writeln!(log, "{l}").unwrap();
    }
    drop(log);
    let resumed = JobSpec::Resume { dir: killed.clone(), device: DeviceChoice::Cpu, memory_budget: None, model: None, evaluations: Some(48) };
    assert_eq!(final_front(&run_to_end(resumed)), front);
    let keys = |d: &Path| -> Vec<String> { store::read_evaluations(d).unwrap().into_iter().map(|e| format!("{} {}", e.index, e.key)).collect() };
    assert_eq!(keys(&killed), keys(&whole));
}

#[test]
fn stop_during_the_baselines_ends_the_job_and_the_run_resumes() {
    let f = fixture();
    let dir = f.root.join("early-stop");
    let mut s = spec(&f, &dir, settings(24));
    if let JobSpec::New { baselines, .. } = &mut s {
        *baselines = true;
    }
    let h = job::spawn(s, None);
    h.send(job::Command::Stop);
    let events: Vec<Event> = h.events.iter().collect();
    h.join();
    assert!(matches!(events.last(), Some(Event::Done { reason: job::StopReason::Stopped, front, .. }) if front.is_empty()), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::Evaluated { .. })));
    assert_eq!(store::read_info(&dir).unwrap().status, store::Status::Stopped);
    // the stopped run continues from the start: baselines, then the search
    let resumed = run_to_end(JobSpec::Resume { dir: dir.clone(), device: DeviceChoice::Cpu, memory_budget: None, model: None, evaluations: None });
    assert!(resumed.iter().any(|e| matches!(e, Event::Baselines { .. })));
    assert!(!final_front(&resumed).is_empty());
    assert_eq!(store::read_info(&dir).unwrap().status, store::Status::Finished);
}

#[test]
fn a_search_stopped_in_its_first_generation_keeps_what_it_evaluated() {
    let f = fixture();
    let out = f.root.join("early");
    let h = job::spawn(spec(&f, &out, settings(100_000)), None);
    let mut seen = 0;
    let mut front = None;
    for e in h.events.iter() {
        match e {
            Event::Evaluated { .. } => {
                seen += 1;
                if seen == 5 {
                    h.send(job::Command::Stop);
                }
            }
            Event::Generation { .. } => panic!("the first generation should not have completed"),
            Event::Done { front: f, .. } => {
                front = Some(f);
                break;
            }
            Event::Failed { error, .. } => panic!("{error}"),
            _ => {}
        }
    }
    h.join();
    let front = front.expect("a Done event");
    assert!(!front.is_empty() && seen >= 5);
    // the front is the best of what was evaluated, and it is on disk
    assert_eq!(store::read_front(&out).unwrap(), front);
    let logged: Vec<gelaco::search::problem::EvaluatedPlan> =
        std::fs::read_to_string(out.join("evaluations.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for e in &logged {
        assert!(
            front.iter().any(|f| f.result.compression >= e.result.compression && f.result.fitness >= e.result.fitness),
            "{} is not covered by the front",
            e.merges
        );
    }
}

/// The plans a seeded search on `f`'s model starts from that remove `lo..=hi` layers:
/// ShortGPT's and the closest block of each size, from the run's calibration in `out`.
fn starting_points(f: &Fixture, out: &Path, lo: usize, hi: usize) -> Vec<gelaco::collapse::Plan> {
    use gelaco::search::baselines::{closest_block_plan, shortgpt_plan, span_distances};
    let m = gelaco::model::load(&f.model, gelaco::backend::select(DeviceChoice::Cpu).unwrap()).unwrap();
    let calibration = store::read_calibration(out).unwrap();
    let distances = span_distances(&m.model, &calibration.samples, EngineOptions::default().batch_size, hi).unwrap();
    (lo..=hi).flat_map(|r| [shortgpt_plan(&distances.block_influence(), r).unwrap(), closest_block_plan(&distances, r).unwrap()]).collect()
}

#[test]
fn the_plans_a_seeded_search_started_from_are_validated_beside_the_fittest_of_their_size() {
    use gelaco::eval::validation::{ValidationOptions, ValidationSource};
    let f = fixture();
    let out = f.root.join("sp");
    let mut s = spec(&f, &out, settings(150));
    if let JobSpec::New { validation, engine, .. } = &mut s {
        *validation = Some((ValidationSource::Rest, ValidationOptions { window: 16, windows: 2 }));
        // the likelihood of the text, which the distances between states do not foretell
        engine.objective = gelaco::fitness::Objective::Nll;
    }
    let events = run_to_end(s);
    let front = final_front(&events);
    let candidates = store::read_candidates(&out).unwrap();
    let (lo, hi) = settings(150).removed_range(8);
    let log: Vec<EvaluatedPlan> =
        std::fs::read_to_string(out.join("evaluations.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let key = |r: &gelaco::fitness::FitnessResult| gelaco::export::recipe::plan_of(r).model_key();
    let mut below_the_fittest = 0;
    for plan in starting_points(&f, &out, lo, hi) {
        let e = front.iter().chain(&candidates).find(|e| key(&e.result) == plan.model_key());
        let e = e.unwrap_or_else(|| panic!("the starting point {} is neither on the front nor a candidate", plan.merges_text()));
        assert!(e.validation_perplexity.is_some(), "the starting point {} was not validated", plan.merges_text());
        let size = e.result.remaining_layers;
        let fitter: std::collections::HashSet<String> =
            log.iter().filter(|l| l.result.remaining_layers == size && l.result.fitness > e.result.fitness).map(|l| key(&l.result)).collect();
        if fitter.len() >= gelaco::run::pick::CANDIDATES_PER_SIZE {
            below_the_fittest += 1;
        }
    }
    assert!(below_the_fittest > 0, "every starting point is among the fittest of its size: the search tells nothing here");
}

#[test]
fn validation_marks_one_recommended_solution_per_size_and_refuses_calibration_text() {
    use gelaco::eval::validation::{ValidationOptions, ValidationSource};
    let f = fixture();
    let out = f.root.join("v");
    let mut s = spec(&f, &out, settings(36));
    if let JobSpec::New { validation, baselines, .. } = &mut s {
        *validation = Some((ValidationSource::Rest, ValidationOptions { window: 16, windows: 2 }));
        *baselines = true;
    }
    let events = run_to_end(s);
    let front = final_front(&events);
    let candidates = store::read_candidates(&out).unwrap();
    assert!(events.iter().any(|e| matches!(e, Event::Done { candidates: c, .. } if *c == candidates)));
    let baselines = store::read_baselines(&out).unwrap();
    assert!(front.iter().chain(&candidates).all(|e| e.validation_perplexity.is_some_and(|p| p.is_finite() && p > 1.0)));
    assert!(baselines.iter().all(|b| b.validation_perplexity.is_some()));
    // candidates: off the front, at most CANDIDATES_PER_SIZE of a size with the front's,
    // each no fitter than the front's plan of its size
    let log: Vec<EvaluatedPlan> =
        std::fs::read_to_string(out.join("evaluations.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!candidates.is_empty(), "36 evaluations leave sizes with more than one plan");
    let (lo, hi) = settings(36).removed_range(8);
    let starting = starting_points(&f, &out, lo, hi);
    for c in &candidates {
        assert!(!front.iter().any(|f| f.merges == c.merges), "{} is on the front", c.merges);
        assert!(log.iter().any(|e| e.merges == c.merges), "{} was never evaluated", c.merges);
        let size = c.result.remaining_layers;
        let is_start = |e: &&FrontEntry| starting.iter().any(|p| p.model_key() == gelaco::export::recipe::plan_of(&e.result).model_key());
        let of_size = front.iter().chain(&candidates).filter(|e| e.result.remaining_layers == size && !is_start(e)).count();
        assert!(of_size <= gelaco::run::pick::CANDIDATES_PER_SIZE, "{of_size} plans of {size} layers besides the starting points");
        let better = log.iter().filter(|e| e.result.remaining_layers == size && e.result.fitness > c.result.fitness);
        let better: std::collections::HashSet<&str> = better.map(|e| e.merges.as_str()).collect();
        assert!(better.len() < gelaco::run::pick::CANDIDATES_PER_SIZE || is_start(&c), "{} is not among the fittest of {size} layers", c.merges);
    }
    let mut sizes: Vec<usize> = front.iter().chain(&candidates).map(|e| e.result.remaining_layers).chain(baselines.iter().map(|b| b.result.remaining_layers)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        let of_size = |e: &&FrontEntry| e.result.remaining_layers == size;
        let recommended: Vec<f64> = front
            .iter()
            .chain(&candidates)
            .filter(|e| of_size(e) && e.recommended)
            .filter_map(|e| e.validation_perplexity)
            .chain(baselines.iter().filter(|b| b.result.remaining_layers == size && b.recommended).filter_map(|b| b.validation_perplexity))
            .collect();
        assert_eq!(recommended.len(), 1, "{size} layers");
        let best = front
            .iter()
            .chain(&candidates)
            .filter(of_size)
            .filter_map(|e| e.validation_perplexity)
            .chain(baselines.iter().filter(|b| b.result.remaining_layers == size).filter_map(|b| b.validation_perplexity))
            .fold(f64::INFINITY, f64::min);
        assert_eq!(recommended[0], best, "{size} layers");
    }
    let info = store::read_info(&out).unwrap();
    assert!(info.validation.as_ref().is_some_and(|v| v.tokens > 0 && v.source.contains("not used for calibration")));
    assert!(store::read_validation(&out).unwrap().is_some());
    // a validation file holding a calibration line is refused
    let mut s = spec(&f, &f.root.join("overlap"), settings(12));
    if let JobSpec::New { validation, .. } = &mut s {
        *validation = Some((ValidationSource::File(f.calib.clone()), ValidationOptions::default()));
    }
    assert_refused(&run_to_end(s), "calibration sample");
}

/// A search with baselines into `name`, on text enough for validation and for fitting a
/// 64 x 64 map on other lines, healing its picks on 40 samples screened on `screen`; it
/// ran to the end.
fn healing_run(f: &Fixture, name: &str, screen: usize) -> (PathBuf, Vec<Event>) {
    use gelaco::eval::validation::{ValidationOptions, ValidationSource};
    use gelaco::fitness::Heal;
    use gelaco::run::heal_picks::HealPicks;
    let calib = f.root.join("long.txt");
    let lines: String = (0..80).map(|i| format!("the hand and the thing number {i} went out to the shop today\n")).collect();
    std::fs::write(&calib, lines).unwrap();
    let out = f.root.join(name);
    let mut s = spec(f, &out, settings(36));
    if let JobSpec::New { calib: c, validation, heal_picks: h, baselines, .. } = &mut s {
        *c = CalibSource::File(calib.clone());
        *validation = Some((ValidationSource::Rest, ValidationOptions { window: 32, windows: 4 }));
        *h = Some(HealPicks { method: Heal::Linear, samples: 40, screen, per_size: 3 });
        *baselines = true;
    }
    let events = run_to_end(s);
    assert!(matches!(events.last(), Some(Event::Done { .. })), "{:?}", events.last());
    (out, events)
}

#[test]
fn the_best_plans_of_each_size_are_healed_apart_from_validation_and_recommended_where_they_validate_better() {
    use gelaco::eval::validation::{ValidationOptions, ValidationSource};
    use gelaco::export::{Recipe, Variant};
    use gelaco::fitness::Heal;
    use gelaco::run::heal_picks::{self, HealPicks};
    let f = fixture();
    let (out, events) = healing_run(&f, "hp", 0);
    let front = final_front(&events);
    let candidates = store::read_candidates(&out).unwrap();
    let baselines = store::read_baselines(&out).unwrap();
    // the last baselines sent are the ones written, healed values and all
    let sent = events.iter().rev().find_map(|e| if let Event::Baselines { solutions } = e { Some(solutions.clone()) } else { None });
    let view = |b: &[gelaco::search::baselines::BaselineSolution]| -> Vec<(String, Option<f64>, bool)> {
        b.iter().map(|b| (b.merges.clone(), b.healed_validation_perplexity, b.recommended)).collect()
    };
    assert_eq!(sent.as_deref().map(view), Some(view(&baselines)));
    let info = store::read_info(&out).unwrap();
    let recorded = info.heal_picks.clone().expect("run.json records how the picks are healed");
    let fit = heal_picks::read(&out, &info).unwrap().expect("the fitting samples are in the run folder");
    assert_eq!((recorded.hash.as_str(), recorded.samples, recorded.tokens), (fit.hash.as_str(), 40, fit.tokens()));
    assert_eq!(recorded.screen_samples, None, "every plan healed on all samples, as before screening");
    assert_eq!(recorded.per_size, 3);
    // no fitting sample is validation text
    let validation = store::read_validation(&out).unwrap().unwrap();
    let scored: Vec<u32> = validation.windows.concat();
    for sample in &fit.samples {
        let inner = &sample[1..sample.len() - 1];
        assert!(!scored.windows(inner.len()).any(|w| w == inner), "a fitting sample is validation text: {sample:?}");
    }
    // the best `per_size` of each size the search aims at (by validation perplexity)
    // are healed, no other; the recommended solution of each size has the lowest
    // perplexity of its model
    let (lo, hi) = settings(36).removed_range(8);
    let all: Vec<(usize, Option<f64>, Option<f64>, bool, bool)> = front
        .iter()
        .chain(&candidates)
        .map(|e| (e.result.remaining_layers, e.validation_perplexity, e.healed_validation_perplexity, e.recommended, e.result.compression > 0.0))
        .chain(baselines.iter().map(|b| (b.result.remaining_layers, b.validation_perplexity, b.healed_validation_perplexity, b.recommended, true)))
        .collect();
    assert!(all.iter().any(|e| e.2.is_some()), "no plan was healed");
    let mut sizes: Vec<usize> = all.iter().map(|e| e.0).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        let mut of_size: Vec<_> = all.iter().filter(|e| e.0 == size && e.4 && e.1.is_some()).collect();
        of_size.sort_by(|a, b| a.1.unwrap().total_cmp(&b.1.unwrap()));
        if !(lo..=hi).contains(&(8 - size)) {
            assert!(all.iter().filter(|e| e.0 == size).all(|e| e.2.is_none()), "{size} layers are outside the band but healed");
        }
        let mut seen = Vec::new();
        for e in of_size.iter().filter(|_| (lo..=hi).contains(&(8 - size))) {
            if !seen.contains(&e.1) && seen.len() < recorded.per_size {
                assert!(e.2.is_some(), "{size} layers: a plan among the best {} was not healed", recorded.per_size);
                seen.push(e.1);
            }
        }
        let picked = |e: &(usize, Option<f64>, Option<f64>, bool, bool)| heal_picks::picked(e.1, e.2).unwrap_or(f64::INFINITY);
        let best = all.iter().filter(|e| e.0 == size).map(picked).fold(f64::INFINITY, f64::min);
        let recommended: Vec<_> = all.iter().filter(|e| e.0 == size && e.3).collect();
        if best.is_finite() {
            assert_eq!(recommended.len(), 1, "{size} layers");
            assert_eq!(picked(recommended[0]), best, "{size} layers");
        }
    }
    // a solution's recipe is healed exactly when healing validated better, and rebuilds the
    // healed model the run validated
    let m = gelaco::model::load(&f.model, gelaco::backend::select(DeviceChoice::Cpu).unwrap()).unwrap();
    let mut checked = 0;
    for e in front.iter().chain(&candidates).filter(|e| e.healed_validation_perplexity.is_some()) {
        let r = Recipe::from_run(&out, &info, &e.result, true, "test".into()).unwrap();
        let heal = r.heal.as_ref().expect("a healed recipe carries its healing");
        assert_eq!(heal.calibration, fit);
        let plain = Recipe::from_run(&out, &info, &e.result, e.healed(), "test".into()).unwrap();
        assert_eq!(plain.heal.is_some(), e.healed());
        let path = f.root.join(format!("r{checked}.json"));
        r.save(&path, false).unwrap();
        let v = Variant::from_recipe_file(&path, &m.files, &info.model.sha256, false).unwrap();
        let ppl = validation.perplexity(&v.build(&m.model).unwrap()).unwrap();
        let want = e.healed_validation_perplexity.unwrap();
        assert!((ppl - want).abs() <= 1e-6 * want, "{}: the recipe's healed model validates at {ppl}, the run recorded {want}", e.merges);
        checked += 1;
    }
    assert!(checked > 0);
    // a resumed run keeps healing its picks with the recorded samples
    let resume = JobSpec::Resume { dir: out.clone(), device: DeviceChoice::Cpu, memory_budget: None, model: None, evaluations: Some(48) };
    let events = run_to_end(resume);
    assert!(matches!(events.last(), Some(Event::Done { .. })), "{:?}", events.last());
    assert_eq!(heal_picks::read(&out, &store::read_info(&out).unwrap()).unwrap(), Some(fit));
    assert!(store::read_front(&out).unwrap().iter().any(|e| e.healed_validation_perplexity.is_some()));
    // too few tokens to fit on (2 samples for a 64 x 64 map): the run goes on without
    // healing its picks
    let out = f.root.join("hp-short");
    let mut s = spec(&f, &out, settings(12));
    if let JobSpec::New { validation, heal_picks: h, .. } = &mut s {
        *validation = Some((ValidationSource::Rest, ValidationOptions { window: 16, windows: 2 }));
        *h = Some(HealPicks { method: Heal::Linear, samples: 2, screen: 0, per_size: 2 });
    }
    let events = run_to_end(s);
    assert!(events.iter().any(|e| matches!(e, Event::Stage { message } if message.contains("will not be healed"))));
    assert!(matches!(events.last(), Some(Event::Done { .. })), "{:?}", events.last());
    assert!(store::read_info(&out).unwrap().heal_picks.is_none());
    assert!(!out.join(heal_picks::FILE).exists());
    // healing no plan of each size, or on no sample, is a setting error, found before the
    // model is read (here it is missing) and before the run folder is made
    for (heal, setting) in [(HealPicks { per_size: 0, ..HealPicks::default() }, "heal_per_size"), (HealPicks { samples: 0, ..HealPicks::default() }, "heal_samples")] {
        let out = f.root.join(format!("refused-{setting}"));
        let mut s = spec(&f, &out, settings(12));
        if let JobSpec::New { model, validation, heal_picks: h, .. } = &mut s {
            *model = f.root.join("missing.gguf");
            *validation = Some((ValidationSource::Rest, ValidationOptions { window: 16, windows: 2 }));
            *h = Some(heal);
        }
        assert_refused(&run_to_end(s), setting);
        assert!(!out.join("run.json").exists());
    }
}

#[test]
fn screened_healing_fits_only_the_best_screened_plan_of_each_size_on_all_samples() {
    use gelaco::export::Recipe;
    use gelaco::fitness::{FitnessEngine, Heal};
    use gelaco::run::heal_picks;
    let f = fixture();
    let (out, events) = healing_run(&f, "screened", 16);
    assert!(events.iter().any(|e| matches!(e, Event::Stage { message } if message.contains("on 16 samples") && message.contains("all 40"))));
    let info = store::read_info(&out).unwrap();
    assert_eq!(info.heal_picks.as_ref().and_then(|h| h.screen_samples), Some(16));
    let fit = heal_picks::read(&out, &info).unwrap().unwrap();
    let validation = store::read_validation(&out).unwrap().unwrap();
    let m = gelaco::model::load(&f.model, gelaco::backend::select(DeviceChoice::Cpu).unwrap()).unwrap();
    let healer = FitnessEngine::healer(&m.model, fit.clone(), info.engine.merge, Heal::Linear).unwrap();
    let screen = healer.chunks_holding(16);
    assert!(screen < healer.cache_state().0, "the screen is part of the samples");
    let screened = |r: &gelaco::fitness::FitnessResult| {
        let plan = gelaco::export::recipe::plan_of(r);
        validation.perplexity(&healer.build_on(&plan, screen).unwrap()).unwrap()
    };
    let front = final_front(&events);
    let candidates = store::read_candidates(&out).unwrap();
    let baselines = store::read_baselines(&out).unwrap();
    let all: Vec<(&gelaco::fitness::FitnessResult, Option<f64>, Option<f64>)> = front
        .iter()
        .chain(&candidates)
        .map(|e| (&e.result, e.validation_perplexity, e.healed_validation_perplexity))
        .chain(baselines.iter().map(|b| (&b.result, b.validation_perplexity, b.healed_validation_perplexity)))
        .collect();
    let (lo, hi) = settings(36).removed_range(8);
    let mut compared = 0;
    for removed in lo..=hi {
        // the best `per_size` distinct models of the size by validation unhealed were
        // screened; only the one that validated best healed on the screen is healed, on
        // every sample
        let mut of_size: Vec<_> = all.iter().filter(|e| 8 - e.0.remaining_layers == removed && e.1.is_some()).collect();
        of_size.sort_by(|a, b| a.1.unwrap().total_cmp(&b.1.unwrap()));
        of_size.dedup_by_key(|e| gelaco::export::recipe::plan_of(e.0).model_key());
        let healed: Vec<_> = of_size.iter().filter(|e| e.2.is_some()).collect();
        assert!(healed.len() <= 1, "{removed} removed: {} models healed", healed.len());
        if of_size.len() < 2 || healed.is_empty() {
            continue;
        }
        let per_size = info.heal_picks.as_ref().unwrap().per_size;
        let scores: Vec<f64> = of_size.iter().take(per_size).map(|e| screened(e.0)).collect();
        let best = (0..scores.len()).fold(0, |b, i| if scores[i] < scores[b] { i } else { b });
        let winner = of_size[best];
        assert!(std::ptr::eq(*healed[0], winner), "{removed} removed: screened {scores:?}, another was healed");
        let r = Recipe::from_run(&out, &info, winner.0, true, "test".into()).unwrap();
        assert_eq!(r.heal.as_ref().unwrap().calibration, fit, "the chosen plan is healed on every sample");
        let full = validation.perplexity(&healer.build_on(&gelaco::export::recipe::plan_of(winner.0), usize::MAX).unwrap()).unwrap();
        assert!((full - winner.2.unwrap()).abs() <= 1e-6 * full, "{removed} removed: {full} vs {}", winner.2.unwrap());
        compared += 1;
    }
    assert!(compared > 0, "no size had two plans to screen");
}

/// Remove, at any depth, the JSON keys that run folders written before objectives,
/// healing, validation and multi-fidelity selection did not have.
fn strip_new_keys(v: &mut serde_json::Value) {
    const NEW: [&str; 13] = [
        "objective",
        "kl",
        "nll",
        "heal",
        "kl_top_k",
        "fidelity",
        "validation",
        "kind",
        "validation_perplexity",
        "recommended",
        "screened",
        "first_chunk_tokens",
        "per_size",
    ];
    match v {
        serde_json::Value::Object(m) => {
            for k in NEW {
                m.remove(k);
            }
            m.values_mut().for_each(strip_new_keys);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_new_keys),
        _ => {}
    }
}

#[test]
fn run_folders_written_before_objectives_and_healing_still_load_and_resume() {
    let f = fixture();
    let dir = f.root.join("old");
    // the earlier release's search: the paper's fitness, no healing, no screening
    let mut s = spec(&f, &dir, SearchSettings { fidelity: None, ..settings(24) });
    if let JobSpec::New { baselines, engine, .. } = &mut s {
        *baselines = true;
        *engine = EngineOptions { objective: gelaco::fitness::Objective::Similarity, heal: gelaco::fitness::Heal::None, ..EngineOptions::default() };
    }
    final_front(&run_to_end(s));
    // rewrite every file in the schema of the earlier release
    for name in ["run.json", "checkpoint.json", "front.json", "baselines.json"] {
        let p = dir.join(name);
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        strip_new_keys(&mut v);
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    let log: Vec<String> = std::fs::read_to_string(dir.join("evaluations.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            strip_new_keys(&mut v);
            v.to_string()
        })
        .collect();
    std::fs::write(dir.join("evaluations.jsonl"), log.join("\n") + "\n").unwrap();
    // the old folder reads as the paper's fitness, unhealed, without validation
    let info = store::read_info(&dir).unwrap();
    assert_eq!(info.engine.objective, gelaco::fitness::Objective::Similarity);
    assert_eq!(info.engine.heal, gelaco::fitness::Heal::None);
    assert!(info.validation.is_none() && info.settings.fidelity.is_none());
    assert!(!store::read_front(&dir).unwrap().is_empty());
    assert!(store::read_baselines(&dir).unwrap().iter().all(|b| b.kind().is_some()));
    // the command line reprints it and writes its recipes, and the search resumes
    let out = gelaco_cmd(&["front", dir.to_str().unwrap(), "--recipes", f.root.join("old-recipes").to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resumed = run_to_end(JobSpec::Resume { dir: dir.clone(), device: DeviceChoice::Cpu, memory_budget: None, model: None, evaluations: Some(36) });
    assert!(!final_front(&resumed).is_empty());
}

/// A run folder and a recipe that an earlier release wrote (KL objective, linear healing,
/// validation; before candidates and the screening chunk existed), kept in
/// `tests/fixtures`: they still open, reprint and write recipes.
#[test]
fn a_run_folder_and_a_recipe_of_an_earlier_release_still_load() {
    let fixtures = common::repo_root().join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(fixtures.join("run-2026-11")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let (_, info, _, logged, checkpoint) = store::RunStore::open(&dir).unwrap();
    assert_eq!((info.engine.objective, info.engine.heal), (gelaco::fitness::Objective::Kl, gelaco::fitness::Heal::Linear));
    assert!(info.engine.first_chunk_tokens.is_none() && info.validation.is_some());
    assert_eq!(logged.len(), 16);
    assert_eq!(checkpoint.unwrap().state.population.len(), 16);
    assert!(store::read_candidates(&dir).unwrap().is_empty());
    let out = gelaco_cmd(&["front", dir.to_str().unwrap(), "--json"]).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let merges: Vec<&str> = v["front"].as_array().unwrap().iter().map(|e| e["merges"].as_str().unwrap()).collect();
    assert_eq!(merges, ["12:13,14:15,5:6", "6:7,22:23,9:10,13:14", "2:8,0:8,14:15,13:15", "10:12,18:24,1:2,3:7"]);
    assert!(v["front"].as_array().unwrap().iter().all(|e| e["recommended"] == true && e["validation_perplexity"].as_f64().is_some()));
    let recipes = tmp.path().join("recipes");
    let out = gelaco_cmd(&["front", dir.to_str().unwrap(), "--recipes", recipes.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(recipes.join("recommended-27layers.json").exists());
    let recipe = gelaco::export::Recipe::load(&fixtures.join("recipe-2026-11.json")).unwrap();
    assert_eq!((recipe.plan().unwrap().merges_text(), recipe.remaining_layers), ("12:13,14:15,5:6".to_string(), 27));
}

#[test]
fn hostile_run_folders_exit_2_naming_file_and_field() {
    let f = fixture();
    let run = f.root.join("run");
    let out = gelaco_cmd(&[
        "search", "--model", f.model.to_str().unwrap(), "--calib", f.calib.to_str().unwrap(), "--samples", "6", "--max-tokens", "32",
        "--population", "4", "--evaluations", "8", "--device", "cpu", "--out", run.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let edit = |dir: &Path, file: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let p = dir.join(file);
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        change(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
    };
    let copy = |name: &str| -> PathBuf {
        let to = f.root.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&run).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    };
    type Case<'a> = (&'a str, &'a str, &'a dyn Fn(&mut serde_json::Value), &'a [&'a str]);
    let cases: [Case; 4] = [
        // population 0 once made resume loop for ever
        ("resume", "run.json", &|v| v["settings"]["population"] = 0.into(), &["run.json", "settings.population"]),
        ("resume", "run.json", &|v| v["model"]["sha256"] = "ü".repeat(20).into(), &["run.json", "model.sha256"]),
        ("resume", "calibration.json", &|v| v["samples"][0][0] = 1_000_000.into(), &["calibration.json"]),
        ("front", "front.json", &|v| v[0]["psi"] = serde_json::json!([0]), &["front.json", "psi"]),
    ];
    for (i, (command, file, change, names)) in cases.iter().enumerate() {
        let dir = copy(&format!("bad{i}"));
        edit(&dir, file, change);
        let start = Instant::now();
        let out = gelaco_cmd(&[command, dir.to_str().unwrap(), "--device", "cpu"][..if *command == "front" { 2 } else { 4 }]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(!stderr.contains("panicked") && start.elapsed() < Duration::from_secs(60), "{stderr}");
        for n in *names {
            assert!(stderr.contains(n), "'{n}' not in {stderr}");
        }
    }
}

#[test]
fn imported_recipes_are_baselines_and_starting_points() {
    use gelaco::collapse::{MergeOp, MergeSettings, Plan};
    use gelaco::export::recipe::Recipe;
    use gelaco::search::baselines::BaselineMethod;
    let f = fixture();
    let m = gelaco::model::load(&f.model, gelaco::backend::select(DeviceChoice::Cpu).unwrap()).unwrap();
    let identity = store::ModelIdentity::of(&m.files).unwrap();
    let plan = Plan::from_ranges(&[(2, 3), (5, 6)], 8, MergeOp::KeepFirst).unwrap();
    let mut recipe = Recipe::new(identity, &plan, MergeOp::KeepFirst, MergeSettings::default());
    recipe.origin = "SLEB (r=2)".into();
    recipe.method = Some(BaselineMethod::Sleb);
    let path = f.root.join("sleb-6layers.json");
    recipe.save(&path, false).unwrap();
    let out = f.root.join("imported");
    let mut s = spec(&f, &out, SearchSettings { init: Init::Warm, ..settings(24) });
    if let JobSpec::New { import, .. } = &mut s {
        *import = vec![path.clone()];
    }
    final_front(&run_to_end(s));
    let baselines = store::read_baselines(&out).unwrap();
    let imported = baselines.iter().find(|b| b.plan == plan).expect("the imported plan is a baseline");
    assert_eq!(imported.kind, Some(BaselineMethod::Sleb));
    assert!(imported.method.contains("SLEB (r=2)") && imported.method.contains("sleb-6layers"), "{}", imported.method);
    assert!(imported.result.fitness.is_finite() && imported.result.remaining_layers == 6);
    // the warm start begins with it
    let log = std::fs::read_to_string(out.join("evaluations.jsonl")).unwrap();
    let first: EvaluatedPlan = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(log.lines().take(12).any(|l| serde_json::from_str::<EvaluatedPlan>(l).unwrap().merges == plan.merges_text()), "first: {}", first.merges);
    // a recipe of another model file is refused before a run folder is made, naming the file
    let mut other: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    other["model"]["sha256"] = serde_json::json!("ab".repeat(32));
    let bad = f.root.join("other-model.json");
    std::fs::write(&bad, other.to_string()).unwrap();
    let out = f.root.join("refused");
    let mut s = spec(&f, &out, settings(12));
    if let JobSpec::New { import, .. } = &mut s {
        *import = vec![bad];
    }
    assert_refused(&run_to_end(s), "other-model.json");
    assert!(!out.join("run.json").exists());
}

