//! SDXL (StableDiffusionXLPipeline) parity with HF diffusers on tests/fixtures/tiny-sdxl: both
//! tokenizers, both text encoders, the UNet with its text_time conditioning and intermediates,
//! every step of the three pipeline cases (DDIM with CFG, SDXL-Turbo style Euler-a trailing
//! 1 step without CFG, micro-conditioning), plus force_zeros_for_empty_prompt, the f16 VAE trap
//! and the errors of broken SDXL folders.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bevy_diffusion::loading::folder::{FolderOptions, ModelFamily, ModelFolder};
use bevy_diffusion::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use bevy_diffusion::models::clip_text_model_with_projection::ClipTextModelWithProjection;
use bevy_diffusion::models::tokenizer::PromptTokenizer;
use bevy_diffusion::models::unet_2d_condition::{
    AddedCondKwargs, UNet2DConditionConfig, UNet2DConditionModel, VarBuilder,
};
use bevy_diffusion::pipeline::{self, ExplicitNoise, sdxl};
use bevy_diffusion::{DiffusionError, GenerationRequest, LoadOptions, StableDiffusion, Tiling};
use bevy_diffusion_tests::parity::{
    ALL_STEP_TENSORS, StepRecorder, assert_image_within_1_255, assert_steps_match,
    assert_timesteps_match, check, replay_step_noise, scheduler_for,
};
use bevy_diffusion_tests::{
    References, assert_close, max_abs_diff, tiny_sdxl_dir, tiny_sdxl_model,
};
use candle_core::{DType, Device, Tensor};

fn refs() -> &'static References {
    static REFS: OnceLock<References> = OnceLock::new();
    REFS.get_or_init(|| References::load_from(&tiny_sdxl_dir()))
}

fn model() -> &'static StableDiffusion {
    static MODEL: OnceLock<StableDiffusion> = OnceLock::new();
    MODEL.get_or_init(|| {
        StableDiffusion::load(&tiny_sdxl_model(), &LoadOptions::default()).expect("tiny-sdxl loads")
    })
}

fn ids_tensor(rows: &[Vec<i64>]) -> Tensor {
    let flat: Vec<u32> = rows.iter().flatten().map(|&v| v as u32).collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

fn var_builder(file: &Path) -> VarBuilder<'static> {
    // SAFETY: the fixture files are not modified while the tests run.
    unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &Device::Cpu) }
        .expect("fixture weights")
}

#[test]
fn sdxl_tokens_of_both_tokenizers_match() {
    let r = refs();
    let prompts: Vec<String> = r.case("tokens")["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for (sub, name, pad) in [
        ("tokenizer", "tokens/input_ids", 999),
        ("tokenizer_2", "tokens/input_ids_2", 0),
    ] {
        let tok = PromptTokenizer::from_dir(&tiny_sdxl_model().join(sub), 77).unwrap();
        assert_eq!(tok.pad_id(), pad, "{sub} pad id");
        let expected = r.ids(name);
        for (p, want) in prompts.iter().zip(&expected) {
            let got: Vec<i64> = tok
                .encode(p)
                .unwrap()
                .ids
                .iter()
                .map(|&i| i as i64)
                .collect();
            assert_eq!(&got, want, "{sub}: {p:?}");
        }
    }
    // Through the loaded pipeline too.
    let sdxl = model().sdxl.as_ref().expect("SDXL components");
    assert_eq!(sdxl.tokenizer_2.pad_id(), 0);
    assert_eq!(model().tokenizer.pad_id(), 999);
}

#[test]
fn sdxl_text_encoders_match() {
    let r = refs();
    let dir = tiny_sdxl_model();
    // text_encoder: CLIPTextModel, penultimate hidden state.
    let cfg = ClipTextConfig::from_file(&dir.join("text_encoder/config.json")).unwrap();
    let te = ClipTextModel::new(
        var_builder(&dir.join("text_encoder/model.safetensors")),
        &cfg,
    )
    .unwrap();
    let (_, hidden) = te
        .forward_with_hidden_states(&ids_tensor(&r.ids("text_encoder/input_ids")))
        .unwrap();
    check(
        "text_encoder/penultimate_hidden_state",
        &hidden[hidden.len() - 2],
        &r.get("text_encoder/penultimate_hidden_state"),
    );
    // text_encoder_2: CLIPTextModelWithProjection.
    let cfg2 = ClipTextConfig::from_file(&dir.join("text_encoder_2/config.json")).unwrap();
    assert_eq!((cfg2.projection_dim, cfg2.eos_token_id), (Some(40), 999));
    let te2 = ClipTextModelWithProjection::new(
        var_builder(&dir.join("text_encoder_2/model.safetensors")),
        &cfg2,
        cfg2.eos_token_id,
    )
    .unwrap();
    let out = te2
        .forward(&ids_tensor(&r.ids("text_encoder_2/input_ids")))
        .unwrap();
    check(
        "text_encoder_2/penultimate_hidden_state",
        out.hidden_state_from_end(2).unwrap(),
        &r.get("text_encoder_2/penultimate_hidden_state"),
    );
    check(
        "text_encoder_2/pooled_unprojected",
        &out.pooled,
        &r.get("text_encoder_2/pooled_unprojected"),
    );
    check(
        "text_encoder_2/text_embeds",
        out.text_embeds.as_ref().unwrap(),
        &r.get("text_encoder_2/text_embeds"),
    );
}

fn sdxl_unet() -> UNet2DConditionModel {
    let dir = tiny_sdxl_model().join("unet");
    let cfg = UNet2DConditionConfig::from_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.transformer_layers_per_block, vec![1, 2]);
    let tt = cfg.addition_embed.as_ref().expect("text_time");
    assert_eq!(
        (
            tt.addition_time_embed_dim,
            tt.projection_class_embeddings_input_dim
        ),
        (8, 88)
    );
    UNet2DConditionModel::new(
        var_builder(&dir.join("diffusion_pytorch_model.safetensors")),
        &cfg,
    )
    .unwrap()
}

#[test]
fn sdxl_unet_with_text_time_matches_with_intermediates() {
    let r = refs();
    let unet = sdxl_unet();
    let c = "unet_t500_b2";
    let timestep = r.get(&format!("{c}/timestep")).to_scalar::<f32>().unwrap() as f64;
    let sample = r.get(&format!("{c}/sample"));
    let context = r.get(&format!("{c}/encoder_hidden_states"));
    let added = AddedCondKwargs {
        text_embeds: r.get(&format!("{c}/text_embeds")),
        time_ids: r.get(&format!("{c}/time_ids")),
    };
    let (out, intermediates) = unet
        .forward_added_with_intermediates(&sample, timestep, &context, Some(&added), Tiling::None)
        .unwrap();
    let mut compared = 0;
    for (name, tensor) in &intermediates {
        let key = format!("{c}/intermediate/{name}");
        if r.has(&key) {
            check(&key, tensor, &r.get(&key));
            compared += 1;
        }
    }
    let stored = r
        .names()
        .filter(|k| k.starts_with(&format!("{c}/intermediate/")))
        .count();
    assert_eq!(compared, stored, "every stored intermediate is exposed");
    assert_eq!(compared, 12);
    check(
        &format!("{c}/noise_pred"),
        &out,
        &r.get(&format!("{c}/noise_pred")),
    );
    // Without added_cond_kwargs a text_time UNet refuses to run (as diffusers raises).
    let e = unet
        .forward(&sample, timestep, &context, Tiling::None)
        .unwrap_err();
    assert!(e.to_string().contains("text_embeds"), "{e}");
}

fn pair(v: &serde_json::Value) -> Option<(u32, u32)> {
    let a = v.as_array()?;
    Some((a[0].as_u64()? as u32, a[1].as_u64()? as u32))
}

/// The request diffusers ran for `case` (references.json `cases.<case>`).
fn request_for(case: &str) -> GenerationRequest {
    let c = refs().case(case);
    let (scheduler, spacing) = scheduler_for(c);
    GenerationRequest {
        prompt: c["prompt"].as_str().unwrap().into(),
        negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
        width: c["width"].as_u64().unwrap() as u32,
        height: c["height"].as_u64().unwrap() as u32,
        num_inference_steps: Some(c["steps"].as_u64().unwrap() as usize),
        guidance_scale: Some(c["guidance_scale"].as_f64().unwrap()),
        scheduler: Some(scheduler),
        timestep_spacing: Some(spacing),
        original_size: pair(&c["original_size"]),
        crops_coords_top_left: pair(&c["crops_coords_top_left"]).unwrap_or((0, 0)),
        target_size: pair(&c["target_size"]),
        ..Default::default()
    }
}

fn run_case(case: &str) {
    let r = refs();
    let m = model();
    let request = request_for(case);
    let guidance = request.guidance() > 1.0;
    let size = (request.width, request.height);

    // Tokens of the rows the pipeline encodes, prompt embeddings and added conditioning.
    let sdxl_parts = m.sdxl.as_ref().unwrap();
    let neg = request.negative_prompt.clone().unwrap_or_default();
    let rows: Vec<&str> = if guidance {
        vec![&neg, &request.prompt]
    } else {
        vec![&request.prompt]
    };
    for (tok, name) in [
        (&m.tokenizer, "input_ids"),
        (&sdxl_parts.tokenizer_2, "input_ids_2"),
    ] {
        let got: Vec<Vec<i64>> = rows
            .iter()
            .map(|p| {
                tok.encode(p)
                    .unwrap()
                    .ids
                    .iter()
                    .map(|&i| i as i64)
                    .collect()
            })
            .collect();
        assert_eq!(got, r.ids(&format!("{case}/{name}")), "{case}/{name}");
    }
    let embeds = sdxl::encode_prompt_xl(
        m,
        sdxl_parts,
        &request.prompt,
        request.negative_prompt.as_deref(),
        guidance,
    )
    .unwrap();
    check(
        &format!("{case}/prompt_embeds"),
        &embeds.embeds,
        &r.get(&format!("{case}/prompt_embeds")),
    );
    check(
        &format!("{case}/add_text_embeds"),
        embeds.pooled.as_ref().unwrap(),
        &r.get(&format!("{case}/add_text_embeds")),
    );
    let time_ids = sdxl::add_time_ids(&request, size, guidance, &Device::Cpu).unwrap();
    let (diff, _) = max_abs_diff(&time_ids, &r.get(&format!("{case}/add_time_ids")));
    assert_eq!(diff, 0.0, "{case}/add_time_ids");

    // The whole pipeline, step by step.
    let explicit = ExplicitNoise {
        noise: Some(r.get(&format!("{case}/init_noise"))),
        vae_sample_eps: None,
    };
    let mut noise = replay_step_noise(case, request.steps(), |n| r.has(n), |n| r.get(n));
    let mut rec = StepRecorder::default();
    let started = std::time::Instant::now();
    let out = pipeline::generate_with_noise(m, &request, &explicit, noise.as_mut(), &mut rec)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{case}: {} steps + decode in {secs:.3} s ({:.1} steps/s incl. encode and decode)",
        rec.steps.len(),
        rec.steps.len() as f64 / secs
    );
    assert_timesteps_match(case, &out.timesteps, r.case(case));
    let expected = r.case(case)["unet_timesteps"].as_array().unwrap().len();
    assert_steps_match(case, &rec.steps, expected, &ALL_STEP_TENSORS, |n| r.get(n));
    for s in &rec.steps {
        // No CFG batch without guidance (SDXL-Turbo).
        assert_eq!(s.unet_input.dim(0).unwrap(), if guidance { 2 } else { 1 });
    }
    check(
        &format!("{case}/final_latents"),
        &out.final_latents,
        &r.get(&format!("{case}/final_latents")),
    );
    let decoder_input = (&out.final_latents / m.vae_config.scaling_factor).unwrap();
    check(
        &format!("{case}/decoder_input"),
        &decoder_input,
        &r.get(&format!("{case}/decoder_input")),
    );

    assert_image_within_1_255(case, &out.image, &r.get(&format!("{case}/image")));
}

#[test]
fn sdxl_pipe_ddim4() {
    run_case("pipe_ddim4");
}
#[test]
fn sdxl_pipe_turbo_euler_a1() {
    run_case("pipe_turbo_euler_a1");
}
#[test]
fn sdxl_pipe_ddim2_microcond() {
    run_case("pipe_ddim2_microcond");
}

#[test]
fn sdxl_force_zeros_for_empty_prompt_and_empty_string_negative() {
    let m = model();
    let parts = m.sdxl.as_ref().unwrap();
    assert!(parts.force_zeros_for_empty_prompt);
    let none = sdxl::encode_prompt_xl(m, parts, "a brick wall", None, true).unwrap();
    let zeros = |t: &Tensor| {
        t.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(
        zeros(&none.embeds.get(0).unwrap()),
        0.0,
        "uncond embeds are zeros"
    );
    assert_eq!(zeros(&none.pooled.as_ref().unwrap().get(0).unwrap()), 0.0);
    // The empty string is encoded like any prompt (not zeros).
    let empty = sdxl::encode_prompt_xl(m, parts, "a brick wall", Some(""), true).unwrap();
    assert!(zeros(&empty.embeds.get(0).unwrap()) > 0.0);
    let alone = sdxl::encode_prompt_xl(m, parts, "", None, false).unwrap();
    assert_close(
        "empty negative row",
        &empty.embeds.narrow(0, 0, 1).unwrap(),
        &alone.embeds,
    );
    // Both agree on the conditional row.
    assert_close(
        "cond row",
        &none.embeds.get(1).unwrap(),
        &empty.embeds.get(1).unwrap(),
    );
    // The token references: the empty prompt is row 0 of tokens/.
    let ids = refs().ids("tokens/input_ids_2");
    assert_eq!(ids[0][..3], [998, 999, 0]);
}

// ---------------------------------------------------------------- folders, family, bad input

/// A fresh copy of the tiny-sdxl model folder in a temp dir, removed when dropped.
struct Copy {
    root: PathBuf,
    model: PathBuf,
}
impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            let mut perms = std::fs::metadata(&target).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&target, perms).unwrap();
        }
    }
}
fn fixture_copy(name: &str) -> Copy {
    let root = std::env::temp_dir()
        .join("bevy_diffusion_sdxl")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let model = root.join("model");
    copy_dir(&tiny_sdxl_model(), &model);
    Copy { root, model }
}
fn load_err(dir: &Path) -> DiffusionError {
    match StableDiffusion::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn sdxl_folder_is_sdxl_and_trailing_scheduler_is_sdxl_turbo() {
    let folder = ModelFolder::open(&tiny_sdxl_model(), &FolderOptions::default()).unwrap();
    assert_eq!(folder.family, ModelFamily::Sdxl);
    assert_eq!(folder.family.name(), "SDXL");
    assert!(folder.text_encoder_2.is_some() && folder.tokenizer_2_dir.is_some());
    assert!(folder.force_zeros_for_empty_prompt);
    assert_eq!(model().family, ModelFamily::Sdxl);
    assert_eq!(model().vae_config.scaling_factor, 0.13025);
    let report = bevy_diffusion::tools::inspect::inspect(&tiny_sdxl_model(), &Default::default());
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.family_label(), "SDXL");
    assert_eq!(
        report.components.len(),
        4,
        "text_encoder_2 is inspected too"
    );
    assert!(report.components.iter().all(|c| c.built));

    // SDXL-Turbo: the same architecture with a trailing scheduler config.
    let turbo = fixture_copy("turbo");
    let sched = turbo.model.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&sched).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["timestep_spacing"] = "trailing".into();
    std::fs::write(&sched, json.to_string()).unwrap();
    let folder = ModelFolder::open(&turbo.model, &FolderOptions::default()).unwrap();
    assert_eq!(folder.family, ModelFamily::SdxlTurbo);
    let report = bevy_diffusion::tools::inspect::inspect(&turbo.model, &Default::default());
    assert_eq!(report.family_label(), "SDXL-Turbo");
    // Without a bevy_diffusion.json the family's distilled settings apply (1 step, guidance 0,
    // 512²), in load and in inspect, and a request that leaves them unset runs with them.
    let r = report.recommended.as_ref().unwrap();
    assert!(report.recommended_from_family);
    assert_eq!(
        (r.num_inference_steps, r.guidance_scale, r.width),
        (Some(1), Some(0.0), Some(512))
    );
    assert!(
        report.to_string().contains("SDXL-Turbo defaults"),
        "{report}"
    );
    let m = StableDiffusion::load(&turbo.model, &LoadOptions::default()).unwrap();
    assert_eq!(m.recommended.num_inference_steps, Some(1));
    assert_eq!(m.recommended.guidance_scale, Some(0.0));
    // The plain SDXL folder keeps the request defaults.
    assert!(model().recommended.is_empty());

    // An SDXL folder with a TAESD-style vae is still SDXL, not "SDXS/pruned".
    let tiny_vae = fixture_copy("tiny-vae");
    let index = tiny_vae.model.join("model_index.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    json["vae"] = serde_json::json!(["diffusers", "AutoencoderTiny"]);
    std::fs::write(&index, json.to_string()).unwrap();
    let vae_cfg = tiny_vae.model.join("vae/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&vae_cfg).unwrap()).unwrap();
    json["_class_name"] = "AutoencoderTiny".into();
    std::fs::write(&vae_cfg, json.to_string()).unwrap();
    let report = bevy_diffusion::tools::inspect::inspect(&tiny_vae.model, &Default::default());
    assert_eq!(report.family, Some(ModelFamily::Sdxl), "{report}");
}

#[test]
fn sdxl_folder_missing_text_encoder_2_names_the_component() {
    let dir = fixture_copy("no_te2");
    std::fs::remove_dir_all(dir.model.join("text_encoder_2")).unwrap();
    let e = load_err(&dir.model);
    match &e {
        DiffusionError::MissingFile { path, what } => {
            assert!(path.ends_with("text_encoder_2"), "{e}");
            assert!(
                what.contains("text_encoder_2") && what.contains("SDXL"),
                "{e}"
            );
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    let report = bevy_diffusion::tools::inspect::inspect(&dir.model, &Default::default());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.to_string().contains("text_encoder_2")),
        "{:?}",
        report.problems
    );

    // Missing tokenizer_2: named too.
    let dir = fixture_copy("no_tok2");
    std::fs::remove_dir_all(dir.model.join("tokenizer_2")).unwrap();
    let e = load_err(&dir.model);
    assert!(
        matches!(&e, DiffusionError::MissingFile { path, .. } if path.ends_with("tokenizer_2")),
        "{e:?}"
    );

    // text_projection missing from the weights: MissingTensor naming it.
    let dir = fixture_copy("no_projection");
    let file = dir.model.join("text_encoder_2/model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    tensors.remove("text_projection.weight").unwrap();
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let e = load_err(&dir.model);
    assert!(
        matches!(&e, DiffusionError::MissingTensor { .. })
            && e.to_string().contains("text_projection"),
        "{e:?}"
    );

    // An add_embedding width that does not fit 6 time ids + projection_dim: InvalidConfig.
    let dir = fixture_copy("bad_add_dim");
    let cfg = dir.model.join("unet/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    json["addition_time_embed_dim"] = 16.into();
    std::fs::write(&cfg, json.to_string()).unwrap();
    let e = load_err(&dir.model);
    assert!(
        e.to_string()
            .contains("projection_class_embeddings_input_dim"),
        "{e}"
    );
}

#[test]
fn sdxl_other_sdxl_pipelines_and_sd3_stay_refused() {
    for (class, family) in [
        ("StableDiffusionXLInpaintPipeline", "SDXL"),
        ("StableDiffusion3Pipeline", "SD3"),
        ("FluxPipeline", "FLUX"),
    ] {
        let dir = fixture_copy(&format!("refused_{family}"));
        let index = dir.model.join("model_index.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        json["_class_name"] = class.into();
        std::fs::write(&index, json.to_string()).unwrap();
        let e = load_err(&dir.model);
        assert!(
            matches!(&e, DiffusionError::UnsupportedModel { family: f, .. } if f == family),
            "{class}: {e:?}"
        );
    }
}

/// candle #1060: SDXL's VAE in f16 overflows to NaN on large latents. Here the fp16 variant is
/// converted to f32 on load (diffusers' `force_upcast`), so decoding the turbo case's large final
/// latents (|x| up to ~54) gives the same finite image; latents too large even for f32 give a
/// typed error instead of a black image.
#[test]
fn sdxl_f16_vae_decodes_large_latents_finite_or_fails_clearly() {
    let dir = fixture_copy("fp16_vae");
    let vae = dir.model.join("vae");
    let file = vae.join("diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let half: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
    candle_core::safetensors::save(&half, vae.join("diffusion_pytorch_model.fp16.safetensors"))
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    let m = StableDiffusion::load(&dir.model, &LoadOptions::default()).unwrap();
    let r = refs();
    let latents = r.get("pipe_turbo_euler_a1/final_latents");
    let big = (&latents * 4.0).unwrap(); // |x| ~ 200: 1500 after / 0.13025
    for z in [&latents, &big] {
        let decoded = pipeline::decode_latents_raw(&m, z, Tiling::None).unwrap();
        let v = decoded.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "f16 VAE decode stays finite"
        );
        let image = pipeline::decode_latents(&m, z, Tiling::None).unwrap();
        assert!(
            image.pixels().any(|p| p.0[..3] != [0, 0, 0]),
            "not a black image"
        );
    }
    // The fp16 weights reproduce the reference image within f16 weight rounding.
    let f32_decoded = pipeline::decode_latents_raw(model(), &latents, Tiling::None).unwrap();
    let f16_decoded = pipeline::decode_latents_raw(&m, &latents, Tiling::None).unwrap();
    let (diff, _) = max_abs_diff(&f16_decoded, &f32_decoded);
    println!("fp16-weight VAE vs f32 VAE on the turbo latents: max|diff| = {diff:.3e}");
    assert!(diff < 0.05, "{diff}");
    // Latents far outside any VAE's range: a typed error, never a black image.
    let absurd = (latents.ones_like().unwrap() * 3.0e37).unwrap();
    match pipeline::decode_latents(&m, &absurd, Tiling::None) {
        Err(DiffusionError::InvalidRequest { field, reason, .. }) => {
            assert_eq!(field, "latents");
            assert!(reason.contains("non-finite"), "{reason}");
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(image) => assert!(
            image.pixels().any(|p| p.0[..3] != [0, 0, 0]),
            "a finite decode must not be black"
        ),
    }
}

#[test]
fn sdxl_micro_conditioning_is_a_request_field_in_ron() {
    let text = r#"(prompt: "wall", negative_prompt: "", original_size: (96, 128),
        crops_coords_top_left: (8, 16), target_size: (48, 80),
        negative_original_size: (64, 64), negative_target_size: (32, 32))"#;
    let req: GenerationRequest =
        bevy_diffusion::request::ron::parse_ron(text, Path::new("x.texgen.ron")).unwrap();
    assert_eq!(req.negative_prompt.as_deref(), Some(""));
    assert_eq!(req.original_size, Some((96, 128)));
    assert_eq!(req.crops_coords_top_left, (8, 16));
    assert_eq!(req.target_size, Some((48, 80)));
    let ids = sdxl::add_time_ids(&req, (64, 64), true, &Device::Cpu)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(
        ids,
        vec![
            vec![64., 64., 0., 0., 32., 32.],
            vec![96., 128., 8., 16., 48., 80.]
        ]
    );
    // Defaults: the output size (height, width) and (0, 0); one row without guidance.
    let plain = GenerationRequest::default();
    let ids = sdxl::add_time_ids(&plain, (96, 64), false, &Device::Cpu)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(ids, vec![vec![64., 96., 0., 0., 64., 96.]]);
    // Only one of the negative sizes: the negative row repeats the positive one.
    let half = GenerationRequest {
        negative_original_size: Some((1, 1)),
        ..Default::default()
    };
    let ids = sdxl::add_time_ids(&half, (64, 64), true, &Device::Cpu)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(ids[0], ids[1]);
    // Out-of-range values are refused naming the field.
    let bad = GenerationRequest {
        target_size: Some((1 << 20, 4)),
        ..Default::default()
    };
    let e = bad.validate(8).unwrap_err().to_string();
    assert!(e.contains("target_size"), "{e}");
}
