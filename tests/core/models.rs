//! CLIP text encoder and UNet against diffusers' reference tensors (tests/fixtures/tiny-sd).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bevy_diffusion::DiffusionError;
use bevy_diffusion::Tiling;
use bevy_diffusion::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use bevy_diffusion::models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, VarBuilder,
};
use bevy_diffusion_tests::parity::check;
use bevy_diffusion_tests::{max_abs_diff, tiny_sd_dir, tiny_sd_model};
use candle_core::{DType, Device, Tensor};

/// The reference tensors of `references.safetensors`.
///
/// (Not `bevy_diffusion_tests::References::load`: it also parses references.json, which holds
/// `-Infinity` (`lambda_min_clipped`), a value serde_json rejects.)
struct References(HashMap<String, Tensor>);

impl References {
    fn load() -> Self {
        let path = tiny_sd_dir().join("references.safetensors");
        Self(candle_core::safetensors::load(path, &Device::Cpu).expect("references.safetensors"))
    }
    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    /// The tensor `name` as f32.
    fn get(&self, name: &str) -> Tensor {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("reference `{name}`"))
            .to_dtype(DType::F32)
            .unwrap()
    }
    /// The token ids `name` as u32 `[rows, cols]`.
    fn ids(&self, name: &str) -> Tensor {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("reference `{name}`"))
            .to_dtype(DType::U32)
            .unwrap()
    }
}

fn var_builder(file: &Path) -> VarBuilder<'static> {
    // SAFETY: the fixture files are not modified while the tests run.
    unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &Device::Cpu) }
        .expect("fixture weights")
}

fn text_encoder() -> ClipTextModel {
    let dir = tiny_sd_model().join("text_encoder");
    let cfg = ClipTextConfig::from_file(&dir.join("config.json")).expect("text_encoder config");
    ClipTextModel::new(var_builder(&dir.join("model.safetensors")), &cfg)
        .expect("text_encoder weights")
}

fn unet() -> UNet2DConditionModel {
    let dir = tiny_sd_model().join("unet");
    let cfg = UNet2DConditionConfig::from_file(&dir.join("config.json")).expect("unet config");
    UNet2DConditionModel::new(
        var_builder(&dir.join("diffusion_pytorch_model.safetensors")),
        &cfg,
    )
    .expect("unet weights")
}

#[test]
fn text_encoder_last_hidden_state_batch_of_three() {
    let refs = References::load();
    let model = text_encoder();
    let ids = refs.ids("text_encoder/input_ids");
    assert_eq!(ids.dims(), &[3, 77]);
    let (last, hidden) = model.forward_with_hidden_states(&ids).unwrap();
    check(
        "text_encoder/last_hidden_state",
        &last,
        &refs.get("text_encoder/last_hidden_state"),
    );
    for (i, h) in hidden.iter().enumerate() {
        let name = format!("text_encoder/hidden_states.{i}");
        check(&name, &h.narrow(0, 0, 1).unwrap(), &refs.get(&name));
    }
    // `forward` is the same computation.
    let again = model.forward(&ids).unwrap();
    assert_eq!(max_abs_diff(&again, &last).0, 0.0);
    // Row independence: the batch gives the same rows as one prompt alone.
    let single = model.forward(&ids.narrow(0, 2, 1).unwrap()).unwrap();
    check(
        "text_encoder batch row 2 vs alone",
        &single,
        &last.narrow(0, 2, 1).unwrap(),
    );
}

#[test]
fn unet_t500_noise_pred_and_intermediates() {
    let refs = References::load();
    let model = unet();
    let timestep = refs.get("unet_t500/timestep").to_scalar::<f32>().unwrap() as f64;
    assert_eq!(timestep, 500.0);
    let sample = refs.get("unet_t500/sample");
    let context = refs.get("unet_t500/encoder_hidden_states");
    let (out, intermediates) = model
        .forward_with_intermediates(&sample, timestep, &context, Tiling::None)
        .unwrap();
    let mut compared = 0;
    for (name, tensor) in &intermediates {
        let key = format!("unet_t500/intermediate/{name}");
        if refs.has(&key) {
            check(&key, tensor, &refs.get(&key));
            compared += 1;
        }
    }
    let stored = refs
        .0
        .keys()
        .filter(|k| k.starts_with("unet_t500/intermediate/"))
        .count();
    assert_eq!(compared, stored, "every stored intermediate is exposed");
    assert_eq!(compared, 15);
    check(
        "unet_t500/noise_pred",
        &out,
        &refs.get("unet_t500/noise_pred"),
    );
    let plain = model
        .forward(&sample, timestep, &context, Tiling::None)
        .unwrap();
    assert_eq!(max_abs_diff(&plain, &out).0, 0.0);
}

#[test]
fn unet_t799p2_batch2_fractional_timestep() {
    let refs = References::load();
    let model = unet();
    let timestep = refs
        .get("unet_t799p2_b2/timestep")
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!((timestep - 799.2).abs() < 1e-4);
    let out = model
        .forward(
            &refs.get("unet_t799p2_b2/sample"),
            timestep,
            &refs.get("unet_t799p2_b2/encoder_hidden_states"),
            Tiling::None,
        )
        .unwrap();
    check(
        "unet_t799p2_b2/noise_pred",
        &out,
        &refs.get("unet_t799p2_b2/noise_pred"),
    );
}

#[test]
fn unet_tiling_changes_the_prediction() {
    let refs = References::load();
    let model = unet();
    let sample = refs.get("unet_t500/sample");
    let context = refs.get("unet_t500/encoder_hidden_states");
    let none = model
        .forward(&sample, 500.0, &context, Tiling::None)
        .unwrap();
    let xy = model.forward(&sample, 500.0, &context, Tiling::XY).unwrap();
    let x = model.forward(&sample, 500.0, &context, Tiling::X).unwrap();
    assert_eq!(xy.dims(), none.dims());
    let (d_xy, _) = max_abs_diff(&xy, &none);
    let (d_x, _) = max_abs_diff(&x, &xy);
    assert!(
        d_xy > 1e-3,
        "Tiling::XY should differ from Tiling::None (max diff {d_xy})"
    );
    assert!(
        d_x > 1e-3,
        "Tiling::X should differ from Tiling::XY (max diff {d_x})"
    );

    // On a torus the UNet commutes with circular shifts (a shift by a multiple of the total
    // downsampling factor, 2 here): rolling the input rolls the output.
    let roll = |t: &Tensor, dim: usize, k: usize| {
        let n = t.dim(dim).unwrap();
        Tensor::cat(
            &[
                t.narrow(dim, n - k, k).unwrap(),
                t.narrow(dim, 0, n - k).unwrap(),
            ],
            dim,
        )
        .unwrap()
    };
    let shifted = model
        .forward(
            &roll(&roll(&sample, 3, 2), 2, 4),
            500.0,
            &context,
            Tiling::XY,
        )
        .unwrap();
    check(
        "UNet(roll(x)) vs roll(UNet(x)) under Tiling::XY",
        &shifted,
        &roll(&roll(&xy, 3, 2), 2, 4),
    );
}

/// A temporary copy of the fixture's unet/config.json with `edit` applied.
fn edited_unet_config(
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let src = tiny_sd_model().join("unet").join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    let dir = std::env::temp_dir().join(format!(
        "bevy_diffusion_models_test_{}_{tag}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    path
}

#[test]
fn unet_config_refuses_unsupported_keys_by_name() {
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("addition_embed_type", "text_image".into()),
        ("time_cond_proj_dim", 256.into()),
        ("class_embed_type", "timestep".into()),
        ("attention_type", "gated".into()),
        ("resnet_time_scale_shift", "scale_shift".into()),
        ("act_fn", "gelu".into()),
        ("dual_cross_attention", true.into()),
        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn".into()),
        (
            "down_block_types",
            serde_json::json!(["AttnDownBlock2D", "DownBlock2D"]),
        ),
    ];
    for (field, value) in cases {
        let path = edited_unet_config(field, |m| {
            m.insert(field.to_string(), value.clone());
        });
        let err = UNet2DConditionConfig::from_file(&path).expect_err(field);
        match &err {
            DiffusionError::UnsupportedConfig {
                path: p, field: f, ..
            } => {
                assert_eq!(f, field);
                assert_eq!(p, &path);
            }
            other => panic!("{field}: expected UnsupportedConfig, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(field), "{message}");
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
    }
}

#[test]
fn unet_config_errors_name_the_file_and_field() {
    let missing = tiny_sd_model().join("unet").join("no-such-config.json");
    match UNet2DConditionConfig::from_file(&missing) {
        Err(DiffusionError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Io, got {other:?}"),
    }

    let bad_type = edited_unet_config("bad_type", |m| {
        m.insert("block_out_channels".into(), "wide".into());
    });
    match UNet2DConditionConfig::from_file(&bad_type) {
        Err(DiffusionError::InvalidConfig { path, field, .. }) => {
            assert_eq!(path, bad_type);
            assert_eq!(field, "block_out_channels");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    std::fs::remove_dir_all(bad_type.parent().unwrap()).ok();

    let bad_json = edited_unet_config("bad_json", |_| {});
    std::fs::write(&bad_json, "{ \"in_channels\": 4,").unwrap();
    match UNet2DConditionConfig::from_file(&bad_json) {
        Err(DiffusionError::InvalidConfig { path, .. }) => assert_eq!(path, bad_json),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    std::fs::remove_dir_all(bad_json.parent().unwrap()).ok();
}

#[test]
fn unet_config_resolves_the_fixture_and_list_forms() {
    let path = tiny_sd_model().join("unet").join("config.json");
    let cfg = UNet2DConditionConfig::from_file(&path).unwrap();
    assert_eq!(cfg.num_attention_heads, vec![8, 8]);
    assert_eq!(cfg.layers_per_block, vec![2, 2]);
    assert_eq!(cfg.transformer_layers_per_block, vec![1, 1]);
    assert_eq!(
        (
            cfg.in_channels,
            cfg.out_channels,
            cfg.cross_attention_dim,
            cfg.sample_size
        ),
        (4, 4, 32, 8)
    );
    assert!(cfg.has_mid_block);
    assert_eq!(cfg.time_embed_dim, 128);

    // SD 2.x style: a per-block attention_head_dim list; num_attention_heads wins when set.
    let listed = edited_unet_config("lists", |m| {
        m.insert("attention_head_dim".into(), serde_json::json!([4, 2]));
        m.insert("layers_per_block".into(), serde_json::json!([1, 2]));
        m.insert("use_linear_projection".into(), true.into());
    });
    let cfg = UNet2DConditionConfig::from_file(&listed).unwrap();
    assert_eq!(cfg.num_attention_heads, vec![4, 2]);
    assert_eq!(cfg.layers_per_block, vec![1, 2]);
    assert!(cfg.use_linear_projection);
    std::fs::remove_dir_all(listed.parent().unwrap()).ok();

    let heads = edited_unet_config("heads", |m| {
        m.insert("num_attention_heads".into(), 2.into());
    });
    assert_eq!(
        UNet2DConditionConfig::from_file(&heads)
            .unwrap()
            .num_attention_heads,
        vec![2, 2]
    );
    std::fs::remove_dir_all(heads.parent().unwrap()).ok();

    let no_mid = edited_unet_config("no_mid", |m| {
        m.insert("mid_block_type".into(), serde_json::Value::Null);
    });
    assert!(
        !UNet2DConditionConfig::from_file(&no_mid)
            .unwrap()
            .has_mid_block
    );
    std::fs::remove_dir_all(no_mid.parent().unwrap()).ok();
}

#[test]
fn clip_config_refuses_unknown_activation() {
    let src = tiny_sd_model().join("text_encoder").join("config.json");
    let cfg = ClipTextConfig::from_file(&src).unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads
        ),
        (32, 2, 4)
    );
    assert_eq!(cfg.projection_dim, Some(32));

    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
    json["hidden_act"] = "gelu_new".into();
    let dir = std::env::temp_dir().join(format!(
        "bevy_diffusion_models_test_{}_clip",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, json.to_string()).unwrap();
    match ClipTextConfig::from_file(&path) {
        Err(DiffusionError::UnsupportedConfig { field, value, .. }) => {
            assert_eq!(field, "hidden_act");
            assert!(value.contains("gelu_new"));
        }
        other => panic!("expected UnsupportedConfig, got {other:?}"),
    }
    json["hidden_act"] = "gelu".into();
    std::fs::write(&path, json.to_string()).unwrap();
    assert!(ClipTextConfig::from_file(&path).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

/// SD 2.x layout: with `use_linear_projection` the transformers' `proj_in`/`proj_out` are
/// `Linear` (`[out, in]`). A 1x1 convolution is the same map, so the fixture weights reshaped to
/// that layout must give the same prediction.
#[test]
fn unet_linear_projection_layout_matches_conv_layout() {
    let refs = References::load();
    let dir = tiny_sd_model().join("unet");
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let mut reshaped = 0;
    for (name, t) in tensors.iter_mut() {
        if (name.contains(".proj_in.") || name.contains(".proj_out.")) && name.ends_with(".weight")
        {
            let (o, i, _, _) = t.dims4().unwrap();
            *t = t.reshape((o, i)).unwrap();
            reshaped += 1;
        }
    }
    assert_eq!(
        reshaped,
        2 * 6,
        "proj_in + proj_out of 6 transformers (2 down, 1 mid, 3 up)"
    );
    let config = edited_unet_config("linear", |m| {
        m.insert("use_linear_projection".into(), true.into());
    });
    let linear_weights = config.parent().unwrap().join("unet.safetensors");
    candle_core::safetensors::save(&tensors, &linear_weights).unwrap();
    let cfg = UNet2DConditionConfig::from_file(&config).unwrap();
    let model = UNet2DConditionModel::new(var_builder(&linear_weights), &cfg).unwrap();
    let out = model
        .forward(
            &refs.get("unet_t500/sample"),
            500.0,
            &refs.get("unet_t500/encoder_hidden_states"),
            Tiling::None,
        )
        .unwrap();
    check(
        "unet_t500/noise_pred (linear projection layout)",
        &out,
        &refs.get("unet_t500/noise_pred"),
    );
    std::fs::remove_dir_all(config.parent().unwrap()).ok();
}

/// Latent sides that are not multiples of the downsampling factor: upsampling follows the skip
/// connections' sizes (diffusers' `upsample_size`), so the output has the input's size.
#[test]
fn unet_odd_latent_size_keeps_its_shape() {
    let model = unet();
    let sample = Tensor::randn(0f32, 1., (1, 4, 7, 5), &Device::Cpu).unwrap();
    let context = Tensor::randn(0f32, 1., (1, 77, 32), &Device::Cpu).unwrap();
    for tiling in [Tiling::None, Tiling::XY] {
        let out = model.forward(&sample, 10.0, &context, tiling).unwrap();
        assert_eq!(out.dims(), &[1, 4, 7, 5]);
    }
}

#[test]
fn an_out_of_range_sample_size_is_refused_naming_the_field() {
    for bad in [0u64, 100_000] {
        let config = edited_unet_config(&format!("sample{bad}"), |m| {
            m.insert("sample_size".into(), serde_json::json!(bad));
        });
        let e = UNet2DConditionConfig::from_file(&config)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sample_size") && e.contains(&bad.to_string()),
            "{e}"
        );
        std::fs::remove_dir_all(config.parent().unwrap()).ok();
    }
}
