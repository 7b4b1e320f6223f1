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
pub fn run(launch: Launch, frame_stats: Option<PathBuf>, exit_after: Option<Duration>) -> crate::Result<()> {
    if cfg!(target_os = "linux") && std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        return Err(crate::Error::Device(
            "no display to open the window on (neither DISPLAY nor WAYLAND_DISPLAY is set); \
             every feature is also a command: see `gelaco --help`"
                .into(),
        ));
    }
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
    .map_err(|e| crate::Error::Device(format!("the window could not be opened: {e}")))
}
