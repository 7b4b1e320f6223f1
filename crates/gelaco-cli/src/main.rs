//! `gelaco`: the command line over the GeLaCo Studio core.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_vulkan_loader();
    gelaco::backend::quiet_kernel_candidate_panics();
    match cli::try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let input = e
                .chain()
                .find_map(|c| c.downcast_ref::<gelaco::Error>())
                .map(gelaco::Error::is_input_error)
                .unwrap_or(false);
            eprintln!("error: {}", cli::words::describe(&e));
            if input { ExitCode::from(2) } else { ExitCode::from(1) }
        }
    }
}

/// Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid" on every adapter query when the
/// variable is unset (headless servers, CI). Give it a private folder before any thread starts.
fn quiet_vulkan_loader() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let user = std::env::var("USER").unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("gelaco-xdg-{user}"));
    if std::fs::create_dir_all(&dir).is_ok() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}
