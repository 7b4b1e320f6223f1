//! The comparison of measured models side by side.

use super::*;

pub(super) fn compare_view(app: &mut App, ui: &mut Ui) {
    if app.lab.compare.is_empty() {
        ui.label(RichText::new("Select solutions and press “Add to compare” to put them side by side with the original.").weak());
    }
    let original = Solution {
        label: "original".into(),
        merges: String::new(),
        result: Default::default(),
        validation_perplexity: None,
        healed_validation_perplexity: None,
        recommended: false,
    };
    let mut rows = vec![original];
    rows.extend(app.lab.compare.iter().cloned());
    egui::Grid::new("compare-table").striped(true).num_columns(7).spacing([14.0, 4.0]).show(ui, |ui| {
        for h in ["model", "layers", "fitness", "merges", "perplexity", "benchmarks", ""] {
            ui.label(RichText::new(h).strong());
        }
        ui.end_row();
        for s in &rows {
            let is_original = s.merges.is_empty() && s.label == "original";
            ui.label(&s.label);
            ui.label(if is_original { format!("{}", app.run.layers.max(card_layers(app))) } else { s.result.remaining_layers.to_string() });
            ui.label(if is_original { "1.0000".into() } else { format!("{:.4}", s.result.fitness) });
            ui.label(RichText::new(if s.merges.is_empty() { "–" } else { &s.merges }).monospace().size(11.5));
            let m = app.lab.measured.get(&s.label).cloned().unwrap_or_default();
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
                let busy = app.lab.busy.is_some();
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
        let busy = app.lab.busy.is_some();
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
                match app.lab.generated.get(&s.label) {
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

pub(super) fn card_layers(app: &App) -> usize {
    match &app.card {
        Some(Ok(c)) => c.layers,
        _ => 0,
    }
}
