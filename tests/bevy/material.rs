//! Generated materials (feature `pbr`): `DiffusionMaterials::submit` answers with a
//! `Handle<StandardMaterial>` at once; its normal and ORM maps fill in from the finished image,
//! equal to the core's `pipeline::pbr` maps of the same pixels.

use bevy::ecs::system::RunSystemOnce;
use bevy::pbr::StandardMaterial;
use bevy::prelude::*;
use bevy_diffusion::bevy_plugin::{
    DiffusionMaterialPlugin, DiffusionMaterials, PendingMaterials, SubmittedMaterial,
};
use bevy_diffusion::pipeline::pbr::{PbrOptions, pbr_maps};
use bevy_diffusion::request::InitImage;
use bevy_diffusion::{DiffusionPlugin, GenerationRequest};
use bevy_diffusion_tests::tiny_sd_model;

use bevy_diffusion::DiffusionSystems;

use crate::{Log, collect, log, pixels, wait_ended, wait_for};

/// [`crate::app`] plus the material assets (headless: no renderer) and the material plugin.
fn material_app() -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default(),
        DiffusionPlugin::from_folder(tiny_sd_model())
            .configure(|s| s.worker.compute_threads = Some(1)),
        DiffusionMaterialPlugin::default(),
    ))
    .init_asset::<StandardMaterial>()
    .init_resource::<Log>()
    .add_systems(PreUpdate, collect.after(DiffusionSystems::Poll));
    app.finish();
    app.cleanup();
    app
}

fn submit_material(app: &mut App, request: GenerationRequest) -> SubmittedMaterial {
    app.world_mut()
        .run_system_once(move |mut materials: DiffusionMaterials| materials.submit(request.clone()))
        .expect("the submit system runs")
        .expect("accepted")
}

fn material(app: &App, handle: &Handle<StandardMaterial>) -> StandardMaterial {
    app.world()
        .resource::<Assets<StandardMaterial>>()
        .get(handle)
        .expect("the material exists")
        .clone()
}

#[test]
fn a_material_request_fills_in_its_normal_and_orm_maps() {
    let mut app = material_app();
    let request = GenerationRequest {
        seed: 3,
        num_inference_steps: Some(2),
        ..GenerationRequest::material("mossy cobblestone")
    };
    assert!(request.pbr && request.tiling == bevy_diffusion::Tiling::XY);
    let job = submit_material(&mut app, request);
    // At once: the base colour is the request's image, no maps yet.
    let m = material(&app, &job.material);
    assert_eq!(m.base_color_texture.as_ref(), Some(&job.base_color));
    assert!(m.normal_map_texture.is_none() && m.metallic_roughness_texture.is_none());

    wait_ended(&mut app, job.id);
    assert_eq!(
        log(&app).finished_of(job.id).len(),
        1,
        "{:?}",
        log(&app).failure_of(job.id)
    );
    wait_for(&mut app, "the material's maps", |app| {
        app.world().resource::<PendingMaterials>().is_empty()
    });
    let m = material(&app, &job.material);
    let normal = m.normal_map_texture.clone().expect("a normal map");
    let orm = m
        .metallic_roughness_texture
        .clone()
        .expect("an ORM texture");
    assert_eq!(
        m.occlusion_texture.as_ref(),
        Some(&orm),
        "one image serves both"
    );
    assert_eq!(m.base_color_texture.as_ref(), Some(&job.base_color));

    // The maps are the core's maps of the finished pixels.
    let (w, h, albedo) = pixels(&app, &job.base_color);
    let albedo = image::RgbaImage::from_raw(w, h, albedo).unwrap();
    let maps = pbr_maps(&albedo, &PbrOptions::default()).unwrap();
    let expected_normal = image::DynamicImage::ImageRgb8(maps.normal_image()).to_rgba8();
    let (nw, nh, normal_px) = pixels(&app, &normal);
    assert_eq!((nw, nh), (w, h));
    assert!(normal_px == expected_normal.as_raw().as_slice());
    let (_, _, orm_px) = pixels(&app, &orm);
    assert!(orm_px == maps.occlusion_roughness_metallic(0.0).as_raw().as_slice());
    assert!(
        orm_px.chunks(4).all(|p| p[2] == 0 && p[3] == 255),
        "metallic 0"
    );
    // Normal and ORM data are linear, the albedo is colour.
    let images = app.world().resource::<Assets<Image>>();
    let format = |h: &Handle<Image>| images.get(h).unwrap().texture_descriptor.format;
    assert_eq!(format(&normal), wgpu_types::TextureFormat::Rgba8Unorm);
    assert_eq!(format(&orm), wgpu_types::TextureFormat::Rgba8Unorm);
}

#[test]
fn a_failed_material_request_is_dropped_and_keeps_no_maps() {
    let mut app = material_app();
    let request = GenerationRequest {
        num_inference_steps: Some(2),
        init_image: Some(InitImage::Path("no/such/init.png".into())),
        ..GenerationRequest::material("bricks")
    };
    let job = submit_material(&mut app, request);
    wait_ended(&mut app, job.id);
    assert!(log(&app).failure_of(job.id).is_some());
    app.update();
    assert!(app.world().resource::<PendingMaterials>().is_empty());
    assert!(material(&app, &job.material).normal_map_texture.is_none());
}

#[test]
fn dropping_every_handle_of_a_material_cancels_its_request() {
    let mut app = material_app();
    let request = GenerationRequest {
        // tiny-sd's leading spacing with steps_offset 1 allows at most 999 steps.
        num_inference_steps: Some(500),
        width: 256,
        height: 256,
        ..GenerationRequest::material("bricks")
    };
    let job = submit_material(&mut app, request);
    let id = job.id;
    wait_for(&mut app, "the job to run", |app| {
        !log(app).progress_of(id).is_empty()
    });
    drop(job);
    wait_ended(&mut app, id);
    assert_eq!(
        log(&app).cancelled.iter().filter(|c| c.id == id).count(),
        1,
        "{:?}",
        log(&app)
    );
    app.update();
    assert!(app.world().resource::<PendingMaterials>().is_empty());
}

#[test]
fn a_sprite_material_keeps_its_base_colours_alpha() {
    let mut app = material_app();
    let sprite = submit_material(
        &mut app,
        GenerationRequest {
            num_inference_steps: Some(1),
            width: 16,
            height: 16,
            pbr: true,
            ..GenerationRequest::sprite("gold coin")
        },
    );
    // A sprite's transparency is kept (blended); a surface texture stays opaque.
    assert_eq!(
        material(&app, &sprite.material).alpha_mode,
        bevy::material::AlphaMode::Blend
    );
    let texture = submit_material(&mut app, GenerationRequest::material("bricks"));
    assert_eq!(
        material(&app, &texture.material).alpha_mode,
        bevy::material::AlphaMode::Opaque
    );
    drop(texture);
    wait_ended(&mut app, sprite.id);
}
