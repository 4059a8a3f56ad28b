//! PBR maps of an albedo with transparency (a sprite): only the covered pixels are surface.
//!
//! Each pixel's coverage is `w = alpha / 255`. The filters become normalised convolutions over
//! the covered pixels (`blur(w * v) / blur(w)`), so a transparent pixel's hidden colour never
//! reaches the maps; then every map is blended towards its flat value by `1 - w`:
//! - height: `w * h` (a transparent pixel is at height 0);
//! - normal: from that height, blended towards `(0, 0, 1)` and renormalised (a transparent pixel
//!   is exactly `(0, 0, 1)`, RGB (128, 128, 255));
//! - roughness: blended towards [`PbrOptions::roughness_base`] (a neutral value);
//! - ambient occlusion: blended towards 1 (unoccluded).
//!
//! Opaque images never come here ([`super::pbr_maps`] keeps its exact formulas for them).

use image::RgbaImage;

use super::{Field, PbrMaps, PbrOptions, box_mean_wrapped, gaussian_blur_wrapped, luminance};

/// Below this normalising weight a pixel has no covered neighbourhood (its value is unused).
const MIN_WEIGHT: f32 = 1e-6;

/// True when some pixel of `albedo` is not fully opaque.
pub(super) fn has_transparency(albedo: &RgbaImage) -> bool {
    albedo.pixels().any(|p| p.0[3] < 255)
}

/// `smooth(w * v) / smooth(w)` where `smooth(w)` is not ~0, else `v`: `v` averaged over the
/// covered pixels only.
fn normalised(v: &Field, w: &Field, smooth: impl Fn(&Field) -> Field) -> Field {
    let num = smooth(&v.map(|i, x| x * w.data[i]));
    let den = smooth(w);
    v.map(|i, x| {
        let d = den.data[i];
        if d > MIN_WEIGHT { num.data[i] / d } else { x }
    })
}

/// The maps of an albedo with transparency (see the module docs); `options` already validated.
pub(super) fn pbr_maps_with_alpha(albedo: &RgbaImage, options: &PbrOptions) -> PbrMaps {
    let lum = luminance(albedo);
    let w = lum.map(|i, _| albedo.as_raw()[4 * i + 3] as f32 / 255.0);
    // The covered surface's own height, smoothed over covered pixels only.
    let surface = if options.height_blur > 0.0 {
        normalised(&lum, &w, |f| gaussian_blur_wrapped(f, options.height_blur))
    } else {
        lum.clone()
    };
    let height = surface.map(|i, v| w.data[i] * v);

    let mut normals = super::normals_from_height(&height, options.normal_strength);
    for (n, &wi) in normals.iter_mut().zip(&w.data) {
        let m = [wi * n[0], wi * n[1], wi * n[2] + (1.0 - wi)];
        let len = (m[0] * m[0] + m[1] * m[1] + m[2] * m[2]).sqrt();
        *n = if wi <= 0.0 || len <= MIN_WEIGHT {
            [0.0, 0.0, 1.0]
        } else {
            [m[0] / len, m[1] / len, m[2] / len]
        };
    }

    let total_w: f64 = w.data.iter().map(|&x| x as f64).sum();
    let weighted: f64 = (surface.data.iter().zip(&w.data))
        .map(|(&v, &wi)| v as f64 * wi as f64)
        .sum();
    let mean_h = if total_w > 0.0 {
        (weighted / total_w) as f32
    } else {
        0.0
    };
    let r = options.roughness_radius as usize;
    let centred = surface.map(|_, v| v - mean_h);
    let local_mean = normalised(&centred, &w, |f| box_mean_wrapped(f, r));
    let local_sq = normalised(&centred.map(|_, v| v * v), &w, |f| box_mean_wrapped(f, r));
    let roughness = surface.map(|i, v| {
        let var = (local_sq.data[i] - local_mean.data[i] * local_mean.data[i]).max(0.0);
        let covered = (options.roughness_base + options.roughness_detail * var.sqrt()
            - options.roughness_gloss * (v - mean_h))
            .clamp(0.0, 1.0);
        w.data[i] * covered + (1.0 - w.data[i]) * options.roughness_base
    });

    let surroundings = normalised(&surface, &w, |f| {
        gaussian_blur_wrapped(f, options.ao_radius)
    });
    let ao = surface.map(|i, v| {
        let covered =
            (1.0 - options.ao_strength * (surroundings.data[i] - v).max(0.0)).clamp(0.0, 1.0);
        w.data[i] * covered + (1.0 - w.data[i])
    });
    PbrMaps {
        height,
        normals,
        roughness,
        ao,
    }
}
