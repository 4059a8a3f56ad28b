//! The material view: a small lit 3D inset (a floor slab and a sphere) wearing a generated
//! `StandardMaterial` (`GenerationRequest::material` through `DiffusionMaterials`: base colour,
//! normal map, roughness/occlusion), under a point light that circles it, so the normal map's
//! relief shows as the light moves. F4 shows or hides it.
//!
//! The material's request is the active player's floor prompt with `pbr: true`; it counts as a
//! start-up request, so the scripted screenshot waits for it. [`MaterialViewPlugin`] needs
//! Bevy's renderer and PBR (`DefaultPlugins`); the decisions ([`light_position`],
//! [`material_request`], [`inset_viewport`]) are plain functions, tested headless.

use bevy::camera::Viewport;
use bevy::core_pipeline::tonemapping::Tonemapping;
use bevy::input::keyboard::{Key, KeyboardInput};
use bevy::prelude::*;
use bevy::ui::IsDefaultUiCamera;
use bevy_diffusion::GenerationRequest;
use bevy_diffusion::bevy_plugin::{DiffusionMaterialPlugin, DiffusionMaterials};

use crate::profiles::{Players, RequestSettings, SaveGame, Slot, slot_request};
use crate::world::Jobs;

/// Side of the inset in logical pixels.
pub const INSET_SIZE: f32 = 224.0;
/// The inset's top-left corner in logical window pixels (over the room's lower-left floor).
pub const INSET_POSITION: Vec2 = Vec2::new(40.0, 440.0);
/// Seconds per turn of the light.
pub const LIGHT_PERIOD: f32 = 6.0;

/// The inset's camera.
#[derive(Component, Debug)]
pub struct MaterialCamera;

/// The circling light.
#[derive(Component, Debug)]
pub struct MovingLight;

/// The generated material the inset shows (and the request it comes from).
#[derive(Resource, Debug, Clone)]
pub struct ShownMaterial {
    /// Valid from start-up; its textures fill in when the request finishes.
    pub material: Handle<StandardMaterial>,
    /// The request's id.
    pub id: bevy_diffusion::RequestId,
}

/// The light's position `t` seconds in: a circle of radius 2.2 at height 1.6 around the slab,
/// one turn per [`LIGHT_PERIOD`] seconds.
pub fn light_position(t: f32) -> Vec3 {
    let a = t / LIGHT_PERIOD * std::f32::consts::TAU;
    Vec3::new(2.2 * a.cos(), 1.6, 2.2 * a.sin())
}

/// The material's request: the active player's floor request (same prompt, seed and settings)
/// asking for PBR maps. `None` when the player has no floor prompt.
pub fn material_request(
    players: &Players,
    save: &SaveGame,
    settings: &RequestSettings,
) -> Option<GenerationRequest> {
    let player = players.active();
    let prompt = save.prompt(player, &players.templates, Slot::Floor)?;
    Some(GenerationRequest {
        pbr: true,
        ..slot_request(player, Slot::Floor, &prompt, settings)
    })
}

/// The inset's viewport in physical pixels for a window of `scale_factor`.
pub fn inset_viewport(scale_factor: f32) -> Viewport {
    let p = (INSET_POSITION * scale_factor).as_uvec2();
    let s = UVec2::splat((INSET_SIZE * scale_factor).round() as u32);
    Viewport {
        physical_position: p,
        physical_size: s,
        ..default()
    }
}

/// Submits the material, counts it as a start-up request, and spawns the inset's scene.
fn spawn_material_view(
    mut commands: Commands,
    mut materials: DiffusionMaterials,
    mut meshes: ResMut<Assets<Mesh>>,
    players: Res<Players>,
    save: Res<SaveGame>,
    settings: Res<RequestSettings>,
    mut jobs: ResMut<Jobs>,
    cameras: Query<Entity, With<Camera2d>>,
) {
    // The UI stays on the 2D camera, whatever the inset's order.
    for camera in &cameras {
        commands.entity(camera).insert(IsDefaultUiCamera);
    }
    let Some(request) = material_request(&players, &save, &settings) else {
        return;
    };
    let job = match materials.submit(request) {
        Ok(job) => job,
        Err(e) => {
            warn!("material view: request refused: {e}");
            return;
        }
    };
    if let Some(left) = &mut jobs.startup_left {
        left.insert(job.id);
    }
    commands.insert_resource(ShownMaterial {
        material: job.material.clone(),
        id: job.id,
    });
    // Normal maps need tangents.
    let slab = Mesh::from(Cuboid::new(2.4, 0.2, 2.4));
    let sphere = Mesh::from(Sphere::new(0.55).mesh().uv(48, 24));
    let (slab, sphere) = match (
        slab.with_generated_tangents(),
        sphere.with_generated_tangents(),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            warn!("material view: no tangents: {e}");
            return;
        }
    };
    commands.spawn((
        Mesh3d(meshes.add(slab)),
        MeshMaterial3d(job.material.clone()),
        Transform::from_xyz(0.0, -0.1, 0.0),
    ));
    commands.spawn((
        Mesh3d(meshes.add(sphere)),
        MeshMaterial3d(job.material),
        Transform::from_xyz(0.0, 0.55, 0.0),
    ));
    commands.spawn((
        MovingLight,
        PointLight {
            intensity: 400_000.0,
            range: 12.0,
            ..default()
        },
        Transform::from_translation(light_position(0.0)),
    ));
    commands.spawn((
        MaterialCamera,
        Camera3d::default(),
        Camera {
            order: 1,
            viewport: Some(inset_viewport(1.0)),
            clear_color: ClearColorConfig::Custom(Color::srgb(0.08, 0.08, 0.1)),
            ..default()
        },
        // No tonemapping LUTs are built in (the 2D camera does without them too).
        Tonemapping::None,
        // A little fill light, so the side away from the point light is not black.
        AmbientLight {
            brightness: 80.0,
            ..default()
        },
        Transform::from_xyz(0.0, 2.4, 3.2).looking_at(Vec3::new(0.0, 0.1, 0.0), Vec3::Y),
    ));
}

/// Circles the light.
fn move_light(time: Res<Time>, mut lights: Query<&mut Transform, With<MovingLight>>) {
    for mut t in &mut lights {
        t.translation = light_position(time.elapsed_secs());
    }
}

/// F4 shows or hides the inset; the viewport follows the window's scale factor.
fn toggle_and_fit(
    mut keys: MessageReader<KeyboardInput>,
    windows: Query<&Window>,
    mut cameras: Query<&mut Camera, With<MaterialCamera>>,
) {
    let toggled = keys
        .read()
        .filter(|k| k.state.is_pressed() && !k.repeat && k.logical_key == Key::F4)
        .count()
        % 2
        == 1;
    let scale = windows.iter().next().map_or(1.0, |w| w.scale_factor());
    for mut camera in &mut cameras {
        if toggled {
            camera.is_active = !camera.is_active;
        }
        let viewport = inset_viewport(scale);
        let same = camera.viewport.as_ref().is_some_and(|v| {
            (v.physical_position, v.physical_size)
                == (viewport.physical_position, viewport.physical_size)
        });
        if !same {
            camera.viewport = Some(viewport);
        }
    }
}

/// The material view (see the [module docs](self)); add after `DemoPlugin`.
#[derive(Debug, Clone, Default)]
pub struct MaterialViewPlugin;

impl Plugin for MaterialViewPlugin {
    fn build(&self, app: &mut App) {
        app.add_plugins(DiffusionMaterialPlugin::default())
            .add_systems(
                Startup,
                spawn_material_view.after(crate::world::load_initial_world),
            )
            .add_systems(Update, (move_light, toggle_and_fit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_light_circles_the_slab_once_per_period() {
        let p0 = light_position(0.0);
        let quarter = light_position(LIGHT_PERIOD / 4.0);
        let full = light_position(LIGHT_PERIOD);
        assert!((p0 - Vec3::new(2.2, 1.6, 0.0)).length() < 1e-5);
        assert!((quarter - Vec3::new(0.0, 1.6, 2.2)).length() < 1e-4);
        assert!((full - p0).length() < 1e-4);
        for i in 0..16 {
            let p = light_position(i as f32 * 0.4);
            assert!((p.xz().length() - 2.2).abs() < 1e-4 && p.y == 1.6);
        }
    }

    #[test]
    fn the_material_is_the_floor_request_with_pbr_maps() {
        let players = Players::default();
        let settings = RequestSettings::default();
        let save = SaveGame::default();
        let request = material_request(&players, &save, &settings).expect("a floor prompt");
        let floor = slot_request(
            players.active(),
            Slot::Floor,
            &save
                .prompt(players.active(), &players.templates, Slot::Floor)
                .unwrap(),
            &settings,
        );
        assert!(request.pbr && !floor.pbr);
        assert_eq!(request.tiling, bevy_diffusion::Tiling::XY, "seamless");
        assert_eq!(
            GenerationRequest {
                pbr: false,
                ..request
            },
            floor
        );
    }

    #[test]
    fn no_item_place_is_under_the_inset() {
        // Window coordinates of the room (1280x720 logical, y down; as ui.rs places the title).
        let inset = Rect::from_corners(INSET_POSITION, INSET_POSITION + Vec2::splat(INSET_SIZE));
        for (col, row) in crate::world::ITEM_CELLS {
            let c = crate::world::cell_center(col, row);
            let centre = Vec2::new(640.0 + c.x, 360.0 - c.y);
            let item = Rect::from_center_size(centre, Vec2::splat(crate::world::ITEM_SIZE));
            assert!(
                item.intersect(inset).is_empty(),
                "item place ({col}, {row}) at {item:?} is under the inset {inset:?}"
            );
        }
    }

    #[test]
    fn the_inset_scales_with_the_window() {
        let v = inset_viewport(1.0);
        assert_eq!(v.physical_position, UVec2::new(40, 440));
        assert_eq!(v.physical_size, UVec2::splat(224));
        let v2 = inset_viewport(2.0);
        assert_eq!(v2.physical_position, UVec2::new(80, 880));
        assert_eq!(v2.physical_size, UVec2::splat(448));
        // Inside a 1280x720 window.
        assert!(v.physical_position.y + v.physical_size.y <= 720);
    }
}
