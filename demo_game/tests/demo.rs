//! The demo's game logic in headless apps (`MinimalPlugins + AssetPlugin + ImagePlugin +
//! DiffusionPlugin + DemoPlugin`, no window or renderer): what start-up asks for, Tab, typed
//! prompts, Esc, and the same world after a restart. A generator the tests control records every
//! request it runs; one test runs the embedded model.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bevy::input::ButtonState;
use bevy::input::keyboard::{Key, KeyCode, KeyboardInput};
use bevy::prelude::*;
use bevy_diffusion::pipeline::{DenoisingStep, GenerationHooks};
use bevy_diffusion::{
    AssetKind, DiffusionError, DiffusionPlugin, GenerationRequest, Generator, Tiling, derive_seed,
};
use candle_core::{Device, Tensor};
use demo_game::DemoPlugin;
use demo_game::profiles::{Players, RequestSettings, SaveGame, Slot};
use demo_game::world::{ItemPlace, Jobs, Origin, Tile, WorldSlots};
use image::RgbaImage;

/// Every request the generator ran, in order.
type Record = Arc<Mutex<Vec<GenerationRequest>>>;

/// `num_inference_steps` steps of `step_ms` each (cancellable, with progress); the result is a
/// 32x32 image whose colour comes from the prompt and the seed.
struct Recorder {
    step_ms: u64,
    record: Record,
}

impl Generator for Recorder {
    fn identity(&self) -> String {
        "demo-test-recorder".into()
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> bevy_diffusion::Result<RgbaImage> {
        self.record.lock().unwrap().push(request.clone());
        let t = Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &Device::Cpu)?;
        let total = request.steps();
        for step in 0..total {
            if hooks.should_cancel() {
                return Err(DiffusionError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(self.step_ms));
            let s = || t.clone();
            hooks.on_step(&DenoisingStep {
                step,
                total,
                timestep: 0.0,
                latents_in: s(),
                unet_input: s(),
                unet_output: s(),
                noise_pred: s(),
                pred_original_sample: s(),
                latents_out: s(),
            });
        }
        let h = derive_seed(&request.prompt, &request.seed.to_string()).to_le_bytes();
        let image = RgbaImage::from_fn(32, 32, |x, _| {
            if x < 16 {
                image::Rgba([h[0], h[1], h[2], 255])
            } else {
                image::Rgba([255, 255, 255, 255])
            }
        });
        Ok(bevy_diffusion::pipeline::postprocess::finish(
            image, request,
        ))
    }
}

fn recorder(step_ms: u64) -> (DiffusionPlugin, Record) {
    let record: Record = Arc::default();
    let r = record.clone();
    let plugin = DiffusionPlugin::with_generator(move || {
        Ok(Recorder {
            step_ms,
            record: r.clone(),
        })
    })
    .configure(|s| s.worker.compute_threads = Some(1));
    (plugin, record)
}

fn demo(steps: usize) -> DemoPlugin {
    DemoPlugin {
        requests: RequestSettings {
            steps: Some(steps),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn app(diffusion: DiffusionPlugin, demo: DemoPlugin) -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default(),
        diffusion,
        demo,
    ));
    app.finish();
    app.cleanup();
    app
}

/// Updates `app` (up to 3000 times, 5 ms apart) until `done` holds; panics naming `what`.
fn wait_for(app: &mut App, what: &str, mut done: impl FnMut(&App) -> bool) {
    for _ in 0..3000 {
        app.update();
        if done(app) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "gave up waiting for {what}: {:?}",
        app.world().resource::<Jobs>()
    );
}

fn jobs(app: &App) -> &Jobs {
    app.world().resource::<Jobs>()
}

fn slots(app: &App) -> &WorldSlots {
    app.world().resource::<WorldSlots>()
}

fn wait_startup(app: &mut App) {
    wait_for(app, "the start-up requests", |app| jobs(app).startup_done());
    assert!(
        jobs(app).startup_failures.is_empty(),
        "{:?}",
        jobs(app).startup_failures
    );
}

fn wait_idle(app: &mut App) {
    wait_for(app, "every request to end", |app| {
        jobs(app).pending.is_empty()
    });
}

fn press(app: &mut App, key: Key) {
    app.world_mut().write_message(KeyboardInput {
        key_code: KeyCode::Unidentified(bevy::input::keyboard::NativeKeyCode::Unidentified),
        logical_key: key,
        state: ButtonState::Pressed,
        text: None,
        repeat: false,
        window: Entity::PLACEHOLDER,
    });
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        let key = if c == ' ' {
            Key::Space
        } else {
            Key::Character(c.to_string().as_str().into())
        };
        press(app, key);
    }
}

/// The image every tile of `slot` shows (asserting they all show the same one).
fn tile_image(app: &mut App, slot: Slot) -> Handle<Image> {
    let mut q = app.world_mut().query::<(&Tile, &Sprite)>();
    let handles: Vec<Handle<Image>> = q
        .iter(app.world())
        .filter(|(t, _)| t.0 == slot)
        .map(|(_, s)| s.image.clone())
        .collect();
    assert!(!handles.is_empty(), "{slot} has tiles");
    assert!(
        handles.iter().all(|h| *h == handles[0]),
        "every {slot} tile shows one image"
    );
    handles[0].clone()
}

/// Item place index -> (image, visible).
fn item_places(app: &mut App) -> BTreeMap<usize, (Handle<Image>, bool)> {
    let mut q = app
        .world_mut()
        .query::<(&ItemPlace, &Sprite, &Visibility)>();
    q.iter(app.world())
        .map(|(p, s, v)| (p.index, (s.image.clone(), *v != Visibility::Hidden)))
        .collect()
}

fn pixels(app: &App, handle: &Handle<Image>) -> Vec<u8> {
    app.world()
        .resource::<Assets<Image>>()
        .get(handle)
        .and_then(|i| i.data.clone())
        .expect("CPU-side pixels")
}

/// (prompt, seed, kind, tiling, player) per request, sorted.
fn summary(requests: &[GenerationRequest]) -> Vec<(String, u64, AssetKind, Tiling, String)> {
    let mut v: Vec<_> = requests
        .iter()
        .map(|r| {
            (
                r.prompt.clone(),
                r.seed,
                r.kind,
                r.tiling,
                r.player.clone().unwrap_or_default(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn expected_world(
    player: &str,
    theme: &str,
    colour: &str,
    metal: &str,
) -> Vec<(String, u64, AssetKind, Tiling, String)> {
    let seed = |key: &str| derive_seed(player, key);
    let tex = |p: String, key: &str| {
        (
            p,
            seed(key),
            AssetKind::Texture,
            Tiling::XY,
            player.to_string(),
        )
    };
    let spr = |p: String, key: &str| {
        (
            p,
            seed(key),
            AssetKind::Sprite,
            Tiling::None,
            player.to_string(),
        )
    };
    let mut v = vec![
        tex(format!("{theme} cobblestone floor"), "world/floor"),
        tex(format!("{theme} stone brick wall"), "world/wall"),
        spr(format!("a {colour} potion"), "world/item/0"),
        spr(format!("a {metal} sword"), "world/item/1"),
        spr(format!("a {metal} shield"), "world/item/2"),
        spr(format!("a {colour} gem"), "world/item/3"),
    ];
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn start_up_requests_the_active_players_world() {
    let (plugin, record) = recorder(0);
    let mut app = app(plugin, demo(3));
    wait_startup(&mut app);
    let requests = record.lock().unwrap().clone();
    assert_eq!(
        summary(&requests),
        expected_world("ann", "mossy dark", "red", "iron"),
        "floor and wall: seamless textures; items: sprites; seeds derive_seed(player, key)"
    );
    assert!(requests.iter().all(|r| r.num_inference_steps == Some(3)));
    assert_eq!(jobs(&app).finished, 6);

    let floor = tile_image(&mut app, Slot::Floor);
    let wall = tile_image(&mut app, Slot::Wall);
    assert_ne!(floor, wall);
    assert_eq!(Some(&floor), slots(&app).shown(Slot::Floor));
    let items = item_places(&mut app);
    for i in 0..4 {
        assert!(items[&i].1, "item {i} is shown");
        assert_eq!(Some(&items[&i].0), slots(&app).shown(Slot::Item(i)));
    }
    assert!(!items[&4].1 && !items[&5].1, "free places are hidden");
    // The sprites were keyed: the white half of the test image is transparent.
    let potion = pixels(&app, &items[&0].0);
    assert_eq!(potion[4 * 31 + 3], 0, "background keyed out");
    assert_eq!(potion[3], 255, "the item stays opaque");
    // Pixel art: nearest sampling, and textures still repeat.
    let images = app.world().resource::<Assets<Image>>();
    let bevy::image::ImageSampler::Descriptor(d) = &images.get(&floor).unwrap().sampler else {
        panic!("explicit sampler")
    };
    assert_eq!(d.mag_filter, bevy::image::ImageFilterMode::Nearest);
    assert_eq!(d.address_mode_u, bevy::image::ImageAddressMode::Repeat);
}

#[test]
fn tab_switches_player_and_requests_their_world() {
    let (plugin, record) = recorder(0);
    let mut app = app(plugin, demo(2));
    wait_startup(&mut app);
    let ann_floor = tile_image(&mut app, Slot::Floor);
    record.lock().unwrap().clear();

    press(&mut app, Key::Tab);
    app.update();
    assert_eq!(app.world().resource::<Players>().active().id, "bob");
    assert!(
        jobs(&app)
            .pending
            .values()
            .all(|j| j.player == "bob" && j.origin == Origin::World),
        "bob's world is requested"
    );
    wait_idle(&mut app);
    let requests = record.lock().unwrap().clone();
    assert_eq!(
        summary(&requests),
        expected_world("bob", "sandy desert", "blue", "golden")
    );
    let bob_floor = tile_image(&mut app, Slot::Floor);
    assert_ne!(bob_floor, ann_floor);
    assert_ne!(pixels(&app, &bob_floor), pixels(&app, &ann_floor));

    // Back to ann: her world again, the same pixels (from the plugin's memory cache).
    record.lock().unwrap().clear();
    press(&mut app, Key::Tab);
    app.update();
    wait_idle(&mut app);
    assert_eq!(app.world().resource::<Players>().active().id, "ann");
    assert!(record.lock().unwrap().is_empty(), "served from the cache");
    let again = tile_image(&mut app, Slot::Floor);
    assert_eq!(pixels(&app, &again), pixels(&app, &ann_floor));
}

#[test]
fn a_typed_prompt_replaces_the_image_on_every_tile_of_its_target() {
    let (plugin, record) = recorder(0);
    let mut app = app(plugin, demo(2));
    wait_startup(&mut app);
    let old_wall = tile_image(&mut app, Slot::Wall);
    let floor = tile_image(&mut app, Slot::Floor);
    record.lock().unwrap().clear();

    press(&mut app, Key::F2);
    type_text(&mut app, "{theme} lava wallx");
    press(&mut app, Key::Backspace);
    press(&mut app, Key::Enter);
    app.update();
    let (&id, job) = jobs(&app)
        .pending
        .iter()
        .next()
        .expect("a request in flight");
    assert_eq!((job.slot, job.origin), (Slot::Wall, Origin::Typed));
    assert_eq!(job.prompt, "mossy dark lava wall");
    let new_handle = job.handle.clone();
    wait_idle(&mut app);

    let requests = record.lock().unwrap().clone();
    assert_eq!(
        summary(&requests),
        vec![(
            "mossy dark lava wall".to_string(),
            derive_seed("ann", "world/wall"),
            AssetKind::Texture,
            Tiling::XY,
            "ann".to_string()
        )]
    );
    let wall = tile_image(&mut app, Slot::Wall);
    assert_eq!(wall, new_handle, "every wall tile shows the new texture");
    assert_ne!(wall, old_wall);
    assert_eq!(slots(&app).0[&Slot::Wall].request, Some(id));
    assert_eq!(
        tile_image(&mut app, Slot::Floor),
        floor,
        "the floor is untouched"
    );
    let save = app.world().resource::<SaveGame>();
    assert_eq!(
        save.players["ann"].prompts["world/wall"],
        "mossy dark lava wall"
    );

    // An item: a sprite in the first free item place.
    press(&mut app, Key::F3);
    type_text(&mut app, "a glowing mushroom");
    press(&mut app, Key::Enter);
    app.update();
    wait_idle(&mut app);
    let last = record.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.kind, AssetKind::Sprite);
    assert_eq!(last.seed, derive_seed("ann", "world/item/4"));
    let items = item_places(&mut app);
    assert!(items[&4].1, "the new item is shown");
    assert_eq!(Some(&items[&4].0), slots(&app).shown(Slot::Item(4)));
}

#[test]
fn esc_cancels_the_pending_requests() {
    let (plugin, record) = recorder(20);
    let mut app = app(plugin, demo(200));
    wait_for(&mut app, "the first request to start", |app| {
        jobs(app).pending.values().any(|j| j.step > 0)
    });
    press(&mut app, Key::Escape);
    app.update();
    wait_idle(&mut app);
    let j = jobs(&app);
    assert_eq!(j.cancelled, 6, "{j:?}");
    assert_eq!(j.finished, 0);
    assert!(j.startup_done());
    assert!(
        record.lock().unwrap().len() <= 2,
        "the queued requests never ran"
    );
    assert!(
        item_places(&mut app).values().all(|(_, shown)| !shown),
        "cancelled items without a preview leave their places empty"
    );
    assert!(
        slots(&app).shown(Slot::Floor).is_some(),
        "tiles keep their image"
    );
}

/// A folder under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("demo_game_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every slot's pixels.
fn world_pixels(app: &App) -> BTreeMap<Slot, Vec<u8>> {
    slots(app)
        .0
        .iter()
        .filter_map(|(slot, v)| Some((*slot, pixels(app, v.shown.as_ref()?))))
        .collect()
}

#[test]
fn after_a_restart_each_player_sees_the_same_world() {
    let scratch = Scratch::new("restart");
    let start = |player: &str| {
        let (plugin, record) = recorder(0);
        let plugin = plugin.configure(|s| s.worker.cache_dir = Some(scratch.0.join("images")));
        let mut players = Players::default();
        assert!(players.select(player));
        let demo = DemoPlugin {
            players,
            save: SaveGame::load(&scratch.0.join("save.json")),
            ..demo(2)
        };
        let mut app = app(plugin, demo);
        wait_startup(&mut app);
        (app, record)
    };

    let (mut first, record) = start("bob");
    press(&mut first, Key::F1);
    type_text(&mut first, "cracked {colour} ice");
    press(&mut first, Key::Enter);
    first.update();
    wait_idle(&mut first);
    let bob = world_pixels(&first);
    let first_requests = summary(&record.lock().unwrap());
    assert_eq!(first_requests.len(), 7);
    drop(first);

    let (second, record) = start("bob");
    assert!(
        record.lock().unwrap().is_empty(),
        "every image came from the disk cache"
    );
    assert_eq!(
        slots(&second).0[&Slot::Floor].prompt.as_deref(),
        Some("cracked blue ice"),
        "the typed floor came back"
    );
    assert_eq!(world_pixels(&second), bob, "the same pixels");
    drop(second);

    // ann was never played: her world is generated with her own seeds.
    let (third, record) = start("ann");
    let requests = record.lock().unwrap().clone();
    assert_eq!(
        summary(&requests),
        expected_world("ann", "mossy dark", "red", "iron")
    );
    drop(third);
}

#[test]
fn the_embedded_model_builds_the_world() {
    let mut app = app(
        DiffusionPlugin::default().configure(|s| s.worker.compute_threads = Some(1)),
        demo(2),
    );
    wait_for(
        &mut app,
        "the start-up requests on the embedded model",
        |app| jobs(app).startup_done(),
    );
    assert!(
        jobs(&app).startup_failures.is_empty(),
        "{:?}",
        jobs(&app).startup_failures
    );
    assert_eq!(jobs(&app).finished, 6);
    let floor = tile_image(&mut app, Slot::Floor);
    let images = app.world().resource::<Assets<Image>>();
    let image = images.get(&floor).expect("the floor image");
    assert!(image.width() >= 8 && image.width() == image.height());
    assert!(
        pixels(&app, &floor).chunks(4).all(|p| p[3] == 255),
        "textures are opaque"
    );
}
