//! Drawing: panels, the Pareto plot, the solution inspector and the comparison. Drawing
//! never changes the run; it pushes [`Action`]s that the app applies after the frame.

use egui::{Align, Color32, Layout, RichText, Sense, Stroke, Ui, vec2};
use egui_plot::{Legend, Line, MarkerShape, Plot, PlotPoint, PlotPoints, Points};

use super::app::{Action, App, CalibKind, Solution, Tab};
use gelaco::export::ExportFormat;
use gelaco::backend::DeviceChoice;
use gelaco::collapse::MergeOp;
use gelaco::search::Init;
use gelaco::fitness::{FitnessResult, Heal, Objective};
use gelaco::search::baselines::BaselineMethod;
use gelaco::util::Choice;

const ACCENT: Color32 = Color32::from_rgb(0x3d, 0xa5, 0xd9);
const FRONT: Color32 = Color32::from_rgb(0xf2, 0x8c, 0x28);
const GOOD: Color32 = Color32::from_rgb(0x4c, 0xaf, 0x50);
const BAD: Color32 = Color32::from_rgb(0xe5, 0x48, 0x4d);

/// Colour of generation `g` of `n`: from blue (early) to green-yellow (late).
fn generation_color(g: usize, n: usize) -> Color32 {
    let t = if n <= 1 { 1.0 } else { g as f32 / (n - 1) as f32 };
    let lerp = |a: f32, b: f32| (a + (b - a) * t) as u8;
    Color32::from_rgb(lerp(70.0, 190.0), lerp(110.0, 220.0), lerp(200.0, 80.0))
}

fn group_colors(n: usize) -> Vec<Color32> {
    let palette = [
        Color32::from_rgb(0xe4, 0x57, 0x2e),
        Color32::from_rgb(0x17, 0xbe, 0xbb),
        Color32::from_rgb(0xff, 0xc9, 0x14),
        Color32::from_rgb(0x76, 0xb0, 0x41),
        Color32::from_rgb(0x9b, 0x5d, 0xe5),
        Color32::from_rgb(0xf1, 0x5b, 0xb5),
    ];
    (0..n).map(|i| palette[i % palette.len()]).collect()
}

pub fn draw(app: &mut App, ui: &mut Ui) {
    egui::Panel::top("toolbar").show(ui, |ui| toolbar(app, ui));
    egui::Panel::bottom("log").resizable(true).default_size(120.0).min_size(60.0).show(ui, |ui| log_panel(app, ui));
    egui::Panel::left("setup").resizable(true).default_size(320.0).min_size(260.0).max_size(420.0).show(ui, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| {
            model_card(app, ui);
            ui.separator();
            // the controls above the settings: Run stays in view however many settings there are
            run_controls(app, ui);
            ui.separator();
            run_settings(app, ui);
        });
    });
    egui::Panel::right("inspector").resizable(true).default_size(380.0).min_size(300.0).max_size(440.0).show(ui, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| inspector(app, ui));
    });
    egui::CentralPanel::default().show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.selectable_value(&mut app.tab, Tab::Front, RichText::new("Pareto front").size(15.0));
            ui.selectable_value(&mut app.tab, Tab::Compare, RichText::new(format!("Compare ({})", app.compare.len())).size(15.0));
        });
        ui.separator();
        match app.tab {
            Tab::Front => front_view(app, ui),
            Tab::Compare => compare_view(app, ui),
        }
    });
}

fn toolbar(app: &mut App, ui: &mut Ui) {
    ui.horizontal(|ui| {
        ui.label(RichText::new("GeLaCo Studio").strong().size(17.0).color(ACCENT));
        ui.label(RichText::new("layer collapse for language models").weak());
        ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
            let label = if app.settings.dark { "☀ Light" } else { "🌙 Dark" };
            if ui.button(label).on_hover_text("Switch between the light and dark theme").clicked() {
                app.settings.dark = !app.settings.dark;
                ui.ctx().set_theme(if app.settings.dark { egui::Theme::Dark } else { egui::Theme::Light });
            }
            if let Some((done, total, what)) = app.task_progress.clone() {
                if ui.button("Cancel").on_hover_text("Stop the running measurement").clicked() {
                    app.actions.push(Action::Cancel);
                }
                let f = if total > 0 { done as f32 / total as f32 } else { 0.0 };
                ui.add(egui::ProgressBar::new(f).desired_width(160.0).text(format!("{done}/{total}")));
                ui.label(what);
            } else if let Some(b) = &app.busy {
                ui.spinner();
                ui.label(b.clone());
            }
        });
    });
    if let Some((error, text)) = app.banner.clone() {
        let color = if error { BAD } else { GOOD };
        egui::Frame::new().fill(color.gamma_multiply(0.18)).inner_margin(6.0).corner_radius(4.0).show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.label(RichText::new(if error { "⚠" } else { "✔" }).color(color));
                ui.label(text);
                ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
                    if ui.small_button("✖").on_hover_text("Dismiss").clicked() {
                        app.banner = None;
                    }
                });
            });
        });
    }
}

fn log_panel(app: &mut App, ui: &mut Ui) {
    ui.horizontal(|ui| {
        ui.label(RichText::new("Log").strong());
        if ui.small_button("Clear").clicked() {
            app.log.clear();
        }
    });
    egui::ScrollArea::vertical().stick_to_bottom(true).auto_shrink([false, false]).show(ui, |ui| {
        for l in &app.log {
            let text = RichText::new(format!("{:>7.1}s  {}", l.at, l.text)).monospace().size(12.0);
            ui.label(if l.error { text.color(BAD) } else { text });
        }
    });
}

fn model_card(app: &mut App, ui: &mut Ui) {
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
        None if app.busy.as_deref().is_some_and(|b| b.starts_with("opening")) => {
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
            });
        }
    }
}

fn tip(r: egui::Response, text: &str) -> egui::Response {
    r.on_hover_text(text)
}

fn run_settings(app: &mut App, ui: &mut Ui) {
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
                tip(ui.selectable_value(&mut s.init, Init::Seeded, "seeded"), "Start from ShortGPT's plans at sizes across the band (one forward pass), their neighbours (one removed layer moved) and plans that remove 5-50% of the layers (recommended)");
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
            let mut healing = s.heal == Heal::Linear;
            let changed = tip(
                ui.checkbox(&mut healing, "linear"),
                "Fit on the calibration activations a least-squares map that restores each collapsed group's output, folded into its down projection (same architecture, exports unchanged)",
            )
            .changed();
            if changed {
                s.heal = if healing { Heal::Linear } else { Heal::None };
            }
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
            egui::ComboBox::from_id_salt("device").selected_text(format!("{:?}", s.device).to_lowercase()).show_ui(ui, |ui| {
                tip(ui.selectable_value(&mut s.device, DeviceChoice::Auto, "auto"), "A real GPU when present, else the CPU");
                tip(ui.selectable_value(&mut s.device, DeviceChoice::Gpu, "gpu"), "Any WGPU adapter (Vulkan, Metal, DX12), software ones included");
                tip(ui.selectable_value(&mut s.device, DeviceChoice::Cpu, "cpu"), "The CPU backend");
            })
            .response
            .labelled_by(l.id);
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

fn run_controls(app: &mut App, ui: &mut Ui) {
    ui.heading("Run");
    let running = app.running();
    ui.horizontal(|ui| {
        let can_run = !running && matches!(app.card, Some(Ok(_)));
        if ui.add_enabled(can_run, egui::Button::new(RichText::new("▶ Run").strong()).min_size(vec2(70.0, 26.0))).on_hover_text("Start a search with these settings").clicked() {
            app.actions.push(Action::StartRun);
        }
        if running && !app.paused && ui.add(egui::Button::new("⏸ Pause").min_size(vec2(70.0, 26.0))).clicked() {
            app.actions.push(Action::Pause);
        }
        if running && app.paused && ui.add(egui::Button::new("▶ Resume").min_size(vec2(70.0, 26.0))).clicked() {
            app.actions.push(Action::Resume);
        }
        if ui.add_enabled(running, egui::Button::new("⏹ Stop").min_size(vec2(70.0, 26.0))).on_hover_text("Stop after the current evaluation; everything so far is kept").clicked() {
            app.actions.push(Action::Stop);
        }
    });
    if let Some(stage) = &app.stage {
        ui.horizontal(|ui| {
            if running {
                ui.spinner();
            }
            ui.label(stage.clone());
        });
    }
    if let Some(p) = &app.progress {
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

fn front_view(app: &mut App, ui: &mut Ui) {
    let generations = app.points.iter().map(|p| p.generation).max().map(|g| g + 1).unwrap_or(1);
    let hv_height = 120.0;
    let plot_height = (ui.available_height() - hv_height - 40.0).max(200.0);
    let layers = app.run_layers.max(1) as f64;
    let selected = app.selected.clone();
    let objective = app.front.first().map_or(app.settings.objective, |e| e.result.objective);
    ui.horizontal(|ui| {
        ui.label("y axis");
        tip(ui.selectable_value(&mut app.plot_validation, false, "fitness"), "The objective the search maximises");
        tip(
            ui.selectable_value(&mut app.plot_validation, true, "validation perplexity"),
            "Perplexity on held-out text the search never sees (log scale); it picks the recommended solution of each size",
        );
        ui.label(RichText::new("○ recommended").weak()).on_hover_text("Ringed: the lowest validation perplexity of its size");
    });
    let by_validation = app.plot_validation;
    let y_label = if by_validation {
        "validation perplexity (log10)".to_string()
    } else {
        match objective {
            Objective::Similarity => "fitness (module-wise similarity)".to_string(),
            Objective::Kl => "fitness exp(-KL) (next-token distributions)".to_string(),
            Objective::Nll => "fitness exp(-NLL) (calibration text)".to_string(),
        }
    };
    let response = Plot::new("pareto")
        .height(plot_height)
        .legend(Legend::default().position(egui_plot::Corner::LeftBottom))
        .x_axis_label("compression (share of layers removed)")
        .y_axis_label(y_label)
        .include_x(0.0)
        .include_y(if by_validation { 1.0 } else { 0.0 })
        .include_y(1.0)
        .label_formatter(|_| None)
        .show(ui, |plot| {
            // evaluated solutions, in up to 10 colour bands by generation (no validation: fitness view only)
            let bands = if by_validation { 0 } else { generations.min(10) };
            for b in 0..bands {
                let pts: Vec<[f64; 2]> = app
                    .points
                    .iter()
                    .filter(|p| p.generation * bands / generations == b)
                    .map(|p| [p.compression, p.fitness])
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                // one legend entry for all bands: blue early, yellow-green late
                plot.points(
                    Points::new("evaluated (blue: early, yellow: late)", PlotPoints::from(pts))
                        .id(("band", b))
                        .radius(2.5)
                        .color(generation_color(b, bands)),
                );
            }
            // the front as a step line, sorted by compression
            let mut f: Vec<[f64; 2]> = app
                .front
                .iter()
                .filter_map(|e| y_of(by_validation, &e.result, e.validation_perplexity).map(|y| [e.result.compression, y]))
                .collect();
            f.sort_by(|a, b| a[0].total_cmp(&b[0]));
            if !f.is_empty() {
                let mut steps = Vec::with_capacity(f.len() * 2);
                for (i, p) in f.iter().enumerate() {
                    if i > 0 {
                        steps.push([p[0], f[i - 1][1]]);
                    }
                    steps.push(*p);
                }
                plot.line(Line::new("Pareto front", PlotPoints::from(steps)).color(FRONT).width(2.0).allow_band(false));
                plot.points(Points::new("front solutions", PlotPoints::from(f)).radius(4.5).color(FRONT).filled(true));
            }
            for (method, shape, radius, color) in [
                (BaselineMethod::Laco, MarkerShape::Diamond, 7.0, Color32::from_rgb(0xd6, 0x3a, 0xf9)),
                (BaselineMethod::Shortgpt, MarkerShape::Square, 6.0, Color32::from_rgb(0xe5, 0x48, 0x4d)),
                (BaselineMethod::Sleb, MarkerShape::Up, 7.0, Color32::from_rgb(0x2b, 0x9a, 0x66)),
                (BaselineMethod::Evopress, MarkerShape::Cross, 7.0, Color32::from_rgb(0xf5, 0x9e, 0x0b)),
            ] {
                let points: Vec<[f64; 2]> = app
                    .baselines
                    .iter()
                    .filter(|b| b.kind() == Some(method))
                    .filter_map(|b| y_of(by_validation, &b.result, b.validation_perplexity).map(|y| [b.result.compression, y]))
                    .collect();
                if !points.is_empty() {
                    plot.points(Points::new(method.title(), PlotPoints::from(points)).shape(shape).radius(radius).color(color).filled(true));
                }
            }
            if by_validation {
                let c: Vec<[f64; 2]> = app
                    .candidates
                    .iter()
                    .filter_map(|e| y_of(true, &e.result, e.validation_perplexity).map(|y| [e.result.compression, y]))
                    .collect();
                if !c.is_empty() {
                    plot.points(Points::new("other candidates", PlotPoints::from(c)).radius(4.0).color(FRONT).filled(false));
                }
            }
            let recommended: Vec<[f64; 2]> = app
                .front
                .iter()
                .chain(&app.candidates)
                .filter(|e| e.recommended)
                .filter_map(|e| y_of(by_validation, &e.result, e.validation_perplexity).map(|y| [e.result.compression, y]))
                .chain(
                    app.baselines
                        .iter()
                        .filter(|b| b.recommended)
                        .filter_map(|b| y_of(by_validation, &b.result, b.validation_perplexity).map(|y| [b.result.compression, y])),
                )
                .collect();
            if !recommended.is_empty() {
                plot.points(Points::new("recommended", PlotPoints::from(recommended)).shape(MarkerShape::Circle).radius(8.0).filled(false).color(FRONT));
            }
            if let Some((s, y)) = selected.as_ref().and_then(|s| y_of(by_validation, &s.result, s.validation_perplexity).map(|y| (s, y))) {
                plot.points(
                    Points::new("selected", PlotPoints::from(vec![[s.result.compression, y]]))
                        .shape(MarkerShape::Circle)
                        .radius(9.0)
                        .filled(false)
                        .color(ui_text_color()),
                );
            }
        });
    // hover and click: the nearest solution within a few pixels (only it becomes a Solution)
    let nearest = response.response.hover_pos().and_then(|pos| {
        let mut best: Option<(f32, Pick)> = None;
        for (x, y, pick) in pickable(app, by_validation) {
            let d = response.transform.position_from_point(&PlotPoint::new(x, y)).distance(pos);
            if d < 10.0 && best.as_ref().is_none_or(|(b, _)| d < *b) {
                best = Some((d, pick));
            }
        }
        best.map(|(_, pick)| pick.solution(app))
    });
    if let Some(c) = &nearest {
        let r = &c.result;
        response.response.clone().on_hover_ui_at_pointer(|ui| {
            ui.label(RichText::new(&c.label).strong());
            ui.label(score_line(r));
            if let Some(v) = c.validation_perplexity {
                ui.label(format!("validation perplexity {v:.2}{}", if c.recommended { "  (recommended)" } else { "" }));
            }
            ui.label(format!("{} of {} layers ({:.1}% removed, {:.1}% of parameters)", r.remaining_layers, layers as usize, 100.0 * r.compression, 100.0 * r.params_removed));
            ui.label(format!("removed {}  ·  merges {}", c.plan().removed_text(), if c.merges.is_empty() { "none" } else { &c.merges }));
            ui.label(RichText::new("click to inspect").weak());
        });
        if response.response.clicked() {
            app.actions.push(Action::Select(c.clone()));
        }
    }
    ui.label(RichText::new("Hypervolume by generation").strong());
    Plot::new("hypervolume")
        .height(hv_height)
        .allow_zoom(false)
        .allow_drag(false)
        .allow_scroll(false)
        .x_axis_label("generation")
        .include_y(0.0)
        .show(ui, |plot| {
            if !app.hypervolume.is_empty() {
                plot.line(Line::new("hypervolume", PlotPoints::from(app.hypervolume.clone())).color(ACCENT).width(2.0).allow_band(false));
            }
        });
}

fn ui_text_color() -> Color32 {
    Color32::from_rgb(0xff, 0x40, 0x80)
}

/// Something on the plot a click can select.
#[derive(Clone, Copy)]
enum Pick {
    Front(usize),
    Candidate(usize),
    Baseline(usize),
    Point(usize),
}

impl Pick {
    fn solution(self, app: &App) -> Solution {
        match self {
            Pick::Front(i) => Solution::from_front(i, &app.front[i]),
            Pick::Candidate(i) => Solution::from_candidate(&app.candidates[i]),
            Pick::Baseline(i) => Solution::from_baseline(&app.baselines[i]),
            Pick::Point(i) => Solution::from_point(&app.points[i]),
        }
    }
}

/// Positions of everything a click can select: front first, then the other candidates (on
/// the validation axis), then baselines, then points.
fn pickable(app: &App, by_validation: bool) -> impl Iterator<Item = (f64, f64, Pick)> + '_ {
    let front = app
        .front
        .iter()
        .enumerate()
        .filter_map(move |(i, e)| y_of(by_validation, &e.result, e.validation_perplexity).map(|y| (e.result.compression, y, Pick::Front(i))));
    let candidates = app
        .candidates
        .iter()
        .enumerate()
        .filter(move |_| by_validation)
        .filter_map(|(i, e)| y_of(true, &e.result, e.validation_perplexity).map(|y| (e.result.compression, y, Pick::Candidate(i))));
    let baselines = app
        .baselines
        .iter()
        .enumerate()
        .filter_map(move |(i, b)| y_of(by_validation, &b.result, b.validation_perplexity).map(|y| (b.result.compression, y, Pick::Baseline(i))));
    let points = app.points.iter().enumerate().filter(move |_| !by_validation).map(|(i, p)| (p.compression, p.fitness, Pick::Point(i)));
    front.chain(candidates).chain(baselines).chain(points)
}

/// A solution's height on the plot: its fitness, or log10 of its validation perplexity.
fn y_of(by_validation: bool, r: &FitnessResult, validation: Option<f64>) -> Option<f64> {
    if by_validation { validation.filter(|v| *v > 0.0).map(f64::log10) } else { Some(r.fitness) }
}

/// What a solution's fitness is made of, in the words of its objective.
fn score_line(r: &FitnessResult) -> String {
    match r.objective {
        Objective::Similarity => format!("fitness {:.4}  (attention {:.3}, MLP {:.3}, hidden {:.3})", r.fitness, r.attention, r.ffn, r.hidden),
        Objective::Kl | Objective::Nll => {
            let kl = r.kl.map(|k| format!("KL {k:.4} nats/token  ")).unwrap_or_default();
            let nll = r.nll.map(|n| format!("calibration perplexity {:.2}", n.exp())).unwrap_or_default();
            format!("fitness {:.4}  ({kl}{nll})", r.fitness)
        }
    }
}

/// One cell per original layer; merged groups joined and coloured.
fn layer_map(ui: &mut Ui, s: &Solution) {
    let plan = s.plan();
    let groups = plan.groups();
    let n = plan.num_layers.max(1);
    let width = ui.available_width().min(360.0);
    let cell = (width / n as f32).clamp(6.0, 22.0);
    let (rect, resp) = ui.allocate_exact_size(vec2(cell * n as f32, 26.0), Sense::hover());
    let painter = ui.painter_at(rect);
    let merged: Vec<_> = groups.iter().filter(|g| g.end() > g.start()).cloned().collect();
    let colors = group_colors(merged.len());
    let plain = ui.visuals().widgets.inactive.bg_fill;
    for j in 0..n {
        let x = rect.left() + j as f32 * cell;
        let color = merged.iter().position(|g| g.contains(&j)).map(|k| colors[k]).unwrap_or(plain);
        let r = egui::Rect::from_min_size(egui::pos2(x + 0.5, rect.top()), vec2(cell - 1.0, 26.0));
        painter.rect_filled(r, 2.0, color);
    }
    for (k, g) in merged.iter().enumerate() {
        let a = rect.left() + *g.start() as f32 * cell;
        let b = rect.left() + (*g.end() + 1) as f32 * cell;
        let r = egui::Rect::from_min_max(egui::pos2(a, rect.top()), egui::pos2(b, rect.bottom()));
        painter.rect_stroke(r, 3.0, Stroke::new(1.5, colors[k].gamma_multiply(0.6)), egui::StrokeKind::Inside);
    }
    if let Some(pos) = resp.hover_pos() {
        let j = ((pos.x - rect.left()) / cell).floor() as usize;
        if j < n {
            let into = plan.psi[j];
            let g = &groups[into];
            resp.on_hover_text(if g.start() == g.end() {
                format!("layer {j} kept (becomes layer {into})")
            } else {
                format!("layer {j} is in the merge {}..={} (becomes layer {into})", g.start(), g.end())
            });
        }
    }
    ui.label(RichText::new(format!("{} original layers, {} after compression; coloured runs are collapsed into one", n, plan.remaining())).weak().size(11.5));
}

fn bar(ui: &mut Ui, label: &str, value: f64, color: Color32) {
    ui.horizontal(|ui| {
        ui.add_sized([72.0, 16.0], egui::Label::new(label));
        let w = (ui.available_width() - 60.0).max(60.0);
        let (rect, _) = ui.allocate_exact_size(vec2(w, 14.0), Sense::hover());
        ui.painter().rect_filled(rect, 3.0, ui.visuals().widgets.inactive.bg_fill);
        let f = value.clamp(0.0, 1.0) as f32;
        ui.painter().rect_filled(egui::Rect::from_min_size(rect.min, vec2(rect.width() * f, rect.height())), 3.0, color);
        ui.label(format!("{value:.3}"));
    });
}

fn inspector(app: &mut App, ui: &mut Ui) {
    ui.heading("Solution");
    let Some(s) = app.selected.clone() else {
        ui.label(RichText::new("Click a point on the plot to inspect a compressed model.").weak());
        ui.add_space(8.0);
        let mut recommended: Vec<Solution> = app
            .front
            .iter()
            .enumerate()
            .filter(|(_, e)| e.recommended)
            .map(|(i, e)| Solution::from_front(i, e))
            .chain(app.candidates.iter().filter(|e| e.recommended).map(Solution::from_candidate))
            .chain(app.baselines.iter().filter(|b| b.recommended).map(Solution::from_baseline))
            .collect();
        recommended.sort_by_key(|s| std::cmp::Reverse(s.result.remaining_layers));
        if !recommended.is_empty() {
            ui.label("Recommended (lowest validation perplexity of its size):")
                .on_hover_text("Picked among the front, the fittest few plans of each size and the baselines, on held-out text the search never saw");
            for s in recommended {
                let text = format!("{} layers, validation perplexity {:.2} ({})", s.result.remaining_layers, s.validation_perplexity.unwrap_or(f64::NAN), s.label);
                if ui.selectable_label(false, text).clicked() {
                    app.selected = Some(s);
                }
            }
            ui.add_space(8.0);
        }
        if !app.front.is_empty() {
            ui.label("Front solutions:");
            for (i, e) in app.front.clone().iter().enumerate() {
                if ui.selectable_label(false, format!("#{i}: {} layers, fitness {:.4}", e.result.remaining_layers, e.result.fitness)).clicked() {
                    app.select_front(i);
                }
            }
        }
        return;
    };
    let r = &s.result;
    ui.label(RichText::new(&s.label).strong().size(15.0));
    ui.label(format!(
        "{} of {} layers  ·  {:.1}% of layers, {:.1}% of parameters removed",
        r.remaining_layers,
        r.psi.len(),
        100.0 * r.compression,
        100.0 * r.params_removed
    ));
    let wrapped = |ui: &mut Ui, text: RichText| ui.add(egui::Label::new(text).wrap());
    wrapped(ui, RichText::new(format!("removed (original layers): {}", s.plan().removed_text())));
    match s.validation_perplexity {
        Some(v) => wrapped(ui, RichText::new(format!("validation perplexity {v:.2}{}", if s.recommended { " · recommended" } else { "" }))),
        None => wrapped(ui, RichText::new("no validation perplexity").weak()),
    }
    .on_hover_text("Perplexity on held-out text: front solutions and baselines of runs with a validation text have one");
    let healed = app.run_heal == Heal::Linear && r.remaining_layers < r.psi.len();
    wrapped(ui, RichText::new(if healed { "healed (linear map per collapsed group)" } else { "not healed" }))
        .on_hover_text("A least-squares map fitted on the calibration activations, folded into each collapsed group's down projection");
    ui.add_space(4.0);
    layer_map(ui, &s);
    ui.add_space(6.0);
    match r.objective {
        Objective::Similarity => {
            ui.label(RichText::new("Similarity to the original").strong());
            bar(ui, "fitness", r.fitness, FRONT);
            bar(ui, "attention", r.attention, ACCENT);
            bar(ui, "MLP", r.ffn, ACCENT);
            bar(ui, "hidden", r.hidden, ACCENT);
        }
        Objective::Kl | Objective::Nll => {
            ui.label(RichText::new("Next-token distributions").strong()).on_hover_text("The compressed model's next-token distributions against the original's, on the calibration text");
            bar(ui, "fitness", r.fitness, FRONT);
            ui.add(egui::Label::new(score_line(r)).wrap());
        }
    }
    if !r.per_layer.is_empty() {
        ui.collapsing("Per compressed layer", |ui| {
            for (i, l) in r.per_layer.iter().enumerate() {
                bar(ui, &format!("{i} attn"), l.attention, ACCENT.gamma_multiply(0.8));
                bar(ui, &format!("{i} MLP"), l.ffn, FRONT.gamma_multiply(0.7));
            }
        });
    }
    ui.add_space(6.0);
    ui.label(RichText::new("Recipe").strong());
    let merges = if s.merges.is_empty() { "(none)".to_string() } else { s.merges.clone() };
    ui.horizontal(|ui| {
        ui.label(RichText::new(format!("--merges {merges}")).monospace());
        if ui.small_button("Copy").on_hover_text("Copy the --merges argument").clicked() {
            ui.ctx().copy_text(s.merges.clone());
        }
    });
    let spans: Vec<String> = r.canonical.iter().map(|c| format!("({},{}) {}", c.cb, c.ce, c.op)).collect();
    ui.label(RichText::new(format!("canonical: {}", if spans.is_empty() { "identity".into() } else { spans.join(", ") })).weak().size(11.5));
    ui.horizontal(|ui| {
        if ui.button("Save recipe").on_hover_text("Write this solution as a recipe file into the run folder").clicked() {
            app.actions.push(Action::SaveRecipe(s.clone()));
        }
        let in_compare = app.compare.iter().any(|c| c.merges == s.merges);
        if ui.button(if in_compare { "Remove from compare" } else { "Add to compare" }).clicked() {
            app.actions.push(Action::ToggleCompare(s.clone()));
        }
    });
    ui.separator();
    ui.label(RichText::new("Measure").strong());
    let busy = app.busy.is_some();
    ui.horizontal(|ui| {
        if ui.add_enabled(!busy, egui::Button::new("Perplexity")).on_hover_text("WikiText-2 perplexity of this model (in the background)").clicked() {
            app.actions.push(Action::MeasurePerplexity(s.clone()));
        }
        if ui.add_enabled(!busy, egui::Button::new("Benchmarks")).on_hover_text("Zero-shot ARC-Easy, PIQA, HellaSwag (first N items each)").clicked() {
            app.actions.push(Action::RunBenchmarks(s.clone()));
        }
        ui.label("N");
        ui.add(egui::DragValue::new(&mut app.settings.bench_limit).range(10..=10000));
    });
    if let Some(m) = app.measured.get(&s.label) {
        measured_lines(ui, m);
    }
    ui.separator();
    ui.label(RichText::new("Export").strong());
    ui.horizontal(|ui| {
        ui.radio_value(&mut app.export_kind, ExportFormat::Gguf, "GGUF").on_hover_text("For llama.cpp and Ollama; untouched tensors keep their quantisation");
        ui.radio_value(&mut app.export_kind, ExportFormat::Hf, "Hugging Face").on_hover_text("A safetensors folder for transformers");
    });
    ui.horizontal(|ui| {
        ui.add(egui::TextEdit::singleline(&mut app.export_path).desired_width(200.0).hint_text("output path (empty: choose)"));
        if ui.add_enabled(!busy, egui::Button::new("Export…")).clicked() {
            app.actions.push(Action::Export(s.clone(), app.export_kind, None));
        }
    });
    ui.checkbox(&mut app.export_force, "Replace an existing output")
        .on_hover_text("Without this, an existing file or folder is never overwritten");
}

fn measured_lines(ui: &mut Ui, m: &super::app::Measured) {
    match &m.perplexity {
        Some(Ok(p)) => {
            ui.label(format!("perplexity {p:.3}"));
        }
        Some(Err(e)) => {
            ui.label(RichText::new(format!("perplexity: {e}")).color(BAD));
        }
        None => {}
    }
    match &m.benchmarks {
        Some(Ok(scores)) => {
            for t in scores {
                ui.label(format!(
                    "{}: acc {:.1}% ± {:.1}, acc_norm {:.1}% ({} items)",
                    t.task,
                    100.0 * t.acc,
                    100.0 * t.acc_stderr,
                    100.0 * t.acc_norm,
                    t.items
                ));
            }
        }
        Some(Err(e)) => {
            ui.label(RichText::new(format!("benchmarks: {e}")).color(BAD));
        }
        None => {}
    }
}

fn compare_view(app: &mut App, ui: &mut Ui) {
    if app.compare.is_empty() {
        ui.label(RichText::new("Select solutions and press “Add to compare” to put them side by side with the original.").weak());
    }
    let original = Solution {
        label: "original".into(),
        merges: String::new(),
        result: Default::default(),
        validation_perplexity: None,
        recommended: false,
    };
    let mut rows = vec![original];
    rows.extend(app.compare.iter().cloned());
    egui::Grid::new("compare-table").striped(true).num_columns(7).spacing([14.0, 4.0]).show(ui, |ui| {
        for h in ["model", "layers", "fitness", "merges", "perplexity", "benchmarks", ""] {
            ui.label(RichText::new(h).strong());
        }
        ui.end_row();
        for s in &rows {
            let is_original = s.merges.is_empty() && s.label == "original";
            ui.label(&s.label);
            ui.label(if is_original { format!("{}", app.run_layers.max(card_layers(app))) } else { s.result.remaining_layers.to_string() });
            ui.label(if is_original { "1.0000".into() } else { format!("{:.4}", s.result.fitness) });
            ui.label(RichText::new(if s.merges.is_empty() { "–" } else { &s.merges }).monospace().size(11.5));
            let m = app.measured.get(&s.label).cloned().unwrap_or_default();
            ui.label(match &m.perplexity {
                Some(Ok(p)) => format!("{p:.2}"),
                Some(Err(_)) => "failed".into(),
                None => "–".into(),
            });
            ui.label(match &m.benchmarks {
                Some(Ok(v)) => v.iter().map(|t| format!("{} {:.1}%", t.task, 100.0 * t.acc)).collect::<Vec<_>>().join(", "),
                Some(Err(_)) => "failed".into(),
                None => "–".into(),
            });
            ui.horizontal(|ui| {
                let busy = app.busy.is_some();
                if ui.add_enabled(!busy, egui::Button::new("ppl").small()).on_hover_text("Measure perplexity").clicked() {
                    app.actions.push(Action::MeasurePerplexity(s.clone()));
                }
                if ui.add_enabled(!busy, egui::Button::new("bench").small()).on_hover_text("Run the benchmarks").clicked() {
                    app.actions.push(Action::RunBenchmarks(s.clone()));
                }
            });
            ui.end_row();
        }
    });
    ui.add_space(8.0);
    ui.horizontal(|ui| {
        ui.label("Prompt");
        ui.add(egui::TextEdit::singleline(&mut app.settings.prompt).desired_width(ui.available_width() - 190.0));
        let busy = app.busy.is_some();
        if ui.add_enabled(!busy, egui::Button::new("Generate with all")).clicked() {
            app.actions.push(Action::Generate);
        }
        if ui.button("Clear").clicked() {
            app.actions.push(Action::ClearCompare);
        }
    });
    ui.add_space(6.0);
    let n = rows.len();
    ui.columns(n.max(1), |cols| {
        for (col, s) in cols.iter_mut().zip(&rows) {
            col.label(RichText::new(&s.label).strong());
            egui::Frame::group(col.style()).show(col, |ui| {
                ui.set_min_height(120.0);
                match app.generated.get(&s.label) {
                    Some(Ok(t)) => {
                        ui.label(RichText::new(&app.settings.prompt).weak());
                        ui.label(t);
                    }
                    Some(Err(e)) => {
                        ui.label(RichText::new(e).color(BAD));
                    }
                    None => {
                        ui.label(RichText::new("–").weak());
                    }
                }
            });
        }
    });
}

fn card_layers(app: &App) -> usize {
    match &app.card {
        Some(Ok(c)) => c.layers,
        _ => 0,
    }
}
