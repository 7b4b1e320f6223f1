//! The left side panel: the model card, the run settings and the run controls.

use super::*;

pub(super) fn model_card(app: &mut App, ui: &mut Ui) {
    ui.heading("Model");
    ui.horizontal(|ui| {
        let edit = ui.add(egui::TextEdit::singleline(&mut app.settings.model).hint_text("a .gguf file or a Hugging Face folder").desired_width(170.0));
        if edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
            app.actions.push(Action::OpenModel(app.settings.model.trim().into()));
        }
        if ui.button("Open").on_hover_text("Load the model at this path").clicked() {
            app.actions.push(Action::OpenModel(app.settings.model.trim().into()));
        }
        if ui.button("Browse…").on_hover_text("Choose a GGUF file").clicked() {
            app.actions.push(Action::BrowseModel);
        }
    });
    if !app.settings.recent_models.is_empty() {
        egui::ComboBox::from_label("recent").selected_text("Recent models…").width(230.0).show_ui(ui, |ui| {
            for p in app.settings.recent_models.clone() {
                if ui.selectable_label(false, p.display().to_string()).clicked() {
                    app.actions.push(Action::OpenModel(p));
                }
            }
        });
    }
    match &app.card {
        None if app.lab.busy.as_deref().is_some_and(|b| b.starts_with("opening")) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("reading the model…");
            });
        }
        None => {
            ui.label(RichText::new("No model open.").weak());
        }
        Some(Err(e)) => {
            ui.label(RichText::new(e).color(BAD));
        }
        Some(Ok(c)) => {
            egui::Grid::new("card").num_columns(2).spacing([12.0, 3.0]).show(ui, |ui| {
                let row = |ui: &mut Ui, k: &str, v: String| {
                    ui.label(RichText::new(k).weak());
                    ui.label(v);
                    ui.end_row();
                };
                row(ui, "architecture", c.architecture.clone());
                row(ui, "layers", c.layers.to_string());
                row(ui, "parameters", format!("{:.1} M", c.parameters as f64 / 1e6));
                row(ui, "storage", c.storage.clone());
                row(ui, "tensor types", c.types.clone());
                row(ui, "file size", format!("{:.1} MB", c.file_bytes as f64 / 1e6));
                row(ui, "compute", c.device.clone());
                row(ui, "memory", c.memory.clone());
                if let Some(b) = &c.budget {
                    row(ui, "budget", b.clone());
                }
            });
        }
    }
}

pub(super) fn run_settings(app: &mut App, ui: &mut Ui) {
    let running = app.running();
    ui.heading("Run settings");
    let layers = match &app.card {
        Some(Ok(c)) => c.layers,
        _ => 32,
    };
    let s = &mut app.settings;
    ui.add_enabled_ui(!running, |ui| {
        egui::Grid::new("settings").num_columns(2).spacing([10.0, 5.0]).show(ui, |ui| {
            ui.label("Mode");
            ui.horizontal(|ui| {
                tip(ui.radio_value(&mut s.pareto, true, "Pareto front"), "NSGA-II: the best model at every size at once");
                tip(ui.radio_value(&mut s.pareto, false, "One size"), "A single-objective GA for one target size");
            });
            ui.end_row();
            if !s.pareto {
                ui.label("Layers removed");
                tip(ui.add(egui::Slider::new(&mut s.target_removed, 1..=layers.saturating_sub(1).max(1))), "How many layers the model should lose");
                ui.end_row();
            }
            ui.label("Population");
            tip(ui.add(egui::DragValue::new(&mut s.population).range(4..=2000)), "Solutions per generation");
            ui.end_row();
            ui.label("Evaluations");
            tip(ui.add(egui::DragValue::new(&mut s.evaluations).range(10..=1_000_000).speed(10.0)), "Budget: compressed models scored before the search stops");
            ui.end_row();
            ui.label("Seed");
            tip(ui.add(egui::DragValue::new(&mut s.seed)), "The same seed gives the same run");
            ui.end_row();
            let l = ui.label("Initialisation");
            egui::ComboBox::from_id_salt("init").selected_text(format!("{:?}", s.init).to_lowercase()).show_ui(ui, |ui| {
                tip(ui.selectable_value(&mut s.init, Init::Seeded, "seeded"), "Start from ShortGPT's plans and the closest contiguous blocks of layers (angular distance) at every size of the band (one forward pass; validated at the end beside the fittest of their size), their neighbours (one removed layer moved) and plans that remove 5-50% of the layers (recommended)");
                tip(ui.selectable_value(&mut s.init, Init::Banded, "banded"), "Start from plans that remove 5-50% of the layers");
                tip(ui.selectable_value(&mut s.init, Init::Paper, "paper"), "Uniform random genotypes, as the paper (removes most layers)");
                tip(ui.selectable_value(&mut s.init, Init::Warm, "warm"), "Start from the LaCo and ShortGPT solutions");
            })
            .response
            .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Merge operator");
            let name = s.merge_op.map(|o| o.name()).unwrap_or("auto");
            egui::ComboBox::from_id_salt("merge-op").selected_text(name).show_ui(ui, |ui| {
                for op in MergeOp::ALL {
                    tip(ui.selectable_value(&mut s.merge_op, Some(op), op.name()), match op {
                        MergeOp::KeepFirst => "Keep the first layer of a merged run (default, measured best)",
                        MergeOp::KeepLast => "Keep the last layer's weights",
                        MergeOp::Mean => "Average the layers' weights",
                        MergeOp::Rdsc => "LaCo's operator: first + sum of differences (the paper's)",
                    });
                }
                tip(ui.selectable_value(&mut s.merge_op, None, "auto"), "The search picks an operator per merge");
            })
            .response
            .labelled_by(l.id);
            ui.end_row();
            ui.label("Calibration");
            ui.horizontal(|ui| {
                tip(ui.radio_value(&mut s.calib_kind, CalibKind::File, "file"), "Text lines from a .txt, .jsonl or .parquet file");
                tip(ui.radio_value(&mut s.calib_kind, CalibKind::SelfGenerated, "self-generated"), "Text the model writes itself (no data needed)");
            });
            ui.end_row();
            if s.calib_kind == CalibKind::File {
                ui.label("");
                ui.horizontal(|ui| {
                    ui.add(egui::TextEdit::singleline(&mut s.calib_file).desired_width(150.0).hint_text("calibration file"));
                    if ui.button("Browse…").clicked() {
                        app.actions.push(Action::BrowseCalib);
                    }
                });
                ui.end_row();
            }
            let l = ui.label("Objective");
            egui::ComboBox::from_id_salt("objective").selected_text(s.objective.name()).show_ui(ui, |ui| {
                for o in Objective::VALUES {
                    tip(ui.selectable_value(&mut s.objective, *o, o.name()), o.help());
                }
            })
            .response
            .on_hover_text("What the search's fitness measures; kl (the default) ranks plans by held-out perplexity best")
            .labelled_by(l.id);
            ui.end_row();
            ui.label("Healing");
            ui.horizontal(|ui| {
                let mut healing = s.heal == Heal::Linear;
                let changed = tip(
                    ui.checkbox(&mut healing, "every candidate"),
                    "Heal every plan the search scores: fit on the calibration activations a least-squares map that restores each collapsed group's output, folded into its down projection (same architecture, exports unchanged). Fitted and scored on the same tokens, it flatters healed plans",
                )
                .changed();
                if changed {
                    s.heal = if healing { Heal::Linear } else { Heal::None };
                }
                tip(
                    ui.add_enabled(s.validation && !healing, egui::Checkbox::new(&mut s.heal_picks, "the picks")),
                    format!(
                        "Heal the best {} plans of each size (by validation perplexity) on {} calibration samples apart from the validation's (each screened on {} of them first, the best of each size fitted on all), validate them again, and recommend the healed model where it validates better",
                        gelaco::run::heal_picks::DEFAULT_PER_SIZE,
                        gelaco::run::heal_picks::DEFAULT_SAMPLES,
                        gelaco::run::heal_picks::DEFAULT_SCREEN_SAMPLES
                    )
                    .as_str(),
                );
            });
            ui.end_row();
            let l = ui.label("Fidelity");
            tip(
                ui.add(egui::TextEdit::singleline(&mut s.fidelity).desired_width(120.0)),
                "Multi-fidelity selection TOKENS:KEEP,...,full:1: offspring are scored on a few tokens first and only the best share on all of them; full:1 scores every offspring fully",
            )
            .labelled_by(l.id);
            ui.end_row();
            ui.label("Validation");
            tip(
                ui.checkbox(&mut s.validation, "held-out lines"),
                "The calibration file's lines the calibration did not take, never seen by the search: every front solution gets its perplexity on them, and the lowest of each size is recommended",
            );
            ui.end_row();
            ui.label("Samples × tokens");
            ui.horizontal(|ui| {
                tip(ui.add(egui::DragValue::new(&mut s.samples).range(1..=4096)), "Calibration samples");
                ui.label("×");
                tip(ui.add(egui::DragValue::new(&mut s.max_tokens).range(8..=4096)), "Tokens per sample");
            });
            ui.end_row();
            let l = ui.label("Device");
            egui::ComboBox::from_id_salt("device").selected_text(s.device.to_string()).show_ui(ui, |ui| {
                tip(ui.selectable_value(&mut s.device, DeviceChoice::Auto, "auto"), "A real GPU when present, else the CPU");
                tip(ui.selectable_value(&mut s.device, DeviceChoice::Gpu, "gpu"), "The best WGPU adapter (Vulkan, Metal, DX12), software ones included");
                tip(ui.selectable_value(&mut s.device, DeviceChoice::Cpu, "cpu"), "The CPU backend");
                // one entry per adapter, as `gelaco devices` numbers them
                for (i, a) in gelaco::backend::known_adapters().unwrap_or_default().iter().enumerate() {
                    let choice = DeviceChoice::Adapter(i as u16);
                    tip(ui.selectable_value(&mut s.device, choice, format!("{choice}  {}", a.name)), &a.describe());
                }
            })
            .response
            .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Memory budget");
            ui.horizontal(|ui| {
                let field = tip(
                    ui.add(egui::TextEdit::singleline(&mut s.memory_budget).hint_text("default").desired_width(70.0)),
                    "The memory the model may use (4G, 512M, 16GiB): its layers' weights stay as the file stores them, as many are kept dequantised as fit, the others are dequantised from the file each time they are used, and the cached activations of the original model share the budget. Empty: what the machine reports available (on a discrete GPU, its own memory where that is less), less a quarter",
                )
                .labelled_by(l.id);
                match s.memory_budget() {
                    Err(e) => {
                        ui.label(RichText::new("not a size").color(BAD)).on_hover_text(e);
                    }
                    Ok(_) if field.lost_focus() && !s.model.trim().is_empty() => {
                        // the model card shows what the new budget means for the model
                        app.actions.push(Action::OpenModel(s.model.trim().into()));
                    }
                    Ok(_) => {}
                }
            });
            ui.end_row();
            let l = ui.label("Precision");
            let has_f16 = s.device_has_f16();
            ui.horizontal(|ui| {
                tip(ui.radio_value(&mut s.precision, Precision::F32, "f32"), "Every matrix product in f32").labelled_by(l.id);
                let f16 = ui.add_enabled(has_f16, egui::RadioButton::new(s.precision == Precision::F16, "f16"));
                if f16.clicked() {
                    s.precision = Precision::F16;
                }
                let why = if has_f16 {
                    "Matrix products with f16 operands (every projection, attention), as PyTorch's autocast does; norms, softmax, the residual stream and the fitness stay f32"
                } else {
                    "f16 needs a WGPU adapter whose shaders compute in f16: the chosen device has none (the CPU backend computes in f32)"
                };
                f16.on_hover_text(why).on_disabled_hover_text(why);
                if s.precision == Precision::F16 && !has_f16 {
                    ui.label(RichText::new("the device has no f16").color(BAD));
                }
            });
            ui.end_row();
            ui.label("Workers");
            ui.vertical(|ui| {
                ui.horizontal(|ui| {
                    tip(ui.radio_value(&mut s.use_nats, false, "this machine"), "Every evaluation on this machine's device");
                    tip(
                        ui.radio_value(&mut s.use_nats, true, "NATS"),
                        "Farm evaluations out through a NATS JetStream server to `gelaco worker` processes on other devices and machines (this machine evaluates too); the same seed gives the same front as here",
                    );
                });
                if s.use_nats {
                    let secret = s.nats_url.contains('@');
                    tip(
                        ui.add(egui::TextEdit::singleline(&mut s.nats_url).desired_width(180.0).hint_text("nats://host:4222").password(secret)),
                        "The server's address: nats://[user:password@|token@]host:port or tls://…; not kept between launches",
                    );
                }
            });
            ui.end_row();
            ui.label("Baselines");
            tip(ui.checkbox(&mut s.baselines, "LaCo and ShortGPT"), "Compute the two baselines first and show them on the plot");
            ui.end_row();
            ui.label("Import");
            ui.vertical(|ui| {
                let mut drop = None;
                for (i, p) in s.imports.iter().enumerate() {
                    ui.horizontal(|ui| {
                        if ui.small_button("✕").on_hover_text("Do not import this recipe").clicked() {
                            drop = Some(i);
                        }
                        ui.label(p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())).on_hover_text(p.display().to_string());
                    });
                }
                if let Some(i) = drop {
                    s.imports.remove(i);
                }
                if ui.button("Add recipes…").on_hover_text(
                    "Recipes of this model (gelaco baseline sleb|evopress --recipes DIR writes them) to score and show as baselines; a warm or seeded search starts from them",
                ).clicked() {
                    app.actions.push(Action::BrowseImport);
                }
            });
            ui.end_row();
            let l = ui.label("Runs folder");
            tip(ui.add(egui::TextEdit::singleline(&mut s.runs_dir).desired_width(190.0)), "New run folders are made here").labelled_by(l.id);
            ui.end_row();
        });
    });
}

pub(super) fn run_controls(app: &mut App, ui: &mut Ui) {
    ui.heading("Run");
    let running = app.running();
    ui.horizontal(|ui| {
        let can_run = !running && matches!(app.card, Some(Ok(_)));
        if ui.add_enabled(can_run, egui::Button::new(RichText::new("▶ Run").strong()).min_size(vec2(70.0, 26.0))).on_hover_text("Start a search with these settings").clicked() {
            app.actions.push(Action::StartRun);
        }
        if running && !app.run.paused && ui.add(egui::Button::new("⏸ Pause").min_size(vec2(70.0, 26.0))).clicked() {
            app.actions.push(Action::Pause);
        }
        if running && app.run.paused && ui.add(egui::Button::new("▶ Resume").min_size(vec2(70.0, 26.0))).clicked() {
            app.actions.push(Action::Resume);
        }
        if ui.add_enabled(running, egui::Button::new("⏹ Stop").min_size(vec2(70.0, 26.0))).on_hover_text("Stop after the current evaluation; everything so far is kept").clicked() {
            app.actions.push(Action::Stop);
        }
    });
    if let Some(stage) = &app.run.stage {
        ui.horizontal(|ui| {
            if running {
                ui.spinner();
            }
            ui.label(stage.clone());
        });
    }
    if let Some(p) = &app.run.progress {
        let f = if p.budget > 0 { p.evaluations as f32 / p.budget as f32 } else { 0.0 };
        ui.add(egui::ProgressBar::new(f.min(1.0)).text(format!("{} / {} evaluations", p.evaluations, p.budget)));
        let eta = p.eta_seconds.map(|s| format!("{:.0}:{:02.0}", (s / 60.0).floor(), s % 60.0)).unwrap_or_else(|| "–".into());
        ui.label(format!(
            "generation {}  ·  {:.2} eval/s  ·  {} cache hits  ·  ETA {eta}{}",
            p.generation,
            p.rate,
            p.cache_hits,
            if p.paused { "  ·  paused" } else { "" }
        ));
        ui.label(format!("front {} solutions  ·  best fitness {:.4}  ·  hypervolume {:.4}", p.front_size, p.best_fitness, p.hypervolume));
    }
    if running && app.settings.use_nats || !app.run.workers.is_empty() {
        ui.label(RichText::new(format!("Workers ({})", app.run.workers.len())).strong());
        if app.run.workers.is_empty() {
            ui.label("none connected yet: start `gelaco worker --nats URL` on the machines that evaluate");
        }
        for w in &app.run.workers {
            let refused = if w.refused.is_empty() { String::new() } else { format!("  ·  refused {}", w.refused.join("; ")) };
            ui.label(format!("{} on {}: {}  ·  {} evaluations  ·  {:.2} eval/s{refused}", w.name, w.device, w.state, w.evaluations, w.rate));
        }
    }
    ui.add_space(6.0);
    ui.collapsing("Resume or open a run folder", |ui| {
        ui.horizontal(|ui| {
            ui.add(egui::TextEdit::singleline(&mut app.resume_path).desired_width(180.0).hint_text("run folder"));
            if ui.button("Browse…").clicked() {
                app.actions.push(Action::BrowseRun);
            }
        });
        ui.horizontal(|ui| {
            let p = std::path::PathBuf::from(app.resume_path.trim());
            let ok = !app.resume_path.trim().is_empty();
            if ui.add_enabled(ok && !running, egui::Button::new("Resume")).on_hover_text("Continue a stopped or crashed search").clicked() {
                app.actions.push(Action::ResumeRun(p.clone()));
            }
            if ui.add_enabled(ok && !running, egui::Button::new("Show")).on_hover_text("Show its front without running it").clicked() {
                app.actions.push(Action::LoadRun(p));
            }
        });
        for r in app.settings.recent_runs.clone() {
            if ui.small_button(r.display().to_string()).clicked() {
                app.resume_path = r.display().to_string();
            }
        }
    });
}
