//! The UNet's spatial transformer, mirroring diffusers `models/transformers/transformer_2d.py`
//! (`Transformer2DModel`, continuous input), `models/attention.py` (`BasicTransformerBlock`,
//! `FeedForward`, `GEGLU`) and `models/attention_processor.py` (`Attention` with the default
//! `AttnProcessor2_0`, i.e. scaled dot-product attention).
//!
//! Also home of [`scaled_dot_product_attention`], shared with the CLIP text encoder.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use crate::kernels::profile::{self, OpKind};
use crate::kernels::{GroupNormKernel, linear};

/// Upper bound on the number of attention scores materialised at once (2^21 f32 = 8 MiB).
/// Larger problems are computed in chunks of heads, then of query rows; the result is identical.
/// Besides bounding memory (a full SD 1.5 self-attention at 64x64 latents, batch 2, would hold
/// 1 GiB of scores), cache-sized chunks measured ~2x faster than one-shot on CPU.
const MAX_SCORES_PER_CHUNK: usize = 1 << 21;

/// `softmax(q k^T * scale + mask) v`, batched over `[batch * heads]`.
///
/// `q` `[bh, n, d]`, `k` `[bh, m, d]`, `v` `[bh, m, dv]`; `mask` (optional, additive) broadcasts
/// to `[bh, n, m]` (e.g. a causal `[n, m]` mask of 0 / -inf). Scores and softmax are computed in
/// `f32` whatever the input dtype (diffusers' `upcast_attention`), the output has `q`'s dtype:
/// `[bh, n, dv]`.
///
/// Memory stays bounded: f32 CPU tensors without a mask go through the blocked online-softmax
/// kernel (`kernels/attention.rs`); otherwise, when `bh * n * m` exceeds 2^21 scores, the
/// work is split into chunks of heads (and, for a single huge head, of query rows), each a
/// batched matmul.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    profile::timed(OpKind::Attention, || {
        if mask.is_none() {
            let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
            if let Some(out) = crate::kernels::attention::flash_attention(&q, &k, &v, scale)? {
                return Ok(out);
            }
        }
        attention_chunked(q, k, v, scale, mask, MAX_SCORES_PER_CHUNK)
    })
}

/// [`scaled_dot_product_attention`] with at most `max_scores` scores per chunk.
fn attention_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    max_scores: usize,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let q = (q.to_dtype(DType::F32)? * scale)?.contiguous()?;
    let k = k.to_dtype(DType::F32)?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let (bh, n, _) = q.dims3()?;
    let m = k.dim(1)?;
    let kt = k.t()?;
    let attend = |q: &Tensor, kt: &Tensor, v: &Tensor, mask: Option<&Tensor>| -> Result<Tensor> {
        let scores = q.matmul(kt)?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
    };
    let out = if bh * n * m <= max_scores {
        let mask = mask.map(|m| m.to_dtype(DType::F32)).transpose()?;
        attend(&q, &kt, &v, mask.as_ref())?
    } else {
        let mask = mask
            .map(|mk| mk.to_dtype(DType::F32)?.broadcast_as((bh, n, m)))
            .transpose()?;
        let heads_per_chunk = (max_scores / (n * m)).clamp(1, bh);
        let rows_per_chunk = if heads_per_chunk == 1 {
            (max_scores / m).clamp(1, n)
        } else {
            n
        };
        let mut outs = Vec::with_capacity(bh.div_ceil(heads_per_chunk));
        for h0 in (0..bh).step_by(heads_per_chunk) {
            let hc = heads_per_chunk.min(bh - h0);
            let (kt, v) = (kt.narrow(0, h0, hc)?, v.narrow(0, h0, hc)?);
            let mut rows = Vec::with_capacity(n.div_ceil(rows_per_chunk));
            for r0 in (0..n).step_by(rows_per_chunk) {
                crate::cancel::checkpoint()?;
                let rc = rows_per_chunk.min(n - r0);
                let q = q.narrow(0, h0, hc)?.narrow(1, r0, rc)?;
                let mask = mask
                    .as_ref()
                    .map(|mk| mk.narrow(0, h0, hc)?.narrow(1, r0, rc))
                    .transpose()?;
                rows.push(attend(&q, &kt, &v, mask.as_ref())?);
            }
            outs.push(if rows.len() == 1 {
                rows.pop().expect("one chunk")
            } else {
                Tensor::cat(&rows, 1)?
            });
        }
        if outs.len() == 1 {
            outs.pop().expect("one chunk")
        } else {
            Tensor::cat(&outs, 0)?
        }
    };
    out.to_dtype(dtype)
}

/// `[b, n, heads * d]` -> `[b * heads, n, d]` (contiguous).
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    x.reshape((b, n, heads, c / heads))?
        .transpose(1, 2)?
        .reshape((b * heads, n, c / heads))
}

/// `[b * heads, n, d]` -> `[b, n, heads * d]` (contiguous).
pub(crate) fn merge_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (bh, n, d) = x.dims3()?;
    x.reshape((bh / heads, heads, n, d))?
        .transpose(1, 2)?
        .reshape((bh / heads, n, heads * d))
}

/// diffusers' `Attention` (`attention_processor.py`) as used by `BasicTransformerBlock`:
/// `to_q`, `to_k`, `to_v` without bias, `to_out.0` with bias, `heads` heads of `dim_head`,
/// softmax scale `dim_head^-0.5`, no norms, no residual.
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    /// `query_dim` is the width of the hidden states; `cross_attention_dim` the width of the
    /// context (`None` for self-attention, where keys and values come from the hidden states).
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        cross_attention_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let kv_dim = cross_attention_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(kv_dim, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(kv_dim, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            scale: (dim_head as f64).powf(-0.5),
        })
    }

    /// `x` `[b, n, query_dim]`, `context` `[b, m, cross_attention_dim]` (or `None`: attend to
    /// `x` itself) -> `[b, n, query_dim]`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        self.forward_residual(x, context, None)
    }

    /// [`Attention::forward`] plus `residual` `[b, n, query_dim]`, added inside `to_out`.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let mm = linear::forward;
        let (q, k, v) = (
            mm(&self.to_q, x)?,
            mm(&self.to_k, context)?,
            mm(&self.to_v, context)?,
        );
        // The blocked kernel reads the heads in place (no split/merge copies).
        // A bf16 model (bf16 projections) multiplies in bf16 here too (see
        // `precision::bf16_attention`).
        let bf16 = (self.to_q.weight().dtype() == DType::BF16
            && crate::precision::bf16_attention())
        .then(crate::kernels::bf16::conv_kernel)
        .flatten();
        let fused = profile::timed(OpKind::Attention, || {
            use crate::kernels::attention::{attention_heads, attention_heads_bf16};
            match bf16 {
                Some(kernel) => attention_heads_bf16(&q, &k, &v, self.heads, self.scale, kernel),
                None => attention_heads(&q, &k, &v, self.heads, self.scale),
            }
        })?;
        let out = match fused {
            Some(out) => out,
            None => {
                let heads =
                    |t: &Tensor| profile::timed(OpKind::Elementwise, || split_heads(t, self.heads));
                let out = scaled_dot_product_attention(
                    &heads(&q)?,
                    &heads(&k)?,
                    &heads(&v)?,
                    self.scale,
                    None,
                )?;
                profile::timed(OpKind::Elementwise, || merge_heads(&out, self.heads))?
            }
        };
        match residual {
            Some(r) => linear::forward_residual(&self.to_out, &out, r),
            None => mm(&self.to_out, &out),
        }
    }
}

/// diffusers' `FeedForward` with `activation_fn = "geglu"`: `net.0` = `GEGLU`
/// (`proj`: `dim -> 2 * inner`, split in half along the last axis into `hidden, gate`,
/// `hidden * gelu(gate)` with the EXACT erf GELU), then `net.2` (`inner -> dim`).
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    /// `dim -> inner_dim` (`4 * dim` in SD) `-> dim`.
    pub fn new(vb: VarBuilder, dim: usize, inner_dim: usize) -> Result<Self> {
        let proj = candle_nn::linear(dim, 2 * inner_dim, vb.pp("net").pp("0").pp("proj"))?;
        let out = candle_nn::linear(inner_dim, dim, vb.pp("net").pp("2"))?;
        Ok(Self { proj, out })
    }
}

impl FeedForward {
    /// `ff(x) + residual`, the add done inside `net.2`: `[b, n, dim]` -> `[b, n, dim]`.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = linear::forward_geglu(&self.proj, x)?;
        linear::forward_residual(&self.out, &h, residual)
    }
}

impl Module for FeedForward {
    /// `[b, n, dim]` -> `[b, n, dim]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = linear::forward_geglu(&self.proj, x)?;
        linear::forward(&self.out, &h)
    }
}

/// Whether a UNet weight runs the bf16 GEMM under a bf16 request: the linear layers of the
/// transformer blocks (`attn1` / `attn2`'s `to_q`, `to_k`, `to_v`, `to_out.0`, `ff.net.0.proj`,
/// `ff.net.2`), i.e. a 2-D `.weight` under `.transformer_blocks.`, with an even `in` (the
/// kernel's pairs of `k`). Norms, convolutions, `proj_in` / `proj_out` and the time embedding stay
/// f32.
pub fn is_bf16_linear(name: &str, shape: &[usize]) -> bool {
    name.contains(".transformer_blocks.")
        && name.ends_with(".weight")
        && matches!(shape, [_, k] if k % 2 == 0)
}

/// diffusers' `BasicTransformerBlock` (`norm_type = "layer_norm"`, `activation_fn = "geglu"`):
/// `x += attn1(norm1(x))` (self-attention, or cross-attention when `only_cross_attention`),
/// `x += attn2(norm2(x), context)`, `x += ff(norm3(x))`. LayerNorms use eps `1e-5`.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    /// `dim = heads * dim_head` is the token width; `cross_attention_dim` the context width.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        dim_head: usize,
        cross_attention_dim: usize,
        only_cross_attention: bool,
    ) -> Result<Self> {
        let ln = |name: &str| candle_nn::layer_norm(dim, 1e-5, vb.pp(name));
        let attn1_context = only_cross_attention.then_some(cross_attention_dim);
        Ok(Self {
            norm1: ln("norm1")?,
            attn1: Attention::new(vb.pp("attn1"), dim, attn1_context, heads, dim_head)?,
            norm2: ln("norm2")?,
            attn2: Attention::new(
                vb.pp("attn2"),
                dim,
                Some(cross_attention_dim),
                heads,
                dim_head,
            )?,
            norm3: ln("norm3")?,
            ff: FeedForward::new(vb.pp("ff"), dim, 4 * dim)?,
            only_cross_attention,
        })
    }

    /// `x` `[b, n, dim]`, `context` `[b, m, cross_attention_dim]` -> `[b, n, dim]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let attn1_context = self.only_cross_attention.then_some(context);
        let ln = |n: &LayerNorm, x: &Tensor| profile::timed(OpKind::LayerNorm, || n.forward(x));
        // Each residual add happens inside the last Linear of its branch.
        let x = self
            .attn1
            .forward_residual(&ln(&self.norm1, x)?, attn1_context, Some(x))?;
        crate::cancel::checkpoint()?;
        let x = self
            .attn2
            .forward_residual(&ln(&self.norm2, &x)?, Some(context), Some(&x))?;
        crate::cancel::checkpoint()?;
        self.ff.forward_residual(&ln(&self.norm3, &x)?, &x)
    }
}

/// Configuration of one [`Transformer2DModel`].
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DModelConfig {
    /// Number of heads (the UNet config's `attention_head_dim` entry, see its docs).
    pub num_attention_heads: usize,
    /// Width of one head (`in_channels / num_attention_heads` in the UNet).
    pub attention_head_dim: usize,
    /// Channels of the feature map.
    pub in_channels: usize,
    /// Number of `BasicTransformerBlock`s (`transformer_layers_per_block`).
    pub num_layers: usize,
    /// Width of the text context.
    pub cross_attention_dim: usize,
    /// Groups of the input `GroupNorm` (eps 1e-6).
    pub norm_num_groups: usize,
    /// `proj_in`/`proj_out` are `Linear` (SD 2.x) instead of 1x1 convolutions (SD 1.x).
    pub use_linear_projection: bool,
    /// `attn1` attends to the context instead of the feature map.
    pub only_cross_attention: bool,
}

/// diffusers' `Transformer2DModel` for continuous (feature-map) input:
/// `GroupNorm(norm_num_groups, eps 1e-6) -> proj_in -> [b, h*w, inner] -> transformer_blocks
/// -> proj_out -> + residual`.
///
/// `proj_in`/`proj_out` are loaded as `Linear` even when stored as 1x1 convolutions
/// (`[out, in, 1, 1]`): a 1x1 convolution is the same matmul over the channel axis, so the
/// tokens are formed first and both layouts share one code path. No padding is involved, so
/// tiling does not concern this module.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNormKernel,
    proj_in: Linear,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
}

/// A `Linear` from either a `Linear` (`[out, in]`) or a 1x1 `Conv2d` (`[out, in, 1, 1]`) weight.
fn linear_or_conv1x1(vb: VarBuilder, in_dim: usize, out_dim: usize, conv: bool) -> Result<Linear> {
    if conv {
        let weight = vb
            .get((out_dim, in_dim, 1, 1), "weight")?
            .reshape((out_dim, in_dim))?;
        let bias = vb.get(out_dim, "bias")?;
        Ok(Linear::new(weight, Some(bias)))
    } else {
        candle_nn::linear(in_dim, out_dim, vb)
    }
}

impl Transformer2DModel {
    /// Loads `norm`, `proj_in`, `transformer_blocks.{i}`, `proj_out` from `vb`.
    pub fn new(vb: VarBuilder, cfg: Transformer2DModelConfig) -> Result<Self> {
        let inner = cfg.num_attention_heads * cfg.attention_head_dim;
        let conv = !cfg.use_linear_projection;
        let norm = GroupNormKernel::new(cfg.norm_num_groups, cfg.in_channels, 1e-6, vb.pp("norm"))?;
        let proj_in = linear_or_conv1x1(vb.pp("proj_in"), cfg.in_channels, inner, conv)?;
        let transformer_blocks = (0..cfg.num_layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i),
                    inner,
                    cfg.num_attention_heads,
                    cfg.attention_head_dim,
                    cfg.cross_attention_dim,
                    cfg.only_cross_attention,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let proj_out = linear_or_conv1x1(vb.pp("proj_out"), inner, cfg.in_channels, conv)?;
        Ok(Self {
            norm,
            proj_in,
            transformer_blocks,
            proj_out,
        })
    }

    /// `x` `[b, in_channels, h, w]`, `context` `[b, m, cross_attention_dim]` ->
    /// `[b, in_channels, h, w]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let normed = self.norm.forward(x)?;
        // proj_in reads the normalised map in place; proj_out writes the map and adds `x`.
        let mut tokens = linear::forward_from_nchw(&self.proj_in, &normed)?;
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, context)?;
        }
        linear::forward_to_nchw(&self.proj_out, &tokens, x)
    }
}

#[cfg(test)]
mod tests;
