//! Small helpers shared across the core.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Write `bytes` to `path` whole or not at all: a temporary file in the same folder,
/// flushed and synced, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// A setting with a few named values. The names are how run folders, recipes, the command
/// line and the window spell them; `help` is one line on what the value does.
pub trait Choice: Copy + PartialEq + Send + Sync + 'static {
    /// Every value, in the order they are offered.
    const VALUES: &'static [Self];
    fn name(self) -> &'static str;
    fn help(self) -> &'static str;
    fn from_name(name: &str) -> Option<Self> {
        Self::VALUES.iter().copied().find(|v| v.name() == name)
    }
}

/// Implements [`Choice`] and `Display` (the name) for an enum:
/// `choice!(Pick { First => "first": "the first lines", Random => "random": "a seeded draw" });`
#[macro_export]
macro_rules! choice {
    ($ty:ident { $($variant:ident => $name:literal : $help:literal),+ $(,)? }) => {
        impl $crate::util::Choice for $ty {
            const VALUES: &'static [Self] = &[$($ty::$variant),+];
            fn name(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
            fn help(self) -> &'static str {
                match self { $(Self::$variant => $help),+ }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::util::Choice::name(*self))
            }
        }
    };
}

/// The first 12 characters of a hash, for messages (never splits a character).
pub fn short_hash(hash: &str) -> &str {
    short_text(hash, 12)
}

/// The first `chars` characters of `text` (whole characters, whatever their encoding).
pub fn short_text(text: &str, chars: usize) -> &str {
    text.char_indices().nth(chars).map_or(text, |(i, _)| &text[..i])
}

/// Hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format!("{:x}", h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }

    #[test]
    fn atomic_write_into_missing_folder_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing").join("a.json");
        let e = write_atomic(&p, b"x").unwrap_err();
        assert!(e.to_string().contains("a.json"));
    }
}
