//! What the windowed examples share, none of it about bevy_diffusion: the window, and a
//! headless mode for machines without a display (CI).
//!
//! With `BEVY_DIFFUSION_HEADLESS=1` an example runs without a window or renderer (no winit, no
//! GPU; sprites and text are still spawned, just never drawn), presses the keys its
//! [`HeadlessRun`] names, and exits 0 once its images have arrived, or 1 when the model or a
//! request failed or after [`TIMEOUT`].

// Not every example uses every item.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bevy::app::{PluginGroupBuilder, ScheduleRunnerPlugin};
use bevy::input::ButtonState;
use bevy::input::keyboard::{Key, KeyboardInput};
use bevy::log::LogPlugin;
use bevy::prelude::*;
use bevy::render::RenderPlugin;
use bevy::render::settings::WgpuSettings;
use bevy::window::{ExitCondition, WindowResolution};
use bevy::winit::WinitPlugin;
use bevy_diffusion::prelude::*;

/// The environment variable that selects the headless run.
pub const HEADLESS_ENV: &str = "BEVY_DIFFUSION_HEADLESS";

/// How long a headless run may take before it gives up (exit code 1).
pub const TIMEOUT: Duration = Duration::from_secs(600);

/// True when `BEVY_DIFFUSION_HEADLESS` is set (and not empty or `0`).
pub fn headless() -> bool {
    std::env::var(HEADLESS_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `DefaultPlugins` with a 960x640 window titled `title`, or the headless set (no window, no
/// renderer, a 60 Hz loop) when [`headless`].
pub fn default_plugins(title: &str) -> PluginGroupBuilder {
    if !headless() {
        return DefaultPlugins.set(WindowPlugin {
            primary_window: Some(Window {
                title: title.into(),
                resolution: WindowResolution::new(960, 640),
                ..default()
            }),
            ..default()
        });
    }
    DefaultPlugins
        .set(WindowPlugin {
            primary_window: None,
            exit_condition: ExitCondition::DontExit,
            ..default()
        })
        .set(RenderPlugin {
            render_creation: WgpuSettings {
                backends: None,
                ..default()
            }
            .into(),
            ..default()
        })
        // Bevy's renderer plugins say at start-up that there is no render app: true, and meant.
        .set(LogPlugin {
            filter: format!("{},bevy_render=off", LogPlugin::default().filter),
            ..default()
        })
        .disable::<WinitPlugin>()
        .add(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(
            1.0 / 60.0,
        )))
}

/// The script of a headless run (does nothing with a window): wait for `images` finished
/// requests, pressing `key` once after the first `key_after` of them.
#[derive(Resource, Clone)]
pub struct HeadlessRun {
    /// Finished requests to wait for.
    pub images: usize,
    /// A key to press once `key_after` requests have finished.
    pub key: Option<(usize, KeyCode)>,
}

impl HeadlessRun {
    /// Wait for `images` finished requests, then exit 0.
    pub fn images(images: usize) -> Self {
        Self { images, key: None }
    }

    /// Also press `key` once after `after` finished requests.
    pub fn pressing(self, key: KeyCode, after: usize) -> Self {
        Self {
            key: Some((after, key)),
            ..self
        }
    }
}

impl Plugin for HeadlessRun {
    fn build(&self, app: &mut App) {
        if headless() {
            app.insert_resource(self.clone())
                .insert_resource(Progress {
                    finished: 0,
                    pressed: false,
                    started: Instant::now(),
                })
                .add_systems(Update, script);
        }
    }
}

#[derive(Resource)]
struct Progress {
    finished: usize,
    pressed: bool,
    started: Instant,
}

fn script(
    run: Res<HeadlessRun>,
    mut progress: ResMut<Progress>,
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
    mut load_failed: MessageReader<ModelLoadFailed>,
    mut keys: MessageWriter<KeyboardInput>,
    mut exit: MessageWriter<AppExit>,
) {
    progress.finished += finished.read().count();
    let failure = failed.read().map(|f| f.reason.clone());
    if let Some(reason) = failure
        .chain(load_failed.read().map(|f| f.reason.clone()))
        .next()
    {
        error!("headless run failed: {reason}");
        exit.write(AppExit::error());
    } else if progress.finished >= run.images {
        info!("headless run: {} images arrived", progress.finished);
        exit.write(AppExit::Success);
    } else if progress.started.elapsed() > TIMEOUT {
        error!(
            "headless run: only {} images in {TIMEOUT:?}",
            progress.finished
        );
        exit.write(AppExit::error());
    }
    if let Some((after, key_code)) = run.key
        && !progress.pressed
        && progress.finished >= after
    {
        progress.pressed = true;
        info!("headless run: pressing {key_code:?}");
        keys.write(KeyboardInput {
            key_code,
            logical_key: Key::Unidentified(bevy::input::keyboard::NativeKey::Unidentified),
            state: ButtonState::Pressed,
            text: None,
            repeat: false,
            window: Entity::PLACEHOLDER,
        });
    }
}
