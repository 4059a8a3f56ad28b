//! Timestep embeddings of the UNet, mirroring diffusers `models/embeddings.py`
//! (`get_timestep_embedding`, `Timesteps`, `TimestepEmbedding`).

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// diffusers' `get_timestep_embedding` with `scale = 1`, `max_period = 10000`, for one timestep
/// shared by the whole batch.
///
/// Everything is computed in `f32` exactly as PyTorch does it (the timestep is cast to `f32`
/// first, so 799.2 becomes 799.2000122): with `half = dim / 2`,
/// `freq_i = exp(-ln(10000) * i / (half - downscale_freq_shift))`, `arg_i = t * freq_i`, and the
/// embedding is `cat(sin(arg), cos(arg))`, or `cat(cos(arg), sin(arg))` when `flip_sin_to_cos`;
/// an odd `dim` gets one zero column at the end.
///
/// Returns `[batch, dim]` `f32` on `device`, values in `[-1, 1]`.
pub fn timestep_embedding(
    timestep: f64,
    batch: usize,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let t = timestep as f32;
    let log_max_period = -(10000f64.ln()) as f32;
    let denom = (half as f64 - downscale_freq_shift) as f32;
    let args: Vec<f32> = (0..half)
        .map(|i| t * ((i as f32 * log_max_period) / denom).exp())
        .collect();
    let sin = args.iter().map(|a| a.sin());
    let cos = args.iter().map(|a| a.cos());
    let mut row: Vec<f32> = if flip_sin_to_cos {
        cos.chain(sin).collect()
    } else {
        sin.chain(cos).collect()
    };
    if dim % 2 == 1 {
        row.push(0.0);
    }
    Tensor::from_vec(row, (1, dim), device)?.repeat((batch, 1))
}

/// diffusers' `Timesteps`: the parameter-free sinusoidal projection of the timestep
/// (`time_proj` in the UNet).
#[derive(Debug, Clone, Copy)]
pub struct Timesteps {
    /// Output width (`block_out_channels[0]` in the UNet).
    pub num_channels: usize,
    /// `flip_sin_to_cos` of the UNet config (true for SD: cosines first).
    pub flip_sin_to_cos: bool,
    /// `freq_shift` of the UNet config (0 for SD).
    pub downscale_freq_shift: f64,
}

impl Timesteps {
    /// `[batch, num_channels]` `f32` embedding of `timestep` (see [`timestep_embedding`]).
    pub fn forward(&self, timestep: f64, batch: usize, device: &Device) -> Result<Tensor> {
        timestep_embedding(
            timestep,
            batch,
            self.num_channels,
            self.flip_sin_to_cos,
            self.downscale_freq_shift,
            device,
        )
    }
}

/// diffusers' `TimestepEmbedding` with `act_fn = "silu"`, no `cond_proj` and no `post_act`:
/// `linear_1 -> SiLU -> linear_2` (`time_embedding` in the UNet).
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// Loads `linear_1` (`in_channels -> time_embed_dim`) and `linear_2`
    /// (`time_embed_dim -> time_embed_dim`) from `vb`.
    pub fn new(vb: VarBuilder, in_channels: usize, time_embed_dim: usize) -> Result<Self> {
        let linear_1 = candle_nn::linear(in_channels, time_embed_dim, vb.pp("linear_1"))?;
        let linear_2 = candle_nn::linear(time_embed_dim, time_embed_dim, vb.pp("linear_2"))?;
        Ok(Self { linear_1, linear_2 })
    }
}

impl Module for TimestepEmbedding {
    /// `[batch, in_channels]` -> `[batch, time_embed_dim]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_puts_cosines_first_and_t0_is_cos1_sin0() -> Result<()> {
        let e = timestep_embedding(0.0, 2, 6, true, 0.0, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(e, vec![vec![1., 1., 1., 0., 0., 0.]; 2]);
        let e = timestep_embedding(0.0, 1, 5, false, 1.0, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(e, vec![vec![0., 0., 1., 1., 0.]]);
        Ok(())
    }

    #[test]
    fn first_frequency_is_one() -> Result<()> {
        let e = timestep_embedding(2.0, 1, 8, false, 0.0, &Device::Cpu)?.to_vec2::<f32>()?;
        assert!((e[0][0] - 2f32.sin()).abs() < 1e-7);
        assert!((e[0][4] - 2f32.cos()).abs() < 1e-7);
        Ok(())
    }
}

/// SDXL's added conditioning (diffusers' `addition_embed_type = "text_time"`, the
/// `add_time_proj` + `add_embedding` modules of `UNet2DConditionModel` and its
/// `get_aug_embed`): `aug = add_embedding(cat([text_embeds, add_time_proj(time_ids.flatten())
/// .reshape(batch, -1)], -1))`, added to the timestep embedding that feeds every resnet.
#[derive(Debug, Clone)]
pub struct TextTimeEmbedding {
    /// `add_time_proj`: `Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)`.
    pub add_time_proj: Timesteps,
    /// `add_embedding`: `TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)`.
    pub add_embedding: TimestepEmbedding,
}

impl TextTimeEmbedding {
    /// `add_time_proj` of every value of `time_ids` `[batch, k]` (each number embedded
    /// separately, as diffusers' `time_ids.flatten()`): `[batch * k, addition_time_embed_dim]` f32.
    pub fn time_proj(&self, time_ids: &Tensor) -> Result<Tensor> {
        let values = time_ids.to_dtype(candle_core::DType::F64)?.flatten_all()?;
        let rows = values
            .to_vec1::<f64>()?
            .into_iter()
            .map(|v| self.add_time_proj.forward(v, 1, time_ids.device()))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0)
    }

    /// `text_embeds` `[batch, projection_dim]` (text_encoder_2's projected pooled output) and
    /// `time_ids` `[batch, 6]` (`[orig_h, orig_w, crop_top, crop_left, target_h, target_w]`) ->
    /// `(add_time_proj [batch * 6, addition_time_embed_dim], aug_emb [batch, time_embed_dim])`.
    pub fn forward(&self, text_embeds: &Tensor, time_ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (batch, _) = time_ids.dims2()?;
        let proj = self.time_proj(time_ids)?;
        let time_embeds = proj.reshape((batch, ()))?.to_dtype(text_embeds.dtype())?;
        let input = Tensor::cat(&[text_embeds, &time_embeds], 1)?;
        let aug = self.add_embedding.forward(&input)?;
        Ok((proj, aug))
    }
}
