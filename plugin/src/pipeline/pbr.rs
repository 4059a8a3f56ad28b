//! PBR maps from a colour texture, with no model: height, tangent-space normal, roughness and
//! ambient occlusion, the classic "bitmap to material" filters (Materialize, AwesomeBump,
//! Substance's B2M) in a small, deterministic form.
//!
//! Every filter wraps around the image edges (the image is treated as a torus), so a seamless
//! albedo gives seamless maps; a non-seamless one simply gets a wrapped neighbourhood at its
//! borders.
//!
//! ## Conventions
//! - **Height** `h` is the Rec. 709 luminance of the sRGB-encoded colour
//!   (`0.2126 R + 0.7152 G + 0.0722 B`, in [0, 1]: black = low, white = high), optionally
//!   smoothed by a wrapped Gaussian ([`PbrOptions::height_blur`]).
//! - **Normal map**: tangent space, **OpenGL convention (+Y up, "green up")**, which is what
//!   Bevy's `StandardMaterial::normal_map_texture` expects. +X points to the right of the image
//!   (increasing column), +Y to the top (decreasing row), +Z out of the surface. The surface is
//!   `z = normal_strength * h(x, y)` with x, y in pixels, and the normal is
//!   `normalize(-dz/dx, -dz/dy_up, 1)` (wrapped Sobel derivatives). Encoded as
//!   `round((n * 0.5 + 0.5) * 255)`, so a flat area is (128, 128, 255), and a height ramp that
//!   rises to the right tilts the normal to -X (red < 128); one that rises towards the top of the
//!   image tilts it to -Y (green < 128): the normal leans away from the uphill direction, so the
//!   upper flank of a bump (facing the top of the image) is greener.
//! - **Roughness** (1 = fully rough): `base + detail_gain * sigma_local - gloss_gain * (h - mean h)`,
//!   clamped to [0, 1], where `sigma_local` is the standard deviation of `h` in a wrapped box
//!   of radius [`PbrOptions::roughness_radius`]: busy, high-frequency areas read as rough,
//!   brighter-than-average areas as a little glossier.
//! - **Ambient occlusion** (1 = unoccluded): `1 - ao_strength * max(0, blur(h) - h)`, clamped:
//!   a point lower than its wrapped Gaussian neighbourhood ([`PbrOptions::ao_radius`]) is a
//!   crevice and gets darker.
//! - **Transparency** (sprites): with any pixel's alpha below 255, coverage `w = alpha / 255`
//!   weights every filter (normalised convolutions over the covered pixels, so the hidden colour
//!   of a transparent pixel never counts as surface), and each map is blended towards flat by
//!   `1 - w`: a fully transparent pixel has height 0, normal (0, 0, 1) (RGB 128, 128, 255),
//!   roughness [`PbrOptions::roughness_base`] and occlusion 1. The height is `w * h`, so a
//!   sprite's silhouette is a step down to 0, which its normals show. Fully opaque images are
//!   computed exactly as above.

use image::{GrayImage, RgbImage, Rgba, RgbaImage};

use crate::error::{DiffusionError, Result};

mod alpha;
mod images;
pub use images::*;

/// Strengths and radii of the PBR filters. All radii are in pixels of the input image; all
/// heights are in luminance units (0 = black, 1 = white).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PbrOptions {
    /// Standard deviation, in pixels, of the wrapped Gaussian that smooths the luminance before
    /// it becomes the height (0 = no smoothing). 0..=64.
    pub height_blur: f32,
    /// Bump depth of the normal map: the height, in pixels, of a full black-to-white luminance
    /// step (the surface is `z = normal_strength * h`). 0 = flat; typical 1..=8. 0..=1000.
    pub normal_strength: f32,
    /// Roughness of a uniform area (0 = mirror, 1 = fully rough). 0..=1.
    pub roughness_base: f32,
    /// Roughness added per unit of local height standard deviation (dimensionless). 0..=100.
    pub roughness_detail: f32,
    /// Roughness removed per unit of height above the image mean (dimensionless). -100..=100.
    pub roughness_gloss: f32,
    /// Half-width, in pixels, of the wrapped box over which the local deviation is measured. 1..=64.
    pub roughness_radius: u32,
    /// Occlusion per unit of height below the neighbourhood mean (dimensionless; 4 means a point
    /// 0.25 below its surroundings is fully occluded). 0..=100.
    pub ao_strength: f32,
    /// Standard deviation, in pixels, of the wrapped Gaussian neighbourhood for occlusion. 0.5..=64.
    pub ao_radius: f32,
}

impl Default for PbrOptions {
    fn default() -> Self {
        Self {
            height_blur: 1.0,
            normal_strength: 4.0,
            roughness_base: 0.7,
            roughness_detail: 2.0,
            roughness_gloss: 0.3,
            roughness_radius: 2,
            ao_strength: 4.0,
            ao_radius: 6.0,
        }
    }
}

impl PbrOptions {
    /// Checks every field against its documented range.
    ///
    /// Errors: [`DiffusionError::InvalidRequest`] naming the field (`pbr.<field>`) and its value.
    pub fn validate(&self) -> Result<()> {
        let check = |field: &'static str, v: f32, lo: f32, hi: f32| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(DiffusionError::InvalidRequest {
                    field,
                    value: v.to_string(),
                    reason: format!("must be a finite number in [{lo}, {hi}]"),
                })
            }
        };
        check("pbr.height_blur", self.height_blur, 0.0, 64.0)?;
        check("pbr.normal_strength", self.normal_strength, 0.0, 1000.0)?;
        check("pbr.roughness_base", self.roughness_base, 0.0, 1.0)?;
        check("pbr.roughness_detail", self.roughness_detail, 0.0, 100.0)?;
        check("pbr.roughness_gloss", self.roughness_gloss, -100.0, 100.0)?;
        check(
            "pbr.roughness_radius",
            self.roughness_radius as f32,
            1.0,
            64.0,
        )?;
        check("pbr.ao_strength", self.ao_strength, 0.0, 100.0)?;
        check("pbr.ao_radius", self.ao_radius, 0.5, 64.0)?;
        Ok(())
    }
}

/// A scalar field over the pixels, row-major, `width * height` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Columns, in pixels.
    pub width: usize,
    /// Rows, in pixels.
    pub height: usize,
    /// `width * height` values, row-major; range depends on the map (heights and roughness in 0..=1).
    pub data: Vec<f32>,
}

impl Field {
    /// The value at column `x`, row `y`, both wrapped around (negative and past-the-end work).
    pub fn at(&self, x: isize, y: isize) -> f32 {
        let xi = x.rem_euclid(self.width as isize) as usize;
        let yi = y.rem_euclid(self.height as isize) as usize;
        self.data[yi * self.width + xi]
    }

    fn map(&self, f: impl Fn(usize, f32) -> f32) -> Field {
        Field {
            width: self.width,
            height: self.height,
            data: self
                .data
                .iter()
                .enumerate()
                .map(|(i, &v)| f(i, v))
                .collect(),
        }
    }

    /// To an 8-bit grey image, `round(clamp(v, 0, 1) * 255)`.
    pub fn to_gray(&self) -> GrayImage {
        let px = self
            .data
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        GrayImage::from_raw(self.width as u32, self.height as u32, px)
            .expect("width * height values")
    }
}

/// The four maps for one albedo, all the albedo's size.
#[derive(Debug, Clone)]
pub struct PbrMaps {
    /// Height in [0, 1] (after [`PbrOptions::height_blur`]).
    pub height: Field,
    /// Unit tangent-space normals (OpenGL, +Y up), row-major `[x, y, z]`.
    pub normals: Vec<[f32; 3]>,
    /// Roughness in [0, 1].
    pub roughness: Field,
    /// Ambient occlusion in [0, 1] (1 = unoccluded).
    pub ao: Field,
}

impl PbrMaps {
    /// The normal map as RGB8: `round((n * 0.5 + 0.5) * 255)` per component.
    pub fn normal_image(&self) -> RgbImage {
        let enc = |v: f32| ((v * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
        let px = self
            .normals
            .iter()
            .flat_map(|n| [enc(n[0]), enc(n[1]), enc(n[2])])
            .collect();
        RgbImage::from_raw(self.height.width as u32, self.height.height as u32, px)
            .expect("width * height normals")
    }

    /// glTF / Bevy packing of occlusion, roughness and metallic in one RGBA8 texture: R =
    /// occlusion, G = roughness, B = metallic (`metallic`, 0..=1, everywhere), A = 255. Bevy's
    /// `metallic_roughness_texture` reads G and B, `occlusion_texture` reads R, so one image
    /// serves both.
    pub fn occlusion_roughness_metallic(&self, metallic: f32) -> RgbaImage {
        let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        let mut out = RgbaImage::new(self.height.width as u32, self.height.height as u32);
        for (i, p) in out.pixels_mut().enumerate() {
            *p = Rgba([
                q(self.ao.data[i]),
                q(self.roughness.data[i]),
                q(metallic),
                255,
            ]);
        }
        out
    }
}

/// Rec. 709 luminance of each pixel's sRGB-encoded colour, in [0, 1] (alpha ignored).
pub fn luminance(albedo: &RgbaImage) -> Field {
    let data = albedo
        .pixels()
        .map(|p| (0.2126 * p.0[0] as f32 + 0.7152 * p.0[1] as f32 + 0.0722 * p.0[2] as f32) / 255.0)
        .collect();
    Field {
        width: albedo.width() as usize,
        height: albedo.height() as usize,
        data,
    }
}

/// Separable Gaussian blur with wrap-around edges; `sigma` in pixels (<= 0 returns a copy).
/// The kernel spans `ceil(3 sigma)` pixels each side and is normalised to sum 1.
pub fn gaussian_blur_wrapped(field: &Field, sigma: f32) -> Field {
    if sigma <= 0.0 {
        return field.clone();
    }
    let r = (3.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let (w, h) = (field.width, field.height);
    let pass = |src: &Field, horizontal: bool| -> Field {
        let mut data = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0f32;
                for (k, &kv) in kernel.iter().enumerate() {
                    let o = k as isize - r;
                    acc += kv
                        * if horizontal {
                            src.at(x as isize + o, y as isize)
                        } else {
                            src.at(x as isize, y as isize + o)
                        };
                }
                data[y * w + x] = acc;
            }
        }
        Field {
            width: w,
            height: h,
            data,
        }
    };
    pass(&pass(field, true), false)
}

/// Mean over the wrapped `(2r+1) x (2r+1)` box around each pixel.
pub fn box_mean_wrapped(field: &Field, r: usize) -> Field {
    let (w, h) = (field.width, field.height);
    let r = r as isize;
    let n = (2 * r + 1) as f32;
    let pass = |src: &Field, horizontal: bool| -> Field {
        let mut data = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let acc: f32 = (-r..=r)
                    .map(|o| {
                        if horizontal {
                            src.at(x as isize + o, y as isize)
                        } else {
                            src.at(x as isize, y as isize + o)
                        }
                    })
                    .sum();
                data[y * w + x] = acc / n;
            }
        }
        Field {
            width: w,
            height: h,
            data,
        }
    };
    pass(&pass(field, true), false)
}

/// Unit tangent-space normals (OpenGL, +Y up) of the surface `z = strength * height`, from
/// wrapped Sobel derivatives (`dz/dx` per pixel to the right, `dz/dy_up` per pixel to the top).
pub fn normals_from_height(height: &Field, strength: f32) -> Vec<[f32; 3]> {
    let mut out = Vec::with_capacity(height.data.len());
    for y in 0..height.height as isize {
        for x in 0..height.width as isize {
            let h = |dx: isize, dy: isize| height.at(x + dx, y + dy);
            // Sobel, normalised so that a linear ramp of slope s gives exactly s.
            let dx = ((h(1, -1) + 2.0 * h(1, 0) + h(1, 1))
                - (h(-1, -1) + 2.0 * h(-1, 0) + h(-1, 1)))
                / 8.0;
            // Rows grow downwards; +Y is up, so the upward derivative is (row above - row below).
            let dy_up = ((h(-1, -1) + 2.0 * h(0, -1) + h(1, -1))
                - (h(-1, 1) + 2.0 * h(0, 1) + h(1, 1)))
                / 8.0;
            let n = [-strength * dx, -strength * dy_up, 1.0];
            let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            out.push([n[0] / len, n[1] / len, n[2] / len]);
        }
    }
    out
}

/// Computes the four maps of `albedo` with `options` (see the module docs for the formulas).
/// An albedo with any transparency (a sprite) is filtered over its covered pixels only, and its
/// transparent pixels get flat maps (see the module docs' **Transparency**); the albedo itself
/// is not changed (it keeps its alpha).
///
/// Errors: [`DiffusionError::InvalidRequest`] for an empty image (`pbr.albedo`), one over
/// 8192 pixels a side, or an option out of its range.
pub fn pbr_maps(albedo: &RgbaImage, options: &PbrOptions) -> Result<PbrMaps> {
    options.validate()?;
    let (w, h) = albedo.dimensions();
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        return Err(DiffusionError::InvalidRequest {
            field: "pbr.albedo",
            value: format!("{w}x{h}"),
            reason: "the image must be 1..=8192 pixels on each side".into(),
        });
    }
    if alpha::has_transparency(albedo) {
        return Ok(alpha::pbr_maps_with_alpha(albedo, options));
    }
    let height = gaussian_blur_wrapped(&luminance(albedo), options.height_blur);
    let normals = normals_from_height(&height, options.normal_strength);

    let mean_h = height.data.iter().map(|&v| v as f64).sum::<f64>() / height.data.len() as f64;
    let r = options.roughness_radius as usize;
    // Local moments of the height centred on its mean (exact zeros for a uniform image).
    let centred = height.map(|_, v| v - mean_h as f32);
    let local_mean = box_mean_wrapped(&centred, r);
    let local_sq = box_mean_wrapped(&centred.map(|_, v| v * v), r);
    let roughness = height.map(|i, v| {
        let var = (local_sq.data[i] - local_mean.data[i] * local_mean.data[i]).max(0.0);
        (options.roughness_base + options.roughness_detail * var.sqrt()
            - options.roughness_gloss * (v - mean_h as f32))
            .clamp(0.0, 1.0)
    });

    let surroundings = gaussian_blur_wrapped(&height, options.ao_radius);
    let ao = height.map(|i, v| {
        (1.0 - options.ao_strength * (surroundings.data[i] - v).max(0.0)).clamp(0.0, 1.0)
    });
    Ok(PbrMaps {
        height,
        normals,
        roughness,
        ao,
    })
}
