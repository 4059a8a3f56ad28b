//! From decoded tensors to RGBA8 pixels (and back, for img2img init images).

use candle_core::{DType, Device, Result, Tensor};
use image::{GenericImageView, RgbaImage};

/// Maps a decoded image `[1, C, H, W]` (C = 3 RGB or 4 RGBA, roughly [-1, 1]) to RGBA8 exactly
/// as diffusers' `VaeImageProcessor.postprocess(output_type="pil")` does:
/// `round(clamp(x / 2 + 0.5, 0, 1) * 255)` (numpy's round, half to even), in f32.
/// A 3-channel image gets alpha 255.
pub fn tensor_to_rgba(decoded: &Tensor) -> Result<RgbaImage> {
    let (b, c, h, w) = decoded.dims4()?;
    if b != 1 || !(c == 3 || c == 4) {
        candle_core::bail!(
            "expected a decoded image [1, 3|4, H, W], got {:?}",
            decoded.dims()
        );
    }
    let unit = ((decoded.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    // [C, H, W] -> [H, W, C]
    let hwc = unit
        .squeeze(0)?
        .permute((1, 2, 0))?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut pixels = Vec::with_capacity(h * w * 4);
    for px in hwc.chunks_exact(c) {
        for &v in px {
            pixels.push((v * 255.0).round_ties_even() as u8);
        }
        if c == 3 {
            pixels.push(255);
        }
    }
    RgbaImage::from_raw(w as u32, h as u32, pixels)
        .ok_or_else(|| candle_core::Error::Msg("pixel buffer size mismatch".into()))
}

/// Maps RGBA8 pixels to the VAE's input `[1, channels, H, W]` in [-1, 1] (`u8 / 255 * 2 - 1`,
/// diffusers' `VaeImageProcessor.preprocess`). `channels` = 3 drops alpha; 4 keeps it.
pub fn rgba_to_tensor(image: &RgbaImage, channels: usize, device: &Device) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    let data: Vec<f32> = image
        .pixels()
        .flat_map(|p| {
            p.0[..channels]
                .iter()
                .map(|&v| v as f32 / 255.0 * 2.0 - 1.0)
                .collect::<Vec<_>>()
        })
        .collect();
    Tensor::from_vec(data, (h as usize, w as usize, channels), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()
}

/// Sprite transparency for models without an alpha channel: keys out the solid background
/// colour (the median of the border pixels) with a soft edge.
///
/// Alpha is linear in the RGB distance `d` to the background (as a fraction of the cube's
/// diagonal): 0 up to `0.06`, 255 from `0.8 * max(d)` on (at least `0.21`). For a pixel that
/// mixes one foreground colour with the background, that recovers the mixing fraction, so the
/// background's share can be removed from its colour (decontamination): edges carry no halo.
/// Images that already have transparency (4-channel models) are left as they are.
pub fn key_out_background(image: &mut RgbaImage) {
    if image.pixels().any(|p| p.0[3] != 255) {
        return;
    }
    let bg = border_median(image);
    let dist = |p: &image::Rgba<u8>| {
        (0..3)
            .map(|c| (p.0[c] as f32 - bg[c]).powi(2))
            .sum::<f32>()
            .sqrt()
            / (255.0 * 3f32.sqrt())
    };
    let d_max = image.pixels().map(dist).fold(0f32, f32::max);
    let lo = 0.06f32;
    let hi = (0.8 * d_max).max(lo + 0.15);
    for p in image.pixels_mut() {
        let a = ((dist(p) - lo) / (hi - lo)).clamp(0.0, 1.0);
        if a <= 0.0 {
            *p = image::Rgba([0, 0, 0, 0]);
            continue;
        }
        for (channel, b) in p.0.iter_mut().zip(bg) {
            let v = (*channel as f32 - (1.0 - a) * b) / a;
            *channel = v.round().clamp(0.0, 255.0) as u8;
        }
        p.0[3] = (a * 255.0).round() as u8;
    }
}

/// Per-channel median of the outermost ring of pixels.
fn border_median(image: &RgbaImage) -> [f32; 3] {
    let (w, h) = image.dimensions();
    let mut ring: Vec<[u8; 4]> = Vec::new();
    for x in 0..w {
        ring.push(image.get_pixel(x, 0).0);
        ring.push(image.get_pixel(x, h - 1).0);
    }
    for y in 1..h.saturating_sub(1) {
        ring.push(image.get_pixel(0, y).0);
        ring.push(image.get_pixel(w - 1, y).0);
    }
    let mut out = [0f32; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let mut v: Vec<u8> = ring.iter().map(|p| p[c]).collect();
        v.sort_unstable();
        *o = v[v.len() / 2] as f32;
    }
    out
}

/// The pixel-art pass: averages `cell x cell` blocks (alpha-weighted), quantises the block colours
/// to a palette of `colors` entries (NeuQuant, via `color_quant`), snaps alpha to 0 or 255, and
/// scales back up with nearest-neighbour, so the output has the input's size.
pub fn pixel_art(image: &RgbaImage, cell: u32, colors: u32) -> RgbaImage {
    let cell = cell.max(1);
    let (w, h) = image.dimensions();
    let (sw, sh) = (w.div_ceil(cell), h.div_ceil(cell));
    let mut small = RgbaImage::new(sw, sh);
    for by in 0..sh {
        for bx in 0..sw {
            let (mut acc, mut alpha, mut n) = ([0f32; 3], 0f32, 0f32);
            for y in by * cell..((by + 1) * cell).min(h) {
                for x in bx * cell..((bx + 1) * cell).min(w) {
                    let p = image.get_pixel(x, y).0;
                    let a = p[3] as f32 / 255.0;
                    for c in 0..3 {
                        acc[c] += p[c] as f32 * a;
                    }
                    alpha += a;
                    n += 1.0;
                }
            }
            let rgb = acc.map(|v| {
                if alpha > 0.0 {
                    (v / alpha).round() as u8
                } else {
                    0
                }
            });
            let a = if alpha / n >= 0.5 { 255 } else { 0 };
            small.put_pixel(bx, by, image::Rgba([rgb[0], rgb[1], rgb[2], a]));
        }
    }
    let colors = colors.clamp(2, 256) as usize;
    let quant = color_quant::NeuQuant::new(10, colors, small.as_raw());
    for p in small.pixels_mut() {
        if p.0[3] == 0 {
            continue;
        }
        let i = quant.index_of(&p.0);
        let mut q = [0u8; 4];
        if let Some(c) = quant.lookup(i) {
            q = c;
        }
        *p = image::Rgba([q[0], q[1], q[2], 255]);
    }
    image::imageops::resize(
        &small,
        sw * cell,
        sh * cell,
        image::imageops::FilterType::Nearest,
    )
    .view(0, 0, w, h)
    .to_image()
}

/// Applies the request's post-processing to a decoded image: sprite keying (for opaque model
/// output), opaque alpha for textures, and the optional pixel-art pass.
pub fn finish(mut image: RgbaImage, request: &crate::request::GenerationRequest) -> RgbaImage {
    match request.kind {
        crate::request::AssetKind::Sprite => key_out_background(&mut image),
        // Surface textures are opaque, whatever alpha a 4-channel model drew.
        crate::request::AssetKind::Texture => image.pixels_mut().for_each(|p| p.0[3] = 255),
    }
    match request.pixel_art {
        Some(p) => pixel_art(&image, p.cell, p.colors),
        None => image,
    }
}

#[cfg(test)]
mod tests {
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
}
