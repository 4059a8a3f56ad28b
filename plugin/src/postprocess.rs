//! From decoded tensors to RGBA8 pixels (and back, for img2img init images).

use candle_core::{DType, Device, Result, Tensor};
use image::RgbaImage;

/// Maps a decoded image `[1, C, H, W]` (C = 3 RGB or 4 RGBA, roughly [-1, 1]) to RGBA8 exactly
/// as diffusers' `VaeImageProcessor.postprocess(output_type="pil")` does:
/// `round(clamp(x / 2 + 0.5, 0, 1) * 255)` (numpy's round, half to even), in f32.
/// A 3-channel image gets alpha 255.
pub fn tensor_to_rgba(decoded: &Tensor) -> Result<RgbaImage> {
    let (b, c, h, w) = decoded.dims4()?;
    if b != 1 || !(c == 3 || c == 4) {
        candle_core::bail!("expected a decoded image [1, 3|4, H, W], got {:?}", decoded.dims());
    }
    let unit = ((decoded.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    // [C, H, W] -> [H, W, C]
    let hwc = unit.squeeze(0)?.permute((1, 2, 0))?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
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
        .flat_map(|p| p.0[..channels].iter().map(|&v| v as f32 / 255.0 * 2.0 - 1.0).collect::<Vec<_>>())
        .collect();
    Tensor::from_vec(data, (h as usize, w as usize, channels), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()
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
        let img = RgbaImage::from_fn(4, 2, |x, y| image::Rgba([x as u8 * 60, y as u8 * 200, 7, 255]));
        let t = rgba_to_tensor(&img, 3, &Device::Cpu)?;
        assert_eq!(t.dims(), &[1, 3, 2, 4]);
        assert_eq!(tensor_to_rgba(&t)?, img);
        Ok(())
    }
}
