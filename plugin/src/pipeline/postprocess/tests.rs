use super::*;

#[test]
fn maps_like_diffusers() -> Result<()> {
    // x/2+0.5 -> clamp -> *255 -> round: -1 -> 0, 0 -> 127.5 -> 128, 1 -> 255, -3 -> 0, 5 -> 255.
    let vals = [-1.0f32, 0.0, 1.0, -3.0, 5.0, 0.0, 1.0, -1.0, 0.0];
    let t = Tensor::from_vec(vals.to_vec(), (1, 3, 1, 3), &Device::Cpu)?;
    let img = tensor_to_rgba(&t)?;
    // pixel x = channels (vals[x], vals[3 + x], vals[6 + x])
    assert_eq!(img.get_pixel(0, 0).0, [0, 0, 255, 255]);
    assert_eq!(img.get_pixel(1, 0).0, [128, 255, 0, 255]);
    assert_eq!(img.get_pixel(2, 0).0, [255, 128, 128, 255]);
    Ok(())
}

#[test]
fn rgba_round_trip() -> Result<()> {
    let img = RgbaImage::from_fn(4, 2, |x, y| {
        image::Rgba([x as u8 * 60, y as u8 * 200, 7, 255])
    });
    let t = rgba_to_tensor(&img, 3, &Device::Cpu)?;
    assert_eq!(t.dims(), &[1, 3, 2, 4]);
    assert_eq!(tensor_to_rgba(&t)?, img);
    Ok(())
}

#[test]
fn keying_makes_a_transparent_border_and_opaque_centre_with_soft_edges() {
    // White background, red disc of radius 10 in a 32x32 image, blurred edge.
    let img = RgbaImage::from_fn(32, 32, |x, y| {
        let d = ((x as f32 - 15.5).powi(2) + (y as f32 - 15.5).powi(2)).sqrt();
        let t = ((d - 9.0) / 2.0).clamp(0.0, 1.0); // 0 inside, 1 outside
        let v = |inside: f32, outside: f32| (inside * (1.0 - t) + outside * t) as u8;
        image::Rgba([v(200.0, 255.0), v(30.0, 255.0), v(30.0, 255.0), 255])
    });
    let mut keyed = img.clone();
    key_out_background(&mut keyed);
    assert_eq!(keyed.get_pixel(0, 0).0[3], 0);
    assert_eq!(keyed.get_pixel(31, 31).0[3], 0);
    assert_eq!(keyed.get_pixel(16, 16).0, [200, 30, 30, 255]);
    let edge: Vec<u8> = (0..32).map(|x| keyed.get_pixel(x, 16).0[3]).collect();
    assert!(
        edge.iter().any(|&a| a > 0 && a < 255),
        "soft edge: {edge:?}"
    );
    // Decontaminated: half-transparent edge pixels are red, not pink.
    let partial: Vec<_> = keyed
        .pixels()
        .filter(|p| p.0[3] > 60 && p.0[3] < 200)
        .collect();
    assert!(!partial.is_empty());
    for p in partial {
        assert!(p.0[0] > 150 && p.0[1] < 90, "edge colour {:?}", p.0);
    }
}

#[test]
fn pixel_art_snaps_to_blocks_and_palette() {
    let img = RgbaImage::from_fn(16, 16, |x, y| {
        image::Rgba([(x * 16) as u8, (y * 16) as u8, 100, 255])
    });
    let out = pixel_art(&img, 4, 4);
    assert_eq!(out.dimensions(), (16, 16));
    for by in 0..4 {
        for bx in 0..4 {
            let c = out.get_pixel(bx * 4, by * 4);
            for y in 0..4 {
                for x in 0..4 {
                    assert_eq!(out.get_pixel(bx * 4 + x, by * 4 + y), c, "flat blocks");
                }
            }
        }
    }
    let mut palette: Vec<_> = out.pixels().map(|p| p.0).collect();
    palette.sort_unstable();
    palette.dedup();
    assert!(palette.len() <= 4, "{} colours", palette.len());
}

/// Distinct opaque colours of `img` and the mean RGB error (per channel, 0..255) against
/// `reference` over the opaque pixels.
fn palette_stats(img: &RgbaImage, reference: &RgbaImage) -> (usize, f64) {
    let mut colours: Vec<[u8; 3]> = img
        .pixels()
        .filter(|p| p.0[3] == 255)
        .map(|p| [p.0[0], p.0[1], p.0[2]])
        .collect();
    let (mut err, mut n) = (0f64, 0f64);
    for (a, b) in img.pixels().zip(reference.pixels()) {
        if a.0[3] == 255 {
            err += (0..3)
                .map(|c| (a.0[c] as f64 - b.0[c] as f64).abs())
                .sum::<f64>()
                / 3.0;
            n += 1.0;
        }
    }
    colours.sort_unstable();
    colours.dedup();
    (colours.len(), err / n.max(1.0))
}

/// A shaded blue disc on transparency (a "blue shield" sprite) and a grey-brown cobblestone
/// tile: smooth gradients that give a few dozen to a few hundred block colours.
fn shield_and_tile() -> (RgbaImage, RgbaImage) {
    let shield = RgbaImage::from_fn(64, 64, |x, y| {
        let (dx, dy) = (x as f32 - 31.5, y as f32 - 31.5);
        let d = (dx * dx + dy * dy).sqrt();
        if d > 26.0 {
            return image::Rgba([255, 255, 255, 0]);
        }
        let shade = 1.0 - d / 40.0 + dx / 120.0;
        let rim = if d > 22.0 { 0.55 } else { 1.0 };
        let v = |c: f32| (c * shade * rim).clamp(0.0, 255.0) as u8;
        image::Rgba([v(40.0), v(90.0), v(230.0), 255])
    });
    let tile = RgbaImage::from_fn(64, 64, |x, y| {
        let (cx, cy) = ((x % 16) as f32 - 7.5, (y % 16) as f32 - 7.5);
        let stone = 1.0 - (cx * cx + cy * cy).sqrt() / 14.0;
        let grain = ((x * 7 + y * 13) % 11) as f32 / 11.0;
        let mortar = (x % 16 == 0 || y % 16 == 0) as u8 as f32;
        let g = 60.0 + 120.0 * stone * (1.0 - mortar) + 25.0 * grain;
        image::Rgba([(g * 1.1) as u8, g as u8, (g * 0.8) as u8, 255])
    });
    (shield, tile)
}

#[test]
fn pixel_art_keeps_a_palette_that_represents_the_image() {
    let (shield, tile) = shield_and_tile();
    for (name, img, cell, colors) in [
        ("shield 2x8", &shield, 2, 8u32),
        ("tile 2x16", &tile, 2, 16),
        ("tile 4x6", &tile, 4, 6),
    ] {
        let out = pixel_art(img, cell, colors);
        // Against the block averages (256 colours: every block colour, or nearly): the
        // palette's own error, not the blocks'.
        let blocks = pixel_art(img, cell, 256);
        let (distinct, err) = palette_stats(&out, &blocks);
        assert!(
            distinct >= colors as usize - 1 && distinct <= colors as usize,
            "{name}: {distinct} distinct colours, wanted about {colors}"
        );
        assert!(err < 10.0, "{name}: mean colour error {err:.1} / 255");
        // The transparent surround stays transparent, the centre opaque.
        assert_eq!(out.get_pixel(0, 0).0[3], img.get_pixel(0, 0).0[3], "{name}");
        assert_eq!(out.get_pixel(32, 32).0[3], 255, "{name}");
    }
    // No more colours than the palette allows, and an image with fewer is kept exactly.
    let two = RgbaImage::from_fn(8, 8, |x, _| {
        if x < 4 {
            image::Rgba([10, 20, 30, 255])
        } else {
            image::Rgba([200, 100, 0, 255])
        }
    });
    assert_eq!(pixel_art(&two, 1, 16), two);
}

#[test]
fn transparent_colour_does_not_reach_the_vae() -> Result<()> {
    let img = RgbaImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            image::Rgba([255, 255, 255, 0])
        } else {
            image::Rgba([255, 0, 0, 255])
        }
    });
    let four = rgba_to_tensor(&img, 4, &Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    // [C, H, W]: channel c of pixel x at c * 2 + x.
    assert_eq!(four, vec![-1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 1.0]);
    let three = rgba_to_tensor(&img, 3, &Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(three, vec![-1.0, 1.0, -1.0, -1.0, -1.0, -1.0]);
    Ok(())
}
