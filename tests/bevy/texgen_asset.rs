//! `*.texgen.ron` prompt files as assets: a handle that fills in with the generated pixels, and a
//! malformed file that fails to load with its line and field named.

use bevy::asset::LoadState;
use bevy::prelude::*;
use bevy_diffusion::{
    DiffusionPlugin, DiffusionSystems, LoadOptions, StableDiffusion, pipeline,
    pipeline::postprocess, request::ron,
};
use bevy_diffusion_tests::tiny_sd_model;

use crate::{Log, pixels};

/// A temp asset folder holding `files`, and a headless app whose AssetPlugin reads it.
fn app_with_assets(name: &str, files: &[(&str, &str)]) -> (App, std::path::PathBuf) {
    app_with_asset_bytes(
        name,
        &files
            .iter()
            .map(|(f, t)| (*f, t.as_bytes().to_vec()))
            .collect::<Vec<_>>(),
    )
}

/// Like [`app_with_assets`], with binary files (and sub-folders) allowed.
fn app_with_asset_bytes(name: &str, files: &[(&str, Vec<u8>)]) -> (App, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "bevy_diffusion_texgen_asset_{name}_{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, bytes) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: dir.to_string_lossy().into_owned(),
            ..Default::default()
        },
        ImagePlugin::default(),
        DiffusionPlugin::from_folder(tiny_sd_model())
            .configure(|s| s.worker.compute_threads = Some(1)),
    ))
    .init_resource::<Log>()
    .add_systems(PreUpdate, crate::collect.after(DiffusionSystems::Poll));
    app.finish();
    app.cleanup();
    (app, dir)
}

/// Loads `file` and waits until it fails; returns the load error's message.
fn load_error(app: &mut App, file: &str) -> String {
    let handle: Handle<Image> = app.world().resource::<AssetServer>().load(file.to_owned());
    let mut error = None;
    crate::wait_for(app, &format!("{file} to fail loading"), |app| {
        if let LoadState::Failed(e) = app.world().resource::<AssetServer>().load_state(&handle) {
            error = Some(e.to_string());
        }
        error.is_some()
    });
    error.expect("wait_for returned, so the load failed")
}

const WALL: &str = "(\n    prompt: \"a mossy stone wall\",\n    seed: 5,\n    num_inference_steps: 3,\n    tiling: xy,\n)\n";

#[test]
fn a_prompt_file_loads_as_an_image_that_fills_in_with_the_generated_pixels() {
    let (mut app, dir) = app_with_assets("ok", &[("wall.texgen.ron", WALL)]);
    let handle: Handle<Image> = app
        .world()
        .resource::<AssetServer>()
        .load("wall.texgen.ron");
    let request = ron::parse_request_ron(WALL, "wall.texgen.ron".as_ref()).unwrap();
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
    let error = load_error(&mut app, "broken.texgen.ron");
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

/// A 64x64 PNG: a red/blue split, the init image of the img2img prompt files.
fn init_png() -> (image::RgbaImage, Vec<u8>) {
    let img = image::RgbaImage::from_fn(64, 64, |x, _| {
        if x < 32 {
            image::Rgba([200, 30, 30, 255])
        } else {
            image::Rgba([30, 30, 200, 255])
        }
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba8(img.clone())
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    (img, png)
}

const ROCK: &str = "(\n    prompt: \"a grey rock\",\n    seed: 3,\n    num_inference_steps: 4,\n    init_image: Path(\"rock.png\"),\n    strength: 0.5,\n)\n";

#[test]
fn a_relative_init_image_is_read_beside_the_prompt_file_not_from_the_working_folder() {
    let (img, png) = init_png();
    let (mut app, dir) = app_with_asset_bytes(
        "img2img",
        &[
            ("walls/rock.texgen.ron", ROCK.as_bytes().to_vec()),
            ("walls/rock.png", png),
        ],
    );
    let handle: Handle<Image> = app
        .world()
        .resource::<AssetServer>()
        .load("walls/rock.texgen.ron");
    let mut request = ron::parse_request_ron(ROCK, "rock.texgen.ron".as_ref()).unwrap();
    request.init_image = Some(bevy_diffusion::request::InitImage::Rgba {
        width: 64,
        height: 64,
        pixels: img.into_raw(),
    });
    let model = StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).unwrap();
    let core = pipeline::generate(&model, &request, &mut pipeline::NoHooks).unwrap();
    let expected = postprocess::finish(core.image, &request);
    crate::wait_for(&mut app, "the img2img prompt file's pixels", |app| {
        let images = app.world().resource::<Assets<Image>>();
        images.get(&handle).and_then(|i| i.data.as_deref()) == Some(expected.as_raw().as_slice())
    });
    assert!(app.world().resource::<Log>().failed.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_init_image_fails_the_load_naming_the_prompt_file_and_the_image() {
    let (mut app, dir) = app_with_assets("img2img_missing", &[("walls/rock.texgen.ron", ROCK)]);
    let error = load_error(&mut app, "walls/rock.texgen.ron");
    assert!(
        error.contains("walls/rock.texgen.ron") && error.contains("rock.png"),
        "{error}"
    );
    assert!(app.world().resource::<Log>().started.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_init_image_outside_the_asset_folder_is_refused_not_read() {
    let escape = ROCK.replace("rock.png", "../../outside.png");
    let absolute = ROCK.replace("rock.png", "/etc/outside.png");
    let (mut app, dir) = app_with_asset_bytes(
        "img2img_escape",
        &[
            ("walls/escape.texgen.ron", escape.into_bytes()),
            ("walls/absolute.texgen.ron", absolute.into_bytes()),
        ],
    );
    // Refused before any read: the message says why.
    for file in ["walls/escape.texgen.ron", "walls/absolute.texgen.ron"] {
        let error = load_error(&mut app, file);
        assert!(
            error.contains(file)
                && error.contains("outside.png")
                && error.contains("inside the asset folder"),
            "{error}"
        );
    }
    assert!(app.world().resource::<Log>().started.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}
