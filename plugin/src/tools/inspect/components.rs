//! One component of a folder inspected: its config class, weight files, parameter count, and a
//! dry build of its model from the safetensors headers through the load's own checking backend
//! (`CheckedWeights::headers_only` in `loading/model_loading_utils.rs`).

use super::*;

pub(super) fn inspect_component(
    dir: &Path,
    kind: ComponentKind,
    options: &FolderOptions,
    flagged: &HashSet<PathBuf>,
    report: &mut InspectReport,
) -> ComponentReport {
    let comp_dir = dir.join(kind.dir_name());
    let config_path = comp_dir.join("config.json");
    let mut out = ComponentReport {
        kind,
        // diffusers configs name the class in `_class_name`, transformers ones in `architectures`.
        class_name: read_json(&config_path).and_then(|j| {
            j.get("_class_name")
                .or_else(|| j.get("architectures").and_then(|a| a.get(0)))
                .and_then(|c| c.as_str())
                .map(String::from)
        }),
        weights: None,
        files: 0,
        bytes: 0,
        tensors: 0,
        parameters: 0,
        dtypes: BTreeMap::new(),
        fp16_variant: false,
        unused_tensors: Vec::new(),
        built: false,
    };
    // Problems with these files were reported by validate.
    let Ok(weights) = folder::component_weights(&comp_dir, kind, options) else {
        return out;
    };
    out.weights = Some(weights.path.clone());
    out.files = weights.shards.len();
    out.bytes = weights.total_bytes();
    out.tensors = weights.tensor_count();
    out.fp16_variant = weights.fp16_variant;
    for shard in &weights.shards {
        for (name, meta) in &shard.tensors {
            // The per-channel scale of an 8-bit weight is part of its encoding, not parameters.
            let is_int8_scale = name
                .strip_suffix("_scale")
                .is_some_and(|weight| weights.tensor(weight).is_some_and(|(_, w)| w.dtype == "I8"));
            if is_int8_scale {
                continue;
            }
            let n: u64 = meta.shape.iter().map(|&d| d as u64).product();
            out.parameters += n;
            *out.dtypes.entry(meta.dtype.clone()).or_default() += n;
        }
    }
    if flagged.contains(&config_path) {
        return out;
    }
    let problems = &mut report.problems;
    let built = match kind {
        ComponentKind::TextEncoder => ClipTextConfig::from_file(&config_path)
            .map(|cfg| dry_build(&weights, |vb| ClipTextModel::new(vb, &cfg).map(drop))),
        ComponentKind::TextEncoder2 => ClipTextConfig::from_file(&config_path).map(|cfg| {
            dry_build(&weights, |vb| {
                ClipTextModelWithProjection::new(vb, &cfg, cfg.eos_token_id).map(drop)
            })
        }),
        ComponentKind::Unet => UNet2DConditionConfig::from_file(&config_path)
            .map(|cfg| dry_build(&weights, |vb| UNet2DConditionModel::new(vb, &cfg).map(drop))),
        ComponentKind::Vae => VaeConfig::from_file(&config_path)
            .map(|cfg| dry_build(&weights, |vb| Vae::new(vb, &cfg).map(drop))),
    };
    match built {
        // The text encoder's config was parsed (and its error reported) already.
        Err(_) if kind == ComponentKind::TextEncoder => {}
        Err(e) => problems.push(e),
        Ok(DryBuild {
            problems: found,
            unused,
        }) => {
            out.built = found.is_empty();
            out.unused_tensors = unused;
            problems.extend(found);
        }
    }
    out
}

// ---------------------------------------------------------------- the dry build

/// What a dry build found.
pub(super) struct DryBuild {
    /// Missing or mis-shaped tensors (or a construction error), in the order met.
    problems: Vec<DiffusionError>,
    /// Tensors in the file(s) the model never asked for, sorted.
    unused: Vec<String>,
}

/// Constructs a model from `files`' headers alone, through the same checking backend as the
/// real load ([`CheckedWeights::headers_only`]): every missing or mis-shaped tensor is found.
pub(super) fn dry_build(
    files: &WeightFiles,
    construct: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<()>,
) -> DryBuild {
    let weights = CheckedWeights::headers_only(files);
    let result = construct(weights.var_builder());
    let mut problems = weights.take_failures();
    if let Err(e) = result
        && problems.is_empty()
    {
        problems.push(DiffusionError::Candle(e));
    }
    // As the load: weights the config leaves unused mean the config does not describe them.
    if problems.is_empty()
        && let Some(e) = weights.unexpected_tensors(&[])
    {
        problems.push(e);
    }
    DryBuild {
        problems,
        unused: weights.unused_tensors(),
    }
}
