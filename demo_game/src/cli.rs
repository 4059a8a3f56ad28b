//! Command-line flags of `demo_game` and what they turn into.

use std::path::PathBuf;
use std::time::Duration;

use bevy_diffusion::{DiffusionSettings, ModelSource};
use clap::Parser;

use crate::DemoPlugin;
use crate::profiles::{Players, RequestSettings, SaveGame};
use crate::scripted::ScriptedRun;

/// bevy_diffusion's demo: each player's prompts become the room's textures and items.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(name = "demo_game", version)]
pub struct Args {
    /// A Stable Diffusion folder in the diffusers layout (default: the embedded model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The player to start as (ann or bob).
    #[arg(long, value_name = "ID")]
    pub player: Option<String>,
    /// Denoising steps per request (default: what the model folder recommends, 12 for the
    /// embedded model; else the family's default, e.g. 20 for SD 1.x/2.x, 1 for the Turbos).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance weight (default: what the model folder recommends, 4 for the
    /// embedded model; else the family's default, e.g. 7.5 for SD 1.x/2.x, 0 for the Turbos).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Side of generated images in pixels, a multiple of 8 (0 = the model's native size; for a
    /// 512-pixel SD model on a CPU, 128 or 256 keeps it interactive).
    #[arg(long, default_value_t = 0)]
    pub size: u32,
    /// Threads for the model (default: all cores but one).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where generated images and the save live (default: the OS cache dir,
    /// e.g. ~/.cache/bevy_diffusion_demo).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the on-disk image cache (every image is generated anew).
    #[arg(long)]
    pub no_cache: bool,
    /// Forget the prompts typed in earlier runs.
    #[arg(long)]
    pub reset: bool,
    /// Scripted mode: save a screenshot of the window to PATH (PNG) after start-up ended and
    /// --frames frames ran, then exit (non-zero if the model or a start-up request failed).
    #[arg(long, value_name = "PATH")]
    pub screenshot: Option<PathBuf>,
    /// Scripted mode: frames to run after start-up before the screenshot.
    #[arg(long, default_value_t = 30)]
    pub frames: u32,
    /// Scripted mode: also save a screenshot while start-up requests are still denoising (the
    /// progress UI); with cached results there is nothing in progress, so use --no-cache.
    #[arg(long, value_name = "PATH", requires = "screenshot")]
    pub mid_run_screenshot: Option<PathBuf>,
    /// Scripted mode: give up (exit 2) after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
}

/// The OS cache dir for the demo: `$XDG_CACHE_HOME/bevy_diffusion_demo`, else
/// `$HOME/.cache/bevy_diffusion_demo`, else `target/demo_cache`.
pub fn default_cache_dir() -> PathBuf {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("XDG_CACHE_HOME")
        .or_else(|| from("HOME").map(|h| h.join(".cache")))
        .map(|d| d.join("bevy_diffusion_demo"))
        .unwrap_or_else(|| PathBuf::from("target").join("demo_cache"))
}

impl Args {
    /// Checks what clap cannot: the size, the steps, the player.
    pub fn validate(&self) -> Result<(), String> {
        if !self.size.is_multiple_of(8) {
            return Err(format!("--size {} is not a multiple of 8", self.size));
        }
        if self.steps == Some(0) {
            return Err("--steps must be at least 1".into());
        }
        if let Some(model) = &self.model
            && !model.join("model_index.json").is_file()
        {
            return Err(format!(
                "--model {}: no model_index.json there (expected a diffusers-layout folder)",
                model.display()
            ));
        }
        if let Some(id) = &self.player
            && !Players::default().list.iter().any(|p| &p.id == id)
        {
            let ids: Vec<String> = Players::default().list.into_iter().map(|p| p.id).collect();
            return Err(format!("--player {id}: not one of {}", ids.join(", ")));
        }
        Ok(())
    }

    /// The cache folder (images in `images/`, the save in `save.json`).
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_dir)
    }

    /// The plugin's settings: the model, threads, and the disk cache.
    pub fn diffusion_settings(&self) -> DiffusionSettings {
        let mut s = DiffusionSettings::default();
        if let Some(dir) = &self.model {
            s.model = ModelSource::Folder(dir.clone());
        }
        if let Some(n) = self.threads {
            s.worker.compute_threads = Some(n.max(1));
        }
        if !self.no_cache {
            s.worker.cache_dir = Some(self.cache_dir().join("images"));
        }
        s
    }

    /// The game logic's settings: players (the chosen one active), request parameters, save.
    pub fn demo_plugin(&self) -> DemoPlugin {
        let mut players = Players::default();
        if let Some(id) = &self.player {
            players.select(id);
        }
        let path = self.cache_dir().join("save.json");
        if self.reset {
            let _ = std::fs::remove_file(&path);
        }
        DemoPlugin {
            players,
            requests: RequestSettings {
                size: self.size,
                steps: self.steps,
                guidance: self.guidance,
            },
            save: SaveGame::load(&path),
        }
    }

    /// How the UI names the model: the folder's name, or `embedded default`.
    pub fn model_label(&self) -> String {
        match &self.model {
            Some(dir) => dir
                .file_name()
                .unwrap_or(dir.as_os_str())
                .to_string_lossy()
                .into_owned(),
            None => "embedded default".into(),
        }
    }

    /// The scripted run, if a screenshot was asked for.
    pub fn scripted_run(&self) -> Option<ScriptedRun> {
        let screenshot = self.screenshot.clone()?;
        Some(ScriptedRun {
            mid_run: self.mid_run_screenshot.clone(),
            timeout: Duration::from_secs(self.timeout),
            ..ScriptedRun::new(screenshot, self.frames)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("demo_game").chain(args.iter().copied()))
    }

    #[test]
    fn flags_parse_and_validate() {
        let a = parse(&[]).unwrap();
        assert_eq!((a.steps, a.guidance, a.size, a.frames), (None, None, 0, 30));
        assert!(a.validate().is_ok());
        assert!(a.scripted_run().is_none());
        // Steps and guidance left unset reach the requests unset: the model's recommendation
        // (12 steps at guidance 4 for the embedded model) fills them in.
        let no_save = ["--cache-dir", "/nonexistent/bd_demo_cli_test"];
        let settings = parse(&no_save).unwrap().demo_plugin().requests;
        assert_eq!((settings.steps, settings.guidance), (None, None));
        let a = parse(&[no_save[0], no_save[1], "--steps", "8", "--guidance", "5.5"]).unwrap();
        assert_eq!((a.steps, a.guidance), (Some(8), Some(5.5)));
        assert_eq!(a.demo_plugin().requests.steps, Some(8));
        let e = parse(&["--steps", "0"]).unwrap().validate().unwrap_err();
        assert!(e.contains("--steps"), "{e}");
        let a = parse(&[
            "--screenshot",
            "s.png",
            "--frames",
            "5",
            "--mid-run-screenshot",
            "m.png",
            "--cache-dir",
            "/tmp/x",
            "--size",
            "64",
        ])
        .unwrap();
        let run = a.scripted_run().unwrap();
        assert_eq!(run.frames, 5);
        assert_eq!(run.mid_run.as_deref(), Some("m.png".as_ref()));
        assert_eq!(
            a.diffusion_settings().worker.cache_dir.as_deref(),
            Some("/tmp/x/images".as_ref())
        );
        assert!(parse(&["--mid-run-screenshot", "m.png"]).is_err());
        assert!(parse(&["--size", "30"]).unwrap().validate().is_err());
        assert!(parse(&["--player", "zed"]).unwrap().validate().is_err());
        assert!(
            parse(&["--model", "/nonexistent"])
                .unwrap()
                .validate()
                .is_err()
        );
        assert!(
            parse(&["--no-cache"])
                .unwrap()
                .diffusion_settings()
                .worker
                .cache_dir
                .is_none()
        );
    }
}
