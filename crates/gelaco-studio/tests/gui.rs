//! The window, driven through egui_kittest with a tiny model: open it, start a search, see
//! points and the front appear, select a solution, stop; a failing worker shows an error
//! and the window stays usable.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Tiny;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use gelaco::backend::{DeviceChoice, Precision};
use gelaco_studio::app::CalibKind;
use gelaco_studio::{App, Launch, Settings};

fn settings(dir: &Path, calib: &Path) -> Settings {
    Settings {
        calib_kind: CalibKind::File,
        calib_file: calib.display().to_string(),
        samples: 4,
        max_tokens: 40,
        population: 8,
        evaluations: 48,
        baselines: false,
        runs_dir: dir.join("runs").display().to_string(),
        device: DeviceChoice::Cpu,
        ..Settings::default()
    }
}

fn harness(app: App) -> Harness<'static, App> {
    Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .build_ui_state(|ui, app: &mut App| app.frame(ui), app)
}

/// Step frames until `done` holds, for at most `secs` seconds.
fn step_until(h: &mut Harness<'_, App>, what: &str, secs: u64, done: impl Fn(&App) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}; log: {:?}", h.state().log);
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
}

fn fixture() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    Tiny { layers: 6, ..Tiny::default() }.write_gguf(&model);
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, "the answer to the question is there and then the end of it all\n".repeat(6)).unwrap();
    (dir, model, calib)
}

#[test]
fn open_run_see_the_front_select_and_stop() {
    let (dir, model, calib) = fixture();
    let launch = Launch { model: Some(model.clone()), ephemeral: true, out: Some(dir.path().join("run")), ..Launch::default() };
    let app = App::new(&egui::Context::default(), Some(settings(dir.path(), &calib)), launch);
    let mut h = harness(app);
    step_until(&mut h, "the model card", 60, |a| matches!(a.card, Some(Ok(_))));
    h.get_by_label("architecture");
    h.get_by_label("llama");

    h.get_by_label("▶ Run").click();
    step_until(&mut h, "evaluated points", 120, |a| !a.run.points.is_empty());
    step_until(&mut h, "a front", 120, |a| !a.run.front.is_empty() && a.run.progress.is_some());
    assert!(h.state().running() || h.state().run.front.len() > 0);
    h.get_by_label_contains("evaluations");

    // stop it, then pick a front solution from the inspector's list
    if h.state().running() {
        h.get_by_label("⏹ Stop").click();
    }
    step_until(&mut h, "the search to end", 120, |a| !a.running());
    assert!(h.state().log.iter().any(|l| l.text.contains("search ended")), "{:?}", h.state().log);
    h.get_by_label_contains("#0:").click();
    step_until(&mut h, "a selection", 10, |a| a.selected.is_some());
    // the default objective's view of the solution, and where it lies
    h.get_by_label("Next-token distributions");
    h.get_by_label_contains("removed (original layers)");
    h.get_by_label("Save recipe").click();
    h.step();
    h.step();
    let recipes = dir.path().join("run/recipes");
    assert_eq!(std::fs::read_dir(&recipes).unwrap().count(), 1, "{:?}", h.state().log);

    // the selection goes to the comparison table
    h.get_by_label("Add to compare").click();
    step_until(&mut h, "the comparison entry", 10, |a| a.lab.compare.len() == 1);
    h.get_by_label("Compare (1)").click();
    h.step();
    h.get_by_label("Generate with all");
}

#[test]
fn a_failing_worker_shows_an_error_and_the_window_stays_usable() {
    let (dir, model, calib) = fixture();
    // a model file that is not a model: the card shows the error
    let bad = dir.path().join("broken.gguf");
    std::fs::write(&bad, "not a model").unwrap();
    let launch = Launch { model: Some(bad), ephemeral: true, ..Launch::default() };
    let app = App::new(&egui::Context::default(), Some(settings(dir.path(), &calib)), launch);
    let mut h = harness(app);
    step_until(&mut h, "the error", 30, |a| matches!(a.card, Some(Err(_))));
    assert!(h.state().banner.as_ref().is_some_and(|(err, t)| *err && t.contains("broken.gguf")));
    assert!(h.get_all_by_label_contains("not a GGUF file").count() >= 2, "shown in the card and the log");

    // a search whose calibration file is missing fails in its worker and says so
    h.state_mut().apply(gelaco_studio::app::Action::OpenModel(model));
    step_until(&mut h, "the good model", 60, |a| matches!(a.card, Some(Ok(_))));
    h.state_mut().settings.calib_file = dir.path().join("missing.txt").display().to_string();
    h.get_by_label("▶ Run").click();
    step_until(&mut h, "the failure", 60, |a| a.banner.as_ref().is_some_and(|(e, t)| *e && t.contains("missing.txt")));
    step_until(&mut h, "the worker to end", 30, |a| !a.running());

    // and the window still runs a search once the input is fixed
    h.state_mut().settings.calib_file = calib.display().to_string();
    h.get_by_label("▶ Run").click();
    step_until(&mut h, "points of the second search", 120, |a| !a.run.points.is_empty());
    h.get_by_label("⏹ Stop").click();
    step_until(&mut h, "the second search to end", 120, |a| !a.running());
    assert_eq!(h.state().searches_started, 2);
}

#[test]
fn a_search_through_nats_lists_its_workers_and_an_address_is_asked_for() {
    let (dir, model, calib) = fixture();
    let launch = Launch { model: Some(model), ephemeral: true, out: Some(dir.path().join("farmed")), ..Launch::default() };
    let app = App::new(&egui::Context::default(), Some(settings(dir.path(), &calib)), launch);
    let mut h = harness(app);
    step_until(&mut h, "the model card", 60, |a| matches!(a.card, Some(Ok(_))));
    // NATS chosen without an address: the window says what is missing
    h.get_by_label("this machine");
    h.get_by_label("NATS");
    h.state_mut().settings.use_nats = true;
    h.step();
    h.get_by_label("▶ Run").click();
    step_until(&mut h, "the error", 10, |a| a.banner.as_ref().is_some_and(|(e, t)| *e && t.contains("NATS server's address")));
    assert!(!h.state().running());

    let Some(broker) = common::broker() else { return };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        let options = gelaco::dist::worker::WorkerOptions {
            nats: gelaco::dist::NatsSettings::new(broker.url.clone()),
            device: DeviceChoice::Cpu,
            memory_budget: None,
            name: Some("helper".into()),
            models: Vec::new(),
        };
        std::thread::spawn(move || gelaco::dist::worker::run(&options, &stop, &mut |_| {}))
    };
    h.state_mut().settings.nats_url = broker.url.clone();
    h.get_by_label("▶ Run").click();
    step_until(&mut h, "the worker listed", 120, |a| a.run.workers.iter().any(|w| w.name == "helper"));
    h.get_by_label_contains("helper on ");
    step_until(&mut h, "evaluated points", 120, |a| !a.run.points.is_empty());
    if h.state().running() {
        h.get_by_label("⏹ Stop").click();
    }
    step_until(&mut h, "the search to end", 120, |a| !a.running());
    assert!(h.state().log.iter().any(|l| l.text.contains("through NATS")), "{:?}", h.state().log);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    worker.join().unwrap().unwrap();
}

#[test]
fn a_memory_budget_set_in_the_window_reaches_the_model_card_and_the_search() {
    let (dir, model, calib) = fixture();
    let launch = Launch { model: Some(model.clone()), ephemeral: true, out: Some(dir.path().join("budgeted")), ..Launch::default() };
    let app = App::new(&egui::Context::default(), Some(settings(dir.path(), &calib)), launch);
    let mut h = harness(app);
    step_until(&mut h, "the model card", 60, |a| matches!(a.card, Some(Ok(_))));
    h.get_by_label("Memory budget");
    assert!(h.state().card.as_ref().is_some_and(|c| c.as_ref().is_ok_and(|c| c.budget.as_ref().is_none_or(|b| b.contains("available memory")))));

    // not a size: marked beside the field, and a search is refused with the reason
    h.state_mut().settings.memory_budget = "lots".into();
    h.step();
    h.get_by_label("not a size");
    h.get_by_label("▶ Run").click();
    step_until(&mut h, "the refusal", 10, |a| a.banner.as_ref().is_some_and(|(e, t)| *e && t.contains("'lots' is not a size")));
    assert!(!h.state().running());

    // a budget: the model card says what it means for this model
    h.state_mut().settings.memory_budget = "8G".into();
    h.state_mut().apply(gelaco_studio::app::Action::OpenModel(model.clone()));
    step_until(&mut h, "the card under 8G", 60, |a| {
        a.card.as_ref().is_some_and(|c| c.as_ref().is_ok_and(|c| c.budget.as_ref().is_some_and(|b| b.starts_with("8.00 GiB (the memory budget)"))))
    });
    h.get_by_label_contains("every layer's weights stay dequantised");

    // too small for the model: the card says so, and the search fails naming the budget
    h.state_mut().settings.memory_budget = "1K".into();
    h.state_mut().apply(gelaco_studio::app::Action::OpenModel(model));
    step_until(&mut h, "the card under 1K", 60, |a| {
        a.card.as_ref().is_some_and(|c| c.as_ref().is_ok_and(|c| c.budget.as_ref().is_some_and(|b| b.contains("too small to run it"))))
    });
    h.get_by_label("▶ Run").click();
    step_until(&mut h, "the failure", 60, |a| a.banner.as_ref().is_some_and(|(e, t)| *e && t.contains("The memory budget") && t.contains("too small")));
    step_until(&mut h, "the worker to end", 30, |a| !a.running());
}

#[test]
fn f16_precision_is_offered_only_where_the_device_has_it() {
    let (dir, model, calib) = fixture();
    let launch = Launch { model: Some(model), ephemeral: true, out: Some(dir.path().join("f16")), ..Launch::default() };
    let app = App::new(&egui::Context::default(), Some(settings(dir.path(), &calib)), launch);
    let mut h = harness(app);
    step_until(&mut h, "the model card", 60, |a| matches!(a.card, Some(Ok(_))));
    h.get_by_label("Precision");
    assert_eq!(h.state().settings.precision, Precision::F32);
    // the CPU backend computes in f32 only: f16 is shown but cannot be chosen
    assert!(!h.state().settings.device_has_f16());
    // a setting kept from another device: marked, and a search is refused with the reason
    h.state_mut().settings.precision = Precision::F16;
    h.step();
    h.get_by_label("the device has no f16");
    h.get_by_label("▶ Run").click();
    step_until(&mut h, "the refusal", 60, |a| a.banner.as_ref().is_some_and(|(e, t)| *e && t.contains("needs a WGPU adapter whose shaders compute in f16")));
    step_until(&mut h, "the worker to end", 30, |a| !a.running());
}
