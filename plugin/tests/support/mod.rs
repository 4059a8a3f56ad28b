//! What both `texgen` binary tests (`cli.rs`, `farm_cli.rs`) start from: the tiny-sd fixture
//! model, running the binary, its stderr, and a scratch folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `tests/fixtures/tiny-sd/model`, the diffusers folder every command runs on.
pub fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-sd/model")
}

/// Runs the `texgen` binary of this build with `args` and waits for it.
pub fn texgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_texgen"))
        .args(args)
        .output()
        .expect("run texgen")
}

/// The run's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one `texgen: error:` line of a failed run: asserts exit code 1 and exactly one such line
/// on stderr.
pub fn error_line(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    let err = stderr(o);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("texgen: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    errors[0].to_string()
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A copy of the fixture model under `dir` whose scheduler `_class_name` is unknown
/// (`BogusScheduler`: the DDIM stand-in runs, with a warning).
pub fn model_with_a_bogus_scheduler(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    let src = fixture_model();
    for entry in walk(&src) {
        let to = model.join(entry.strip_prefix(&src).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    let config = model.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("\"DDIMScheduler\"", "\"BogusScheduler\"");
    assert!(text.contains("BogusScheduler"));
    std::fs::write(&config, text).unwrap();
    model
}

/// A fresh scratch folder `<tmp>/bevy_diffusion_<test crate>/<name>-<pid>`, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates the folder (emptied first if a crashed run left it).
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir()
            .join(concat!("bevy_diffusion_", env!("CARGO_CRATE_NAME")))
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// `name` inside the folder, as a command-line argument.
    #[allow(dead_code)] // farm_cli.rs passes paths as strings; cli.rs joins them itself.
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
