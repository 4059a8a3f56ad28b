//! From decoded tensors to RGBA8 pixels (and back, for img2img init images).

use candle_core::{DType, Device, Result, Tensor};
use std::collections::HashMap;

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
///
/// The colour hidden under transparency is neutralised first, as editors write anything there
/// (often white, `(255, 255, 255, 0)`) and the VAE would read it as the sprite's background:
/// with 4 channels a fully transparent pixel becomes `(0, 0, 0, 0)`, as in the embedded model's
/// training data (straight alpha elsewhere); with 3 channels the colour is premultiplied by
/// alpha (composited over black), so no hidden colour reaches the encoder.
pub fn rgba_to_tensor(image: &RgbaImage, channels: usize, device: &Device) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    let mut data: Vec<f32> = Vec::with_capacity(w as usize * h as usize * channels);
    for p in image.pixels() {
        let [r, g, b, a] = p.0;
        let weight = match channels {
            3 => a as f32 / 255.0,
            _ if a == 0 => 0.0,
            _ => 1.0,
        };
        for v in [r, g, b] {
            data.push(v as f32 * weight / 255.0 * 2.0 - 1.0);
        }
        if channels == 4 {
            data.push(a as f32 / 255.0 * 2.0 - 1.0);
        }
    }
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

/// The pixel-art pass: averages `cell x cell` blocks (alpha-weighted), snaps alpha to 0 or 255,
/// quantises the opaque block colours to a palette of at most `colors` entries ([`palette`]:
/// weighted median cut refined by k-means, exact when the blocks have no more colours than that),
/// and scales back up with nearest-neighbour, so the output has the input's size.
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
    let opaque: Vec<[u8; 3]> = small
        .pixels()
        .filter(|p| p.0[3] != 0)
        .map(|p| [p.0[0], p.0[1], p.0[2]])
        .collect();
    let entries = palette(&opaque, colors);
    let centres: Vec<[f64; 3]> = entries.iter().map(|c| c.map(f64::from)).collect();
    for p in small.pixels_mut() {
        if p.0[3] == 0 {
            continue;
        }
        let q = entries[nearest(&centres, &[p.0[0], p.0[1], p.0[2]])];
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

/// A palette quantizer that converges on a few dozen colours, for [`pixel_art`]: at most `k`
/// colours (k >= 1) representing `pixels`: every distinct colour when there are at most `k`, else
/// weighted median-cut boxes (split the box of widest spread at the weighted median) whose means
/// are refined by up to 16 k-means (Lloyd) rounds over the distinct colours and their counts.
/// Deterministic (no random start). Empty input gives an empty palette.
///
/// It replaces NeuQuant, which trains a network on a sample stream and does not converge on the
/// few dozen block colours of a pixel-art image (a `2x8` sprite came back with one opaque colour).
pub fn palette(pixels: &[[u8; 3]], k: usize) -> Vec<[u8; 3]> {
    let k = k.max(1);
    let mut counts: HashMap<[u8; 3], u64> = HashMap::new();
    for p in pixels {
        *counts.entry(*p).or_default() += 1;
    }
    let mut colours: Vec<([u8; 3], u64)> = counts.into_iter().collect();
    colours.sort_unstable();
    if colours.len() <= k {
        return colours.into_iter().map(|(c, _)| c).collect();
    }
    let mut centres = median_cut(&colours, k);
    for _ in 0..16 {
        let mut sums = vec![([0f64; 3], 0f64); centres.len()];
        for (c, n) in &colours {
            let i = nearest(&centres, c);
            for ch in 0..3 {
                sums[i].0[ch] += c[ch] as f64 * *n as f64;
            }
            sums[i].1 += *n as f64;
        }
        let next: Vec<[f64; 3]> = sums
            .iter()
            .zip(&centres)
            .map(|((s, n), old)| if *n > 0.0 { s.map(|v| v / n) } else { *old })
            .collect();
        let moved = next
            .iter()
            .zip(&centres)
            .map(|(a, b)| dist2(a, b))
            .fold(0f64, f64::max);
        centres = next;
        if moved < 0.25 {
            break;
        }
    }
    let mut out: Vec<[u8; 3]> = centres
        .iter()
        .map(|c| c.map(|v| v.round().clamp(0.0, 255.0) as u8))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn nearest(centres: &[[f64; 3]], c: &[u8; 3]) -> usize {
    let c = c.map(f64::from);
    let mut best = (0, f64::INFINITY);
    for (i, m) in centres.iter().enumerate() {
        let d = dist2(m, &c);
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

fn dist2(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum()
}

/// Weighted median cut into `k` boxes: split the box with the largest weighted spread along its
/// widest channel at the weighted median; returns each box's weighted mean.
fn median_cut(colours: &[([u8; 3], u64)], k: usize) -> Vec<[f64; 3]> {
    let mut boxes: Vec<Vec<([u8; 3], u64)>> = vec![colours.to_vec()];
    while boxes.len() < k {
        // The box whose widest channel spread times weight is largest (and can be split).
        let pick = boxes
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() > 1)
            .map(|(i, b)| {
                let (ch, range) = widest(b);
                let weight: u64 = b.iter().map(|(_, n)| n).sum();
                (i, ch, range as f64 * (weight as f64).sqrt())
            })
            .max_by(|a, b| a.2.total_cmp(&b.2));
        let Some((i, ch, _)) = pick else { break };
        let mut b = boxes.swap_remove(i);
        b.sort_unstable_by_key(|(c, _)| c[ch]);
        let total: u64 = b.iter().map(|(_, n)| n).sum();
        let mut acc = 0;
        let mut cut = 1;
        for (j, (_, n)) in b.iter().enumerate() {
            acc += n;
            if acc * 2 >= total {
                cut = (j + 1).clamp(1, b.len() - 1);
                break;
            }
        }
        let upper = b.split_off(cut);
        boxes.push(b);
        boxes.push(upper);
    }
    boxes
        .iter()
        .map(|b| {
            let (mut s, mut w) = ([0f64; 3], 0f64);
            for (c, n) in b {
                for ch in 0..3 {
                    s[ch] += c[ch] as f64 * *n as f64;
                }
                w += *n as f64;
            }
            s.map(|v| v / w.max(1.0))
        })
        .collect()
}

fn widest(b: &[([u8; 3], u64)]) -> (usize, u8) {
    (0..3)
        .map(|ch| {
            let lo = b.iter().map(|(c, _)| c[ch]).min().unwrap_or(0);
            let hi = b.iter().map(|(c, _)| c[ch]).max().unwrap_or(0);
            (ch, hi - lo)
        })
        .max_by_key(|&(_, r)| r)
        .unwrap_or((0, 0))
}

/// Applies the request's post-processing to a decoded image: sprite keying (for opaque model
/// output), opaque alpha for textures, and the optional pixel-art pass. (`request.upscale` is
/// applied earlier, by [`crate::pipeline::generate`]'s last stage.)
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
mod tests;
