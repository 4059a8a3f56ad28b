//! Hot reload of a `*.texgen.ron` through Bevy's file watcher (the `file_watcher` feature):
//! editing the file regenerates the same handle. Run with
//! `cargo test -p bevy_diffusion_tests --features file_watcher --test bevy_plugin -- hot_reload`.

use bevy::asset::AssetPlugin;
use bevy::prelude::*;
use bevy_diffusion::{DiffusionPlugin, DiffusionSystems};
use bevy_diffusion_tests::tiny_sd_model;

use crate::{Log, log, wait_for};

const FIRST: &str =
    "(prompt: \"a mossy stone wall\", seed: 5, num_inference_steps: 2, width: 32, height: 32)\n";
const SECOND: &str =
    "(prompt: \"a mossy stone wall\", seed: 6, num_inference_steps: 2, width: 32, height: 32)\n";

#[test]
fn hot_reload_editing_a_prompt_file_regenerates_the_same_handle() {
    let dir = std::env::temp_dir()
        .join("bevy_diffusion_hot_reload")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wall.texgen.ron");
    std::fs::write(&file, FIRST).unwrap();
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: dir.to_string_lossy().into_owned(),
            watch_for_changes_override: Some(true),
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
    let handle: Handle<Image> = app
        .world()
        .resource::<AssetServer>()
        .load("wall.texgen.ron");
    wait_for(&mut app, "the first generation", |app| {
        log(app)
            .finished
            .iter()
            .any(|f| f.handle.id() == handle.id())
    });
    let first = app
        .world()
        .resource::<Assets<Image>>()
        .get(&handle)
        .unwrap()
        .data
        .clone();
    // Let the watcher settle, then edit the file.
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(&file, SECOND).unwrap();
    wait_for(&mut app, "the regeneration after the edit", |app| {
        log(app)
            .finished
            .iter()
            .filter(|f| f.handle.id() == handle.id())
            .count()
            >= 2
    });
    let second = app
        .world()
        .resource::<Assets<Image>>()
        .get(&handle)
        .unwrap()
        .data
        .clone();
    assert_ne!(
        first, second,
        "seed 6 draws other pixels into the same handle"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
