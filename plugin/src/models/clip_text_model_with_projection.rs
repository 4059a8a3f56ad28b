//! transformers' `CLIPTextModelWithProjection` (`models/clip/modeling_clip.py`): the CLIP text
//! tower ([`ClipTextModel`]) plus `text_projection`, a bias-free `Linear(hidden_size,
//! projection_dim)` applied to the pooled output. SDXL's second text encoder (OpenCLIP bigG).
//!
//! Weight names as real checkpoints store them: `text_model.*` (see [`ClipTextModel::new`]) and
//! `text_projection.weight` `[projection_dim, hidden_size]`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::clip_text_model::{ClipTextConfig, ClipTextModel};

/// What SDXL takes from a CLIP text encoder run with `output_hidden_states=True`.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `last_hidden_state` `[batch, seq, hidden_size]` (after `final_layer_norm`).
    pub last_hidden_state: Tensor,
    /// `hidden_states`: the embeddings then every encoder layer's output
    /// (`num_hidden_layers + 1` tensors `[batch, seq, hidden_size]`, no final LayerNorm).
    /// SDXL conditions on `hidden_states[-2]` (the output of layer `n - 2`).
    pub hidden_states: Vec<Tensor>,
    /// `pooler_output` `[batch, hidden_size]`: `last_hidden_state` at each row's eos token.
    pub pooled: Tensor,
    /// `text_embeds` `[batch, projection_dim]` = `pooled @ text_projection.weight^T`
    /// (only from [`ClipTextModelWithProjection`]).
    pub text_embeds: Option<Tensor>,
}

impl ClipTextOutput {
    /// transformers' `hidden_states[-k]` (`k >= 1`; `k = 2` is the penultimate layer SDXL uses).
    pub fn hidden_state_from_end(&self, k: usize) -> Result<&Tensor> {
        let n = self.hidden_states.len();
        if k == 0 || k > n {
            candle_core::bail!("hidden_states[-{k}] does not exist ({n} hidden states)");
        }
        Ok(&self.hidden_states[n - k])
    }
}

/// The eos position of each row of `input_ids` `[batch, seq]`, as transformers'
/// `CLIPTextTransformer` picks it: with `eos_token_id == 2` (the legacy configs of real
/// checkpoints) `argmax(input_ids)` (the highest id, which is `<|endoftext|>` in CLIP's
/// vocabulary), else the first position holding `eos_token_id` (0 when there is none, as
/// PyTorch's `argmax` of an all-false row).
pub fn eos_positions(input_ids: &Tensor, eos_token_id: u32) -> Result<Vec<usize>> {
    let rows = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    Ok(rows
        .iter()
        .map(|row| {
            if eos_token_id == 2 {
                // PyTorch's argmax returns the first maximum.
                let max = row.iter().copied().max().unwrap_or(0);
                row.iter().position(|&id| id == max).unwrap_or(0)
            } else {
                row.iter().position(|&id| id == eos_token_id).unwrap_or(0)
            }
        })
        .collect())
}

/// Picks `last_hidden_state[i, positions[i]]` for every row: `[batch, seq, d]` -> `[batch, d]`.
pub fn pool_at(last_hidden_state: &Tensor, positions: &[usize]) -> Result<Tensor> {
    let rows = positions
        .iter()
        .enumerate()
        .map(|(i, &p)| last_hidden_state.get(i)?.get(p))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&rows, 0)
}

/// transformers' `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`).
#[derive(Debug, Clone)]
pub struct ClipTextModelWithProjection {
    text_model: ClipTextModel,
    text_projection: Linear,
    eos_token_id: u32,
}

impl ClipTextModelWithProjection {
    /// Loads from the folder's root var builder: `text_model.*` and `text_projection.weight`
    /// `[projection_dim, hidden_size]`. `eos_token_id` comes from the text encoder's
    /// config.json (transformers' default 2; see [`eos_positions`]).
    ///
    /// Errors: candle's error for a missing or misshapen tensor (the checking var builder of
    /// the loader turns it into `MissingTensor` / `ShapeMismatch` naming the tensor), or when
    /// the config has no `projection_dim`.
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig, eos_token_id: u32) -> Result<Self> {
        let Some(projection_dim) = cfg.projection_dim else {
            candle_core::bail!("CLIPTextModelWithProjection needs `projection_dim` in its config");
        };
        let text_model = ClipTextModel::new(vb.clone(), cfg)?;
        let text_projection =
            candle_nn::linear_no_bias(cfg.hidden_size, projection_dim, vb.pp("text_projection"))?;
        Ok(Self {
            text_model,
            text_projection,
            eos_token_id,
        })
    }

    /// The configuration the text tower was built from.
    pub fn config(&self) -> &ClipTextConfig {
        self.text_model.config()
    }

    /// `input_ids` `[batch, seq]` -> hidden states, pooled `[batch, hidden_size]` and
    /// `text_embeds` `[batch, projection_dim]` (see [`ClipTextOutput`]).
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        let (last, hidden_states) = self.text_model.forward_with_hidden_states(input_ids)?;
        let pooled = pool_at(&last, &eos_positions(input_ids, self.eos_token_id)?)?;
        let text_embeds = self.text_projection.forward(&pooled)?;
        Ok(ClipTextOutput {
            last_hidden_state: last,
            hidden_states,
            pooled,
            text_embeds: Some(text_embeds),
        })
    }
}
