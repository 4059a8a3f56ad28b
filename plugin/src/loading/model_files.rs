//! Reading a model folder's files, on disk or compiled in.
//!
//! The loader ([`super::folder`], `weights.rs`, the config and tokenizer readers) asks this
//! module, not `std::fs`, whether a file exists and what it holds. A path under
//! [`EMBEDDED_DIR`] (`<embedded>/unet/config.json`) names a file of the default model compiled
//! into the binary (the `bevy_diffusion_default_model` crate, feature `default_model`) and is
//! answered from memory; every other path goes to the disk. So the compiled-in model is loaded
//! through exactly the checks a folder gets, and its weights are read from a `&'static [u8]`
//! (no file is written or mapped).
//!
//! `<embedded>` cannot be a folder name on Windows, and is not one anyone uses elsewhere; a
//! real folder of that name is never consulted.

use std::borrow::Cow;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The path prefix of the compiled-in default model: `PathBuf::from(EMBEDDED_DIR)` is its
/// folder, `<embedded>/unet/config.json` one of its files.
pub const EMBEDDED_DIR: &str = "<embedded>";

/// The compiled-in files, (folder-relative `/`-separated path, contents); empty without the
/// `default_model` feature.
pub fn embedded_files() -> &'static [(&'static str, &'static [u8])] {
    #[cfg(feature = "default_model")]
    {
        bevy_diffusion_default_model::FILES
    }
    #[cfg(not(feature = "default_model"))]
    {
        &[]
    }
}

/// True when `path` is [`EMBEDDED_DIR`] or under it (whether or not such a file exists).
pub fn is_embedded(path: &Path) -> bool {
    path.starts_with(EMBEDDED_DIR)
}

/// The `/`-joined path below [`EMBEDDED_DIR`] (`""` for the folder itself), `None` for a disk
/// path. A `..` or root component gives a name no file has.
fn relative(path: &Path) -> Option<String> {
    let rest = path.strip_prefix(EMBEDDED_DIR).ok()?;
    let mut parts = Vec::new();
    for c in rest.components() {
        match c {
            Component::Normal(s) => match s.to_str() {
                Some(s) => parts.push(s),
                None => return Some("\0".into()),
            },
            Component::CurDir => {}
            _ => return Some("\0".into()),
        }
    }
    Some(parts.join("/"))
}

/// The compiled-in contents of `path`: `None` for a disk path, `Some(None)` for an embedded path
/// that names no compiled-in file.
pub fn embedded_file(path: &Path) -> Option<Option<&'static [u8]>> {
    let rel = relative(path)?;
    Some(
        embedded_files()
            .iter()
            .find(|(p, _)| *p == rel)
            .map(|(_, b)| *b),
    )
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "{} is not a file of the compiled-in default model{}",
            path.display(),
            if embedded_files().is_empty() {
                " (bevy_diffusion was built without the `default_model` feature)"
            } else {
                ""
            }
        ),
    )
}

/// `Path::is_file`, answering embedded paths from memory.
pub fn is_file(path: &Path) -> bool {
    match embedded_file(path) {
        Some(file) => file.is_some(),
        None => path.is_file(),
    }
}

/// `Path::is_dir`, answering embedded paths from memory (a folder is there when some file is
/// under it).
pub fn is_dir(path: &Path) -> bool {
    match relative(path) {
        Some(rel) if rel.is_empty() => !embedded_files().is_empty(),
        Some(rel) => {
            let prefix = format!("{rel}/");
            embedded_files().iter().any(|(p, _)| p.starts_with(&prefix))
        }
        None => path.is_dir(),
    }
}

/// The size of a file in bytes.
///
/// # Errors
/// The `std::fs::metadata` error, or `NotFound` for an embedded path with no file.
pub fn len(path: &Path) -> io::Result<u64> {
    match embedded_file(path) {
        Some(Some(bytes)) => Ok(bytes.len() as u64),
        Some(None) => Err(not_found(path)),
        None => std::fs::metadata(path).map(|m| m.len()),
    }
}

/// A file's bytes: borrowed from the binary for an embedded path, read from disk otherwise.
///
/// # Errors
/// The `std::fs::read` error, or `NotFound` for an embedded path with no file.
pub fn read(path: &Path) -> io::Result<Cow<'static, [u8]>> {
    match embedded_file(path) {
        Some(Some(bytes)) => Ok(Cow::Borrowed(bytes)),
        Some(None) => Err(not_found(path)),
        None => std::fs::read(path).map(Cow::Owned),
    }
}

/// A UTF-8 file's text.
///
/// # Errors
/// As [`read`], or `InvalidData` when the bytes are not UTF-8.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    let bytes = read(path)?;
    String::from_utf8(bytes.into_owned()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes the compiled-in default model out as an ordinary folder `dir` (created if needed; files
/// already there are overwritten): for a game that wants to edit or ship it as a folder, and for
/// tests that need the model on disk. Returns the files written.
///
/// # Errors
/// The I/O error of creating a folder or writing a file.
pub fn write_embedded_model(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (rel, bytes) in embedded_files() {
        let path = rel
            .split('/')
            .fold(dir.to_path_buf(), |p, part| p.join(part));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_paths_are_answered_from_memory_and_others_from_disk() {
        let root = Path::new(EMBEDDED_DIR);
        assert!(is_embedded(&root.join("unet")));
        assert!(!is_embedded(Path::new("assets/models/default")));
        assert_eq!(embedded_file(Path::new("Cargo.toml")), None);
        assert_eq!(embedded_file(&root.join("nothing.json")), Some(None));
        assert_eq!(
            embedded_file(&root.join("unet/../unet/config.json")),
            Some(None)
        );
        assert!(!is_file(&root.join("unet")));
        assert!(len(&root.join("nothing.json")).is_err());
        if cfg!(feature = "default_model") {
            assert!(is_dir(root) && is_dir(&root.join("unet")) && !is_dir(&root.join("un")));
            let config = root.join("unet").join("config.json");
            assert!(is_file(&config));
            assert!(
                read_to_string(&config)
                    .unwrap()
                    .contains("UNet2DConditionModel")
            );
            assert_eq!(len(&config).unwrap(), read(&config).unwrap().len() as u64);
        } else {
            assert!(!is_dir(root));
        }
    }
}
