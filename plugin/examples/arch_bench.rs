//! Speed of the fast real-model architectures at 512², with weights built in memory (no
//! download): `cargo run --release -p bevy_diffusion --example arch_bench [-- sdxs|sdxl-turbo]`.
//!
//! Not a test. Each model is built from its real config with allocated, zero-initialised weights
//! (a dense network's work does not depend on the values; the memory is real) and timed stage by stage, one model at a time so the peak
//! memory stays that of one model (SDXL-Turbo: ~14 GB in f32):
//! - **SDXS-512 style**: a BK-SDM-tiny-style pruned SD 1.x UNet (no mid block, 3 levels
//!   [320, 640, 1280], layers_per_block 1; the "tiny SD distilled" family SDXS-512 belongs to),
//!   CLIP-L, and TAESD as the VAE; 1 step, no CFG (batch 1).
//! - **SDXL-Turbo**: the SDXL base UNet (transformer_layers_per_block [1, 2, 10],
//!   cross_attention_dim 2048, text_time), CLIP-L + OpenCLIP bigG, the SDXL VAE; 1 step, no CFG,
//!   64x64 latent.
//!
//! The image time is the sum of the stage medians: prompt encoding + one UNet call + decode.
//! The configs are the public diffusers configs of those architectures as written below; the
//! SDXS one follows the BK-SDM-tiny description (Kim et al. 2023), not a downloaded file.

use std::path::PathBuf;
use std::time::Instant;

use bevy_diffusion::Tiling;
use bevy_diffusion::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use bevy_diffusion::models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use bevy_diffusion::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use bevy_diffusion::models::clip_text_model_with_projection::ClipTextModelWithProjection;
use bevy_diffusion::models::unet_2d_condition::{
    AddedCondKwargs, UNet2DConditionConfig, UNet2DConditionModel,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

const SDXS_UNET: &str = r#"{"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
 "block_out_channels": [320, 640, 1280], "cross_attention_dim": 768, "mid_block_type": null,
 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
 "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
 "norm_eps": 1e-05, "norm_num_groups": 32, "sample_size": 64}"#;
const SDXL_UNET: &str = r#"{"_class_name": "UNet2DConditionModel", "act_fn": "silu",
 "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
 "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
 "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
 "norm_eps": 1e-05, "norm_num_groups": 32, "projection_class_embeddings_input_dim": 2816,
 "sample_size": 64, "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": true}"#;
const VAE: &str = r#"{"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
 "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
 "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
 "sample_size": 1024, "scaling_factor": 0.13025,
 "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}"#;
const CLIP_L: &str = r#"{"architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768,
 "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 12,
 "num_hidden_layers": 12, "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
 "projection_dim": 768, "model_type": "clip_text_model"}"#;
const CLIP_BIGG: &str = r#"{"architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu",
 "hidden_size": 1280, "intermediate_size": 5120, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
 "num_attention_heads": 20, "num_hidden_layers": 32, "vocab_size": 49408, "bos_token_id": 0,
 "eos_token_id": 2, "pad_token_id": 1, "projection_dim": 1280, "model_type": "clip_text_model"}"#;

fn main() -> anyhow::Result<()> {
    let which: Option<String> = std::env::args().nth(1);
    println!("threads: {}", candle_core::utils::get_num_threads());
    if which.as_deref().is_none_or(|w| w == "sdxs") {
        sdxs()?;
    }
    if which.as_deref().is_none_or(|w| w == "sdxl-turbo") {
        sdxl_turbo()?;
    }
    Ok(())
}

fn config(name: &str, json: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("bevy_diffusion_arch_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, json)?;
    Ok(path)
}

/// Weights allocated in a VarMap (zero-initialised, real memory, not a broadcast zero).
fn random_vb(varmap: &VarMap) -> VarBuilder<'static> {
    VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu)
}

fn median_secs<T>(
    label: &str,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<f64> {
    f()?; // warm-up
    let mut runs: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f().map(|_| t.elapsed().as_secs_f64())
        })
        .collect::<anyhow::Result<_>>()?;
    runs.sort_by(f64::total_cmp);
    let m = runs[runs.len() / 2];
    println!("  {label}: {m:.3} s (median of {reps}, min {:.3})", runs[0]);
    Ok(m)
}

fn sdxs() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    println!("SDXS-512 style (pruned UNet, CLIP-L, TAESD), 512², 1 step, no CFG:");
    let ids = Tensor::zeros((1, 77), DType::U32, &dev)?;
    let clip = {
        let vm = VarMap::new();
        ClipTextModel::new(
            random_vb(&vm),
            &ClipTextConfig::from_file(&config("clip_l.json", CLIP_L)?)?,
        )?
    };
    let encode = median_secs("prompt encoding (CLIP-L, batch 1)", 3, || {
        Ok(clip.forward(&ids)?)
    })?;
    drop(clip);
    let vm = VarMap::new();
    let unet = UNet2DConditionModel::new(
        random_vb(&vm),
        &UNet2DConditionConfig::from_file(&config("sdxs_unet.json", SDXS_UNET)?)?,
    )?;
    let params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    println!("  unet parameters: {:.0} M", params as f64 / 1e6);
    let x = Tensor::randn(0f32, 1., (1, 4, 64, 64), &dev)?;
    let ctx = Tensor::randn(0f32, 1., (1, 77, 768), &dev)?;
    let step = median_secs("unet call (batch 1, 64x64 latent)", 3, || {
        Ok(unet.forward(&x, 999.0, &ctx, Tiling::None)?)
    })?;
    drop(unet);
    drop(vm);
    let taesd = {
        let vm = VarMap::new();
        AutoencoderTiny::new(
            random_vb(&vm),
            &AutoencoderTinyConfig::from_file(&config(
                "taesd.json",
                r#"{"_class_name": "AutoencoderTiny"}"#,
            )?)?,
        )?
    };
    let z = Tensor::randn(0f32, 1., (1, 4, 64, 64), &dev)?;
    let decode = median_secs("TAESD decode 512²", 3, || {
        Ok(taesd.decode(&z, Tiling::None)?)
    })?;
    println!(
        "  SDXS-512 style image 512²: {:.2} s (encode + 1 unet call + TAESD decode)",
        encode + step + decode
    );
    Ok(())
}

fn sdxl_turbo() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    println!("SDXL-Turbo (SDXL UNet, CLIP-L + bigG, SDXL VAE), 512², 1 step, no CFG:");
    let ids = Tensor::zeros((1, 77), DType::U32, &dev)?;
    let enc1 = {
        let clip = {
            let vm = VarMap::new();
            ClipTextModel::new(
                random_vb(&vm),
                &ClipTextConfig::from_file(&config("clip_l.json", CLIP_L)?)?,
            )?
        };
        median_secs("text_encoder (CLIP-L, batch 1)", 3, || {
            Ok(clip.forward_with_hidden_states(&ids)?)
        })?
    };
    let enc2 = {
        let cfg = ClipTextConfig::from_file(&config("clip_bigg.json", CLIP_BIGG)?)?;
        let vm = VarMap::new();
        let clip = ClipTextModelWithProjection::new(random_vb(&vm), &cfg, 2)?;
        median_secs("text_encoder_2 (OpenCLIP bigG, batch 1)", 3, || {
            Ok(clip.forward(&ids)?)
        })?
    };
    let step = {
        let vm = VarMap::new();
        let started = Instant::now();
        let unet = UNet2DConditionModel::new(
            random_vb(&vm),
            &UNet2DConditionConfig::from_file(&config("sdxl_unet.json", SDXL_UNET)?)?,
        )?;
        let params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        println!(
            "  unet parameters: {:.0} M (built in {:.1} s)",
            params as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        let x = Tensor::randn(0f32, 1., (1, 4, 64, 64), &dev)?;
        let ctx = Tensor::randn(0f32, 1., (1, 77, 2048), &dev)?;
        let added = AddedCondKwargs {
            text_embeds: Tensor::randn(0f32, 1., (1, 1280), &dev)?,
            time_ids: Tensor::new(&[[512f32, 512., 0., 0., 512., 512.]], &dev)?,
        };
        median_secs("unet call (batch 1, 64x64 latent)", 3, || {
            Ok(unet.forward_added(&x, 999.0, &ctx, Some(&added), Tiling::None)?)
        })?
    };
    let decode = {
        let vm = VarMap::new();
        let vae = AutoencoderKL::new(
            random_vb(&vm),
            &AutoencoderKLConfig::from_file(&config("vae.json", VAE)?)?,
        )?;
        let z = Tensor::randn(0f32, 1., (1, 4, 64, 64), &dev)?;
        median_secs("VAE decode 512²", 3, || Ok(vae.decode(&z, Tiling::None)?))?
    };
    println!(
        "  SDXL-Turbo image 512²: {:.2} s (both encoders + 1 unet call + VAE decode)",
        enc1 + enc2 + step + decode
    );
    Ok(())
}
