//! Generated PBR materials (feature `pbr`): [`DiffusionMaterials::submit`] answers at once with a
//! `Handle<StandardMaterial>` whose base colour is the request's image handle (placeholder,
//! previews, then the result) and whose normal map and occlusion/roughness/metallic texture fill
//! in when the generation finishes. The maps ([`crate::pipeline::pbr`]) are computed from the
//! finished pixels on Bevy's `AsyncComputeTaskPool`, never in a frame.
//!
//! ```no_run
//! # use bevy::prelude::*;
//! # use bevy_diffusion::{GenerationRequest, bevy_plugin::DiffusionMaterials};
//! fn floor(mut commands: Commands, mut materials: DiffusionMaterials, mut meshes: ResMut<Assets<Mesh>>) {
//!     let Ok(job) = materials.submit(GenerationRequest::material("mossy cobblestone")) else { return };
//!     // Normal maps need tangents.
//!     let mesh = Mesh::from(Plane3d::default().mesh().size(4.0, 4.0)).with_generated_tangents().unwrap();
//!     commands.spawn((Mesh3d(meshes.add(mesh)), MeshMaterial3d(job.material)));
//! }
//! ```
//! Add [`DiffusionMaterialPlugin`] beside [`super::DiffusionPlugin`]; the app needs
//! `Assets<StandardMaterial>` (Bevy's `PbrPlugin`, part of `DefaultPlugins`, or
//! `app.init_asset::<StandardMaterial>()` in a headless app).

use bevy::app::{App, Plugin, PreUpdate};
use bevy::asset::{AssetId, Assets, Handle, RenderAssetUsages};
use bevy::ecs::message::MessageReader;
use bevy::ecs::prelude::{IntoScheduleConfigs, Res, ResMut, Resource};
use bevy::ecs::system::SystemParam;
use bevy::image::Image;
use bevy::material::AlphaMode;
use bevy::pbr::StandardMaterial;
use bevy::tasks::{AsyncComputeTaskPool, Task, futures::check_ready};
use wgpu_types::{Extent3d, TextureDimension, TextureFormat};

use super::images::sampler_for;
use super::request_param::Diffusion;
use super::{DiffusionSystems, GenerationCancelled, GenerationFailed, GenerationFinished};
use crate::pipeline::pbr::{PbrOptions, pbr_maps};
use crate::request::{AssetKind, GenerationRequest};
use crate::runtime::worker::{RequestId, SubmitError};

/// Registers the systems that fill in materials when their generation finishes.
#[derive(Debug, Clone, Default)]
pub struct DiffusionMaterialPlugin {
    /// The filters' strengths for every material.
    pub options: PbrOptions,
}

impl Plugin for DiffusionMaterialPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(PendingMaterials {
            options: self.options,
            ..Default::default()
        })
        .add_systems(
            PreUpdate,
            (start_maps, finish_maps)
                .chain()
                .after(DiffusionSystems::Poll),
        );
    }
}

/// RGBA8 normal map and ORM texture of one material, `width x height`.
struct MapPixels {
    normal: Vec<u8>,
    orm: Vec<u8>,
    width: u32,
    height: u32,
}

/// Materials waiting for their generation, then for their maps. Held by id, not by a strong
/// handle: a game that drops every handle of a material (and of its base colour) frees it, which
/// frees its base colour image and so cancels the request, as for an image request.
#[derive(Resource, Default)]
pub struct PendingMaterials {
    options: PbrOptions,
    waiting: Vec<(RequestId, AssetId<StandardMaterial>)>,
    computing: Vec<(
        RequestId,
        AssetId<StandardMaterial>,
        Task<Option<MapPixels>>,
    )>,
}

impl PendingMaterials {
    /// Materials whose generation or maps are not finished yet.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.computing.len()
    }

    /// True when no material is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A submitted material request.
#[derive(Debug, Clone)]
pub struct SubmittedMaterial {
    /// The generation's id (as in [`GenerationFinished::id`]).
    pub id: RequestId,
    /// Valid at once; its textures fill in as the generation proceeds.
    pub material: Handle<StandardMaterial>,
    /// The base colour image (the request's image handle).
    pub base_color: Handle<Image>,
}

/// Ask for a generated material from any system.
#[derive(SystemParam)]
pub struct DiffusionMaterials<'w, 's> {
    diffusion: Diffusion<'w, 's>,
    materials: ResMut<'w, Assets<StandardMaterial>>,
    pending: ResMut<'w, PendingMaterials>,
}

impl DiffusionMaterials<'_, '_> {
    /// Submits `request` (as [`Diffusion::submit`]; [`GenerationRequest::material`] makes a
    /// seamless texture request) and returns a material whose `base_color_texture` is the
    /// request's image; its `normal_map_texture` (OpenGL convention, +Y up, linear),
    /// `metallic_roughness_texture` and `occlusion_texture` (one linear ORM texture: R occlusion,
    /// G roughness, B metallic) are set once the image is finished and its maps computed.
    /// Metallic is 0; `perceptual_roughness` 1 and `metallic` 1 multiply the texture's values.
    /// A sprite request ([`AssetKind::Sprite`]) gets `AlphaMode::Blend`, so its transparent
    /// background stays transparent (its maps are flat there, see [`crate::pipeline::pbr`]);
    /// textures are `AlphaMode::Opaque`.
    ///
    /// Errors: the [`SubmitError`] of [`Diffusion::submit`].
    pub fn submit(&mut self, request: GenerationRequest) -> Result<SubmittedMaterial, SubmitError> {
        // A sprite's transparent background must stay transparent on the mesh.
        let alpha_mode = if request.kind == AssetKind::Sprite {
            AlphaMode::Blend
        } else {
            AlphaMode::Opaque
        };
        let job = self.diffusion.submit(request)?;
        let material = self.materials.add(StandardMaterial {
            base_color_texture: Some(job.handle.clone()),
            perceptual_roughness: 1.0,
            metallic: 1.0,
            alpha_mode,
            ..Default::default()
        });
        self.pending.waiting.push((job.id, material.id()));
        Ok(SubmittedMaterial {
            id: job.id,
            material,
            base_color: job.handle,
        })
    }
}

/// A linear (not sRGB) RGBA8 texture that repeats, for normal and ORM data.
fn linear_image(pixels: Vec<u8>, width: u32, height: u32) -> Image {
    let mut image = Image::new(
        Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        },
        TextureDimension::D2,
        pixels,
        TextureFormat::Rgba8Unorm,
        RenderAssetUsages::default(),
    );
    image.sampler = sampler_for(AssetKind::Texture);
    image
}

/// On [`GenerationFinished`] for a waiting material: starts computing its maps from the
/// finished base colour in the background. Failed or cancelled requests are dropped (the
/// material keeps its placeholder base colour and no maps).
fn start_maps(
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
    mut cancelled: MessageReader<GenerationCancelled>,
    mut pending: ResMut<PendingMaterials>,
    images: Res<Assets<Image>>,
) {
    for id in failed
        .read()
        .map(|f| f.id)
        .chain(cancelled.read().map(|c| c.id))
    {
        pending.waiting.retain(|(waiting, _)| *waiting != id);
    }
    for f in finished.read() {
        let Some(i) = pending.waiting.iter().position(|(id, _)| *id == f.id) else {
            continue;
        };
        let (id, material) = pending.waiting.swap_remove(i);
        let Some(albedo) = images.get(&f.handle).and_then(|img| {
            let (w, h) = (img.width(), img.height());
            image::RgbaImage::from_raw(w, h, img.data.clone()?)
        }) else {
            tracing::warn!("bevy_diffusion: material {id}: base colour is not RGBA8");
            continue;
        };
        let options = pending.options;
        let task = AsyncComputeTaskPool::get().spawn(async move {
            let maps = match pbr_maps(&albedo, &options) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("bevy_diffusion: material {id}: {e}");
                    return None;
                }
            };
            let (width, height) = albedo.dimensions();
            let normal = image::DynamicImage::ImageRgb8(maps.normal_image())
                .to_rgba8()
                .into_raw();
            let orm = maps.occlusion_roughness_metallic(0.0).into_raw();
            Some(MapPixels {
                normal,
                orm,
                width,
                height,
            })
        });
        pending.computing.push((id, material, task));
    }
}

/// Sets the maps of every material whose background computation is done.
fn finish_maps(
    mut pending: ResMut<PendingMaterials>,
    mut images: ResMut<Assets<Image>>,
    mut materials: ResMut<Assets<StandardMaterial>>,
) {
    let mut i = 0;
    while i < pending.computing.len() {
        let Some(result) = check_ready(&mut pending.computing[i].2) else {
            i += 1;
            continue;
        };
        let (_, material, _) = pending.computing.swap_remove(i);
        let Some(maps) = result else { continue };
        let normal = images.add(linear_image(maps.normal, maps.width, maps.height));
        let orm = images.add(linear_image(maps.orm, maps.width, maps.height));
        if let Some(mut m) = materials.get_mut(material) {
            m.normal_map_texture = Some(normal);
            m.metallic_roughness_texture = Some(orm.clone());
            m.occlusion_texture = Some(orm);
        }
    }
}
