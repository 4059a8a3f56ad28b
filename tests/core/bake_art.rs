//! `texgen bake` with the game-art fields: `pbr: true` writes NAME_normal/height/roughness/ao.png
//! beside NAME.png (and a missing map rebakes the item), `upscale: 2` upscales the PNG, and an
//! inpainting item's mask file is part of its content hash.

use std::path::Path;

use bevy_diffusion::pipeline::pbr::{PbrImages, PbrOptions, pbr_maps};
use bevy_diffusion::pipeline::{self, NoHooks};
use bevy_diffusion::tools::bake::{self, BakeManifest, BakeOptions, ItemOutcome};
use bevy_diffusion::{LoadOptions, StableDiffusion};
use bevy_diffusion_tests::tiny_sd_model;

use crate::loading::scratch;

const MANIFEST: &str = r#"
(
    items: {
        "stone": (prompt: "mossy stone", seed: 3, tiling: xy, width: 32, height: 32,
                  num_inference_steps: 2, pbr: true, upscale: 2),
        "patch": (prompt: "moss", seed: 5, width: 32, height: 32, num_inference_steps: 2,
                  init_image: Path("init.png"), mask: Path("mask.png"), strength: 1.0),
    },
)
"#;

fn outcomes(manifest: &BakeManifest, options: &BakeOptions) -> Vec<(String, &'static str)> {
    let report = bake::bake(manifest, options, &mut |_| {}).expect("bake runs");
    report
        .items
        .iter()
        .map(|(name, o)| {
            let what = match o {
                ItemOutcome::Baked { .. } => "baked",
                ItemOutcome::Skipped => "skipped",
                ItemOutcome::Failed(_) => "failed",
            };
            (name.clone(), what)
        })
        .collect()
}

fn write_mask(dir: &Path, x_end: u32) {
    image::RgbaImage::from_fn(32, 32, |x, _| {
        let v = if x < x_end { 255 } else { 0 };
        image::Rgba([v, v, v, 255])
    })
    .save(dir.join("mask.png"))
    .unwrap();
}

#[test]
fn bake_writes_pbr_maps_upscales_and_hashes_the_mask() {
    let dir = scratch("bake_art");
    let out = dir.join("out");
    image::RgbaImage::from_fn(32, 32, |x, y| {
        image::Rgba([(x * 8) as u8, (y * 8) as u8, 90, 255])
    })
    .save(dir.join("init.png"))
    .unwrap();
    write_mask(&dir, 16);
    let manifest = BakeManifest::parse(MANIFEST, &dir.join("art.ron")).unwrap();
    let mut options = BakeOptions::new(&out, tiny_sd_model());
    options.base_dir = dir.to_path_buf();

    let first = outcomes(&manifest, &options);
    assert!(first.iter().all(|(_, o)| *o == "baked"), "{first:?}");
    // The PNG is the core's 2x-upscaled output; the maps are pbr_maps of that PNG.
    let stone = image::open(out.join("stone.png")).unwrap().to_rgba8();
    assert_eq!(stone.dimensions(), (64, 64));
    let model = StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).unwrap();
    let request = &manifest
        .items
        .iter()
        .find(|i| i.name == "stone")
        .unwrap()
        .request;
    let generated = pipeline::generate(&model, request, &mut NoHooks).unwrap();
    let expected = pipeline::postprocess::finish(generated.image, request);
    assert!(stone == expected);
    let maps = PbrImages::from(&pbr_maps(&stone, &PbrOptions::default()).unwrap());
    let normal = image::open(out.join("stone_normal.png")).unwrap().to_rgb8();
    assert!(normal == maps.normal);
    for map in ["height", "roughness", "ao"] {
        let img = image::open(out.join(format!("stone_{map}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64), "{map}");
    }
    assert!(
        !out.join("patch_normal.png").exists(),
        "no maps without pbr"
    );
    let patch = image::open(out.join("patch.png")).unwrap();
    assert_eq!((patch.width(), patch.height()), (32, 32));

    // Up to date: nothing to do.
    let again = outcomes(&manifest, &options);
    assert!(again.iter().all(|(_, o)| *o == "skipped"), "{again:?}");
    // A missing map rebakes its item only; a changed mask file rebakes the inpainting item.
    std::fs::remove_file(out.join("stone_ao.png")).unwrap();
    write_mask(&dir, 20);
    let third = outcomes(&manifest, &options);
    assert_eq!(
        third,
        [
            ("stone".to_string(), "baked"),
            ("patch".to_string(), "baked")
        ],
        "{third:?}"
    );
    assert!(out.join("stone_ao.png").is_file());
}
