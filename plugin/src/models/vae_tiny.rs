//! The halves of [`AutoencoderTiny`](super::autoencoder_tiny::AutoencoderTiny) (TAESD),
//! mirroring diffusers `models/autoencoders/vae.py` (`EncoderTiny`, `DecoderTiny`) and
//! `models/unets/unet_2d_blocks.py` (`AutoencoderTinyBlock`).
//!
//! Each is an `nn.Sequential`, so the weights are named by index: `layers.N.weight`, a block's
//! convs `layers.N.conv.{0,2,4}.*`. Every 3x3 convolution takes a [`Tiling`].

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::autoencoder_tiny::{AutoencoderTinyConfig, TinyActivation};
use crate::tiling::{TiledConv2d, Tiling};

/// Intermediate activations by diffusers module path (`"decoder.layers.4"`, `"decoder.layers"`
/// = the Sequential's output, ...), for parity debugging.
pub type Intermediates = BTreeMap<String, Tensor>;

/// diffusers `AutoencoderTinyBlock` with `in == out` channels (the only way `EncoderTiny` /
/// `DecoderTiny` build it, so `skip` is the identity):
/// `fuse(conv(x) + x)`, `conv` = `Conv3x3 -> act -> Conv3x3 -> act -> Conv3x3`, `fuse` = ReLU.
/// `[b, c, h, w]` -> `[b, c, h, w]`.
#[derive(Debug, Clone)]
pub struct AutoencoderTinyBlock {
    convs: [TiledConv2d; 3],
    act: TinyActivation,
}

impl AutoencoderTinyBlock {
    /// Loads `conv.0`, `conv.2`, `conv.4` (weights `[c, c, 3, 3]` and biases) from `vb`.
    pub fn new(vb: VarBuilder, channels: usize, act: TinyActivation) -> Result<Self> {
        let conv = |i: usize| TiledConv2d::new(channels, channels, 3, 1, 1, vb.pp("conv").pp(i));
        Ok(Self {
            convs: [conv(0)?, conv(2)?, conv(4)?],
            act,
        })
    }

    /// `[b, c, h, w]` -> `[b, c, h, w]`; the convolutions honour `tiling`.
    pub fn forward(&self, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
        if self.act == TinyActivation::Relu {
            // The same three convs with every ReLU (and the residual add) fused into the conv.
            let h = self.convs[0].forward_relu(x, tiling, None)?;
            let h = self.convs[1].forward_relu(&h, tiling, None)?;
            return self.convs[2].forward_relu(&h, tiling, Some(x));
        }
        let h = self.act.apply(&self.convs[0].forward(x, tiling)?)?;
        let h = self.act.apply(&self.convs[1].forward(&h, tiling)?)?;
        let h = self.convs[2].forward(&h, tiling)?;
        (h + x)?.relu()
    }
}

/// One entry of an `nn.Sequential` of `EncoderTiny` / `DecoderTiny`.
#[derive(Debug, Clone)]
enum Layer {
    Conv(TiledConv2d),
    Act(TinyActivation),
    Block(AutoencoderTinyBlock),
    /// `nn.Upsample(scale_factor=2, mode="nearest")`.
    Upsample2x,
}

impl Layer {
    fn forward(&self, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
        match self {
            Self::Conv(c) => c.forward(x, tiling),
            Self::Act(a) => a.apply(x),
            Self::Block(b) => b.forward(x, tiling),
            Self::Upsample2x => {
                let (_, _, h, w) = x.dims4()?;
                crate::kernels::elementwise::upsample_nearest2d(x, 2 * h, 2 * w)
            }
        }
    }
}

/// Runs `layers`, recording `"{prefix}.layers.{i}"` after each one when tracing.
fn run_layers(
    layers: &[Layer],
    x: &Tensor,
    tiling: Tiling,
    prefix: &str,
    trace: &mut Option<&mut Intermediates>,
) -> Result<Tensor> {
    let mut h = x.clone();
    let mut i = 0;
    while i < layers.len() {
        // Untraced, a conv followed by a ReLU runs as one fused pass.
        if trace.is_none()
            && let (Layer::Conv(c), Some(Layer::Act(TinyActivation::Relu))) =
                (&layers[i], layers.get(i + 1))
        {
            h = c.forward_relu(&h, tiling, None)?;
            i += 2;
            continue;
        }
        h = layers[i].forward(&h, tiling)?;
        if let Some(trace) = trace.as_deref_mut() {
            trace.insert(format!("{prefix}.layers.{i}"), h.clone());
        }
        i += 1;
    }
    Ok(h)
}

/// diffusers `EncoderTiny`: pixels `[b, in_channels, H, W]` in [-1, 1] (mapped to TAESD's
/// [0, 1] first) -> latents `[b, latent_channels, H/f, W/f]` in the UNet's latent space.
///
/// Layers: level 0 starts with a 3x3 conv `in -> c` (bias), every other level with a stride-2 3x3
/// conv `c -> c` (no bias); then that level's blocks; finally a 3x3 conv `c -> latent_channels`.
#[derive(Debug, Clone)]
pub struct EncoderTiny {
    layers: Vec<Layer>,
}

impl EncoderTiny {
    /// Loads `layers.N.*` from `vb` (the `encoder` prefix).
    pub fn new(vb: VarBuilder, cfg: &AutoencoderTinyConfig) -> Result<Self> {
        let vb = vb.pp("layers");
        let c = cfg.encoder_block_out_channels[0];
        let mut layers = Vec::new();
        for (i, &blocks) in cfg.num_encoder_blocks.iter().enumerate() {
            let conv_vb = vb.pp(layers.len());
            layers.push(Layer::Conv(if i == 0 {
                TiledConv2d::new(cfg.in_channels, c, 3, 1, 1, conv_vb)?
            } else {
                TiledConv2d::new_no_bias(c, c, 3, 2, 1, conv_vb)?
            }));
            for _ in 0..blocks {
                let block = AutoencoderTinyBlock::new(vb.pp(layers.len()), c, cfg.act_fn)?;
                layers.push(Layer::Block(block));
            }
        }
        let out = TiledConv2d::new(c, cfg.latent_channels, 3, 1, 1, vb.pp(layers.len()))?;
        layers.push(Layer::Conv(out));
        Ok(Self { layers })
    }

    /// `[b, in, H, W]` in [-1, 1] -> `[b, latent_channels, H/f, W/f]`, recording
    /// `encoder.layers.N` when tracing.
    pub fn forward_traced(
        &self,
        x: &Tensor,
        tiling: Tiling,
        mut trace: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        // "scale image from [-1, 1] to [0, 1] to match TAESD convention"
        let x = x.affine(0.5, 0.5)?;
        run_layers(&self.layers, &x, tiling, "encoder", &mut trace)
    }
}

/// diffusers `DecoderTiny`: latents `[b, latent_channels, h, w]` (already divided by
/// `scaling_factor`) -> pixels `[b, out_channels, h*f, w*f]` in diffusers' [-1, 1] convention,
/// unclamped.
///
/// `tanh(z / 3) * 3` (a soft clamp), then: 3x3 conv `latent -> c` (bias), activation; per level its
/// blocks, then (all but the last level) nearest 2x upsampling and a 3x3 conv `c -> c` (no bias);
/// the last level ends with a 3x3 conv `c -> out_channels` (bias). The layers' output is TAESD's
/// [0, 1] convention; `forward` returns `that * 2 - 1`.
#[derive(Debug, Clone)]
pub struct DecoderTiny {
    layers: Vec<Layer>,
}

impl DecoderTiny {
    /// Loads `layers.N.*` from `vb` (the `decoder` prefix).
    pub fn new(vb: VarBuilder, cfg: &AutoencoderTinyConfig) -> Result<Self> {
        let vb = vb.pp("layers");
        let c = cfg.decoder_block_out_channels[0];
        let mut layers = vec![
            Layer::Conv(TiledConv2d::new(cfg.latent_channels, c, 3, 1, 1, vb.pp(0))?),
            Layer::Act(cfg.act_fn),
        ];
        let n = cfg.num_decoder_blocks.len();
        for (i, &blocks) in cfg.num_decoder_blocks.iter().enumerate() {
            for _ in 0..blocks {
                let block = AutoencoderTinyBlock::new(vb.pp(layers.len()), c, cfg.act_fn)?;
                layers.push(Layer::Block(block));
            }
            let conv = if i + 1 < n {
                layers.push(Layer::Upsample2x);
                TiledConv2d::new_no_bias(c, c, 3, 1, 1, vb.pp(layers.len()))?
            } else {
                TiledConv2d::new(c, cfg.out_channels, 3, 1, 1, vb.pp(layers.len()))?
            };
            layers.push(Layer::Conv(conv));
        }
        Ok(Self { layers })
    }

    /// `[b, latent, h, w]` -> `[b, out, h*f, w*f]` in [-1, 1] (unclamped), recording
    /// `decoder.layers.N` and `decoder.layers` (the Sequential output, [0, 1] convention) when
    /// tracing. Every 3x3 convolution is circular on the axes `tiling` wraps.
    pub fn forward_traced(
        &self,
        z: &Tensor,
        tiling: Tiling,
        mut trace: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let z = ((z / 3.0)?.tanh()? * 3.0)?;
        if let Some(trace) = trace.as_deref_mut() {
            trace.insert("decoder.z_soft_clamped".into(), z.clone());
        }
        let h = run_layers(&self.layers, &z, tiling, "decoder", &mut trace)?;
        if let Some(trace) = trace {
            trace.insert("decoder.layers".into(), h.clone());
        }
        // "scale image from [0, 1] to [-1, 1] to match diffusers convention"
        h.affine(2.0, -1.0)
    }
}
