//! The GeLaCo Studio window (eframe/egui): a shell over the same job API as the command
//! line. The search runs in its own worker thread and everything else that needs the model
//! (model card, perplexity, benchmarks, generation, export) in a second one; the window
//! only drains their events, draws, and sends commands.

pub mod app;
pub mod view;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

pub use app::{App, Launch, Settings, Shell};

/// Open the window and run until it is closed.
pub fn run(launch: Launch, frame_stats: Option<PathBuf>, exit_after: Option<Duration>) -> Result<(), String> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("GeLaCo Studio")
            .with_inner_size([1440.0, 900.0])
            .with_min_inner_size([960.0, 600.0]),
        ..Default::default()
    };
    eframe::run_native(
        "GeLaCo Studio",
        options,
        Box::new(move |cc| Ok(Box::new(Shell::new(cc, launch, frame_stats, exit_after)))),
    )
    .map_err(|e| format!("the window could not be opened: {e}"))
}
