//! A LoRA on SDXL (tests/fixtures/tiny-sdxl-lora): unet, text_encoder and text_encoder_2 patched,
//! in diffusers/PEFT naming and in kohya-ss SDXL naming (`lora_te1_`/`lora_te2_`, UNet blocks in
//! SGM names such as `lora_unet_input_blocks_3_1_…`), fused by diffusers at lora_scale 0.8. Every
//! step of the pipeline must match diffusers' fused model.

use std::sync::OnceLock;

use bevy_diffusion::loading::lora::LoraSpec;
use bevy_diffusion::noise::SeededNoise;
use bevy_diffusion::pipeline::{self, DenoisingStep, ExplicitNoise, GenerationHooks, sdxl};
use bevy_diffusion::schedulers::TimestepSpacing;
use bevy_diffusion::{GenerationRequest, LoadOptions, SchedulerKind, StableDiffusion};
use bevy_diffusion_tests::{References, assert_close, fixture_dir, max_abs_diff, tiny_sdxl_model};
use candle_core::Tensor;

const CASE: &str = "pipe_ddim2_lora";

fn refs() -> &'static References {
    static REFS: OnceLock<References> = OnceLock::new();
    REFS.get_or_init(|| References::load_from(&fixture_dir("tiny-sdxl-lora")))
}

fn check(what: &str, actual: &Tensor, reference: &Tensor) {
    let (diff, scale) = max_abs_diff(actual, reference);
    println!("{what}: max|diff| = {diff:.3e} (max|ref| = {scale:.3})");
    assert_close(what, actual, reference);
}

fn load(format: &str) -> StableDiffusion {
    let spec = LoraSpec {
        path: fixture_dir("tiny-sdxl-lora").join(format!("lora_{format}.safetensors")),
        scale: refs().case(CASE)["lora_scale"].as_f64().unwrap() as f32,
    };
    let options = LoadOptions {
        loras: vec![spec],
        ..LoadOptions::default()
    };
    StableDiffusion::load(&tiny_sdxl_model(), &options)
        .unwrap_or_else(|e| panic!("tiny-sdxl with the {format} LoRA: {e}"))
}

#[derive(Default)]
struct Recorder(Vec<DenoisingStep>);
impl GenerationHooks for Recorder {
    fn on_step(&mut self, step: &DenoisingStep) {
        self.0.push(step.clone());
    }
}

#[test]
fn sdxl_lora_on_both_text_encoders_and_unet_matches_diffusers_for_both_namings() {
    let r = refs();
    let c = r.case(CASE);
    let request = GenerationRequest {
        prompt: c["prompt"].as_str().unwrap().into(),
        negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
        width: 64,
        height: 64,
        num_inference_steps: Some(2),
        guidance_scale: Some(c["guidance_scale"].as_f64().unwrap()),
        scheduler: Some(SchedulerKind::Ddim),
        timestep_spacing: Some(TimestepSpacing::Leading),
        ..Default::default()
    };
    for format in ["peft", "kohya"] {
        let m = load(format);
        let parts = m.sdxl.as_ref().expect("an SDXL model");
        let embeds = sdxl::encode_prompt_xl(
            &m,
            parts,
            &request.prompt,
            request.negative_prompt.as_deref(),
            true,
        )
        .unwrap();
        // prompt_embeds = [te1 (32) | te2 (48)]: a LoRA missing on either encoder fails here.
        check(
            &format!("{format}/prompt_embeds"),
            &embeds.embeds,
            &r.get(&format!("{CASE}/prompt_embeds")),
        );
        check(
            &format!("{format}/add_text_embeds"),
            embeds.pooled.as_ref().unwrap(),
            &r.get(&format!("{CASE}/add_text_embeds")),
        );
        let explicit = ExplicitNoise {
            noise: Some(r.get(&format!("{CASE}/init_noise"))),
            vae_sample_eps: None,
        };
        let mut rec = Recorder::default();
        let out = pipeline::generate_with_noise(
            &m,
            &request,
            &explicit,
            &mut SeededNoise::new(0),
            &mut rec,
        )
        .unwrap();
        assert_eq!(rec.0.len(), 2);
        for (k, s) in rec.0.iter().enumerate() {
            let p = format!("{CASE}/step_{k:02}");
            check(
                &format!("{format} {p}/unet_output"),
                &s.unet_output,
                &r.get(&format!("{p}/unet_output")),
            );
            check(
                &format!("{format} {p}/latents_out"),
                &s.latents_out,
                &r.get(&format!("{p}/latents_out")),
            );
        }
        check(
            &format!("{format}/final_latents"),
            &out.final_latents,
            &r.get(&format!("{CASE}/final_latents")),
        );
        let reference = r
            .get(&format!("{CASE}/image"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ours: Vec<f32> = out
            .image
            .pixels()
            .flat_map(|p| {
                p.0[..3]
                    .iter()
                    .map(|&v| v as f32 / 255.0)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(ours.len(), reference.len());
        let worst = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{format} {CASE}/image: max|diff| = {worst:.3e}");
        assert!(
            worst <= 1.0 / 255.0 + 1e-6,
            "{format}: image differs by {worst}"
        );
    }
}

#[test]
fn sdxl_lora_without_its_text_encoder_2_targets_is_not_silently_dropped() {
    // The same kohya file on an SD 1.x model: its lora_te2_ keys have nothing to patch and must be
    // reported by name, not ignored.
    let spec = LoraSpec {
        path: fixture_dir("tiny-sdxl-lora").join("lora_kohya.safetensors"),
        scale: 1.0,
    };
    let options = LoadOptions {
        loras: vec![spec],
        ..LoadOptions::default()
    };
    let e = StableDiffusion::load(&bevy_diffusion_tests::tiny_sd_model(), &options)
        .err()
        .expect("an SDXL LoRA on an SD 1.x model is refused");
    let text = e.to_string();
    println!("{text}");
    assert!(text.contains("lora_kohya.safetensors"), "{text}");
}
