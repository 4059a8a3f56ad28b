//! Cheap previews during denoising: a linear map from latent channels to RGB(A), no VAE per step.
//!
//! Instead of hard-coding SD 1.5's latent-to-RGB factors (which are wrong for any other VAE, our
//! embedded model's included), [`LatentPreviewer::fit`] fits the map once per model: it decodes a
//! few random latents with the model's own VAE, average-pools the pixels down to latent
//! resolution, and solves a ridge-regularised least-squares problem `pixels ≈ W · [latent, 1]`.

use candle_core::{DType, Device, Tensor};
use image::RgbaImage;

use crate::noise::{NoiseSource, SeededNoise};

/// A fitted linear latent-to-pixel map for one model.
#[derive(Debug, Clone)]
pub struct LatentPreviewer {
    /// `weights[o][i]`: output channel `o` (R, G, B[, A]) from latent channel `i` (last = bias),
    /// in [-1, 1] pixel units.
    weights: Vec<Vec<f64>>,
    /// Pixels per latent (8 for SD).
    scale: u32,
}

impl LatentPreviewer {
    /// Fits the map by decoding `4` random latents of `8 x 8` with `decode`
    /// (`[1, C, h, w]` latents in the scheduler's space -> `[1, out, h*scale, w*scale]` in [-1, 1]).
    pub fn fit(
        latent_channels: usize,
        scale: usize,
        device: &Device,
        decode: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Self> {
        let mut noise = SeededNoise::new(0x5eed);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        let mut out_channels = 3;
        for _ in 0..4 {
            let z = noise.randn(&[1, latent_channels, 8, 8], device)?;
            let decoded = decode(&z)?.to_dtype(DType::F32)?;
            out_channels = decoded.dim(1)?;
            let pooled = decoded.avg_pool2d(scale)?.squeeze(0)?; // [out, 8, 8]
            let z = z.squeeze(0)?.flatten_from(1)?.t()?.to_vec2::<f32>()?; // [64, C]
            let p = pooled.flatten_from(1)?.t()?.to_vec2::<f32>()?; // [64, out]
            xs.extend(z.into_iter().map(|r| {
                r.into_iter()
                    .map(f64::from)
                    .chain([1.0])
                    .collect::<Vec<_>>()
            }));
            ys.extend(
                p.into_iter()
                    .map(|r| r.into_iter().map(f64::from).collect::<Vec<_>>()),
            );
        }
        let weights = (0..out_channels)
            .map(|o| ridge(&xs, &ys.iter().map(|y| y[o]).collect::<Vec<_>>()))
            .collect();
        Ok(Self {
            weights,
            scale: scale as u32,
        })
    }

    /// An RGBA preview of `latents` (`[1, C, h, w]`) at full size (`h*scale x w*scale`,
    /// nearest-neighbour), alpha 255 unless the model has an alpha channel.
    pub fn preview(&self, latents: &Tensor) -> candle_core::Result<RgbaImage> {
        let (_, c, h, w) = latents.dims4()?;
        let z = latents
            .to_dtype(DType::F32)?
            .squeeze(0)?
            .flatten_from(1)?
            .t()?
            .to_vec2::<f32>()?; // [h*w, C]
        let mut small = RgbaImage::new(w as u32, h as u32);
        for (i, px) in small.pixels_mut().enumerate() {
            let mut out = [255u8; 4];
            for (o, wo) in self.weights.iter().enumerate().take(4) {
                let v = wo[c] + (0..c).map(|k| wo[k] * z[i][k] as f64).sum::<f64>();
                out[o] = ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
            *px = image::Rgba(out);
        }
        Ok(image::imageops::resize(
            &small,
            w as u32 * self.scale,
            h as u32 * self.scale,
            image::imageops::FilterType::Nearest,
        ))
    }
}

/// Solves `(XᵀX + λI) w = Xᵀy` by Gaussian elimination (X is `[n, k]`, k small).
fn ridge(x: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let k = x[0].len();
    let mut a = vec![vec![0f64; k + 1]; k];
    for (row, &t) in x.iter().zip(y) {
        for i in 0..k {
            for j in 0..k {
                a[i][j] += row[i] * row[j];
            }
            a[i][k] += row[i] * t;
        }
    }
    for (i, r) in a.iter_mut().enumerate() {
        r[i] += 1e-3;
    }
    for col in 0..k {
        let pivot = (col..k)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        let d = a[col][col];
        for v in a[col].iter_mut() {
            *v /= d;
        }
        for r in 0..k {
            if r != col {
                let f = a[r][col];
                let pivot_row = a[col].clone();
                for (v, p) in a[r].iter_mut().zip(pivot_row) {
                    *v -= f * p;
                }
            }
        }
    }
    a.iter().map(|r| r[k]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_linear_decoder() -> candle_core::Result<()> {
        // A fake "VAE": pixel = 0.5 * z0 - 0.25 * z1 + 0.1 for R, z2 for G, -z3 for B, upsampled 2x.
        let decode = |z: &Tensor| -> candle_core::Result<Tensor> {
            let r =
                ((z.narrow(1, 0, 1)? * 0.5)? - (z.narrow(1, 1, 1)? * 0.25)?)?.affine(1.0, 0.1)?;
            let g = z.narrow(1, 2, 1)?;
            let b = z.narrow(1, 3, 1)?.neg()?;
            let (_, _, h, w) = z.dims4()?;
            Tensor::cat(&[r, g, b], 1)?.upsample_nearest2d(h * 2, w * 2)
        };
        let p = LatentPreviewer::fit(4, 2, &Device::Cpu, decode)?;
        assert!((p.weights[0][0] - 0.5).abs() < 0.01 && (p.weights[0][1] + 0.25).abs() < 0.01);
        assert!((p.weights[0][4] - 0.1).abs() < 0.01 && (p.weights[2][3] + 1.0).abs() < 0.01);
        let z = Tensor::zeros((1, 4, 3, 5), DType::F32, &Device::Cpu)?;
        let img = p.preview(&z)?;
        assert_eq!(img.dimensions(), (10, 6));
        assert_eq!(img.get_pixel(0, 0).0, [140, 128, 128, 255]); // R = (0.1/2+0.5)*255 = 140.25
        Ok(())
    }
}
