//! Weight-file resolution and pipeline classes, after diffusers' `pipelines/pipeline_loading_utils.py`
//! (`variant_compatible_siblings`: the `fp16` variant, sharded `*.safetensors.index.json`) and
//! `DiffusionPipeline.from_pretrained`'s refusal of unsupported pipelines; pickles refused.

use super::*;

/// The error for a pipeline class we run, but not as a text-to-image model: the x4 upscaler
/// ([`UPSCALER_PIPELINE`]), named with what to use instead. `None` for other classes.
pub(super) fn wrong_pipeline(index_path: &Path, class: &str) -> Option<DiffusionError> {
    (class == UPSCALER_PIPELINE).then(|| DiffusionError::WrongPipeline {
        path: index_path.to_path_buf(),
        class: class.to_string(),
        what: format!(
            "an x4 upscaler folder (`_class_name` = {class}: its unet takes 7 input channels, 4 \
             latents + 3 low-res image channels, with a low_res_scheduler)"
        ),
        expected: "a text-to-image model".into(),
        instead: UPSCALER_USE.into(),
    })
}

/// For a folder without model_index.json: the first subfolder (in name order, among the first
/// 256 entries) that has one, named with its `_class_name` (and, for an x4 upscaler, how it is
/// used), e.g. a fixture or download folder holding the pipeline in `model/`.
pub(super) fn nested_pipeline_hint(dir: &Path) -> Option<String> {
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .take(256)
        .flatten()
        .map(|e| e.path())
        .filter(|p| crate::loading::model_files::is_file(&p.join("model_index.json")))
        .collect();
    subdirs.sort();
    let sub = subdirs.into_iter().next()?;
    let class = read_json(&sub.join("model_index.json"))
        .ok()
        .and_then(|j| j.get("_class_name")?.as_str().map(str::to_string));
    let what = match class.as_deref() {
        Some(UPSCALER_PIPELINE) => format!(
            " (`_class_name` = {UPSCALER_PIPELINE}, an x4 upscaler: give it as the upscaler, \
             `--upscaler {}` / `LoadOptions::upscaler`, or to `texgen upscale --model`)",
            sub.display()
        ),
        Some(class) => format!(" (`_class_name` = {class})"),
        None => String::new(),
    };
    Some(format!(
        "{} has one{what}: is that the model folder?",
        sub.display()
    ))
}

/// The family name and reason for a pipeline class we refuse, `None` for supported ones.
pub(super) fn refused_pipeline(class: &str) -> Option<(String, String)> {
    if SUPPORTED_PIPELINES.contains(&class) {
        return None;
    }
    let (family, reason) = if class.starts_with("StableDiffusionXL") {
        (
            "SDXL",
            "only StableDiffusionXLPipeline and StableDiffusionXLImg2ImgPipeline are supported \
             (inpainting, instruct-pix2pix and ControlNet variants are not)",
        )
    } else if class.starts_with("StableDiffusion3") {
        (
            "SD3",
            "the MMDiT transformer and its CLIP-L + CLIP-G + T5 text encoders are not implemented",
        )
    } else if class.starts_with("Flux") {
        (
            "FLUX",
            "the rectified-flow transformer and its CLIP + T5 text encoders are not implemented",
        )
    } else if class.contains("Upscale") {
        (
            class,
            "only the x4 upscaler (StableDiffusionUpscalePipeline) is implemented, and it is \
             loaded as an upscaler (`--upscaler DIR`, `LoadOptions::upscaler`), not as the model",
        )
    } else if class.contains("Depth2Img") {
        (
            "Stable Diffusion depth-to-image",
            "depth conditioning is not implemented",
        )
    } else {
        (
            class,
            "only Stable Diffusion 1.x/2.x-style pipelines (StableDiffusionPipeline: one CLIP text \
             encoder, UNet2DConditionModel, AutoencoderKL) are supported",
        )
    };
    Some((family.to_string(), reason.to_string()))
}

/// Why `dir` is an SDXL folder (see the module docs), or `None`.
pub(super) fn sdxl_marks(
    dir: &Path,
    class: Option<&str>,
    index: Option<&serde_json::Value>,
) -> Option<String> {
    if let Some(class) = class
        && class.starts_with("StableDiffusionXL")
    {
        return Some(format!("model_index.json names {class}"));
    }
    let has_second_encoder = index
        .and_then(|i| i.get("text_encoder_2"))
        .and_then(|v| v.as_array())
        .is_some_and(|a| a.iter().any(|x| !x.is_null()));
    if has_second_encoder {
        return Some("model_index.json lists a text_encoder_2".into());
    }
    if crate::loading::model_files::is_dir(&dir.join("text_encoder_2")) {
        return Some("the folder has a text_encoder_2/".into());
    }
    let unet_config = dir.join("unet").join("config.json");
    if crate::loading::model_files::is_file(&unet_config)
        && let Ok(cfg) = read_json(&unet_config)
        && cfg.get("addition_embed_type").and_then(|v| v.as_str()) == Some("text_time")
    {
        return Some("the UNet config has addition_embed_type \"text_time\"".into());
    }
    None
}

/// Names of the files a sharded index is allowed to reference: plain file names in its folder.
pub(super) fn shard_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['/', '\\'])
        && name != "."
        && name != ".."
        && name.ends_with(".safetensors")
}

/// Checks a sharded checkpoint's index and its shards.
pub(super) fn sharded(
    index_path: &Path,
    fp16_variant: bool,
    options: &FolderOptions,
) -> Result<WeightFiles, Vec<DiffusionError>> {
    let bad = |reason: String| DiffusionError::BadSafetensors {
        path: index_path.to_path_buf(),
        reason,
    };
    let index = read_json(index_path).map_err(|e| vec![e])?;
    let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(vec![bad("the index has no `weight_map` object".into())]);
    };
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut shard_names: Vec<&str> = Vec::new();
    let mut problems = Vec::new();
    for (tensor, file) in map {
        match file.as_str() {
            Some(name) if shard_name_ok(name) => {
                if !shard_names.contains(&name) {
                    shard_names.push(name);
                }
            }
            _ => problems.push(bad(format!(
                "tensor `{tensor}` maps to {file}, which is not a .safetensors file name in this folder"
            ))),
        }
    }
    shard_names.sort_unstable();
    let mut shards: Vec<SafetensorsHeader> = Vec::new();
    for name in &shard_names {
        let path = dir.join(name);
        if !crate::loading::model_files::is_file(&path) {
            problems.push(DiffusionError::MissingFile {
                path,
                what: format!("a weight shard listed in {}", index_path.display()),
            });
            continue;
        }
        match read_header(&path, options.max_file_bytes) {
            Ok(h) => shards.push(h),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    for (tensor, file) in map {
        let name = file.as_str().unwrap_or_default();
        let holders: Vec<&SafetensorsHeader> = shards
            .iter()
            .filter(|h| h.tensors.contains_key(tensor))
            .collect();
        match holders.as_slice() {
            [h] if h.path.file_name().and_then(|n| n.to_str()) == Some(name) => {}
            [] => problems.push(bad(format!(
                "tensor `{tensor}` should be in {name} but no shard holds it"
            ))),
            [h] => problems.push(bad(format!(
                "tensor `{tensor}` should be in {name} but is in {}",
                h.path.display()
            ))),
            _ => problems.push(bad(format!("tensor `{tensor}` is in more than one shard"))),
        }
    }
    if problems.is_empty() {
        Ok(WeightFiles {
            path: index_path.to_path_buf(),
            shards,
            fp16_variant,
        })
    } else {
        Err(problems)
    }
}

/// Finds and checks one component's weights in its folder `dir` (see the module docs for the
/// search order): the chosen file(s) with validated headers, or every problem with them (a
/// pickle instead of safetensors, a missing file, a bad header or shard index). Used by
/// [`validate`] and by `texgen inspect` to describe the components of a folder with problems.
pub fn component_weights(
    dir: &Path,
    kind: ComponentKind,
    options: &FolderOptions,
) -> Result<WeightFiles, Vec<DiffusionError>> {
    let stem = kind.weights_stem();
    let plain = [
        (format!("{stem}.safetensors"), false),
        (format!("{stem}.safetensors.index.json"), true),
    ];
    let fp16 = [
        (format!("{stem}.fp16.safetensors"), false),
        (format!("{stem}.safetensors.index.fp16.json"), true),
        (format!("{stem}.fp16.safetensors.index.json"), true),
    ];
    let order: Vec<(&(String, bool), bool)> = if options.prefer_fp16_variant {
        fp16.iter()
            .map(|c| (c, true))
            .chain(plain.iter().map(|c| (c, false)))
            .collect()
    } else {
        plain
            .iter()
            .map(|c| (c, false))
            .chain(fp16.iter().map(|c| (c, true)))
            .collect()
    };
    for ((name, is_index), is_fp16) in order {
        let path = dir.join(name);
        if !crate::loading::model_files::is_file(&path) {
            continue;
        }
        if is_fp16 && !options.prefer_fp16_variant {
            tracing::info!(
                "{}: only the fp16 variant exists; converting it to f32",
                path.display()
            );
        }
        return if *is_index {
            sharded(&path, is_fp16, options)
        } else {
            read_header(&path, options.max_file_bytes)
                .map(|h| WeightFiles {
                    path: path.clone(),
                    shards: vec![h],
                    fp16_variant: is_fp16,
                })
                .map_err(|e| vec![e])
        };
    }
    // No safetensors: name a pickle if there is one, else the file we expected.
    let mut pickles: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    pickles.sort();
    if let Some(path) = pickles.into_iter().next() {
        return Err(vec![DiffusionError::PickleWeights { path }]);
    }
    Err(vec![DiffusionError::MissingFile {
        path: dir.join(format!("{stem}.safetensors")),
        what: format!("the {kind} weights (safetensors)"),
    }])
}

/// Is `path` (or one of its two parents) named like an SD-Turbo folder?
pub(super) fn turbo_named(path: &Path) -> bool {
    path.components().rev().take(3).any(|c| {
        c.as_os_str()
            .to_string_lossy()
            .to_ascii_lowercase()
            .contains("turbo")
    })
}

pub(super) fn usize_field(json: &serde_json::Value, field: &str) -> Option<u64> {
    json.get(field).and_then(|v| v.as_u64())
}

/// The marks of a pruned / distilled model (see [`ModelFamily::SdxsPruned`]) in the UNet and VAE
/// configs: `mid_block_type` present and `null`, `layers_per_block` a list, or an
/// `AutoencoderTiny` VAE.
pub(super) fn is_pruned(unet: Option<&serde_json::Value>, vae: Option<&serde_json::Value>) -> bool {
    let no_mid = unet
        .and_then(|u| u.get("mid_block_type"))
        .is_some_and(serde_json::Value::is_null);
    let listed = unet
        .and_then(|u| u.get("layers_per_block"))
        .is_some_and(serde_json::Value::is_array);
    let tiny = vae
        .and_then(|v| v.get("_class_name"))
        .and_then(|c| c.as_str())
        == Some("AutoencoderTiny");
    no_mid || listed || tiny
}
