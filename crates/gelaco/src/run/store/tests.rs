use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::collapse::{MergeOp, Plan};
use crate::fitness::calibration::{CalibOptions, CalibSource};
use crate::fitness::{FitnessResult, Objective};

const LAYERS: usize = 6;

fn result(plan: &Plan) -> FitnessResult {
    FitnessResult {
        fitness: 0.5,
        attention: 0.0,
        ffn: 0.0,
        hidden: 0.0,
        compression: plan.compression(),
        params_removed: 0.1,
        remaining_layers: plan.remaining(),
        psi: plan.psi.clone(),
        canonical: plan.canonical.clone(),
        non_finite: false,
        per_layer: Vec::new(),
        objective: Objective::Kl,
        kl: Some(0.7),
        nll: None,
    }
}

/// A valid run folder of a 6-layer model: run.json, calibration, two logged
/// evaluations, a checkpoint, a front and a baseline.
fn run_folder() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let calibration = Calibration::from_samples(vec![vec![1, 2, 3], vec![4, 5]], CalibSource::SelfGenerated, CalibOptions::default());
    let info = RunInfo {
        tool_version: "0".into(),
        settings: SearchSettings { population: 4, ..SearchSettings::default() },
        engine: EngineOptions::default(),
        model: ModelIdentity { path: "m.gguf".into(), sha256: "ab".repeat(32), architecture: "llama".into(), layers: LAYERS },
        calibration_hash: calibration.hash.clone(),
        calibration_source: "self".into(),
        status: Status::Stopped,
        message: None,
        baselines: true,
        validation: None,
        heal_picks: None,
        nonce: None,
    };
    let mut store = RunStore::create(&dir, &info, &calibration).unwrap();
    let (bounds, _) = info.shape();
    let encoding = info.settings.encoding(LAYERS);
    let mut population = Vec::new();
    for i in 0..2 {
        let mut genes = vec![0.0; bounds.lower.len()];
        genes[0] = i as f64;
        genes[1] = 3.0;
        genes[2] = 1.0;
        let plan = encoding.decode(&genes);
        let r = Arc::new(result(&plan));
        store
            .append(&EvaluatedPlan { index: i, generation: 0, genes: genes.clone(), key: plan.model_key(), merges: plan.merges_text(), cached: false, result: r })
            .unwrap();
        population.push(json!({"x": genes, "eval": {"objectives": [0.5, 0.5], "violation": 0.0}, "rank": 0, "crowding": null}));
    }
    let state: AlgorithmState = serde_json::from_value(json!({"generation": 1, "evaluations": 2, "population": population})).unwrap();
    store.checkpoint(&Checkpoint { state, evaluated: 2, cache_hits: 0, unique: 2, seconds: 1.0, hypervolume: vec![0.1] }).unwrap();
    let plan = Plan::from_ranges(&[(1, 3)], LAYERS, MergeOp::KeepFirst).unwrap();
    let entry = FrontEntry { merges: plan.merges_text(), genes: Vec::new(), result: result(&plan), validation_perplexity: Some(40.0), healed_validation_perplexity: None, recommended: true };
    store.write_front(&[entry]).unwrap();
    let b = BaselineSolution {
        method: "ShortGPT (r=2)".into(),
        kind: None,
        validation_perplexity: None, healed_validation_perplexity: None,
        recommended: false,
        merges: plan.merges_text(),
        result: result(&plan),
        plan,
    };
    store.write_baselines(&[b]).unwrap();
    (tmp, dir)
}

fn edit(path: &Path, change: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    change(&mut v);
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// The error of opening and reading every file of the run folder, as text.
fn open_error(dir: &Path) -> String {
    let e = RunStore::open(dir)
        .and_then(|_| read_front(dir))
        .and_then(|_| read_baselines(dir))
        .and_then(|_| read_calibration(dir))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    e.to_string()
}

#[test]
fn a_valid_run_folder_opens() {
    let (_tmp, dir) = run_folder();
    let (_, info, _, logged, checkpoint) = RunStore::open(&dir).unwrap();
    assert_eq!((info.model.layers, logged.len(), checkpoint.unwrap().state.population.len()), (LAYERS, 2, 2));
    assert_eq!(read_front(&dir).unwrap().len(), 1);
    assert_eq!(read_baselines(&dir).unwrap().len(), 1);
    // the read API sees what a resume sees
    assert_eq!(read_evaluations(&dir).unwrap().len(), 2);
    assert_eq!(read_checkpoint(&dir).unwrap().unwrap().hypervolume, vec![0.1]);
}

#[test]
fn reading_a_run_folder_changes_nothing_and_checks_what_it_reads() {
    let (_tmp, dir) = run_folder();
    let log = dir.join("evaluations.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // a torn last line is left out, but, unlike a resume, not cut from the file
    let torn = format!("{}\n{}", lines[0], &lines[1][..lines[1].len() / 2]);
    std::fs::write(&log, &torn).unwrap();
    assert_eq!(read_evaluations(&dir).unwrap().len(), 1);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), torn);
    // a hostile checkpoint is refused, naming the file
    edit(&dir.join("checkpoint.json"), |v| v["state"]["population"] = json!([]));
    let e = read_checkpoint(&dir).unwrap_err().to_string();
    assert!(e.contains("checkpoint.json"), "{e}");
    // no checkpoint yet: none
    std::fs::remove_file(dir.join("checkpoint.json")).unwrap();
    assert!(read_checkpoint(&dir).unwrap().is_none());
}

#[test]
fn hostile_run_files_are_refused_naming_file_and_field() {
    type Change = fn(&mut Value);
    let cases: Vec<(&str, Change, &str)> = vec![
        ("run.json", |v| v["settings"]["population"] = json!(0), "settings.population"),
        ("run.json", |v| v["settings"]["population"] = json!(1_000_000_000u64), "settings.population"),
        ("run.json", |v| v["settings"]["evaluations"] = json!(0), "settings.evaluations"),
        ("run.json", |v| v["settings"]["band"] = json!([0.9, 0.1]), "settings.band"),
        ("run.json", |v| v["settings"]["crossover_probability"] = json!(7.0), "settings.crossover_probability"),
        ("run.json", |v| v["settings"]["mode"] = json!({"mode": "single", "target_removed": 99}), "settings.target_removed"),
        ("run.json", |v| v["settings"]["fidelity"] = json!("full:1,3:0.5"), "settings.fidelity"),
        ("run.json", |v| v["model"]["layers"] = json!(1u64 << 62), "model.layers"),
        ("run.json", |v| v["model"]["layers"] = json!(0), "model.layers"),
        ("run.json", |v| v["model"]["sha256"] = json!("ab"), "model.sha256"),
        ("run.json", |v| v["model"]["sha256"] = json!("é".repeat(64)), "model.sha256"),
        ("run.json", |v| v["engine"]["batch_size"] = json!(0), "engine.batch_size"),
        ("run.json", |v| v["engine"]["kl_top_k"] = json!(0), "engine.kl_top_k"),
        ("run.json", |v| v["calibration_hash"] = json!("x"), "calibration_hash"),
        ("calibration.json", |v| v["samples"] = json!([[1, 2], []]), "samples[1]: no tokens"),
        ("calibration.json", |v| v["samples"] = json!([]), "samples: no samples"),
        ("calibration.json", |v| v["samples"] = json!([[1, 2, 3], [4, 6]]), "hash: does not match"),
        ("checkpoint.json", |v| v["state"]["population"] = json!([]), "state.population: 0"),
        ("checkpoint.json", |v| v["state"]["population"][0]["eval"]["objectives"] = json!([]), "population[0].eval.objectives"),
        ("checkpoint.json", |v| v["state"]["population"][1]["x"] = json!([1.0]), "population[1].x"),
        ("checkpoint.json", |v| v["state"]["population"][1]["x"][0] = json!(1e9), "population[1].x[0]"),
        ("front.json", |v| v[0]["psi"] = json!([0, 1]), "[0].psi"),
        ("front.json", |v| v[0]["canonical"][0]["ce"] = json!(1u64 << 40), "[0].canonical[0]"),
        ("front.json", |v| v[0]["remaining_layers"] = json!(1), "[0].remaining_layers"),
        ("baselines.json", |v| v[0]["plan"]["num_layers"] = json!(1u64 << 31), "[0].plan.num_layers"),
        ("baselines.json", |v| v[0]["plan"]["canonical"][0]["cb"] = json!(5), "[0].plan.canonical[0]"),
        ("baselines.json", |v| v[0]["result"]["psi"] = json!([0, 1, 2, 3, 4, 5]), "[0].result.psi"),
    ];
    for (file, change, want) in cases {
        let (_tmp, dir) = run_folder();
        edit(&dir.join(file), change);
        let e = open_error(&dir);
        assert!(e.contains(file) && e.contains(want), "{file}, {want}: {e}");
    }
}

#[test]
fn a_corrupt_log_line_is_refused_and_a_torn_last_line_dropped() {
    let (_tmp, dir) = run_folder();
    let log = dir.join("evaluations.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // a torn last line: dropped, the rest kept
    std::fs::write(&log, format!("{}\n{}", lines[0], &lines[1][..lines[1].len() / 2])).unwrap();
    assert_eq!(RunStore::open(&dir).unwrap().3.len(), 1);
    // a broken line followed by more: the log is corrupt, nothing is cut
    std::fs::write(&log, format!("{}\n{{\"index\": 1,\n{}\n", lines[0], lines[1])).unwrap();
    let e = RunStore::open(&dir).err().unwrap().to_string();
    assert!(e.contains("evaluations.jsonl") && e.contains("line 2"), "{e}");
    assert!(std::fs::read_to_string(&log).unwrap().ends_with(&format!("{}\n", lines[1])));
    // a line whose plan does not fit the model
    let mut bad: Value = serde_json::from_str(lines[1]).unwrap();
    bad["result"]["psi"] = json!([0]);
    std::fs::write(&log, format!("{}\n{}\n", lines[0], bad)).unwrap();
    let e = RunStore::open(&dir).err().unwrap().to_string();
    assert!(e.contains("line 2: result.psi"), "{e}");
}
