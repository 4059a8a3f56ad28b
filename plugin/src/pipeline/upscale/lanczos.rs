//! The model-free upscale fallback: wrap-aware Lanczos3.

use image::RgbaImage;

use crate::error::{DiffusionError, Result};
use crate::tiling::Tiling;

/// Model-free fallback: Lanczos3 resampling (the `image` crate's) by an integer `factor`,
/// wrapping around on the tiled axes (the image is padded with its own opposite edge before
/// resampling and the padding cropped after), edge-clamped on the others.
///
/// Errors: [`DiffusionError::InvalidRequest`] (`upscale`) for a factor outside 1..=8, an empty
/// image or an output over 8192 pixels a side.
pub fn lanczos_upscale(image: &RgbaImage, factor: u32, tiling: Tiling) -> Result<RgbaImage> {
    let (w, h) = image.dimensions();
    if !(1..=8).contains(&factor) || w == 0 || h == 0 || w * factor > 8192 || h * factor > 8192 {
        return Err(DiffusionError::InvalidRequest {
            field: "upscale",
            value: format!("{factor} on {w}x{h}"),
            reason: "the factor must be 1..=8 and the output at most 8192 pixels a side".into(),
        });
    }
    if factor == 1 {
        return Ok(image.clone());
    }
    // Lanczos3 reads 3 source pixels either side; pad 4.
    let pad = 4i64;
    let (pw, ph) = (w as i64 + 2 * pad, h as i64 + 2 * pad);
    let index = |i: i64, n: i64, wrap: bool| {
        if wrap {
            i.rem_euclid(n)
        } else {
            i.clamp(0, n - 1)
        }
    };
    let padded = RgbaImage::from_fn(pw as u32, ph as u32, |x, y| {
        let sx = index(x as i64 - pad, w as i64, tiling.wraps_x());
        let sy = index(y as i64 - pad, h as i64, tiling.wraps_y());
        *image.get_pixel(sx as u32, sy as u32)
    });
    let big = image::imageops::resize(
        &padded,
        pw as u32 * factor,
        ph as u32 * factor,
        image::imageops::FilterType::Lanczos3,
    );
    let off = pad as u32 * factor;
    Ok(image::imageops::crop_imm(&big, off, off, w * factor, h * factor).to_image())
}
