//! The shipped default model (the `bevy_diffusion_default_model` crate, compiled in): compact
//! safetensors (8-bit weights with per-output-channel f16 scales, every other tensor f16) and
//! json only, small enough for a crates.io package, 64x64 RGBA, loaded from memory with no
//! file present, overridden by a folder on disk, and on a handful of fixed prompts and seeds
//! draws the colour the prompt names, sprites with transparent borders and opaque centres, and
//! seamless tiles. The full quality evaluation (>= 200 prompts, pattern classifier) lives in
//! `training/` (see training/README.md); these are its cheap Rust-side checks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bevy_diffusion::loading::embedded::{self, EMBEDDED_DIR};
use bevy_diffusion::{
    GenerationRequest, LoadOptions, StableDiffusion, pipeline, pipeline::postprocess,
};
use bevy_diffusion_tests::parity::{roll, rolled_diff, seam_ratio};
use image::RgbaImage;

/// The compiled-in model's folder, `<embedded>`: no such folder exists on disk.
fn model_dir() -> PathBuf {
    embedded::embedded_model_dir()
}

/// The companion crate's folder in this repository (what its .crate packages).
fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../default_model")
}

fn model() -> &'static StableDiffusion {
    static MODEL: OnceLock<StableDiffusion> = OnceLock::new();
    MODEL.get_or_init(|| {
        StableDiffusion::load(&model_dir(), &LoadOptions::default())
            .expect("the default model loads")
    })
}

fn generate_with(m: &StableDiffusion, request: GenerationRequest) -> RgbaImage {
    let out = m
        .run_with_threads(None, || {
            pipeline::generate(m, &request, &mut pipeline::NoHooks)
        })
        .expect("generates");
    postprocess::finish(out.image, &request)
}

fn generate(request: GenerationRequest) -> RgbaImage {
    generate_with(model(), request)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// An empty folder of its own under the system temp folder.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bd_embedded_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_compiled_in_files_are_the_model_folder_compact_safetensors_and_json_only() {
    let folder = crate_dir().join("model");
    let mut on_disk = Vec::new();
    files_under(&folder, &mut on_disk);
    let mut on_disk: Vec<String> = on_disk
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&folder).unwrap();
            rel.components()
                .map(|c| c.as_os_str().to_str().unwrap())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    on_disk.sort();
    let files = bevy_diffusion::loading::model_files::embedded_files();
    let mut compiled: Vec<String> = files.iter().map(|(p, _)| p.to_string()).collect();
    compiled.sort();
    assert_eq!(
        compiled, on_disk,
        "default_model/src/lib.rs lists every file of model/"
    );
    let mut total = 0;
    for (rel, bytes) in files {
        assert_eq!(
            *bytes,
            &std::fs::read(folder.join(rel)).unwrap()[..],
            "{rel} as compiled in"
        );
        total += bytes.len();
        if rel.ends_with(".safetensors") {
            // The header (u64 length + JSON): every tensor stored as I8 with an F16
            // `<name>_scale` of one value per output channel, or as F16. The 8-bit ones are
            // what `training/compact_weights.py --int8` quantizes: every tensor of two or more
            // dimensions and at least 256 values (weight matrices, conv kernels, embeddings).
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            let tensors = header.as_object().unwrap();
            let mut int8 = 0;
            for (name, t) in tensors {
                if name == "__metadata__" {
                    continue;
                }
                let shape: Vec<u64> = t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect();
                match t["dtype"].as_str().unwrap() {
                    "I8" => {
                        int8 += 1;
                        let scale = tensors
                            .get(&format!("{name}_scale"))
                            .unwrap_or_else(|| panic!("{rel}: {name} is I8 with no {name}_scale"));
                        assert_eq!(scale["dtype"], "F16", "{rel}: {name}_scale");
                        assert_eq!(
                            scale["shape"],
                            serde_json::json!([shape[0]]),
                            "{rel}: {name}_scale"
                        );
                    }
                    "F16" if name.ends_with("_scale") => {
                        let weight = &name[..name.len() - "_scale".len()];
                        assert!(
                            tensors.get(weight).is_some_and(|w| w["dtype"] == "I8"),
                            "{rel}: {name} scales no I8 tensor"
                        );
                    }
                    "F16" => assert!(
                        shape.len() < 2 || shape.iter().product::<u64>() < 256,
                        "{rel}: {name} {shape:?} is a weight left in f16"
                    ),
                    other => panic!("{rel}: {name} is stored as {other}"),
                }
            }
            assert!(int8 > 0, "{rel} holds no 8-bit weights");
        } else {
            assert!(
                rel.ends_with(".json"),
                "{rel} is neither safetensors nor json"
            );
        }
    }
    assert!(total <= 8_000_000, "{total} bytes compiled in");
}

/// crates.io refuses a .crate (a gzip-compressed tar) over 10 MiB ("max upload size is:
/// 10485760"). Estimate the companion crate's: every file it packages (Cargo.toml's `include`)
/// deflated at cargo's level (best), plus a 512-byte tar header and up to 511 bytes of padding
/// per file; `.ci/run` checks the real `cargo package` output.
#[test]
fn the_companion_crate_fits_a_crates_io_package() {
    const LIMIT: u64 = 10 * 1024 * 1024;
    let dir = crate_dir();
    let mut files = vec![dir.join("Cargo.toml"), dir.join("README.md")];
    files_under(&dir.join("src"), &mut files);
    files_under(&dir.join("model"), &mut files);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for f in &files {
        encoder.write_all(&std::fs::read(f).unwrap()).unwrap();
    }
    let compressed = encoder.finish().unwrap().len() as u64 + 1024 * files.len() as u64;
    assert!(
        compressed < LIMIT - 200_000,
        "the companion crate would be ~{compressed} bytes compressed, over crates.io's {LIMIT} \
         less a 200 kB margin"
    );
}

#[test]
fn with_no_model_folder_anywhere_the_compiled_in_model_loads_from_memory() {
    // Nothing on the search path: the default is the compiled-in model, which no file backs.
    let empty = temp_dir("empty");
    let dir = embedded::resolve_default_model_dir(None, std::slice::from_ref(&empty));
    assert_eq!(dir, model_dir());
    assert_eq!(
        embedded::resolve_default_model_dir(Some("".into()), std::slice::from_ref(&empty)),
        model_dir()
    );
    assert!(!Path::new(EMBEDDED_DIR).exists() && !empty.join(EMBEDDED_DIR).exists());
    assert!(std::fs::read_dir(&empty).unwrap().next().is_none());
    let m = model();
    assert_eq!(m.dir, dir);
    let img = generate(request("red bricks", 1));
    assert_eq!(img.dimensions(), (64, 64));
    assert!(
        img.pixels().any(|p| p.0 != img.get_pixel(0, 0).0),
        "not a flat image"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn a_model_folder_on_disk_overrides_the_compiled_in_model() {
    let root = temp_dir("override");
    let folder = root.join("assets").join("models").join("default");
    let written = embedded::write_embedded_model(&folder).unwrap();
    assert_eq!(
        written.len(),
        bevy_diffusion::loading::model_files::embedded_files().len()
    );
    let empty = temp_dir("override_empty");
    let search = [empty.clone(), root.clone()];
    assert_eq!(embedded::resolve_default_model_dir(None, &search), folder);
    // The environment variable comes first.
    assert_eq!(
        embedded::resolve_default_model_dir(Some("elsewhere".into()), &search),
        PathBuf::from("elsewhere")
    );
    // The folder is what loads (the same weights: the same pixels as from memory).
    let from_disk = StableDiffusion::load(&folder, &LoadOptions::default()).expect("loads");
    assert_eq!(from_disk.dir, folder);
    let req = request("green grass", 2);
    assert_eq!(
        generate_with(&from_disk, req.clone()).into_raw(),
        generate(req).into_raw()
    );
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&empty);
}

/// Hue (degrees), saturation, value of an RGB pixel in [0, 1] (training/evaluate.py's `_hsv`).
fn hsv(p: [u8; 4]) -> (f64, f64, f64) {
    let [r, g, b] = [p[0], p[1], p[2]].map(|v| v as f64 / 255.0);
    let (mx, mn) = (r.max(g).max(b), r.min(g).min(b));
    let d = mx - mn;
    let s = if mx > 0.0 { d / mx } else { 0.0 };
    let dd = d.max(1e-8);
    let h = if mx == r {
        ((g - b) / dd).rem_euclid(6.0)
    } else if mx == g {
        (b - r) / dd + 2.0
    } else {
        (r - g) / dd + 4.0
    } * 60.0;
    (h, s, mx)
}

/// The dominant colour class of the opaque pixels (training/evaluate.py's `colour_class`).
fn colour_class(img: &RgbaImage) -> &'static str {
    const HUES: [(f64, &str); 9] = [
        (15.0, "red"),
        (40.0, "orange"),
        (70.0, "yellow"),
        (165.0, "green"),
        (200.0, "cyan"),
        (255.0, "blue"),
        (290.0, "purple"),
        (345.0, "pink"),
        (361.0, "red"),
    ];
    let px: Vec<_> = img
        .pixels()
        .filter(|p| p.0[3] >= 128)
        .map(|p| hsv(p.0))
        .collect();
    let chromatic: Vec<_> = px
        .iter()
        .filter(|(_, s, v)| *s >= 0.25 && *v >= 0.2)
        .collect();
    let mut counts = std::collections::HashMap::new();
    if !px.is_empty() && chromatic.len() as f64 >= 0.3 * px.len() as f64 {
        for (h, _, v) in chromatic {
            let mut name = HUES
                .iter()
                .find(|(hi, _)| h < hi)
                .map(|(_, n)| *n)
                .unwrap_or("red");
            if (10.0..45.0).contains(h) && *v < 0.6 {
                name = "brown";
            }
            *counts.entry(name).or_insert(0) += 1;
        }
    } else {
        for (_, _, v) in px {
            *counts
                .entry(if v < 0.25 {
                    "black"
                } else if v > 0.8 {
                    "white"
                } else {
                    "grey"
                })
                .or_insert(0) += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(c, _)| c)
        .unwrap_or("none")
}

fn request(prompt: &str, seed: u64) -> GenerationRequest {
    GenerationRequest {
        seed,
        num_inference_steps: Some(12),
        guidance_scale: Some(4.0),
        ..GenerationRequest::texture(prompt)
    }
}

#[test]
fn tiles_and_sprites_have_the_colour_the_prompt_names() {
    let cases = [
        (request("red bricks", 1), &["red"][..]),
        (request("green grass", 2), &["green"][..]),
        (request("blue water", 3), &["blue", "cyan"][..]),
        (request("yellow sand", 4), &["yellow", "orange"][..]),
        (
            GenerationRequest {
                kind: bevy_diffusion::request::AssetKind::Sprite,
                tiling: bevy_diffusion::Tiling::None,
                ..request("a red potion", 5)
            },
            &["red"][..],
        ),
        (
            GenerationRequest {
                kind: bevy_diffusion::request::AssetKind::Sprite,
                tiling: bevy_diffusion::Tiling::None,
                ..request("a blue gem", 6)
            },
            &["blue", "cyan"][..],
        ),
        (
            GenerationRequest {
                kind: bevy_diffusion::request::AssetKind::Sprite,
                tiling: bevy_diffusion::Tiling::None,
                ..request("a green mushroom", 7)
            },
            &["green"][..],
        ),
        (request("purple marble", 8), &["purple", "pink"][..]),
    ];
    let mut wrong = Vec::new();
    for (req, accepted) in &cases {
        let got = colour_class(&generate(req.clone()));
        if !accepted.contains(&got) {
            wrong.push(format!("{:?} -> {got}", req.prompt));
        }
    }
    // The bar is 90% colour accuracy over the full list; here 7 of 8.
    assert!(wrong.len() <= 1, "colour mismatches: {wrong:?}");
}

#[test]
fn sprites_have_transparent_borders_and_opaque_centres() {
    for (prompt, seed) in [
        ("a red potion", 11),
        ("a gold coin", 12),
        ("a blue shield", 13),
    ] {
        let req = GenerationRequest {
            seed,
            num_inference_steps: Some(12),
            guidance_scale: Some(4.0),
            ..GenerationRequest::sprite(prompt)
        };
        let img = generate(req);
        let (w, h) = img.dimensions();
        assert_eq!((w, h), (64, 64));
        let alpha = |x: u32, y: u32| img.get_pixel(x, y).0[3] as f64 / 255.0;
        // As training/evaluate.py (`dataset.alpha_stats`): the border is the outer n/16 pixels
        // (4 at 64 px) on each side, the centre the middle n/8 x n/8 square (8 x 8).
        let b = w / 16;
        let border: Vec<f64> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| x < b || y < b || x >= w - b || y >= h - b)
            .map(|(x, y)| alpha(x, y))
            .collect();
        let border_mean = border.iter().sum::<f64>() / border.len() as f64;
        let c = w / 8;
        let (x0, y0) = ((w - c) / 2, (h - c) / 2);
        let centre: Vec<f64> = (y0..y0 + c)
            .flat_map(|y| (x0..x0 + c).map(move |x| (x, y)))
            .map(|(x, y)| alpha(x, y))
            .collect();
        let centre_mean = centre.iter().sum::<f64>() / centre.len() as f64;
        assert!(
            border_mean <= 0.05,
            "{prompt}: border alpha {border_mean:.3}"
        );
        assert!(
            centre_mean >= 0.9,
            "{prompt}: centre alpha {centre_mean:.3}"
        );
    }
}

/// The VAE's downscale factor: the shipped model decodes each latent cell into an 8x8 block.
const VAE_FACTOR: u32 = 8;

const SEAM_PROMPTS: [&str; 6] = [
    "mossy cobblestone",
    "red bricks",
    "wood planks",
    "dark lava",
    "grey metal plates",
    "green grass",
];

#[test]
fn tiles_are_seamless() {
    // One column pair is a noisy figure (even perfectly periodic training tiles fail a per-image
    // 1.1x rule a third of the time), so average over tiles and both axes. The wrap is compared
    // with the interior pairs at the same place in the latent grid: an 8x VAE draws each latent
    // cell as an 8x8 block, and neighbour differences across block boundaries are larger than
    // inside a block (printed below: 0.95-1.45x on these tiles, mean 1.18x), and the wrap is a
    // block boundary. Said plainly: the v1-era form of this test (the wrap against all interior
    // pairs, mean <= 1.1) fails on this model, at 1.209; against the block boundaries the mean is
    // 1.063. That form is kept as a bound on how much worse the block edges may get (<= 1.3).
    // `tiles_are_a_torus` is the check that there is no seam by construction.
    let (mut ratios, mut plain, mut blocks) = (Vec::new(), Vec::new(), Vec::new());
    for (i, prompt) in SEAM_PROMPTS.iter().enumerate() {
        let img = generate(request(prompt, 30 + i as u64));
        for along_x in [true, false] {
            // The wrap against the interior latent-cell boundaries (pairs `8k - 1 | 8k`, the
            // kind the wrap `63 | 0` is), and against every interior pair.
            let (on_boundaries, all) = (
                seam_ratio(&img, along_x, VAE_FACTOR),
                seam_ratio(&img, along_x, 1),
            );
            ratios.push(on_boundaries);
            plain.push(all);
            // Block-boundary pairs over the other pairs: the ratio of the two interiors.
            let n = f64::from(img.width() - 1);
            let k = f64::from(img.width() / VAE_FACTOR - 1);
            let mean_all = 1.0 / all;
            let mean_boundaries = 1.0 / on_boundaries;
            blocks.push(mean_boundaries / ((n * mean_all - k * mean_boundaries) / (n - k)));
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "seam / interior cell boundaries: mean {:.3} ({ratios:.2?}); / all interior pairs: mean \
         {:.3} ({plain:.2?}); cell-boundary pairs / other pairs: mean {:.2} ({blocks:.2?})",
        mean(&ratios),
        mean(&plain),
        mean(&blocks)
    );
    assert!(
        mean(&ratios) <= 1.1,
        "mean seam / interior cell-boundary ratio {:.3} ({ratios:.2?})",
        mean(&ratios)
    );
    assert!(
        mean(&plain) <= 1.3,
        "mean seam / all interior pairs {:.3} ({plain:.2?}): the 8-px block edges got stronger",
        mean(&plain)
    );
}

#[test]
fn tiles_are_a_torus() {
    // With tiling xy every padded conv of the UNet and the VAE decoder wraps around, so the
    // image has no edge: rolling the initial noise by 4 latent cells in x and in y rolls the
    // image by 32 pixels in x and y (within 2/255 of float rounding; measured: exactly). 4
    // cells, because the UNet's two stride-2 downsamplers are equivariant only to shifts by
    // multiples of 4 latent cells. Without tiling the edges differ.
    use bevy_diffusion::noise::{NoiseSource, SeededNoise};
    use bevy_diffusion::pipeline::ExplicitNoise;
    let m = model();
    let f = m.vae_config.downscale_factor;
    assert_eq!(f as u32, VAE_FACTOR);
    let side = 64 / f;
    let noise = SeededNoise::new(7)
        .randn(
            &[1, m.unet_config.in_channels, side, side],
            &candle_core::Device::Cpu,
        )
        .unwrap();
    // 2^(downsamplers) latent cells: the smallest shift every level of the UNet sees whole.
    let levels = m.unet_config.block_out_channels.len() - 1;
    let cells = 1usize << levels;
    let shift = (cells * f) as u32;
    let rolled = roll(&roll(&noise, 3, cells), 2, cells);
    let run = |noise: &candle_core::Tensor, tiling: bevy_diffusion::Tiling| {
        let req = GenerationRequest {
            tiling,
            ..request("red bricks", 0)
        };
        let explicit = ExplicitNoise {
            noise: Some(noise.clone()),
            vae_sample_eps: None,
        };
        let out = model()
            .run_with_threads(None, || {
                pipeline::generate_with_noise(
                    model(),
                    &req,
                    &explicit,
                    &mut SeededNoise::new(0),
                    &mut pipeline::NoHooks,
                )
            })
            .expect("generates");
        postprocess::finish(out.image, &req)
    };
    let xy = bevy_diffusion::Tiling::XY;
    let (worst, mean) = rolled_diff(&run(&noise, xy), &run(&rolled, xy), shift, shift);
    let none = bevy_diffusion::Tiling::None;
    let (_, plain_mean) = rolled_diff(&run(&noise, none), &run(&rolled, none), shift, shift);
    eprintln!(
        "rolled by {cells} latent cells: tiling xy worst {worst} mean {mean:.4}; none mean {plain_mean:.3}"
    );
    assert!(
        worst <= 2,
        "tiling xy is shift-equivariant (worst {worst}, mean {mean:.4})"
    );
    assert!(
        plain_mean > 10.0 * mean.max(0.01),
        "without tiling the edges differ (mean {plain_mean:.3} vs {mean:.4})"
    );
}
