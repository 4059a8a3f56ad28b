//! The scripted mode for checks and CI-less demos: wait for the start-up generations, run some
//! frames, save a screenshot of the window and exit (0, or non-zero with a message when the model
//! or a start-up request failed). Optionally also a screenshot while requests are still
//! denoising, to show the progress UI.
//!
//! The decisions live in [`ScriptedRun::step`] (pure, unit-tested); [`drive_scripted`] feeds it
//! the world and carries out what it returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, ScreenshotCaptured};
use bevy_diffusion::DiffusionStatus;

use crate::world::Jobs;

/// Where the scripted run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for every start-up request to end.
    WaitingForStartup,
    /// Start-up ended; this many frames to go before the screenshot.
    Counting(u32),
    /// The final screenshot was asked for; waiting for it to be written.
    Capturing,
    /// Exit was asked for.
    Done,
}

/// What the run needs to know about the app this frame.
#[derive(Debug, Clone, Default)]
pub struct ScriptView {
    /// The model's load error, if it failed.
    pub model_failed: Option<String>,
    /// Every start-up request has ended.
    pub startup_done: bool,
    /// Why start-up requests failed.
    pub startup_failures: Vec<String>,
    /// A request is at least half-way through its steps while others still wait: a good moment
    /// for the mid-run screenshot.
    pub mid_run_moment: bool,
    /// Real time since start.
    pub elapsed: Duration,
    /// Screenshots written (Ok) or failed (Err), by path.
    pub written: BTreeMap<PathBuf, Result<(), String>>,
}

/// What the run asks the app to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptCommand {
    /// Capture the window into this PNG.
    Capture(PathBuf),
    /// Exit with this code, printing the message (stdout for 0, stderr otherwise).
    Exit(u8, String),
}

/// The scripted run's settings and state.
#[derive(Resource, Debug, Clone)]
pub struct ScriptedRun {
    /// The final screenshot.
    pub screenshot: PathBuf,
    /// Frames to run after start-up ended, before the final screenshot.
    pub frames: u32,
    /// The optional mid-run screenshot.
    pub mid_run: Option<PathBuf>,
    /// Give up (exit 2) after this long.
    pub timeout: Duration,
    /// Where the run is.
    pub phase: Phase,
    /// True once the mid-run screenshot was asked for.
    pub mid_run_taken: bool,
}

impl ScriptedRun {
    /// A run that saves `screenshot` after `frames` frames past start-up.
    pub fn new(screenshot: PathBuf, frames: u32) -> Self {
        Self {
            screenshot,
            frames,
            mid_run: None,
            timeout: Duration::from_secs(600),
            phase: Phase::WaitingForStartup,
            mid_run_taken: false,
        }
    }

    /// One frame of the run: what to do now.
    pub fn step(&mut self, view: &ScriptView) -> Vec<ScriptCommand> {
        let mut out = Vec::new();
        if self.phase == Phase::Done {
            return out;
        }
        let exit = |phase: &mut Phase, code: u8, message: String| {
            *phase = Phase::Done;
            vec![ScriptCommand::Exit(code, message)]
        };
        if let Some(reason) = &view.model_failed {
            return exit(
                &mut self.phase,
                1,
                format!("the model failed to load: {reason}"),
            );
        }
        for (path, result) in &view.written {
            if let Err(e) = result {
                let message = format!("could not save the screenshot {}: {e}", path.display());
                return exit(&mut self.phase, 1, message);
            }
        }
        if view.elapsed > self.timeout {
            let message = format!(
                "gave up after {} s (phase {:?}); raise --timeout",
                self.timeout.as_secs(),
                self.phase
            );
            return exit(&mut self.phase, 2, message);
        }
        if let Some(mid) = &self.mid_run
            && !self.mid_run_taken
            && (view.mid_run_moment || view.startup_done)
        {
            if !view.mid_run_moment {
                warn!(
                    "start-up ended before a request was half-way (cached results?); the mid-run \
                     screenshot shows the finished scene (try --no-cache)"
                );
            }
            self.mid_run_taken = true;
            out.push(ScriptCommand::Capture(mid.clone()));
        }
        match self.phase {
            Phase::WaitingForStartup if view.startup_done => {
                if !view.startup_failures.is_empty() {
                    let message = format!(
                        "{} start-up request(s) failed:\n  {}",
                        view.startup_failures.len(),
                        view.startup_failures.join("\n  ")
                    );
                    return exit(&mut self.phase, 1, message);
                }
                self.phase = Phase::Counting(self.frames);
            }
            Phase::Counting(0) => {
                self.phase = Phase::Capturing;
                out.push(ScriptCommand::Capture(self.screenshot.clone()));
            }
            Phase::Counting(n) => self.phase = Phase::Counting(n - 1),
            Phase::Capturing => {
                let wanted = std::iter::once(&self.screenshot).chain(self.mid_run.as_ref());
                if wanted.into_iter().all(|p| view.written.contains_key(p)) {
                    let mut message = format!("screenshot written: {}", self.screenshot.display());
                    if let Some(mid) = &self.mid_run {
                        message += &format!("\nmid-run screenshot written: {}", mid.display());
                    }
                    return exit(&mut self.phase, 0, message);
                }
            }
            _ => {}
        }
        out
    }
}

/// Screenshots written (or failed) so far, by path.
#[derive(Resource, Debug, Clone, Default)]
pub struct ScreenshotsWritten(pub BTreeMap<PathBuf, Result<(), String>>);

/// Saves a captured window image as PNG (RGB: the alpha channel of a swapchain is meaningless).
pub fn save_png(image: &Image, path: &Path) -> Result<(), String> {
    let rgb = image
        .clone()
        .try_into_dynamic()
        .map_err(|e| format!("unsupported screen format: {e}"))?
        .to_rgb8();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    rgb.save(path).map_err(|e| e.to_string())
}

/// Feeds [`ScriptedRun::step`] and carries out its commands.
pub fn drive_scripted(
    mut commands: Commands,
    mut run: ResMut<ScriptedRun>,
    jobs: Res<Jobs>,
    status: Res<DiffusionStatus>,
    written: Res<ScreenshotsWritten>,
    time: Res<Time<Real>>,
    mut exit: MessageWriter<AppExit>,
) {
    let waiting = jobs.pending.len();
    let view = ScriptView {
        model_failed: match &*status {
            DiffusionStatus::Failed { reason } => Some(reason.clone()),
            _ => None,
        },
        startup_done: jobs.startup_done(),
        startup_failures: jobs.startup_failures.clone(),
        mid_run_moment: !jobs.startup_done()
            && waiting >= 2
            && jobs
                .pending
                .values()
                .any(|j| j.total > 0 && j.step * 2 >= j.total),
        elapsed: time.elapsed(),
        written: written.0.clone(),
    };
    for command in run.step(&view) {
        match command {
            ScriptCommand::Capture(path) => {
                info!("capturing {}", path.display());
                commands.spawn(Screenshot::primary_window()).observe(
                    move |captured: On<ScreenshotCaptured>,
                          mut written: ResMut<ScreenshotsWritten>| {
                        let result = save_png(&captured.image, &path);
                        match &result {
                            Ok(()) => info!("saved {}", path.display()),
                            Err(e) => error!("could not save {}: {e}", path.display()),
                        }
                        written.0.insert(path.clone(), result);
                    },
                );
            }
            ScriptCommand::Exit(code, message) => {
                if code == 0 {
                    println!("{message}");
                    exit.write(AppExit::Success);
                } else {
                    eprintln!("demo_game: {message}");
                    exit.write(AppExit::from_code(code));
                }
            }
        }
    }
}

/// The scripted mode: add with a [`ScriptedRun`] (needs the renderer and a window).
pub struct ScriptedPlugin(pub ScriptedRun);

impl Plugin for ScriptedPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(self.0.clone())
            .init_resource::<ScreenshotsWritten>()
            .add_systems(Last, drive_scripted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(paths: &[&str]) -> BTreeMap<PathBuf, Result<(), String>> {
        paths.iter().map(|p| (PathBuf::from(p), Ok(()))).collect()
    }

    #[test]
    fn waits_for_startup_then_frames_then_the_file() {
        let mut run = ScriptedRun::new("shot.png".into(), 2);
        let mut view = ScriptView::default();
        assert!(run.step(&view).is_empty());
        view.startup_done = true;
        assert!(run.step(&view).is_empty()); // -> Counting(2)
        assert!(run.step(&view).is_empty()); // 2 -> 1
        assert!(run.step(&view).is_empty()); // 1 -> 0
        assert_eq!(
            run.step(&view),
            vec![ScriptCommand::Capture("shot.png".into())]
        );
        assert!(run.step(&view).is_empty(), "waits for the file");
        view.written = written(&["shot.png"]);
        assert!(matches!(&run.step(&view)[..], [ScriptCommand::Exit(0, _)]));
        assert!(run.step(&view).is_empty(), "exit once");
    }

    #[test]
    fn the_mid_run_shot_comes_while_requests_denoise() {
        let mut run = ScriptedRun {
            mid_run: Some("mid.png".into()),
            ..ScriptedRun::new("end.png".into(), 0)
        };
        let mut view = ScriptView::default();
        assert!(run.step(&view).is_empty());
        view.mid_run_moment = true;
        assert_eq!(
            run.step(&view),
            vec![ScriptCommand::Capture("mid.png".into())]
        );
        assert!(run.step(&view).is_empty(), "once");
        view = ScriptView {
            startup_done: true,
            ..ScriptView::default()
        };
        run.step(&view);
        assert_eq!(
            run.step(&view),
            vec![ScriptCommand::Capture("end.png".into())]
        );
        view.written = written(&["end.png"]);
        assert!(run.step(&view).is_empty(), "the mid-run file is missing");
        view.written = written(&["end.png", "mid.png"]);
        assert!(
            matches!(&run.step(&view)[..], [ScriptCommand::Exit(0, m)] if m.contains("mid.png"))
        );
    }

    #[test]
    fn failures_exit_non_zero_with_the_reason() {
        let mut run = ScriptedRun::new("s.png".into(), 5);
        let view = ScriptView {
            model_failed: Some("no unet/config.json".into()),
            ..ScriptView::default()
        };
        assert!(
            matches!(&run.step(&view)[..], [ScriptCommand::Exit(1, m)] if m.contains("unet/config.json"))
        );
        let mut run = ScriptedRun::new("s.png".into(), 5);
        let view = ScriptView {
            startup_done: true,
            startup_failures: vec!["wall failed: boom".into()],
            ..ScriptView::default()
        };
        assert!(matches!(&run.step(&view)[..], [ScriptCommand::Exit(1, m)] if m.contains("boom")));
        let mut run = ScriptedRun::new("s.png".into(), 5);
        let view = ScriptView {
            elapsed: Duration::from_secs(601),
            ..ScriptView::default()
        };
        assert!(matches!(&run.step(&view)[..], [ScriptCommand::Exit(2, _)]));
    }
}
