//! `AutoencoderKL`, mirroring diffusers `models/autoencoders/autoencoder_kl.py`: the VAE that maps
//! pixels in [-1, 1] to a diagonal-Gaussian posterior over latents (`encode`) and latents back to
//! pixels (`decode`). The networks themselves are in [`super::vae`].
//!
//! Latent convention (as in diffusers' pipelines): the UNet works on `scaling_factor * z`;
//! [`AutoencoderKL::decode`] takes `z` already divided by `scaling_factor`, and
//! [`AutoencoderKL::encode`] returns the unscaled posterior (multiply a sample by
//! `scaling_factor` before handing it to the UNet).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};

use super::vae::{Decoder, Encoder, Intermediates};
use crate::tiling::Tiling;

mod config;
pub use config::AutoencoderKLConfig;

/// The posterior `N(mean, std^2)` the encoder predicts (diffusers `DiagonalGaussianDistribution`
/// built from the `quant_conv` output). Each tensor is `[batch, latent_channels, H/f, W/f]`.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// The first `latent_channels` channels of the moments (`latent_dist.mean` / `.mode()`).
    pub mean: Tensor,
    /// The last `latent_channels` channels of the moments, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
    /// `exp(0.5 * logvar)`.
    pub std: Tensor,
}

impl DiagonalGaussian {
    /// Splits `moments` `[batch, 2 * latent_channels, h, w]` into mean and log-variance along
    /// channels (diffusers `torch.chunk(parameters, 2, dim=1)`), clamps the log-variance to
    /// [-30, 20] and computes `std = exp(0.5 * logvar)`.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let c2 = moments.dim(1)?;
        if !c2.is_multiple_of(2) {
            candle_core::bail!(
                "moments must have an even number of channels, got shape {:?}",
                moments.dims()
            );
        }
        let c = c2 / 2;
        let mean = moments.narrow(1, 0, c)?.contiguous()?;
        let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Self { mean, logvar, std })
    }

    /// `mean + std * eps` (diffusers' `latent_dist.sample()` with the draw `eps` given),
    /// `eps` ~ N(0, 1) of the same shape as `mean`.
    pub fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        self.mean.add(&self.std.mul(eps)?)
    }
}

/// diffusers `AutoencoderKL` (without its sliced / overlapping-tile inference modes).
///
/// Weights: `encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*` of
/// `vae/diffusion_pytorch_model.safetensors`.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: AutoencoderKLConfig,
}

impl AutoencoderKL {
    /// Loads the VAE from the `vae/` var builder (no prefix: `encoder.conv_in.weight`, ...).
    ///
    /// Errors: a missing tensor or one whose shape disagrees with `cfg` (candle's error names the
    /// tensor).
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let encoder = Encoder::new(vb.pp("encoder"), cfg)?;
        let decoder = Decoder::new(vb.pp("decoder"), cfg)?;
        let (l, conv) = (cfg.latent_channels, Default::default());
        let quant_conv = if cfg.use_quant_conv {
            Some(candle_nn::conv2d(
                2 * l,
                2 * l,
                1,
                conv,
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        let post_quant_conv = if cfg.use_post_quant_conv {
            Some(candle_nn::conv2d(l, l, 1, conv, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        Ok(Self {
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// diffusers `AutoencoderKL.encode(x).latent_dist`: `x` `[batch, in_channels, H, W]`, pixels
    /// in [-1, 1] -> the posterior over latents `[batch, latent_channels, H/f, W/f]`
    /// (`f = downscale_factor`; unscaled: multiply a sample by `scaling_factor` for the UNet).
    /// The encoder runs with ordinary zero padding (no tiling).
    ///
    /// Errors: `x` not 4-D or with a channel count other than `in_channels`.
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        self.encode_traced(x, Tiling::None, None)
    }

    /// [`AutoencoderKL::encode`] with the encoder's convolutions circular on the axes `tiling`
    /// wraps (a seamless image keeps periodic latents; used by tiling-aware inpainting).
    pub fn encode_tiled(&self, x: &Tensor, tiling: Tiling) -> Result<DiagonalGaussian> {
        self.encode_traced(x, tiling, None)
    }

    /// [`AutoencoderKL::encode`], also returning intermediate activations by diffusers module
    /// path: `encoder.conv_in`, `encoder.down_blocks.{i}`, `encoder.mid_block`,
    /// `encoder.conv_norm_out` (pre-SiLU), `encoder.conv_out`, `quant_conv` (= the moments).
    pub fn encode_with_intermediates(
        &self,
        x: &Tensor,
    ) -> Result<(DiagonalGaussian, Intermediates)> {
        let mut trace = Intermediates::new();
        let dist = self.encode_traced(x, Tiling::None, Some(&mut trace))?;
        Ok((dist, trace))
    }

    fn encode_traced(
        &self,
        x: &Tensor,
        tiling: Tiling,
        mut trace: Option<&mut Intermediates>,
    ) -> Result<DiagonalGaussian> {
        let (_, c, _, _) = x.dims4()?;
        if c != self.config.in_channels {
            candle_core::bail!(
                "VAE encode: expected {} input channels, got shape {:?}",
                self.config.in_channels,
                x.dims()
            );
        }
        let h = self
            .encoder
            .forward_traced(x, tiling, trace.as_deref_mut())?;
        let moments = match &self.quant_conv {
            Some(conv) => {
                let m = conv.forward(&h)?;
                if let Some(trace) = &mut trace {
                    trace.insert("quant_conv".into(), m.clone());
                }
                m
            }
            None => h,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    /// diffusers `AutoencoderKL.decode(z).sample`: `z` `[batch, latent_channels, h, w]`, already
    /// divided by `scaling_factor` -> pixels `[batch, out_channels, h*f, w*f]`
    /// (`f = downscale_factor`), roughly [-1, 1] and not clamped.
    ///
    /// Every 3x3 convolution of the decoder pads circularly on the axes `tiling` wraps, so the
    /// image tiles seamlessly along them when the latent does; [`Tiling::None`] reproduces
    /// diffusers exactly.
    ///
    /// Errors: `z` not 4-D or with a channel count other than `latent_channels`.
    pub fn decode(&self, z: &Tensor, tiling: Tiling) -> Result<Tensor> {
        self.decode_traced(z, tiling, None)
    }

    /// [`AutoencoderKL::decode`], also returning intermediate activations by diffusers module
    /// path: `post_quant_conv`, `decoder.conv_in`, `decoder.mid_block`, `decoder.up_blocks.{i}`,
    /// `decoder.conv_norm_out` (pre-SiLU), `decoder.conv_out` (= the output).
    pub fn decode_with_intermediates(
        &self,
        z: &Tensor,
        tiling: Tiling,
    ) -> Result<(Tensor, Intermediates)> {
        let mut trace = Intermediates::new();
        let out = self.decode_traced(z, tiling, Some(&mut trace))?;
        Ok((out, trace))
    }

    fn decode_traced(
        &self,
        z: &Tensor,
        tiling: Tiling,
        mut trace: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        if c != self.config.latent_channels {
            candle_core::bail!(
                "VAE decode: expected {} latent channels, got shape {:?}",
                self.config.latent_channels,
                z.dims()
            );
        }
        let z = match &self.post_quant_conv {
            Some(conv) => {
                let z = conv.forward(z)?;
                if let Some(trace) = &mut trace {
                    trace.insert("post_quant_conv".into(), z.clone());
                }
                z
            }
            None => z.clone(),
        };
        self.decoder.forward_traced(&z, tiling, trace)
    }
}
