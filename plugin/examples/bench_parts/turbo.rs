//! The bench's SD-Turbo-architecture image (SD 2.1 UNet config + OpenCLIP-H-sized text encoder,
//! 512 px, 1 step, no CFG) with the full VAE and with TAESD, the same work as
//! `perf_anchor.py --turbo`: text encoder, one UNet forward at t = 999, one decode.

use bevy_diffusion::Tiling;
use bevy_diffusion::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use bevy_diffusion::models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use bevy_diffusion::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use bevy_diffusion::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

/// stabilityai/sd-turbo `unet/config.json` (= SD 2.1-base).
pub const SD21_UNET: &str = r#"{"_class_name": "UNet2DConditionModel", "act_fn": "silu",
 "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
 "center_input_sample": false, "cross_attention_dim": 1024,
 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
 "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
 "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
 "use_linear_projection": true,
 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#;
/// OpenCLIP ViT-H text tower as SD 2.x ships it (23 layers used).
pub const OPENCLIP_H: &str = r#"{"architectures": ["CLIPTextModel"], "hidden_act": "gelu", "hidden_size": 1024,
 "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 16,
 "num_hidden_layers": 23, "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
 "projection_dim": 1024, "model_type": "clip_text_model"}"#;

/// Times the SD-Turbo-architecture image with both decoders (zero weights: the work of a dense
/// network does not depend on its values).
pub fn turbo_bench(
    write_config: &dyn Fn(&str, &str) -> anyhow::Result<std::path::PathBuf>,
    vae_json: &str,
    timed: &dyn Fn(&str, &mut dyn FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64>,
) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let vb = VarBuilder::zeros(DType::F32, &dev);
    let unet = UNet2DConditionModel::new(
        vb.clone(),
        &UNet2DConditionConfig::from_file(&write_config("sd21_unet.json", SD21_UNET)?)?,
    )?;
    let te = ClipTextModel::new(
        vb.clone(),
        &ClipTextConfig::from_file(&write_config("openclip_h.json", OPENCLIP_H)?)?,
    )?;
    let vae = AutoencoderKL::new(
        vb.clone(),
        &AutoencoderKLConfig::from_file(&write_config("vae.json", vae_json)?)?,
    )?;
    let taesd_cfg = AutoencoderTinyConfig::from_file(&write_config(
        "taesd.json",
        r#"{"_class_name": "AutoencoderTiny"}"#,
    )?)?;
    let varmap = candle_nn::VarMap::new();
    let taesd = AutoencoderTiny::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        &taesd_cfg,
    )?;
    let ids = Tensor::zeros((1, 77), DType::U32, &dev)?;
    let image = |full: bool| -> anyhow::Result<()> {
        let h = te.forward(&ids)?;
        let lat = (Tensor::randn(0f32, 1., (1, 4, 64, 64), &dev)? * 14.6)?;
        let eps = unet.forward(&lat, 999.0, &h, Tiling::None)?;
        let x0 = (lat - (eps * 14.6)?)?;
        if full {
            vae.decode(&(x0 / 0.18215)?, Tiling::None)?;
        } else {
            taesd.decode(&x0, Tiling::None)?;
        }
        Ok(())
    };
    timed("sd-turbo arch 512px 1 step, full vae", &mut || image(true))?;
    timed("sd-turbo arch 512px 1 step, taesd", &mut || image(false))?;
    Ok(())
}
