//! The CLIP text encoder, mirroring transformers `models/clip/modeling_clip.py`
//! (`CLIPTextModel` = `CLIPTextTransformer`: embeddings, pre-LN encoder with a causal mask,
//! `final_layer_norm`). Stable Diffusion conditions on its `last_hidden_state`.

use std::path::Path;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use crate::kernels::linear;
use serde_json::Value;

use super::transformer_2d::{merge_heads, scaled_dot_product_attention, split_heads};
use crate::configuration_utils::JsonConfig;

/// The MLP activation of the encoder layers (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `quick_gelu`: `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// `gelu`: the exact erf GELU (OpenCLIP ViT-H, SD 2.x and SD-Turbo).
    Gelu,
}

impl ClipActivation {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Gelu => x.gelu_erf(),
        }
    }
}

/// `text_encoder/config.json` of a `CLIPTextModel`. Absent keys take transformers'
/// `CLIPTextConfig` defaults.
#[derive(Debug, Clone)]
pub struct ClipTextConfig {
    /// Token ids are in `0..vocab_size` (49408 for CLIP).
    pub vocab_size: usize,
    /// Width of the token embeddings and of `last_hidden_state` (768 SD 1.x, 1024 SD 2.x).
    pub hidden_size: usize,
    /// Longest token sequence (77).
    pub max_position_embeddings: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Encoder layers (12 SD 1.x, 23 in SD 2.x checkpoints).
    pub num_hidden_layers: usize,
    /// Attention heads (they divide `hidden_size`).
    pub num_attention_heads: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// Eps of every LayerNorm (1e-5).
    pub layer_norm_eps: f64,
    /// `projection_dim` (of the CLIP model this encoder was cut from); unused by `CLIPTextModel`,
    /// the width of `text_embeds` in `CLIPTextModelWithProjection` (SDXL's text_encoder_2).
    pub projection_dim: Option<usize>,
    /// `eos_token_id` (transformers' default 2): picks the pooled position (see
    /// [`super::clip_text_model_with_projection::eos_positions`]).
    pub eos_token_id: u32,
}

impl ClipTextConfig {
    /// Parses `text_encoder/config.json`.
    ///
    /// Errors: missing/unreadable file `DiffusionError::Io`; bad JSON or an ill-typed or
    /// inconsistent field (heads not dividing `hidden_size`) `InvalidConfig`; `hidden_act` other
    /// than `quick_gelu` / `gelu` `UnsupportedConfig`.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let j = JsonConfig::read(path)?;
        let hidden_act = match j.raw("hidden_act") {
            None => ClipActivation::QuickGelu,
            Some(Value::String(s)) if s == "quick_gelu" => ClipActivation::QuickGelu,
            Some(Value::String(s)) if s == "gelu" => ClipActivation::Gelu,
            Some(v) => return Err(j.unsupported("hidden_act", v)),
        };
        let cfg = Self {
            vocab_size: j.get_or("vocab_size", 49408)?,
            hidden_size: j.get_or("hidden_size", 512)?,
            max_position_embeddings: j.get_or("max_position_embeddings", 77)?,
            intermediate_size: j.get_or("intermediate_size", 2048)?,
            num_hidden_layers: j.get_or("num_hidden_layers", 12)?,
            num_attention_heads: j.get_or("num_attention_heads", 8)?,
            hidden_act,
            layer_norm_eps: j.get_or("layer_norm_eps", 1e-5)?,
            projection_dim: j.opt("projection_dim")?,
            eos_token_id: j.get_or("eos_token_id", 2)?,
        };
        {
            use crate::config_bounds::*;
            check_bounds(
                &j.path,
                &[
                    (
                        "num_hidden_layers",
                        cfg.num_hidden_layers,
                        MAX_HIDDEN_LAYERS,
                    ),
                    ("hidden_size", cfg.hidden_size, MAX_CHANNELS),
                    ("intermediate_size", cfg.intermediate_size, MAX_WIDTH),
                    ("num_attention_heads", cfg.num_attention_heads, MAX_HEADS),
                    (
                        "max_position_embeddings",
                        cfg.max_position_embeddings,
                        MAX_POSITIONS,
                    ),
                    ("vocab_size", cfg.vocab_size, MAX_VOCAB),
                ],
            )?;
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            let reason = format!(
                "{} heads do not divide hidden_size {}",
                cfg.num_attention_heads, cfg.hidden_size
            );
            return Err(crate::DiffusionError::config(
                &j.path,
                "num_attention_heads",
                reason,
            ));
        }
        Ok(cfg)
    }
}

/// `CLIPAttention`: `q_proj`, `k_proj`, `v_proj`, `out_proj` (all with bias), scale
/// `head_dim^-0.5`, with the causal mask.
#[derive(Debug, Clone)]
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    scale: f64,
}

impl ClipAttention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            scale: ((d / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let q = split_heads(&linear::forward(&self.q_proj, x)?, self.heads)?;
        let k = split_heads(&linear::forward(&self.k_proj, x)?, self.heads)?;
        let v = split_heads(&linear::forward(&self.v_proj, x)?, self.heads)?;
        let out = scaled_dot_product_attention(&q, &k, &v, self.scale, Some(causal_mask))?;
        linear::forward(&self.out_proj, &merge_heads(&out, self.heads)?)
    }
}

/// `CLIPEncoderLayer`: `x += self_attn(layer_norm1(x))`, `x += fc2(act(fc1(layer_norm2(x))))`.
#[derive(Debug, Clone)]
struct ClipEncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
}

impl ClipEncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: ClipAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: candle_nn::layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(d, cfg.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(cfg.intermediate_size, d, vb.pp("mlp").pp("fc2"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let x = (self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, causal_mask)?
            + x)?;
        let h = self
            .act
            .apply(&linear::forward(&self.fc1, &self.layer_norm2.forward(&x)?)?)?;
        linear::forward_residual(&self.fc2, &h, &x)
    }
}

/// transformers' `CLIPTextModel` (the text tower without projection).
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: LayerNorm,
}

/// `[seq, seq]` additive causal mask: 0 on and below the diagonal, -inf above.
fn causal_mask(seq: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq, seq), device)
}

impl ClipTextModel {
    /// Loads from the folder's root var builder (tensor names start with `text_model.`:
    /// `embeddings.{token,position}_embedding`, `encoder.layers.{i}`, `final_layer_norm`).
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let vb = vb.pp("text_model");
        let emb = vb.pp("embeddings");
        let d = cfg.hidden_size;
        let token_embedding = candle_nn::embedding(cfg.vocab_size, d, emb.pp("token_embedding"))?;
        let position_embedding =
            candle_nn::embedding(cfg.max_position_embeddings, d, emb.pp("position_embedding"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(vb.pp("encoder").pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            candle_nn::layer_norm(d, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            config: cfg.clone(),
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// `input_ids` `[batch, seq]` (u32 or i64 token ids, `seq <= max_position_embeddings`) ->
    /// `last_hidden_state` `[batch, seq, hidden_size]` (after `final_layer_norm`; causal mask
    /// only, no padding mask, as Stable Diffusion uses it).
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_hidden_states(input_ids)?.0)
    }

    /// [`Self::forward`] that also returns transformers' `hidden_states`: the embeddings
    /// followed by the output of every encoder layer (`num_hidden_layers + 1` tensors
    /// `[batch, seq, hidden_size]`, the last one before `final_layer_norm`).
    pub fn forward_with_hidden_states(&self, input_ids: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let (_, seq) = input_ids.dims2()?;
        if seq > self.config.max_position_embeddings {
            candle_core::bail!(
                "{seq} tokens exceed the text encoder's max_position_embeddings ({})",
                self.config.max_position_embeddings
            );
        }
        let device = input_ids.device();
        let positions = Tensor::arange(0u32, seq as u32, device)?;
        let tokens = self.token_embedding.forward(input_ids)?;
        let mut h = tokens.broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(seq, device)?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(h.clone());
        for layer in &self.layers {
            crate::cancel::checkpoint()?;
            h = layer.forward(&h, &mask)?;
            hidden_states.push(h.clone());
        }
        let last = self.final_layer_norm.forward(&h)?;
        Ok((last, hidden_states))
    }
}
