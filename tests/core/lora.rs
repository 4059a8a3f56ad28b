//! LoRA parity with HF diffusers (`load_lora_weights` + `fuse_lora(lora_scale)`) on the tiny-lora
//! fixture: both namings (kohya, PEFT) at both scales, fused weights, UNet and text-encoder
//! outputs, the 4-step DDIM pipeline; bad LoRA files; SDXL key mapping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bevy_diffusion::loading::folder::{FolderOptions, ModelFolder};
use bevy_diffusion::loading::lora::{LoraSpec, check_lora};
use bevy_diffusion::loading::lora_names::{
    LoraComponent, LoraRole, ModuleIndex, ModuleName, parse_key,
};
use bevy_diffusion::pipeline::{self, ExplicitNoise};
use bevy_diffusion::schedulers::TimestepSpacing;
use bevy_diffusion::testing::lora_merge::{LoraSet, identity, merge};
use bevy_diffusion::testing::weights::CheckedWeights;
use bevy_diffusion::{
    DiffusionError, GenerationRequest, LoadOptions, SchedulerKind, StableDiffusion, Tiling,
};
use bevy_diffusion_tests::parity::{
    StepRecorder, assert_image_within_1_255, assert_steps_match, check,
};
use bevy_diffusion_tests::tiny_sd_model;
use candle_core::{DType, Device, Tensor};

use crate::loading::scratch;

/// `tests/fixtures/tiny-lora` (its `model/` is byte-identical to tiny-sd's, which the tests use).
fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-lora")
}

struct Refs(HashMap<String, Tensor>, serde_json::Value);

fn refs() -> &'static Refs {
    static REFS: OnceLock<Refs> = OnceLock::new();
    REFS.get_or_init(|| {
        let t = candle_core::safetensors::load(dir().join("references.safetensors"), &Device::Cpu)
            .expect("tiny-lora references");
        let json = std::fs::read_to_string(dir().join("references.json")).unwrap();
        Refs(t, serde_json::from_str(&json).unwrap())
    })
}

impl Refs {
    fn get(&self, name: &str) -> Tensor {
        let t = self.0.get(name).unwrap_or_else(|| panic!("no `{name}`"));
        t.to_dtype(DType::F32).unwrap()
    }
    fn ids(&self, name: &str) -> Tensor {
        self.0[name].to_dtype(DType::U32).unwrap()
    }
}

fn file(format: &str) -> PathBuf {
    dir().join(format!("lora_{format}.safetensors"))
}

fn load(loras: Vec<LoraSpec>) -> bevy_diffusion::Result<StableDiffusion> {
    let options = LoadOptions {
        loras,
        ..LoadOptions::default()
    };
    StableDiffusion::load(&tiny_sd_model(), &options)
}

fn load_err(loras: Vec<LoraSpec>) -> DiffusionError {
    match load(loras) {
        Ok(_) => panic!("loaded but should not"),
        Err(e) => e,
    }
}

const CASES: [(&str, f32, &str); 4] = [
    ("kohya", 1.0, "kohya_s1"),
    ("kohya", 0.5, "kohya_s05"),
    ("peft", 1.0, "peft_s1"),
    ("peft", 0.5, "peft_s05"),
];

#[test]
fn fused_unet_and_text_encoder_match_diffusers() {
    let r = refs();
    let sample = r.get("unet_t500/sample");
    let context = r.get("unet_t500/encoder_hidden_states");
    let ids = r.ids("text_encoder/input_ids");
    let base = load(Vec::new()).unwrap();
    let base_out = base
        .unet
        .forward(&sample, 500.0, &context, Tiling::None)
        .unwrap();
    check(
        "base/unet_t500/noise_pred",
        &base_out,
        &r.get("base/unet_t500/noise_pred"),
    );
    for (format, scale, case) in CASES {
        let model = load(vec![LoraSpec {
            path: file(format),
            scale,
        }])
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        let out = model
            .unet
            .forward(&sample, 500.0, &context, Tiling::None)
            .unwrap();
        check(
            &format!("{case}/unet_t500/noise_pred"),
            &out,
            &r.get(&format!("{case}/unet_t500/noise_pred")),
        );
        let hidden = model.text_encoder.forward(&ids).unwrap();
        check(
            &format!("{case}/text_encoder/last_hidden_state"),
            &hidden,
            &r.get(&format!("{case}/text_encoder/last_hidden_state")),
        );
        // The LoRA moved the output (the comparison above is not vacuous), and the identity
        // (cache key) tells the fused model from the base model and from the other scale.
        let moved = (out - &base_out).unwrap().abs().unwrap().max_all().unwrap();
        assert!(moved.to_scalar::<f32>().unwrap() > 0.05, "{case}");
        assert_ne!(model.identity, base.identity, "{case}");
    }
}

#[test]
fn fused_weights_match_diffusers_for_all_57_modules_and_both_namings() {
    let folder = ModelFolder::open(&tiny_sd_model(), &FolderOptions::default()).unwrap();
    let targets = [
        (LoraComponent::Unet, &folder.unet.weights),
        (LoraComponent::TextEncoder, &folder.text_encoder.weights),
    ];
    let table = refs().1["lora_modules"].as_array().unwrap();
    assert_eq!(table.len(), 57);
    for (format, scale, case) in CASES {
        let spec = LoraSpec {
            path: file(format),
            scale,
        };
        let report = check_lora(&spec, &targets).unwrap();
        assert!(report.problems.is_empty(), "{case}: {:?}", report.problems);
        assert_eq!(report.matched.len(), 57, "{case}");
        // Every module's weight, rank and alpha as references.json lists them.
        for row in table {
            let weight = row["weight"].as_str().unwrap();
            let (component, name) = weight.split_once('/').unwrap();
            let m = report
                .matched
                .iter()
                .find(|m| m.component.dir_name() == component && m.weight == name)
                .unwrap_or_else(|| panic!("{case}: {weight} not matched"));
            assert_eq!(m.rank as u64, row["rank"].as_u64().unwrap(), "{weight}");
            assert_eq!(m.alpha, row["alpha"].as_f64().unwrap(), "{case} {weight}");
            let expected = f64::from(scale) * row["alpha_over_rank"].as_f64().unwrap();
            assert!((m.factor - expected).abs() < 1e-12, "{case} {weight}");
            let shape: Vec<usize> = serde_json::from_value(row["shape"].clone()).unwrap();
            assert_eq!(m.shape, shape);
        }
        let mut set = LoraSet::load(&[spec], &targets).unwrap();
        assert_eq!(set.len(), 57);
        for (component, files) in [
            (LoraComponent::Unet, &folder.unet.weights),
            (LoraComponent::TextEncoder, &folder.text_encoder.weights),
        ] {
            let deltas = set.take(component);
            let weights = CheckedWeights::open(files, &Device::Cpu).unwrap();
            let vb = weights.var_builder();
            let prefix = format!("{case}/fused/{}/", component.dir_name());
            for (name, reference) in refs().0.iter().filter(|(k, _)| k.starts_with(&prefix)) {
                let weight_name = &name[prefix.len()..];
                let base = vb.get_unchecked(weight_name).unwrap();
                let fused = merge(&base, &deltas[weight_name]).unwrap();
                check(name, &fused, reference);
            }
        }
    }
}

#[test]
fn lora_pipeline_ddim4_matches_diffusers_for_both_namings() {
    let r = refs();
    for format in ["kohya", "peft"] {
        let case = format!("pipe_ddim4_{format}_s1");
        let c = &r.1["cases"][&case];
        let model = load(vec![LoraSpec {
            path: file(format),
            scale: 1.0,
        }])
        .unwrap();
        let request = GenerationRequest {
            prompt: c["prompt"].as_str().unwrap().into(),
            negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
            width: 64,
            height: 64,
            num_inference_steps: Some(4),
            guidance_scale: Some(7.5),
            scheduler: Some(SchedulerKind::Ddim),
            timestep_spacing: Some(TimestepSpacing::Leading),
            ..Default::default()
        };
        let embeds = pipeline::encode_prompt(
            &model,
            &request.prompt,
            request.negative_prompt.as_deref(),
            true,
        )
        .unwrap();
        check(
            &format!("{case}/prompt_embeds"),
            &embeds.embeds,
            &r.get(&format!("{case}/prompt_embeds")),
        );
        let explicit = ExplicitNoise {
            noise: Some(r.get(&format!("{case}/init_noise"))),
            vae_sample_eps: None,
        };
        let mut noise = bevy_diffusion::noise::SeededNoise::new(0);
        let mut rec = StepRecorder::default();
        let out = pipeline::generate_with_noise(&model, &request, &explicit, &mut noise, &mut rec)
            .unwrap();
        // The fixture stores these two per step for the LoRA cases.
        let stored = ["unet_output", "latents_out"];
        assert_steps_match(&case, &rec.steps, 4, &stored, |n| r.get(n));
        check(
            &format!("{case}/final_latents"),
            &out.final_latents,
            &r.get(&format!("{case}/final_latents")),
        );
        assert_image_within_1_255(&case, &out.image, &r.get(&format!("{case}/image")));
    }
}

#[test]
fn two_loras_add_and_each_keeps_its_scale() {
    // kohya at 0.5 + PEFT at 0.5 (the same LoRA) = one of them at 1.0.
    let r = refs();
    let model = load(vec![
        LoraSpec {
            path: file("kohya"),
            scale: 0.5,
        },
        LoraSpec {
            path: file("peft"),
            scale: 0.5,
        },
    ])
    .unwrap();
    let out = model
        .unet
        .forward(
            &r.get("unet_t500/sample"),
            500.0,
            &r.get("unet_t500/encoder_hidden_states"),
            Tiling::None,
        )
        .unwrap();
    check(
        "kohya 0.5 + peft 0.5 vs s1",
        &out,
        &r.get("peft_s1/unet_t500/noise_pred"),
    );
}

/// Writes a safetensors LoRA file of f32 tensors `(name, shape)` filled with 0.01.
fn write_lora(path: &Path, tensors: &[(&str, &[usize])]) {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, s)| {
            (
                n.to_string(),
                (Tensor::ones(*s, DType::F32, &Device::Cpu).unwrap() * 0.01).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

const TO_Q: &str = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";

#[test]
fn a_lora_for_another_base_model_names_the_key_and_both_shapes() {
    let s = scratch("lora_shape");
    let path = s.join("sd15.safetensors");
    let down = format!("{TO_Q}.lora_down.weight");
    let up = format!("{TO_Q}.lora_up.weight");
    write_lora(&path, &[(&down, &[4, 320]), (&up, &[320, 4])]);
    let e = load_err(vec![LoraSpec {
        path: path.clone(),
        scale: 1.0,
    }]);
    let text = e.to_string();
    match e {
        DiffusionError::LoraShapeMismatch {
            path: p,
            key,
            down,
            up,
            weight,
            expected,
            ..
        } => {
            assert_eq!(p, path);
            assert_eq!(key, TO_Q);
            assert_eq!((down, up), (vec![4, 320], vec![320, 4]));
            assert_eq!(
                weight,
                "unet/down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
            );
            assert_eq!(expected, vec![32, 32]);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        text.contains("[4, 320]") && text.contains("[32, 32]") && text.contains(TO_Q),
        "{text}"
    );
}

#[test]
fn lora_keys_that_match_nothing_are_listed_by_name() {
    let s = scratch("lora_unmatched");
    let path = s.join("odd.safetensors");
    write_lora(
        &path,
        &[
            (&format!("{TO_Q}.lora_down.weight"), &[2, 32]),
            (&format!("{TO_Q}.lora_up.weight"), &[32, 2]),
            (
                "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight",
                &[2, 32],
            ),
            (
                "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight",
                &[32, 2],
            ),
            (
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                &[32, 2],
            ),
            ("lora_unet_conv_in.hada_w1_a", &[2, 4]),
        ],
    );
    let e = load_err(vec![LoraSpec {
        path: path.clone(),
        scale: 1.0,
    }]);
    let text = e.to_string();
    let DiffusionError::LoraUnmatched { keys, .. } = e else {
        panic!("unexpected {text}");
    };
    assert_eq!(
        keys,
        [
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
            "lora_unet_conv_in.hada_w1_a",
            "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight",
            "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight",
        ]
    );
    assert!(
        text.contains("4 LoRA tensor(s) match nothing") && text.contains("hada_w1_a"),
        "{text}"
    );
    // The matched module is still reported as such by the check.
    let folder = ModelFolder::open(&tiny_sd_model(), &FolderOptions::default()).unwrap();
    let report = check_lora(
        &LoraSpec { path, scale: 1.0 },
        &[(LoraComponent::Unet, &folder.unet.weights)],
    )
    .unwrap();
    assert_eq!(report.matched.len(), 1);
    assert_eq!(report.matched[0].key, TO_Q);
}

#[test]
fn kohya_conv_in_and_time_embedding_loras_are_merged_not_dropped() {
    // diffusers once dropped these silently; here they match and change the output.
    let s = scratch("lora_conv_in");
    let path = s.join("conv_in.safetensors");
    write_lora(
        &path,
        &[
            ("lora_unet_conv_in.lora_down.weight", &[2, 4, 3, 3]),
            ("lora_unet_conv_in.lora_up.weight", &[32, 2, 1, 1]),
            (
                "lora_unet_time_embedding_linear_1.lora_down.weight",
                &[2, 32],
            ),
            (
                "lora_unet_time_embedding_linear_1.lora_up.weight",
                &[128, 2],
            ),
        ],
    );
    let folder = ModelFolder::open(&tiny_sd_model(), &FolderOptions::default()).unwrap();
    let targets = [(LoraComponent::Unet, &folder.unet.weights)];
    let report = check_lora(
        &LoraSpec {
            path: path.clone(),
            scale: 1.0,
        },
        &targets,
    )
    .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let weights: Vec<&str> = report.matched.iter().map(|m| m.weight.as_str()).collect();
    assert_eq!(
        weights,
        ["conv_in.weight", "time_embedding.linear_1.weight"]
    );
    // No alpha tensor: alpha = rank, factor = scale.
    assert!(
        report
            .matched
            .iter()
            .all(|m| m.alpha == 2.0 && m.factor == 1.0)
    );
}

#[test]
fn pickle_missing_and_non_finite_loras_are_refused() {
    let s = scratch("lora_bad");
    let ckpt = s.join("style.ckpt");
    std::fs::write(&ckpt, b"\x80\x02}q\x00.").unwrap();
    let e = load_err(vec![LoraSpec {
        path: ckpt.clone(),
        scale: 1.0,
    }]);
    assert!(
        matches!(&e, DiffusionError::PickleWeights { path } if *path == ckpt),
        "{e}"
    );
    assert!(e.to_string().contains("pickled weights are refused"));
    // A torch zip renamed to .safetensors is recognised too.
    let renamed = s.join("style.safetensors");
    std::fs::write(
        &renamed,
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl",
    )
    .unwrap();
    let e = load_err(vec![LoraSpec {
        path: renamed.clone(),
        scale: 1.0,
    }]);
    assert!(
        matches!(&e, DiffusionError::PickleWeights { path } if *path == renamed),
        "{e}"
    );

    let missing = s.join("nowhere.safetensors");
    let e = load_err(vec![LoraSpec {
        path: missing.clone(),
        scale: 1.0,
    }]);
    assert!(
        matches!(&e, DiffusionError::MissingFile { path, .. } if *path == missing),
        "{e}"
    );

    for scale in [f32::NAN, f32::INFINITY] {
        let e = load_err(vec![LoraSpec {
            path: file("kohya"),
            scale,
        }]);
        assert!(
            matches!(&e, DiffusionError::InvalidLora { key, .. } if key == "scale"),
            "{e}"
        );
    }
    assert!(LoraSpec::parse("style.safetensors:inf").is_err());
    assert!(LoraSpec::parse("style.safetensors:NaN").is_err());
}

#[test]
fn lora_spec_parses_file_and_scale() {
    let p = LoraSpec::parse("loras/style.safetensors:0.8").unwrap();
    assert_eq!(
        (p.path, p.scale),
        (PathBuf::from("loras/style.safetensors"), 0.8)
    );
    let p = LoraSpec::parse("style.safetensors").unwrap();
    assert_eq!(p.scale, 1.0);
    let p = LoraSpec::parse(r"C:\loras\style.safetensors").unwrap();
    assert_eq!(
        (p.path, p.scale),
        (PathBuf::from(r"C:\loras\style.safetensors"), 1.0)
    );
    let p = LoraSpec::parse(r"C:\loras\style.safetensors:-0.5").unwrap();
    assert_eq!(p.scale, -0.5);
}

#[test]
fn identity_is_the_base_without_loras_and_depends_on_file_and_scale() {
    let base = "abc";
    assert_eq!(identity(base, &[]).unwrap(), base);
    let k1 = identity(
        base,
        &[LoraSpec {
            path: file("kohya"),
            scale: 1.0,
        }],
    )
    .unwrap();
    let k05 = identity(
        base,
        &[LoraSpec {
            path: file("kohya"),
            scale: 0.5,
        }],
    )
    .unwrap();
    let p1 = identity(
        base,
        &[LoraSpec {
            path: file("peft"),
            scale: 1.0,
        }],
    )
    .unwrap();
    assert!(k1 != k05 && k1 != p1 && k1 != base);
    assert_eq!(
        k1,
        identity(
            base,
            &[LoraSpec {
                path: file("kohya"),
                scale: 1.0
            }]
        )
        .unwrap()
    );
}

#[test]
fn a_bake_manifest_names_loras_and_they_are_part_of_the_model_identity() {
    use bevy_diffusion::tools::bake::{self, BakeManifest, BakeOptions, ItemOutcome};
    let manifest = BakeManifest::parse(
        r#"(loras: [("lora_kohya.safetensors", 0.5)],
            items: { "wall": (prompt: "mossy stone wall", width: 32, height: 32, num_inference_steps: 2) })"#,
        Path::new("loras.ron"),
    )
    .unwrap();
    assert_eq!(
        manifest.loras,
        [("lora_kohya.safetensors".to_string(), 0.5)]
    );
    let s = scratch("lora_bake");
    let options = BakeOptions {
        base_dir: dir(),
        ..BakeOptions::new(s.join("out"), tiny_sd_model())
    };
    let outcome = |r: &bake::BakeReport| r.items[0].1.clone();
    let report = bake::bake(&manifest, &options, &mut |_| {}).unwrap();
    assert!(matches!(outcome(&report), ItemOutcome::Baked { .. }));
    let folder = ModelFolder::open(&tiny_sd_model(), &FolderOptions::default()).unwrap();
    let spec = LoraSpec {
        path: dir().join("lora_kohya.safetensors"),
        scale: 0.5,
    };
    assert_eq!(
        report.model_identity,
        identity(&folder.identity, &[spec.clone()]).unwrap()
    );
    // The baked image is the LoRA model's.
    let model = load(vec![spec]).unwrap();
    let request = manifest.items[0].request.clone();
    let direct = pipeline::generate(&model, &request, &mut pipeline::NoHooks).unwrap();
    let baked = image::open(s.join("out/wall.png")).unwrap().to_rgba8();
    assert_eq!(
        baked, direct.image,
        "an RGB model's texture is opaque as generated"
    );
    // Up to date on a rerun; replacing the LoRAs (texgen bake --lora) regenerates it.
    let report = bake::bake(&manifest, &options, &mut |_| {}).unwrap();
    assert!(matches!(outcome(&report), ItemOutcome::Skipped));
    let mut other = options.clone();
    other.load.loras = vec![LoraSpec {
        path: file("peft"),
        scale: 1.0,
    }];
    let report = bake::bake(&manifest, &other, &mut |_| {}).unwrap();
    assert!(matches!(outcome(&report), ItemOutcome::Baked { .. }));
    // A manifest naming a missing LoRA fails before any item is generated.
    let missing = BakeManifest {
        loras: vec![("nope.safetensors".into(), 1.0)],
        ..manifest
    };
    match bake::bake(&missing, &options, &mut |_| {}) {
        Err(bake::BakeError::Model(DiffusionError::MissingFile { path, .. })) => {
            assert_eq!(path, dir().join("nope.safetensors"))
        }
        other => panic!("unexpected {:?}", other.map(|r| r.summary())),
    }
}

// ------------------------------------------------------------------ names (SDXL included)

#[test]
fn keys_of_both_namings_and_sdxl_prefixes_parse() {
    let k =
        parse_key("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight").unwrap();
    assert_eq!(k.component, LoraComponent::TextEncoder2);
    assert_eq!(
        k.module,
        ModuleName::Kohya("text_model_encoder_layers_0_self_attn_q_proj".into())
    );
    assert_eq!(k.role, LoraRole::Up);
    let k = parse_key("lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha").unwrap();
    assert_eq!(
        (k.component, k.role),
        (LoraComponent::TextEncoder, LoraRole::Alpha)
    );
    let k = parse_key("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight").unwrap();
    assert_eq!(
        (k.component, k.role),
        (LoraComponent::TextEncoder, LoraRole::Down)
    );
    let k = parse_key("text_encoder_2.text_model.encoder.layers.3.mlp.fc2.lora_A.weight").unwrap();
    assert_eq!(k.component, LoraComponent::TextEncoder2);
    assert_eq!(
        k.module,
        ModuleName::Dotted("text_model.encoder.layers.3.mlp.fc2".into())
    );
    let k = parse_key("text_encoder.encoder.layers.3.mlp.fc2.lora_B.weight").unwrap();
    assert_eq!(
        (k.component, k.role),
        (LoraComponent::TextEncoder, LoraRole::Up)
    );
    let k = parse_key(
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight",
    )
    .unwrap();
    assert_eq!(
        k.module,
        ModuleName::Dotted("mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0".into())
    );
    for refused in [
        "lora_unet_conv_in.hada_w1_a",
        "unet.conv_in.lora_magnitude_vector",
        "model.diffusion_model.x.weight",
    ] {
        assert_eq!(parse_key(refused), None, "{refused}");
    }
}

/// An SDXL-shaped UNet: down 0 (2 resnets, no attention), down 1-2 (2 resnets + attentions), up
/// 0-1 (3 resnets + attentions), up 2 (3 resnets, none).
fn sdxl_unet() -> ModuleIndex {
    let mut names = vec!["conv_in.weight".to_string(), "conv_out.weight".into()];
    for b in 0..3 {
        for l in 0..2 {
            names.push(format!("down_blocks.{b}.resnets.{l}.conv1.weight"));
            names.push(format!("down_blocks.{b}.resnets.{l}.time_emb_proj.weight"));
            if b > 0 {
                names.push(format!(
                    "down_blocks.{b}.attentions.{l}.transformer_blocks.0.attn1.to_q.weight"
                ));
                names.push(format!("down_blocks.{b}.attentions.{l}.proj_in.weight"));
            }
        }
        if b < 2 {
            names.push(format!("down_blocks.{b}.downsamplers.0.conv.weight"));
        }
    }
    for b in 0..3 {
        for l in 0..3 {
            names.push(format!("up_blocks.{b}.resnets.{l}.conv_shortcut.weight"));
            if b < 2 {
                names.push(format!(
                    "up_blocks.{b}.attentions.{l}.transformer_blocks.1.ff.net.0.proj.weight"
                ));
            }
        }
        if b < 2 {
            names.push(format!("up_blocks.{b}.upsamplers.0.conv.weight"));
        }
    }
    names.push("mid_block.attentions.0.transformer_blocks.9.attn2.to_k.weight".into());
    names.push("mid_block.resnets.1.conv2.weight".into());
    names.push("add_embedding.linear_1.weight".into());
    let shape = [4usize, 4];
    ModuleIndex::new(names.iter().map(|n| (n.as_str(), &shape[..])))
}

#[test]
fn sdxl_sgm_named_kohya_modules_map_to_diffusers_weights() {
    let index = sdxl_unet();
    let cases = [
        ("input_blocks_0_0", "conv_in"),
        (
            "input_blocks_1_0_in_layers_2",
            "down_blocks.0.resnets.0.conv1",
        ),
        (
            "input_blocks_2_0_emb_layers_1",
            "down_blocks.0.resnets.1.time_emb_proj",
        ),
        ("input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"),
        (
            "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        ),
        (
            "input_blocks_8_1_proj_in",
            "down_blocks.2.attentions.1.proj_in",
        ),
        (
            "middle_block_1_transformer_blocks_9_attn2_to_k",
            "mid_block.attentions.0.transformer_blocks.9.attn2.to_k",
        ),
        ("middle_block_2_out_layers_3", "mid_block.resnets.1.conv2"),
        (
            "output_blocks_0_1_transformer_blocks_1_ff_net_0_proj",
            "up_blocks.0.attentions.0.transformer_blocks.1.ff.net.0.proj",
        ),
        ("output_blocks_2_2_conv", "up_blocks.0.upsamplers.0.conv"),
        (
            "output_blocks_5_0_skip_connection",
            "up_blocks.1.resnets.2.conv_shortcut",
        ),
        (
            "output_blocks_8_0_skip_connection",
            "up_blocks.2.resnets.2.conv_shortcut",
        ),
        ("label_emb_0_0", "add_embedding.linear_1"),
        ("out_2", "conv_out"),
        // diffusers-named kohya files (common for SDXL too) resolve directly.
        (
            "down_blocks_1_attentions_1_transformer_blocks_0_attn1_to_q",
            "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q",
        ),
    ];
    for (kohya, path) in cases {
        let got = index.resolve(&ModuleName::Kohya(kohya.into()));
        assert_eq!(
            got.map(|t| t.name.clone()),
            Some(format!("{path}.weight")),
            "{kohya}"
        );
    }
    for missing in [
        "input_blocks_12_0_op",
        "output_blocks_9_0_in_layers_2",
        "middle_block_3",
    ] {
        assert_eq!(
            index.resolve(&ModuleName::Kohya(missing.into())),
            None,
            "{missing}"
        );
    }
    // PEFT names are the diffusers paths.
    let m = ModuleName::Dotted("down_blocks.2.attentions.1.proj_in".into());
    assert_eq!(
        index.resolve(&m).unwrap().name,
        "down_blocks.2.attentions.1.proj_in.weight"
    );
}

#[test]
fn text_encoder_modules_resolve_with_and_without_text_model() {
    let shape = [8usize, 8];
    let nested = ModuleIndex::new([(
        "text_model.encoder.layers.0.self_attn.q_proj.weight",
        &shape[..],
    )]);
    let flat = ModuleIndex::new([("encoder.layers.0.self_attn.q_proj.weight", &shape[..])]);
    for index in [&nested, &flat] {
        for m in [
            ModuleName::Kohya("text_model_encoder_layers_0_self_attn_q_proj".into()),
            ModuleName::Dotted("text_model.encoder.layers.0.self_attn.q_proj".into()),
            ModuleName::Dotted("encoder.layers.0.self_attn.q_proj".into()),
        ] {
            assert!(index.resolve(&m).is_some(), "{m:?}");
        }
    }
    // SDXL's text_encoder_2 (CLIPTextModelWithProjection) has a projection LoRAs may patch.
    let projection = ModuleIndex::new([("text_projection.weight", &shape[..])]);
    let m = ModuleName::Kohya("text_projection".into());
    assert_eq!(
        projection.resolve(&m).unwrap().name,
        "text_projection.weight"
    );
}

/// A copy of the PEFT fixture whose `lora_adapter_metadata` JSON went through `edit`.
fn peft_with_metadata(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let bytes = std::fs::read(file("peft")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header["__metadata__"]["lora_adapter_metadata"]
        .as_str()
        .unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(meta).unwrap();
    edit(&mut meta);
    header["__metadata__"]["lora_adapter_metadata"] = meta.to_string().into();
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&bytes[8 + n..]);
    let path = dir.join("edited_peft.safetensors");
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn peft_metadata_of_the_wrong_type_is_refused_not_read_as_alpha_rank() {
    let s = scratch("lora_peft_meta");
    let cases: [(&str, fn(&mut serde_json::Value)); 3] = [
        ("unet.lora_alpha", |m| m["unet.lora_alpha"] = "two".into()),
        ("text_encoder.use_rslora", |m| {
            m["text_encoder.use_rslora"] = "yes".into()
        }),
        ("unet.alpha_pattern.up_blocks.1.resnets.0.conv1", |m| {
            m["unet.alpha_pattern"]["up_blocks.1.resnets.0.conv1"] = serde_json::Value::Null
        }),
    ];
    for (field, edit) in cases {
        let path = peft_with_metadata(&s, edit);
        let e = load_err(vec![LoraSpec { path, scale: 1.0 }]);
        assert!(
            matches!(&e, DiffusionError::InvalidLora { key, .. } if key.ends_with(field)),
            "{field}: {e}"
        );
    }
    // Unchanged metadata through the same rewrite still loads (the rewrite itself is sound).
    let path = peft_with_metadata(&s, |_| {});
    assert!(load(vec![LoraSpec { path, scale: 1.0 }]).is_ok());
}

#[test]
fn lora_paths_that_are_not_files_and_bad_scales_say_so() {
    let s = scratch("lora_paths");
    let e = load_err(vec![LoraSpec {
        path: s.to_path_buf(),
        scale: 1.0,
    }]);
    assert!(e.to_string().contains("is a directory"), "{e}");
    for text in [
        "style.safetensors:abc",
        "style.safetensors:1,5",
        "style.safetensors:",
    ] {
        let e = LoraSpec::parse(text).unwrap_err();
        assert!(
            matches!(&e, DiffusionError::InvalidLora { key, .. } if key == "scale"),
            "{text}: {e}"
        );
        assert!(e.to_string().contains("is not a number"), "{text}: {e}");
    }
    // An existing file whose name has a colon is a file, not FILE:SCALE.
    let odd = s.join("style:v2.safetensors");
    std::fs::copy(file("kohya"), &odd).unwrap();
    let p = LoraSpec::parse(odd.to_str().unwrap()).unwrap();
    assert_eq!((p.path, p.scale), (odd, 1.0));
}
