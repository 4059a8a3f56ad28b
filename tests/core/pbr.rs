//! PBR maps from a texture (`bevy_diffusion::pipeline::pbr`): analytic cases, the normal-map
//! convention (OpenGL, +Y up), wrap-around (seamless in, seamless out) and bad input.

use bevy_diffusion::DiffusionError;
use bevy_diffusion::pipeline::pbr::{PbrImages, PbrOptions, pbr_maps};
use image::{Rgba, RgbaImage};

fn grey_image(w: u32, h: u32, f: impl Fn(u32, u32) -> f32) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        let v = (f(x, y).clamp(0.0, 1.0) * 255.0).round() as u8;
        Rgba([v, v, v, 255])
    })
}

#[test]
fn flat_image_gives_a_flat_normal_map() {
    let img = RgbaImage::from_pixel(16, 12, Rgba([90, 140, 30, 255]));
    let maps = pbr_maps(&img, &PbrOptions::default()).unwrap();
    let normal = PbrImages::from(&maps).normal;
    assert!(normal.pixels().all(|p| p.0 == [128, 128, 255]));
    // Uniform: no occlusion, roughness = the base value.
    assert!(maps.ao.data.iter().all(|&v| (v - 1.0).abs() < 1e-5));
    let base = PbrOptions::default().roughness_base;
    assert!(maps.roughness.data.iter().all(|&v| (v - base).abs() < 1e-5));
}

/// A ramp rising to the right (in the interior, away from the wrap-around step) tilts the
/// normal to -X (red < 128, OpenGL / Bevy convention); green stays 128. A ramp rising towards
/// the top of the image tilts it to -Y (green < 128), one rising towards the bottom to +Y.
#[test]
fn ramps_tilt_the_normal_as_documented() {
    let opts = PbrOptions {
        height_blur: 0.0,
        normal_strength: 8.0,
        ..Default::default()
    };
    let right = grey_image(32, 8, |x, _| x as f32 / 31.0);
    let maps = pbr_maps(&right, &opts).unwrap();
    let n = PbrImages::from(&maps).normal;
    for x in 2..30 {
        let p = n.get_pixel(x, 4).0;
        assert!(p[0] < 128 && p[1] == 128 && p[2] > 128, "x {x}: {p:?}");
        // Analytic: slope 1/31 per pixel (up to 8-bit steps), strength 8 -> nx = -s / sqrt(1 + s^2).
        let s: f32 = 8.0 / 31.0;
        let nx = maps.normals[(4 * 32 + x) as usize][0];
        assert!(
            (nx + s / (1.0 + s * s).sqrt()).abs() < 0.02,
            "x {x}: nx {nx}"
        );
    }
    // Rising towards the top = height decreasing with the row index.
    let up = grey_image(8, 32, |_, y| 1.0 - y as f32 / 31.0);
    let n = PbrImages::from(&pbr_maps(&up, &opts).unwrap()).normal;
    for y in 2..30 {
        let p = n.get_pixel(4, y).0;
        assert!(p[0] == 128 && p[1] < 128, "y {y}: {p:?}");
    }
    let down = grey_image(8, 32, |_, y| y as f32 / 31.0);
    let n = PbrImages::from(&pbr_maps(&down, &opts).unwrap()).normal;
    for y in 2..30 {
        let p = n.get_pixel(4, y).0;
        assert!(p[0] == 128 && p[1] > 128, "y {y}: {p:?}");
    }
}

#[test]
fn normals_are_unit_length() {
    let img = RgbaImage::from_fn(40, 24, |x, y| {
        let v = ((x * 37 + y * 91) ^ (x * y)) % 256;
        Rgba([v as u8, (v / 2) as u8, 255 - v as u8, 255])
    });
    let maps = pbr_maps(&img, &PbrOptions::default()).unwrap();
    for n in &maps.normals {
        let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
        assert!((len - 1.0).abs() < 1e-5, "{n:?}");
        assert!(n[2] > 0.0);
    }
    // The 8-bit encoding decodes to unit length up to the quantisation step.
    for p in PbrImages::from(&maps).normal.pixels() {
        let d = p.0.map(|c| c as f32 / 255.0 * 2.0 - 1.0);
        let len = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        assert!((len - 1.0).abs() < 0.015, "{p:?}");
    }
}

/// Mean absolute difference between columns `a` and `b` (`along_x`) or rows `a` and `b`.
fn pair_diff(get: &dyn Fn(u32, u32) -> f64, w: u32, h: u32, along_x: bool, a: u32, b: u32) -> f64 {
    let m = if along_x { h } else { w };
    let px = |i: u32, j: u32| if along_x { get(i, j) } else { get(j, i) };
    (0..m).map(|j| (px(a, j) - px(b, j)).abs()).sum::<f64>() / m as f64
}

/// Every map channel of `images` as a closure over (x, y).
fn channels(images: &PbrImages) -> Vec<Box<dyn Fn(u32, u32) -> f64 + '_>> {
    let mut out: Vec<Box<dyn Fn(u32, u32) -> f64 + '_>> = Vec::new();
    for c in 0..3 {
        out.push(Box::new(move |x, y| {
            images.normal.get_pixel(x, y).0[c] as f64
        }));
    }
    for g in [&images.height, &images.roughness, &images.ao] {
        out.push(Box::new(move |x, y| g.get_pixel(x, y).0[0] as f64));
    }
    out
}

/// A periodic height field (sines whose periods divide the size) gives periodic maps: the maps
/// of the image rolled by (dx, dy) are the rolled maps, so the wrap-around seam pair of columns
/// (rows) has exactly the statistic of the interior pair it becomes after the roll, and it lies
/// within the interior's range. A non-periodic ramp does show a seam.
#[test]
fn periodic_height_gives_seamless_maps() {
    use std::f32::consts::TAU;
    let (w, h) = (64u32, 48u32);
    let field = |x: u32, y: u32| {
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        0.5 + 0.2 * (TAU * 2.0 * u).sin()
            + 0.15 * (TAU * 3.0 * v + 1.0).cos()
            + 0.1 * (TAU * (u + 2.0 * v)).sin()
    };
    let (dx, dy) = (21u32, 17u32);
    let img = grey_image(w, h, field);
    let rolled = grey_image(w, h, |x, y| field((x + dx) % w, (y + dy) % h));
    let a = PbrImages::from(&pbr_maps(&img, &PbrOptions::default()).unwrap());
    let b = PbrImages::from(&pbr_maps(&rolled, &PbrOptions::default()).unwrap());
    for (ca, cb) in channels(&a).iter().zip(channels(&b).iter()) {
        for y in 0..h {
            for x in 0..w {
                let (va, vb) = (ca((x + dx) % w, (y + dy) % h), cb(x, y));
                assert!((va - vb).abs() <= 1.0, "({x}, {y}): {va} vs {vb}");
            }
        }
        for along_x in [true, false] {
            let (n, k) = if along_x { (w, dx) } else { (h, dy) };
            let seam = pair_diff(ca.as_ref(), w, h, along_x, n - 1, 0);
            // In the rolled maps the seam pair sits at (n - 1 - k, n - k): interior.
            let same = pair_diff(cb.as_ref(), w, h, along_x, n - 1 - k, n - k);
            let interior: Vec<f64> = (0..n - 1)
                .map(|i| pair_diff(ca.as_ref(), w, h, along_x, i, i + 1))
                .collect();
            let max = interior.iter().cloned().fold(0.0, f64::max);
            let mean = interior.iter().sum::<f64>() / interior.len() as f64;
            assert!(
                (seam - same).abs() <= 1.0,
                "seam {seam} vs interior twin {same}"
            );
            // Up to one 8-bit step of rounding.
            assert!(
                seam <= max + 1.0,
                "seam {seam} above the interior maximum {max}"
            );
            eprintln!("seam {seam:.3}, interior mean {mean:.3}, max {max:.3}");
        }
    }
    // The same filters on a cut-off ramp: a seam far above the interior.
    let cut = grey_image(w, h, |x, _| x as f32 / w as f32);
    let g = PbrImages::from(&pbr_maps(&cut, &PbrOptions::default()).unwrap()).height;
    let get = |x, y| g.get_pixel(x, y).0[0] as f64;
    let seam = pair_diff(&get, w, h, true, w - 1, 0);
    let interior = pair_diff(&get, w, h, true, 10, 11);
    assert!(seam > 5.0 * interior, "seam {seam} interior {interior}");
}

#[test]
fn bad_options_and_empty_images_are_typed_errors() {
    let img = RgbaImage::new(0, 4);
    let e = pbr_maps(&img, &PbrOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            DiffusionError::InvalidRequest {
                field: "pbr.albedo",
                ..
            }
        ),
        "{e}"
    );
    let img = RgbaImage::new(4, 4);
    let opts = PbrOptions {
        normal_strength: f32::NAN,
        ..Default::default()
    };
    let e = pbr_maps(&img, &opts).unwrap_err().to_string();
    assert!(e.contains("pbr.normal_strength"), "{e}");
    let opts = PbrOptions {
        ao_radius: 1e9,
        ..Default::default()
    };
    let e = pbr_maps(&img, &opts).unwrap_err().to_string();
    assert!(e.contains("pbr.ao_radius"), "{e}");
}

#[test]
fn saves_the_four_maps_by_name() {
    let dir = std::env::temp_dir().join(format!("bd-pbr-{}", std::process::id()));
    let img = grey_image(8, 8, |x, y| ((x + y) % 3) as f32 / 2.0);
    let maps = pbr_maps(&img, &PbrOptions::default()).unwrap();
    let paths = PbrImages::from(&maps).save(&dir, "bricks").unwrap();
    let names: Vec<_> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "bricks_normal.png",
            "bricks_height.png",
            "bricks_roughness.png",
            "bricks_ao.png"
        ]
    );
    let n = image::open(&paths[0]).unwrap();
    assert_eq!(n.color(), image::ColorType::Rgb8);
    assert_eq!((n.width(), n.height()), (8, 8));
    std::fs::remove_dir_all(&dir).ok();
}

/// A 32x32 sprite: a shaded disc (radius 9, opaque) on a transparent background whose hidden
/// colour is `hidden(x, y)`.
fn sprite(hidden: impl Fn(u32, u32) -> [u8; 3]) -> RgbaImage {
    RgbaImage::from_fn(32, 32, |x, y| {
        let (dx, dy) = (x as i32 - 16, y as i32 - 16);
        if dx * dx + dy * dy <= 81 {
            let v = (120 + 4 * dx + 3 * dy) as u8;
            Rgba([v, v / 2, 40, 255])
        } else {
            let [r, g, b] = hidden(x, y);
            Rgba([r, g, b, 0])
        }
    })
}

#[test]
fn a_sprites_transparent_pixels_get_flat_maps_and_do_not_count_as_surface() {
    let options = PbrOptions::default();
    // Two sprites that differ only in the colour hidden under alpha 0: a busy checkerboard, and
    // plain white (what a removed background often leaves).
    let busy = sprite(|x, y| {
        if (x / 2 + y / 2) % 2 == 0 {
            [0, 0, 0]
        } else {
            [255; 3]
        }
    });
    let white = sprite(|_, _| [255; 3]);
    let maps = pbr_maps(&busy, &options).unwrap();
    let images = PbrImages::from(&maps);
    let flat_roughness = (options.roughness_base * 255.0).round() as u8;
    for (x, y, p) in busy.enumerate_pixels() {
        if p.0[3] != 0 {
            continue;
        }
        let i = (y * 32 + x) as usize;
        assert_eq!(maps.normals[i], [0.0, 0.0, 1.0], "({x}, {y})");
        assert_eq!(
            images.normal.get_pixel(x, y).0,
            [128, 128, 255],
            "({x}, {y})"
        );
        assert_eq!(maps.height.data[i], 0.0, "({x}, {y})");
        assert_eq!(maps.ao.data[i], 1.0, "({x}, {y})");
        assert_eq!(maps.roughness.data[i], options.roughness_base, "({x}, {y})");
        assert_eq!(images.roughness.get_pixel(x, y).0, [flat_roughness]);
    }
    // The covered pixels' maps do not depend on the hidden colour.
    let other = PbrImages::from(&pbr_maps(&white, &options).unwrap());
    assert!(
        images.normal == other.normal,
        "normal map depends on the hidden colour"
    );
    assert!(
        images.height == other.height,
        "height map depends on the hidden colour"
    );
    assert!(images.roughness == other.roughness);
    assert!(images.ao == other.ao);
    // The disc is surface: raised above the background, with its own relief.
    assert!(images.height.get_pixel(16, 16).0[0] > 0);
    // Its top edge (row 7, below transparent row 6) steps down to the background at height 0:
    // the normal leans away from the step, towards the top of the image (+Y, green > 128).
    assert!(
        images.normal.get_pixel(16, 7).0[1] > 128,
        "{:?}",
        images.normal.get_pixel(16, 7)
    );
    // The albedo keeps its alpha (the maps are computed from a borrowed image).
    assert!(busy.get_pixel(0, 0).0[3] == 0 && busy.get_pixel(16, 16).0[3] == 255);
}

#[test]
fn a_half_transparent_pixel_is_halfway_to_flat() {
    // Uniform colour, alpha 128 everywhere: height and occlusion scale with the coverage.
    let img = RgbaImage::from_pixel(8, 8, Rgba([200, 200, 200, 128]));
    let maps = pbr_maps(&img, &PbrOptions::default()).unwrap();
    let lum = 200.0 / 255.0 * (0.2126 + 0.7152 + 0.0722);
    let w = 128.0 / 255.0;
    for (i, &h) in maps.height.data.iter().enumerate() {
        assert!((h - w * lum).abs() < 1e-4, "{i}: {h}");
        assert!((maps.ao.data[i] - 1.0).abs() < 1e-5);
        assert!((maps.roughness.data[i] - PbrOptions::default().roughness_base).abs() < 1e-5);
        let n = maps.normals[i];
        assert!(n[0].abs() < 1e-5 && n[1].abs() < 1e-5 && (n[2] - 1.0).abs() < 1e-5);
    }
}

/// Map names: only what could leave the output folder is refused. A name with dots inside it
/// (`wall..v2`, which bake accepts as an item name) must keep working, or a `pbr: true` bake
/// item would fail after its generation on every run.
#[test]
fn map_names_with_inner_dots_are_accepted_and_escapes_refused() {
    use bevy_diffusion::pipeline::pbr::check_map_name;
    for ok in ["wall..v2", "v1..2", "stone.wall", "a", ".hidden"] {
        assert!(check_map_name(ok).is_ok(), "{ok} was refused");
    }
    for bad in ["", ".", "..", "../x", "a/b", "a\\b", "/abs", "c:x", "a\0b"] {
        match check_map_name(bad) {
            Err(DiffusionError::InvalidRequest { field, .. }) => {
                assert_eq!(field, "name", "{bad:?}")
            }
            other => panic!("{bad:?}: expected InvalidRequest, got {other:?}"),
        }
    }
}
