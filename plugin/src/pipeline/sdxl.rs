//! What `StableDiffusionXLPipeline` (diffusers `pipelines/stable_diffusion_xl/
//! pipeline_stable_diffusion_xl.py`) adds to the SD 1.x/2.x pipeline, in its order:
//!
//! - [`SdxlComponents`]: `tokenizer_2` and `text_encoder_2` (`CLIPTextModelWithProjection`), and
//!   model_index.json's `force_zeros_for_empty_prompt`.
//! - [`encode_prompt_xl`] (diffusers' `encode_prompt`): each prompt through both tokenizers and
//!   both text encoders; `prompt_embeds = cat([te1.hidden_states[-2], te2.hidden_states[-2]], -1)`
//!   and `pooled_prompt_embeds = te2.text_embeds`. Under guidance with no negative prompt and
//!   `force_zeros_for_empty_prompt`, the unconditional row is exact zeros (no encoder call); a
//!   given negative prompt (the empty string included) is encoded like any prompt.
//! - [`add_time_ids`] (diffusers' `_get_add_time_ids`): the micro-conditioning
//!   `[orig_h, orig_w, crop_top, crop_left, target_h, target_w]` of each row.

use candle_core::{DType, Device, Tensor};

use crate::error::{DiffusionError, Result};
use crate::loading::folder::ModelFolder;
use crate::models::clip_text_model::ClipTextConfig;
use crate::models::clip_text_model_with_projection::ClipTextModelWithProjection;
use crate::models::tokenizer::PromptTokenizer;
use crate::models::unet_2d_condition::AddedCondKwargs;
use crate::pipeline::PromptEmbeds;
use crate::pipeline::model::{StableDiffusion, build_component};
use crate::request::GenerationRequest;

/// The second tokenizer and text encoder of an SDXL pipeline.
pub struct SdxlComponents {
    /// `tokenizer_2/` (pads with `!` in SDXL), padding to text_encoder_2's
    /// `max_position_embeddings`.
    pub tokenizer_2: PromptTokenizer,
    /// `text_encoder_2/` (`CLIPTextModelWithProjection`, OpenCLIP bigG in SDXL).
    pub text_encoder_2: ClipTextModelWithProjection,
    /// `text_encoder_2/config.json`.
    pub text_encoder_2_config: ClipTextConfig,
    /// model_index.json `force_zeros_for_empty_prompt` (diffusers' default true).
    pub force_zeros_for_empty_prompt: bool,
}

/// Loads `tokenizer_2` and `text_encoder_2` of an SDXL folder (`None` for SD 1.x/2.x folders),
/// with `lora` (weight name → LoRA deltas for text_encoder_2, kohya `lora_te2_` / PEFT
/// `text_encoder_2.`) merged into its weights.
///
/// Errors: those of [`ClipTextConfig::from_file`], [`PromptTokenizer::from_dir`] and the
/// checking var builder (`MissingTensor` / `ShapeMismatch` naming `text_projection.weight`, ...);
/// `InvalidConfig` when text_encoder_2 has no `projection_dim`, when its tokenizer's ids exceed
/// its `vocab_size`, or when the UNet's `projection_class_embeddings_input_dim` is not
/// `6 * addition_time_embed_dim + projection_dim` (diffusers' "Model expects an added time
/// embedding vector of length ..." check).
pub(crate) fn load_components(
    folder: &ModelFolder,
    unet_time_embed: Option<(usize, usize, &std::path::Path)>,
    device: &Device,
    lora: std::collections::HashMap<String, Vec<crate::loading::lora_merge::LoraDelta>>,
) -> Result<Option<SdxlComponents>> {
    let (Some(component), Some(tokenizer_dir)) = (&folder.text_encoder_2, &folder.tokenizer_2_dir)
    else {
        return Ok(None);
    };
    let config = ClipTextConfig::from_file(&component.config)?;
    let Some(projection_dim) = config.projection_dim else {
        return Err(DiffusionError::config(
            &component.config,
            "projection_dim",
            "missing; text_encoder_2 (CLIPTextModelWithProjection) projects its pooled output to \
             the UNet's text_embeds",
        ));
    };
    if let Some((time_dim, expected, unet_config)) = unet_time_embed
        && 6 * time_dim + projection_dim != expected
    {
        return Err(DiffusionError::config(
            unet_config,
            "projection_class_embeddings_input_dim",
            format!(
                "is {expected} but 6 time ids x addition_time_embed_dim {time_dim} + \
                 text_encoder_2's projection_dim {projection_dim} = {}",
                6 * time_dim + projection_dim
            ),
        ));
    }
    let tokenizer_2 = PromptTokenizer::from_dir(tokenizer_dir, config.max_position_embeddings)?;
    if let Some(e) = crate::loading::folder::vocab_mismatch(
        &tokenizer_2,
        config.vocab_size as u64,
        &component.config,
    ) {
        return Err(e);
    }
    let text_encoder_2 = build_component(component, device, lora, |vb| {
        ClipTextModelWithProjection::new(vb, &config, config.eos_token_id)
    })?;
    Ok(Some(SdxlComponents {
        tokenizer_2,
        text_encoder_2,
        text_encoder_2_config: config,
        force_zeros_for_empty_prompt: folder.force_zeros_for_empty_prompt,
    }))
}

/// Token ids of `prompts` through `tokenizer`: `[batch, max_length]` u32 and whether any was
/// truncated, per prompt.
fn tokenize(
    tokenizer: &PromptTokenizer,
    prompts: &[&str],
    device: &Device,
) -> Result<(Tensor, Vec<bool>)> {
    let mut ids = Vec::new();
    let mut truncated = Vec::new();
    let mut len = 0;
    for p in prompts {
        let t = tokenizer.encode(p)?;
        len = t.ids.len();
        ids.extend(t.ids);
        truncated.push(t.truncated);
    }
    Ok((
        Tensor::from_vec(ids, (prompts.len(), len), device)?,
        truncated,
    ))
}

/// Both text encoders on `prompts`: `prompt_embeds` `[batch, 77, hidden_1 + hidden_2]`
/// (penultimate hidden states, te1 first) and `pooled` `[batch, projection_dim]`.
fn encode_both(
    model: &StableDiffusion,
    sdxl: &SdxlComponents,
    prompts: &[&str],
) -> Result<(Tensor, Tensor, Vec<bool>)> {
    let (ids_1, truncated_1) = tokenize(&model.tokenizer, prompts, &model.device)?;
    let (ids_2, truncated_2) = tokenize(&sdxl.tokenizer_2, prompts, &model.device)?;
    let (_, hidden_1) = model.text_encoder.forward_with_hidden_states(&ids_1)?;
    let out_2 = sdxl.text_encoder_2.forward(&ids_2)?;
    let penultimate = |h: &[Tensor], which: &str| -> Result<Tensor> {
        h.len()
            .checked_sub(2)
            .map(|i| h[i].clone())
            .ok_or_else(|| DiffusionError::InvalidRequest {
                field: "prompt",
                value: which.into(),
                reason: "a text encoder with no layers has no penultimate hidden state".into(),
            })
    };
    let h1 = penultimate(&hidden_1, "text_encoder")?;
    let h2 = penultimate(&out_2.hidden_states, "text_encoder_2")?;
    let embeds = Tensor::cat(&[&h1, &h2], 2)?;
    let pooled = out_2
        .text_embeds
        .expect("CLIPTextModelWithProjection returns text_embeds");
    let truncated = truncated_1
        .iter()
        .zip(&truncated_2)
        .map(|(a, b)| *a || *b)
        .collect();
    Ok((embeds, pooled, truncated))
}

/// diffusers' SDXL `encode_prompt` (`prompt_2 = prompt`, `clip_skip = None`): the rows
/// `[uncond, cond]` under guidance, else `[cond]`, of `embeds` `[batch, 77, hidden_1 +
/// hidden_2]` and `pooled` `[batch, projection_dim]` (see the module docs for the zeroed
/// unconditional row). `negative_prompt` `None` is diffusers' `negative_prompt=None`.
pub fn encode_prompt_xl(
    model: &StableDiffusion,
    sdxl: &SdxlComponents,
    prompt: &str,
    negative_prompt: Option<&str>,
    guidance: bool,
) -> Result<PromptEmbeds> {
    let zero_uncond = guidance && negative_prompt.is_none() && sdxl.force_zeros_for_empty_prompt;
    let prompts: Vec<&str> = if guidance && !zero_uncond {
        vec![negative_prompt.unwrap_or(""), prompt]
    } else {
        vec![prompt]
    };
    let (mut embeds, mut pooled, truncated) = encode_both(model, sdxl, &prompts)?;
    if zero_uncond {
        embeds = Tensor::cat(&[&embeds.zeros_like()?, &embeds], 0)?;
        pooled = Tensor::cat(&[&pooled.zeros_like()?, &pooled], 0)?;
    }
    let cond_truncated = *truncated.last().unwrap_or(&false);
    let negative_truncated = prompts.len() == 2 && truncated[0];
    Ok(PromptEmbeds {
        embeds,
        pooled: Some(pooled),
        prompt_truncated: cond_truncated,
        negative_prompt_truncated: negative_truncated,
    })
}

/// diffusers' `_get_add_time_ids`: `[orig_h, orig_w, crop_top, crop_left, target_h, target_w]`
/// as f32 for the request's micro-conditioning (`original_size` and `target_size` default to the
/// output size `(height, width)`), rows `[negative, positive]` under guidance. The negative row
/// uses the `negative_*` fields only when both `negative_original_size` and
/// `negative_target_size` are set (else it repeats the positive row), as diffusers does.
///
/// Returns `[batch, 6]` f32 on `device` (`batch` 2 under guidance, else 1).
pub fn add_time_ids(
    request: &GenerationRequest,
    (width, height): (u32, u32),
    guidance: bool,
    device: &Device,
) -> Result<Tensor> {
    let output = (height, width);
    let row = |original: (u32, u32), crop: (u32, u32), target: (u32, u32)| {
        [original.0, original.1, crop.0, crop.1, target.0, target.1].map(|v| v as f32)
    };
    let positive = row(
        request.original_size.unwrap_or(output),
        request.crops_coords_top_left,
        request.target_size.unwrap_or(output),
    );
    let mut rows = Vec::new();
    if guidance {
        let negative = match (request.negative_original_size, request.negative_target_size) {
            (Some(original), Some(target)) => {
                row(original, request.negative_crops_coords_top_left, target)
            }
            _ => positive,
        };
        rows.extend(negative);
    }
    rows.extend(positive);
    let batch = rows.len() / 6;
    Ok(Tensor::from_vec(rows, (batch, 6), device)?.to_dtype(DType::F32)?)
}

/// The UNet's `added_cond_kwargs` for an SDXL generation: `text_embeds` = the pooled prompt
/// embeddings and `time_ids` = [`add_time_ids`]; `None` for SD 1.x/2.x models.
pub fn added_cond(
    model: &StableDiffusion,
    request: &GenerationRequest,
    prompt: &PromptEmbeds,
    size: (u32, u32),
) -> Result<Option<AddedCondKwargs>> {
    let (Some(_), Some(pooled)) = (&model.sdxl, &prompt.pooled) else {
        return Ok(None);
    };
    let guidance = prompt.embeds.dim(0)? == 2;
    Ok(Some(AddedCondKwargs {
        text_embeds: pooled.clone(),
        time_ids: add_time_ids(request, size, guidance, &model.device)?,
    }))
}
