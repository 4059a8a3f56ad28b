//! `*.texgen.ron` prompt files as assets: a handle that fills in with the generated pixels, and a
//! malformed file that fails to load with its line and field named.

use bevy::asset::LoadState;
use bevy::prelude::*;
use bevy_diffusion::{
    DiffusionPlugin, DiffusionSet, LoadOptions, StableDiffusion, bake, pipeline, postprocess,
};
use bevy_diffusion_tests::tiny_sd_model;

use crate::{Log, pixels};

/// A temp asset folder holding `files`, and a headless app whose AssetPlugin reads it.
fn app_with_assets(name: &str, files: &[(&str, &str)]) -> (App, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "bevy_diffusion_texgen_asset_{name}_{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: dir.to_string_lossy().into_owned(),
            ..Default::default()
        },
        ImagePlugin::default(),
        DiffusionPlugin::from_folder(tiny_sd_model()).configure(|s| s.compute_threads = 1),
    ))
    .init_resource::<Log>()
    .add_systems(PreUpdate, crate::collect.after(DiffusionSet::Poll));
    app.finish();
    app.cleanup();
    (app, dir)
}

const WALL: &str = "(\n    prompt: \"a mossy stone wall\",\n    seed: 5,\n    num_inference_steps: 3,\n    tiling: xy,\n)\n";

#[test]
fn a_prompt_file_loads_as_an_image_that_fills_in_with_the_generated_pixels() {
    let (mut app, dir) = app_with_assets("ok", &[("wall.texgen.ron", WALL)]);
    let handle: Handle<Image> = app
        .world()
        .resource::<AssetServer>()
        .load("wall.texgen.ron");
    let request = bake::parse_request_ron(WALL, "wall.texgen.ron".as_ref()).unwrap();
    let model = StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).unwrap();
    let core = pipeline::generate(&model, &request, &mut pipeline::NoHooks).unwrap();
    let expected = postprocess::finish(core.image, &request);
    crate::wait_for(
        &mut app,
        "the prompt file's image to hold the generated pixels",
        |app| {
            let images = app.world().resource::<Assets<Image>>();
            images.get(&handle).and_then(|i| i.data.as_deref())
                == Some(expected.as_raw().as_slice())
        },
    );
    assert_eq!(app.world().resource::<Log>().finished.len(), 1);
    let (w, h, _) = pixels(&app, &handle);
    assert_eq!((w, h), expected.dimensions());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_malformed_prompt_file_fails_to_load_naming_the_line_and_field() {
    let broken = "(\n    prompt: \"wall\",\n    seed: \"seven\",\n)\n";
    let (mut app, dir) = app_with_assets("bad", &[("broken.texgen.ron", broken)]);
    let handle: Handle<Image> = app
        .world()
        .resource::<AssetServer>()
        .load("broken.texgen.ron");
    let mut error = None;
    crate::wait_for(&mut app, "the broken prompt file to fail loading", |app| {
        if let LoadState::Failed(e) = app.world().resource::<AssetServer>().load_state(&handle) {
            error = Some(e.to_string());
        }
        error.is_some()
    });
    let error = error.unwrap();
    assert!(
        error.contains("broken.texgen.ron") && error.contains(":3:") && error.contains("seed"),
        "{error}"
    );
    assert!(
        app.world().resource::<Log>().started.is_empty(),
        "nothing was queued"
    );
    let _ = std::fs::remove_dir_all(dir);
}
