//! The Pareto plot: every evaluation, the front, the baselines and the candidates, on the objective or the validation axis, and picking a solution in it.

use super::*;

pub(super) fn front_view(app: &mut App, ui: &mut Ui) {
    let generations = app.run.points.iter().map(|p| p.generation).max().map(|g| g + 1).unwrap_or(1);
    let hv_height = 120.0;
    let plot_height = (ui.available_height() - hv_height - 40.0).max(200.0);
    let layers = app.run.layers.max(1) as f64;
    let selected = app.selected.clone();
    let objective = app.run.front.first().map_or(app.settings.objective, |e| e.result.objective);
    ui.horizontal(|ui| {
        ui.label("y axis");
        tip(ui.selectable_value(&mut app.plot.validation, false, "fitness"), "The objective the search maximises");
        tip(
            ui.selectable_value(&mut app.plot.validation, true, "validation perplexity"),
            "Perplexity on held-out text the search never sees (log scale); it picks the recommended solution of each size",
        );
        ui.label(RichText::new("○ recommended").weak()).on_hover_text("Ringed: the lowest validation perplexity of its size");
    });
    let by_validation = app.plot.validation;
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
                let pts: Vec<[f64; 2]> = app.run.points
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
            let mut f: Vec<[f64; 2]> = app.run.front
                .iter()
                .filter_map(|e| y_of(by_validation, &e.result, e.picked_perplexity()).map(|y| [e.result.compression, y]))
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
                let points: Vec<[f64; 2]> = app.run.baselines
                    .iter()
                    .filter(|b| b.kind() == Some(method))
                    .filter_map(|b| y_of(by_validation, &b.result, b.picked_perplexity()).map(|y| [b.result.compression, y]))
                    .collect();
                if !points.is_empty() {
                    plot.points(Points::new(method.title(), PlotPoints::from(points)).shape(shape).radius(radius).color(color).filled(true));
                }
            }
            if by_validation {
                let c: Vec<[f64; 2]> = app.run.candidates
                    .iter()
                    .filter_map(|e| y_of(true, &e.result, e.picked_perplexity()).map(|y| [e.result.compression, y]))
                    .collect();
                if !c.is_empty() {
                    plot.points(Points::new("other candidates", PlotPoints::from(c)).radius(4.0).color(FRONT).filled(false));
                }
            }
            let recommended: Vec<[f64; 2]> = app.run.front
                .iter()
                .chain(&app.run.candidates)
                .filter(|e| e.recommended)
                .filter_map(|e| y_of(by_validation, &e.result, e.picked_perplexity()).map(|y| [e.result.compression, y]))
                .chain(
                    app.run.baselines
                        .iter()
                        .filter(|b| b.recommended)
                        .filter_map(|b| y_of(by_validation, &b.result, b.picked_perplexity()).map(|y| [b.result.compression, y])),
                )
                .collect();
            if !recommended.is_empty() {
                plot.points(Points::new("recommended", PlotPoints::from(recommended)).shape(MarkerShape::Circle).radius(8.0).filled(false).color(FRONT));
            }
            if let Some((s, y)) = selected.as_ref().and_then(|s| y_of(by_validation, &s.result, s.picked_perplexity()).map(|y| (s, y))) {
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
            if let Some(v) = c.picked_perplexity() {
                let healed = if c.healed() { " healed" } else { "" };
                ui.label(format!("validation perplexity {v:.2}{healed}{}", if c.recommended { "  (recommended)" } else { "" }));
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
            if !app.run.hypervolume.is_empty() {
                plot.line(Line::new("hypervolume", PlotPoints::from(app.run.hypervolume.clone())).color(ACCENT).width(2.0).allow_band(false));
            }
        });
}

/// Something on the plot a click can select.
#[derive(Clone, Copy)]
pub(super) enum Pick {
    Front(usize),
    Candidate(usize),
    Baseline(usize),
    Point(usize),
}

impl Pick {
    fn solution(self, app: &App) -> Solution {
        match self {
            Pick::Front(i) => Solution::from_front(i, &app.run.front[i]),
            Pick::Candidate(i) => Solution::from_candidate(&app.run.candidates[i]),
            Pick::Baseline(i) => Solution::from_baseline(&app.run.baselines[i]),
            Pick::Point(i) => Solution::from_point(&app.run.points[i]),
        }
    }
}

/// Positions of everything a click can select: front first, then the other candidates (on
/// the validation axis), then baselines, then points.
pub(super) fn pickable(app: &App, by_validation: bool) -> impl Iterator<Item = (f64, f64, Pick)> + '_ {
    let front = app.run.front
        .iter()
        .enumerate()
        .filter_map(move |(i, e)| y_of(by_validation, &e.result, e.picked_perplexity()).map(|y| (e.result.compression, y, Pick::Front(i))));
    let candidates = app.run.candidates
        .iter()
        .enumerate()
        .filter(move |_| by_validation)
        .filter_map(|(i, e)| y_of(true, &e.result, e.picked_perplexity()).map(|y| (e.result.compression, y, Pick::Candidate(i))));
    let baselines = app.run.baselines
        .iter()
        .enumerate()
        .filter_map(move |(i, b)| y_of(by_validation, &b.result, b.picked_perplexity()).map(|y| (b.result.compression, y, Pick::Baseline(i))));
    let points = app.run.points.iter().enumerate().filter(move |_| !by_validation).map(|(i, p)| (p.compression, p.fitness, Pick::Point(i)));
    front.chain(candidates).chain(baselines).chain(points)
}

/// A solution's height on the plot: its fitness, or log10 of its validation perplexity.
pub(super) fn y_of(by_validation: bool, r: &FitnessResult, validation: Option<f64>) -> Option<f64> {
    if by_validation { validation.filter(|v| *v > 0.0).map(f64::log10) } else { Some(r.fitness) }
}
