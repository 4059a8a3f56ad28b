//! A prompt file as an asset, with hot reload: `asset_server.load("prompts/wall.texgen.ron")`
//! is a `Handle<Image>` that fills in when the request written in the file has been generated.
//! With Bevy's file watcher (our `file_watcher` feature), saving an edit to
//! `plugin/assets/prompts/wall.texgen.ron` cancels the old request and regenerates the same
//! handle, so every tile below changes without a restart. A malformed edit is a load error
//! naming the line and field; the tiles keep the last good image.
//!
//! ```text
//! cargo run --release -p bevy_diffusion --example prompt_file_hot_reload --features file_watcher
//! BEVY_DIFFUSION_HEADLESS=1 cargo run -p bevy_diffusion --example prompt_file_hot_reload --features file_watcher
//! ```

mod support;

use bevy::asset::AssetLoadFailedEvent;
use bevy::prelude::*;
use bevy_diffusion::prelude::*;

/// The prompt file, relative to the asset folder (`plugin/assets/` under `cargo run`).
const PROMPT_FILE: &str = "prompts/wall.texgen.ron";

fn main() -> AppExit {
    App::new()
        .add_plugins((
            support::default_plugins("bevy_diffusion: edit assets/prompts/wall.texgen.ron").set(
                AssetPlugin {
                    // On by default with the `file_watcher` feature; said here for the reader.
                    watch_for_changes_override: Some(true),
                    ..default()
                },
            ),
            DiffusionPlugin::default(),
            support::HeadlessRun::images(1),
        ))
        .add_systems(Startup, spawn_wall)
        .add_systems(Update, report)
        .run()
}

/// Loads the prompt file once and shows its handle on a 6x4 wall (the request in the file
/// asks for `tiling: xy`, so the tiles join without seams).
fn spawn_wall(mut commands: Commands, assets: Res<AssetServer>) {
    commands.spawn(Camera2d);
    let wall: Handle<Image> = assets.load(PROMPT_FILE);
    for row in 0..4 {
        for column in 0..6 {
            commands.spawn((
                Sprite {
                    image: wall.clone(),
                    custom_size: Some(Vec2::splat(128.0)),
                    ..default()
                },
                Transform::from_xyz(
                    (column as f32 - 2.5) * 128.0,
                    (row as f32 - 1.5) * 128.0,
                    0.0,
                ),
            ));
        }
    }
    commands.spawn((
        Text::new(format!("edit and save plugin/assets/{PROMPT_FILE}")),
        Node {
            position_type: PositionType::Absolute,
            top: px(12),
            left: px(12),
            ..default()
        },
    ));
}

fn report(
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
    mut bad_file: MessageReader<AssetLoadFailedEvent<Image>>,
) {
    for f in finished.read() {
        info!(
            "{PROMPT_FILE} generated in {:?} (seed {})",
            f.elapsed, f.seed
        );
    }
    for f in failed.read() {
        warn!("request {} failed: {}", f.id, f.reason);
    }
    for e in bad_file.read() {
        warn!("{} did not load: {}", e.path, e.error);
    }
}
