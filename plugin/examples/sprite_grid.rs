//! A seamless texture on a grid of sprites: one request with `tiling: xy` (what
//! `GenerationRequest::texture` asks for) fills one `Handle<Image>`, and every tile of the
//! floor shows that handle, edge to edge, so a seam would show as a line between tiles. Space asks
//! for the same material with the next seed; the tiles change when its pixels arrive.
//!
//! ```text
//! cargo run --release -p bevy_diffusion --example sprite_grid
//! BEVY_DIFFUSION_HEADLESS=1 cargo run -p bevy_diffusion --example sprite_grid   # no display
//! ```

mod support;

use bevy::prelude::*;
use bevy_diffusion::prelude::*;

const PROMPT: &str = "mossy dark cobblestone";
/// Tiles across and down, and their size on screen in pixels.
const COLUMNS: i32 = 8;
const ROWS: i32 = 5;
const TILE: f32 = 96.0;

/// A floor tile; every one shows the same image.
#[derive(Component)]
struct Tile;

/// The seed of the texture on the floor (Space adds one).
#[derive(Resource, Default)]
struct Seed(u64);

fn main() -> AppExit {
    App::new()
        .add_plugins((
            support::default_plugins("bevy_diffusion: a seamless texture on a sprite grid"),
            DiffusionPlugin::default(), // the embedded model, on the CPU
            support::HeadlessRun::images(1),
        ))
        .init_resource::<Seed>()
        .add_systems(Startup, (spawn_floor, ask).chain())
        .add_systems(Update, (next_seed, report))
        .run()
}

fn spawn_floor(mut commands: Commands) {
    commands.spawn(Camera2d);
    for row in 0..ROWS {
        for column in 0..COLUMNS {
            let x = (column as f32 - (COLUMNS - 1) as f32 / 2.0) * TILE;
            let y = (row as f32 - (ROWS - 1) as f32 / 2.0) * TILE;
            commands.spawn((
                Tile,
                Sprite::sized(Vec2::splat(TILE)),
                Transform::from_xyz(x, y, 0.0),
            ));
        }
    }
}

/// Asks for the texture and points every tile at its handle: the placeholder now, the
/// denoising previews while it runs, the seamless texture at the end.
fn ask(seed: Res<Seed>, mut diffusion: Diffusion, mut tiles: Query<&mut Sprite, With<Tile>>) {
    let request = GenerationRequest {
        seed: seed.0,
        ..GenerationRequest::texture(PROMPT) // tiling: xy, a repeating sampler
    };
    match diffusion.submit(request) {
        Ok(job) => {
            info!("request {} for {PROMPT:?}, seed {}", job.id, seed.0);
            for mut sprite in &mut tiles {
                sprite.image = job.handle.clone();
            }
        }
        Err(e) => warn!("refused: {e}"),
    }
}

fn next_seed(keys: Res<ButtonInput<KeyCode>>, mut seed: ResMut<Seed>, mut commands: Commands) {
    if keys.just_pressed(KeyCode::Space) {
        seed.0 += 1;
        commands.run_system_cached(ask);
    }
}

fn report(
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
) {
    for f in finished.read() {
        info!("request {} done in {:?} (seed {})", f.id, f.elapsed, f.seed);
    }
    for f in failed.read() {
        warn!("request {} failed: {}", f.id, f.reason);
    }
}
