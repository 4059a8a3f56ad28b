//! Per-player prompts: one `PromptTemplate` per slot, filled from each player's attributes, and
//! a seed per player and slot (`derive_seed(player, "camp/floor")`, the same on every run), so
//! each player gets their own floor and item and gets them back unchanged. Tab switches player.
//!
//! ```text
//! cargo run --release -p bevy_diffusion --example player_prompts
//! BEVY_DIFFUSION_HEADLESS=1 cargo run -p bevy_diffusion --example player_prompts   # no display
//! ```

mod support;

use bevy::prelude::*;
use bevy_diffusion::prelude::*;

/// The two slots every player fills: a floor texture and an item sprite.
const FLOOR: &str = "{mood} {floor}, seamless texture";
const ITEM: &str = "a {colour} {item}";

/// Which floor tile or item sprite an entity is.
#[derive(Component, Clone, Copy, PartialEq)]
enum Slot {
    Floor,
    Item,
}

/// The players and which one is active.
#[derive(Resource)]
struct Players {
    all: Vec<PlayerProfile>,
    active: usize,
}

fn main() -> AppExit {
    let players = Players {
        all: vec![
            PlayerProfile::new("ann")
                .with("mood", "mossy")
                .with("floor", "cobblestone")
                .with("colour", "green")
                .with("item", "potion"),
            PlayerProfile::new("bob")
                .with("mood", "light")
                .with("floor", "desert sand")
                .with("colour", "gold")
                .with("item", "key"),
        ],
        active: 0,
    };
    App::new()
        .add_plugins((
            support::default_plugins("bevy_diffusion: per-player prompts (Tab: next player)"),
            DiffusionPlugin::default(),
            // Headless: ann's two images, Tab, then bob's two.
            support::HeadlessRun::images(4).pressing(KeyCode::Tab, 2),
        ))
        .insert_resource(players)
        .add_systems(Startup, (spawn_scene, ask_for_active_player).chain())
        .add_systems(Update, (switch_player, report))
        .run()
}

fn spawn_scene(mut commands: Commands) {
    commands.spawn(Camera2d);
    for x in -3..=3 {
        let position = Vec3::new(x as f32 * 96.0, -48.0, 0.0);
        commands.spawn((
            Slot::Floor,
            Sprite::sized(Vec2::splat(96.0)),
            Transform::from_translation(position),
        ));
    }
    commands.spawn((
        Slot::Item,
        Sprite::sized(Vec2::splat(160.0)),
        Transform::from_xyz(0.0, 120.0, 1.0),
    ));
    commands.spawn((
        Text::default(),
        Node {
            position_type: PositionType::Absolute,
            top: px(12),
            left: px(12),
            ..default()
        },
    ));
}

/// Fills both templates from the active player and points the slots at the new handles. Asking
/// again for a player seen before is the same request (same prompt, same derived seed), so the
/// plugin's cache answers it with the same pixels.
fn ask_for_active_player(
    players: Res<Players>,
    mut diffusion: Diffusion,
    mut sprites: Query<(&Slot, &mut Sprite)>,
    mut label: Single<&mut Text>,
) {
    let player = &players.all[players.active];
    let floor = PromptTemplate::parse(FLOOR).expect("a valid template");
    let item = PromptTemplate::parse(ITEM).expect("a valid template");
    let requests = [
        (Slot::Floor, player.texture_request(&floor, "camp/floor")),
        (Slot::Item, player.sprite_request(&item, "camp/item")),
    ];
    let mut lines = format!("player {} (Tab: next player)", player.id);
    for (slot, request) in requests {
        // A template names an attribute this player lacks: a typed error, not a panic.
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                warn!("{}: {e}", player.id);
                continue;
            }
        };
        lines += &format!("\n{:?} (seed {})", request.prompt, request.seed);
        match diffusion.submit(request) {
            Ok(job) => {
                for (_, mut sprite) in sprites.iter_mut().filter(|(s, _)| **s == slot) {
                    sprite.image = job.handle.clone();
                }
            }
            Err(e) => warn!("refused: {e}"),
        }
    }
    label.0 = lines;
}

fn switch_player(
    keys: Res<ButtonInput<KeyCode>>,
    mut players: ResMut<Players>,
    mut diffusion: Diffusion,
    mut commands: Commands,
) {
    if keys.just_pressed(KeyCode::Tab) {
        // The old player's requests still in flight are no longer wanted.
        let old = players.all[players.active].id.clone();
        diffusion.cancel_player(&old);
        players.active = (players.active + 1) % players.all.len();
        commands.run_system_cached(ask_for_active_player);
    }
}

fn report(
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
) {
    for f in finished.read() {
        info!(
            "request {} done in {:?} (seed {}, cached {})",
            f.id, f.elapsed, f.seed, f.cached
        );
    }
    for f in failed.read() {
        warn!("request {} failed: {}", f.id, f.reason);
    }
}
