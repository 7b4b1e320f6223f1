//! Drawing, one module a panel: the left panel's settings (settings), the Pareto plot (plot),
//! the solution inspector (inspector) and the comparison (compare); the toolbar and the log
//! here. Drawing never changes the run; it pushes [`Action`]s that the app applies after the
//! frame.

use egui::{Align, Color32, Layout, RichText, Sense, Stroke, Ui, vec2};
use egui_plot::{Legend, Line, MarkerShape, Plot, PlotPoint, PlotPoints, Points};

use super::app::{Action, App, CalibKind, Solution, Tab};
use gelaco::export::ExportFormat;
use gelaco::backend::{DeviceChoice, Precision};
use gelaco::collapse::MergeOp;
use gelaco::search::Init;
use gelaco::fitness::{FitnessResult, Heal, Objective};
use gelaco::search::baselines::BaselineMethod;
use gelaco::util::Choice;

mod compare;
mod inspector;
mod plot;
mod settings;

use compare::*;
use inspector::*;
use plot::*;
use settings::*;

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
            ui.selectable_value(&mut app.tab, Tab::Compare, RichText::new(format!("Compare ({})", app.lab.compare.len())).size(15.0));
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
            if let Some((done, total, what)) = app.lab.task_progress.clone() {
                if ui.button("Cancel").on_hover_text("Stop the running measurement").clicked() {
                    app.actions.push(Action::Cancel);
                }
                let f = if total > 0 { done as f32 / total as f32 } else { 0.0 };
                ui.add(egui::ProgressBar::new(f).desired_width(160.0).text(format!("{done}/{total}")));
                ui.label(what);
            } else if let Some(b) = &app.lab.busy {
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

fn tip(r: egui::Response, text: &str) -> egui::Response {
    r.on_hover_text(text)
}

fn ui_text_color() -> Color32 {
    Color32::from_rgb(0xff, 0x40, 0x80)
}
