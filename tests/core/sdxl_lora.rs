//! A LoRA on SDXL (tests/fixtures/tiny-sdxl-lora): unet, text_encoder and text_encoder_2 patched,
//! in diffusers/PEFT naming and in kohya-ss SDXL naming (`lora_te1_`/`lora_te2_`, UNet blocks in
//! SGM names such as `lora_unet_input_blocks_3_1_…`), fused by diffusers at lora_scale 0.8. Every
//! step of the pipeline must match diffusers' fused model.

use std::sync::OnceLock;

use bevy_diffusion::loading::lora::LoraSpec;
use bevy_diffusion::noise::SeededNoise;
use bevy_diffusion::pipeline::{self, ExplicitNoise, sdxl};
use bevy_diffusion::schedulers::TimestepSpacing;
use bevy_diffusion::{GenerationRequest, LoadOptions, SchedulerKind, StableDiffusion};
use bevy_diffusion_tests::parity::{
    StepRecorder, assert_image_within_1_255, assert_steps_match, check,
};
use bevy_diffusion_tests::{References, fixture_dir, tiny_sdxl_model};

const CASE: &str = "pipe_ddim2_lora";

fn refs() -> &'static References {
    static REFS: OnceLock<References> = OnceLock::new();
    REFS.get_or_init(|| References::load_from(&fixture_dir("tiny-sdxl-lora")))
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
        let mut rec = StepRecorder::default();
        let out = pipeline::generate_with_noise(
            &m,
            &request,
            &explicit,
            &mut SeededNoise::new(0),
            &mut rec,
        )
        .unwrap();
        // The figures printed from here on are the `{format}` LoRA's.
        eprintln!("{format}:");
        assert_steps_match(CASE, &rec.steps, 2, &["unet_output", "latents_out"], |n| {
            r.get(n)
        });
        check(
            &format!("{format}/final_latents"),
            &out.final_latents,
            &r.get(&format!("{CASE}/final_latents")),
        );
        assert_image_within_1_255(
            &format!("{format} {CASE}"),
            &out.image,
            &r.get(&format!("{CASE}/image")),
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
