//! The solution inspector: a solution's scores, its layer map, what was measured of it, and the actions on it (evaluate, compare, export).

use super::*;

/// What a solution's fitness is made of, in the words of its objective.
pub(super) fn score_line(r: &FitnessResult) -> String {
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
pub(super) fn layer_map(ui: &mut Ui, s: &Solution) {
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

pub(super) fn bar(ui: &mut Ui, label: &str, value: f64, color: Color32) {
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

pub(super) fn inspector(app: &mut App, ui: &mut Ui) {
    ui.heading("Solution");
    let Some(s) = app.selected.clone() else {
        ui.label(RichText::new("Click a point on the plot to inspect a compressed model.").weak());
        ui.add_space(8.0);
        let mut recommended: Vec<Solution> = app.run.front
            .iter()
            .enumerate()
            .filter(|(_, e)| e.recommended)
            .map(|(i, e)| Solution::from_front(i, e))
            .chain(app.run.candidates.iter().filter(|e| e.recommended).map(Solution::from_candidate))
            .chain(app.run.baselines.iter().filter(|b| b.recommended).map(Solution::from_baseline))
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
        if !app.run.front.is_empty() {
            ui.label("Front solutions:");
            for (i, e) in app.run.front.clone().iter().enumerate() {
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
    let recommended = if s.recommended { " · recommended" } else { "" };
    match (s.validation_perplexity, s.healed_validation_perplexity) {
        (v, Some(h)) => wrapped(
            ui,
            RichText::new(format!("validation perplexity {} unhealed, {h:.2} healed{recommended}", v.map_or("-".into(), |v| format!("{v:.2}")))),
        ),
        (Some(v), None) => wrapped(ui, RichText::new(format!("validation perplexity {v:.2}{recommended}"))),
        (None, None) => wrapped(ui, RichText::new("no validation perplexity").weak()),
    }
    .on_hover_text("Perplexity on held-out text: front solutions and baselines of runs with a validation text have one; the best plans of each size also healed, when the run heals its picks");
    let (healed, how) = if app.run.heal == Heal::Linear && r.remaining_layers < r.psi.len() {
        (true, "healed (linear map per collapsed group, fitted on the calibration)")
    } else if s.healed() {
        (true, "healed (linear map per collapsed group, fitted on text apart from the validation's): it validates better so")
    } else {
        (false, "not healed")
    };
    wrapped(ui, RichText::new(how).color(if healed { FRONT } else { ui.visuals().text_color() }))
        .on_hover_text("A least-squares map folded into each collapsed group's down projection; exports and recipes of this solution carry it");
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
        let in_compare = app.lab.compare.iter().any(|c| c.merges == s.merges);
        if ui.button(if in_compare { "Remove from compare" } else { "Add to compare" }).clicked() {
            app.actions.push(Action::ToggleCompare(s.clone()));
        }
    });
    ui.separator();
    ui.label(RichText::new("Measure").strong());
    let busy = app.lab.busy.is_some();
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
    if let Some(m) = app.lab.measured.get(&s.label) {
        measured_lines(ui, m);
    }
    ui.separator();
    ui.label(RichText::new("Export").strong());
    ui.horizontal(|ui| {
        ui.radio_value(&mut app.export.format, ExportFormat::Gguf, "GGUF").on_hover_text("For llama.cpp and Ollama; untouched tensors keep their quantisation");
        ui.radio_value(&mut app.export.format, ExportFormat::Hf, "Hugging Face").on_hover_text("A safetensors folder for transformers");
    });
    ui.horizontal(|ui| {
        ui.add(egui::TextEdit::singleline(&mut app.export.path).desired_width(200.0).hint_text("output path (empty: choose)"));
        if ui.add_enabled(!busy, egui::Button::new("Export…")).clicked() {
            app.actions.push(Action::Export(s.clone(), app.export.format, None));
        }
    });
    ui.checkbox(&mut app.export.force, "Replace an existing output")
        .on_hover_text("Without this, an existing file or folder is never overwritten");
}

pub(super) fn measured_lines(ui: &mut Ui, m: &crate::app::Measured) {
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
