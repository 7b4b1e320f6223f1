//! The eframe shell around the window's state: settings storage, the frame loop and the
//! frame-time figures.

use super::*;

/// The eframe shell around [`App`]: settings storage and the frame loop.
pub struct Shell {
    pub app: App,
    frame_stats: Option<PathBuf>,
    exit_after: Option<Duration>,
}

pub const SETTINGS_KEY: &str = "gelaco-settings";

impl Shell {
    pub fn new(cc: &eframe::CreationContext<'_>, launch: Launch, frame_stats: Option<PathBuf>, exit_after: Option<Duration>) -> Self {
        let stored = if launch.ephemeral { None } else { cc.storage.and_then(|s| eframe::get_value::<Settings>(s, SETTINGS_KEY)) };
        Shell { app: App::new(&cc.egui_ctx, stored, launch), frame_stats, exit_after }
    }
}

impl eframe::App for Shell {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.app.frame(ui);
        if let Some(limit) = self.exit_after {
            if self.app.started.elapsed() >= limit {
                if let Some(j) = &self.app.job {
                    j.send(Command::Stop);
                }
                ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
            }
            ui.ctx().request_repaint_after(Duration::from_millis(200));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if !self.app.launch.ephemeral {
            eframe::set_value(storage, SETTINGS_KEY, &self.app.settings);
        }
    }

    fn on_exit(&mut self) {
        // stop a running search and give it a moment to record its state in the run folder
        if let Some(j) = &self.app.job {
            j.send(Command::Stop);
            let start = Instant::now();
            while !j.is_finished() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        eprintln!("{}", self.app.frame_summary());
        if let Some(p) = &self.frame_stats {
            if let Ok(text) = serde_json::to_vec_pretty(&self.app.frames) {
                let _ = gelaco::util::write_atomic(p, &text);
            }
        }
    }
}
