//! Sprites with real transparency: `GenerationRequest::sprite` keys the background out into the
//! alpha channel, so each item sits on the checkerboard behind it with no box around it.
//!
//! ```text
//! cargo run --release -p bevy_diffusion --example sprite_alpha
//! BEVY_DIFFUSION_HEADLESS=1 cargo run -p bevy_diffusion --example sprite_alpha   # no display
//! ```

mod support;

use bevy::asset::RenderAssetUsages;
use bevy::image::ImageSampler;
use bevy::prelude::*;
use bevy::render::render_resource::{Extent3d, TextureDimension, TextureFormat};
use bevy_diffusion::prelude::*;

const ITEMS: [&str; 3] = ["a red potion", "a gold coin", "a blue shield"];
/// Size of each sprite on screen in pixels.
const SIZE: f32 = 224.0;

fn main() -> AppExit {
    App::new()
        .add_plugins((
            support::default_plugins("bevy_diffusion: sprites with alpha"),
            DiffusionPlugin::default(),
            support::HeadlessRun::images(ITEMS.len()),
        ))
        .add_systems(Startup, (spawn_checkerboard, ask))
        .add_systems(Update, report)
        .run()
}

/// A 12x8 checkerboard of 80-pixel squares, drawn behind the sprites (z = 0).
fn spawn_checkerboard(mut commands: Commands, mut images: ResMut<Assets<Image>>) {
    commands.spawn(Camera2d);
    let (w, h) = (12u32, 8u32);
    let data = (0..w * h)
        .flat_map(|i| match (i % w + i / w) % 2 {
            0 => [200, 200, 200, 255],
            _ => [90, 90, 110, 255],
        })
        .collect();
    let mut board = Image::new(
        Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
        TextureDimension::D2,
        data,
        TextureFormat::Rgba8UnormSrgb,
        RenderAssetUsages::default(),
    );
    board.sampler = ImageSampler::nearest(); // sharp squares
    commands.spawn(Sprite {
        image: images.add(board),
        custom_size: Some(Vec2::new(w as f32 * 80.0, h as f32 * 80.0)),
        ..default()
    });
}

/// One sprite request per item, each drawn in front of the board (z = 1).
fn ask(mut commands: Commands, mut diffusion: Diffusion) {
    for (i, prompt) in ITEMS.into_iter().enumerate() {
        let request = GenerationRequest {
            seed: 11 + i as u64,
            ..GenerationRequest::sprite(prompt) // alpha, nearest-neighbour sampler
        };
        match diffusion.submit(request) {
            Ok(job) => {
                let x = (i as f32 - 1.0) * (SIZE + 48.0);
                commands.spawn((
                    Sprite {
                        image: job.handle,
                        custom_size: Some(Vec2::splat(SIZE)),
                        ..default()
                    },
                    Transform::from_xyz(x, 0.0, 1.0),
                ));
            }
            Err(e) => warn!("{prompt}: refused: {e}"),
        }
    }
}

fn report(
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
) {
    for f in finished.read() {
        info!("request {} done in {:?}", f.id, f.elapsed);
    }
    for f in failed.read() {
        warn!("request {} failed: {}", f.id, f.reason);
    }
}
