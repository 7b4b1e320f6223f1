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

/// A core error in the window's words: settings by their labels, and the checkbox or
/// button that answers the error where there is one.
pub fn words(e: &gelaco::Error) -> String {
    use gelaco::Error;
    match e {
        Error::Setting { setting, message } => format!("{} {message}", setting_label(setting)),
        Error::OutputExists { .. } => format!("{e} (tick \"Replace an existing output\")"),
        Error::RunExists { path } => {
            format!("{} is not empty: load it with \"Load run\", or choose another runs folder", path.display())
        }
        _ => e.to_string(),
    }
}

/// The label a core setting has in the window.
fn setting_label(setting: &str) -> String {
    let label = match setting {
        "population" => "Population",
        "evaluations" => "Evaluations",
        "band" => "The initial band",
        "target_removed" => "Layers removed",
        "window" => "The window length",
        "batch_size" => "The batch size",
        "cache_mb" => "The activation cache (MB)",
        "samples" => "Samples (of Samples × tokens)",
        "max_tokens" => "Tokens (of Samples × tokens)",
        "heal" => "Healing",
        "memory_budget" => "The memory budget",
        other => return other.replace('_', " "),
    };
    label.to_string()
}

/// Open the window and run until it is closed.
pub fn run(launch: Launch, frame_stats: Option<PathBuf>, exit_after: Option<Duration>) -> gelaco::Result<()> {
    if cfg!(target_os = "linux") && std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        return Err(gelaco::Error::Device(
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
        // wgpu draws through Vulkan, Metal or DX12, and OpenGL ES where nothing else exists.
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "GeLaCo Studio",
        options,
        Box::new(move |cc| Ok(Box::new(Shell::new(cc, launch, frame_stats, exit_after)))),
    )
    .map_err(|e| gelaco::Error::Device(format!("the window could not be opened: {e}")))
}
