//! The checks behind [`super::validate`] and [`super::ModelFolder::open`]: model_index.json, every
//! component's config and weight headers, the tokenizer(s), the scheduler config, the family, the
//! cross-checks between configs; every problem collected in folder order.

use super::*;

pub(super) fn inspect(dir: &Path, options: &FolderOptions, check_tokenizer: bool) -> FolderReport {
    let mut report = FolderReport {
        dir: dir.to_path_buf(),
        class_name: None,
        family: None,
        problems: Vec::new(),
        folder: None,
    };
    if !crate::loading::model_files::is_dir(dir) {
        report.problems.push(DiffusionError::ModelFolderMissing {
            path: dir.to_path_buf(),
        });
        return report;
    }
    let problems = &mut report.problems;

    // model_index.json
    let index_path = dir.join("model_index.json");
    let index = if crate::loading::model_files::is_file(&index_path) {
        match read_json(&index_path) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(e);
                None
            }
        }
    } else {
        let single_file = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let p = e.path();
                p.is_file()
                    && p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                        let x = x.to_ascii_lowercase();
                        x == "safetensors" || PICKLE_EXTENSIONS.contains(&x.as_str())
                    })
            });
        let what = if let Some(hint) = nested_pipeline_hint(dir) {
            format!("the diffusers pipeline index; {hint}")
        } else if single_file {
            "the diffusers pipeline index; this looks like a single-file checkpoint: convert it with \
             diffusers' `StableDiffusionPipeline.from_single_file(...).save_pretrained(..., \
             safe_serialization=True)`"
                .into()
        } else {
            "the diffusers pipeline index (written by `save_pretrained`)".into()
        };
        problems.push(DiffusionError::MissingFile {
            path: index_path.clone(),
            what,
        });
        None
    };
    let class_name = index.as_ref().and_then(|i| {
        let class = i
            .get("_class_name")
            .and_then(|c| c.as_str())
            .map(str::to_string);
        if class.is_none() {
            problems.push(DiffusionError::config(
                &index_path,
                "_class_name",
                "missing; expected e.g. \"StableDiffusionPipeline\"",
            ));
        }
        class
    });
    report.class_name = class_name.clone();

    // Families we refuse: stop here, nothing else matters.
    let sdxl = sdxl_marks(dir, class_name.as_deref(), index.as_ref());
    if let Some(class) = &class_name
        && let Some(e) = wrong_pipeline(&index_path, class)
    {
        problems.push(e);
        return report;
    }
    if let Some(class) = &class_name
        && let Some((family, reason)) = refused_pipeline(class)
    {
        problems.push(DiffusionError::UnsupportedModel {
            path: index_path,
            family,
            reason,
        });
        return report;
    }

    // Components.
    let mut components = Vec::new();
    let mut configs = Vec::new();
    for &kind in ComponentKind::for_folder(sdxl.is_some()) {
        if kind == ComponentKind::TextEncoder2
            && let Some(why) = &sdxl
            && !crate::loading::model_files::is_dir(&dir.join(kind.dir_name()))
        {
            problems.push(DiffusionError::MissingFile {
                path: dir.join(kind.dir_name()),
                what: format!(
                    "the text_encoder_2 component (SDXL's second text encoder, \
                     CLIPTextModelWithProjection, with config.json and model.safetensors); this is \
                     an SDXL folder because {why}"
                ),
            });
            configs.push(None);
            components.push(None);
            continue;
        }
        if let Some(entry) = index.as_ref().and_then(|i| i.get(kind.dir_name())) {
            let class = entry
                .as_array()
                .and_then(|a| a.get(1))
                .and_then(|c| c.as_str());
            match class {
                Some(c) if kind.accepted_classes().contains(&c) => {}
                Some(c) => problems.push(DiffusionError::UnsupportedConfig {
                    path: index_path.clone(),
                    field: kind.dir_name().into(),
                    value: c.to_string(),
                }),
                None => problems.push(DiffusionError::MissingFile {
                    path: dir.join(kind.dir_name()),
                    what: format!("the {kind} component (model_index.json lists none)"),
                }),
            }
        }
        let comp_dir = dir.join(kind.dir_name());
        let config = comp_dir.join("config.json");
        let parsed = required_json(&config, &format!("the {kind} config"));
        let weights = if crate::loading::model_files::is_dir(&comp_dir) {
            component_weights(&comp_dir, kind, options)
        } else {
            Err(vec![DiffusionError::MissingFile {
                path: comp_dir.join(format!("{}.safetensors", kind.weights_stem())),
                what: format!("the {kind} weights (safetensors)"),
            }])
        };
        match parsed {
            Ok(json) => configs.push(Some(json)),
            Err(e) => {
                problems.push(e);
                configs.push(None);
            }
        }
        match weights {
            Ok(w) => components.push(Some(Component {
                kind,
                dir: comp_dir,
                config,
                weights: w,
            })),
            Err(es) => {
                problems.extend(es);
                components.push(None);
            }
        }
    }

    // Tokenizer.
    let tokenizer_dir = dir.join("tokenizer");
    if check_tokenizer {
        let max_length = configs[0]
            .as_ref()
            .and_then(|c| usize_field(c, "max_position_embeddings"))
            .map_or(77, |n| n as usize);
        match crate::models::tokenizer::PromptTokenizer::from_dir(&tokenizer_dir, max_length) {
            Ok(tokenizer) => {
                let vocab = configs[0]
                    .as_ref()
                    .and_then(|c| usize_field(c, "vocab_size"));
                if let Some(e) = vocab.and_then(|v| {
                    vocab_mismatch(&tokenizer, v, &dir.join("text_encoder/config.json"))
                }) {
                    problems.push(e);
                }
            }
            Err(e) => problems.push(e),
        }
    } else {
        let has_json = crate::loading::model_files::is_file(&tokenizer_dir.join("tokenizer.json"));
        let has_slow = crate::loading::model_files::is_file(&tokenizer_dir.join("vocab.json"))
            && crate::loading::model_files::is_file(&tokenizer_dir.join("merges.txt"));
        if !has_json && !has_slow {
            problems.push(DiffusionError::MissingFile {
                path: tokenizer_dir.join("tokenizer.json"),
                what: "the prompt tokenizer (tokenizer.json, or CLIP's vocab.json + merges.txt)"
                    .into(),
            });
        }
    }

    let tokenizer_2_dir = dir.join("tokenizer_2");
    if sdxl.is_some() {
        if !crate::loading::model_files::is_dir(&tokenizer_2_dir) {
            problems.push(DiffusionError::MissingFile {
                path: tokenizer_2_dir.clone(),
                what: "SDXL's second prompt tokenizer (tokenizer_2/ with tokenizer.json, or \
                       vocab.json + merges.txt)"
                    .into(),
            });
        } else if check_tokenizer {
            let te2 = configs.get(3).and_then(Option::as_ref);
            let max_length = te2
                .and_then(|c| usize_field(c, "max_position_embeddings"))
                .map_or(77, |n| n as usize);
            match crate::models::tokenizer::PromptTokenizer::from_dir(&tokenizer_2_dir, max_length)
            {
                Ok(tokenizer) => {
                    if let Some(e) = te2
                        .and_then(|c| usize_field(c, "vocab_size"))
                        .and_then(|v| {
                            vocab_mismatch(&tokenizer, v, &dir.join("text_encoder_2/config.json"))
                        })
                    {
                        problems.push(e);
                    }
                }
                Err(e) => problems.push(e),
            }
        }
    }

    // Scheduler.
    let scheduler_config = dir.join("scheduler").join("scheduler_config.json");
    let scheduler = match required_json(&scheduler_config, "the scheduler config") {
        Ok(json) => Some(json),
        Err(e) => {
            problems.push(e);
            None
        }
    };

    // Family: the text encoder's width and the UNet's cross-attention width must agree.
    let hidden = configs[0]
        .as_ref()
        .and_then(|c| usize_field(c, "hidden_size"));
    let cross = configs[1]
        .as_ref()
        .and_then(|c| usize_field(c, "cross_attention_dim"));
    if configs[0].is_some() && hidden.is_none() {
        problems.push(DiffusionError::config(
            dir.join("text_encoder").join("config.json"),
            "hidden_size",
            "missing or not a positive integer",
        ));
    }
    // SDXL: the UNet attends to both encoders' hidden states, concatenated.
    let hidden_2 = configs
        .get(3)
        .and_then(Option::as_ref)
        .and_then(|c| usize_field(c, "hidden_size"));
    let (expected, what) = match hidden_2 {
        Some(h2) => (
            hidden.map(|h| h + h2),
            "text_encoder + text_encoder_2 hidden_size",
        ),
        None => (hidden, "text_encoder/config.json hidden_size"),
    };
    if let (Some(h), Some(c)) = (expected, cross)
        && h != c
        && (sdxl.is_none() || hidden_2.is_some())
    {
        problems.push(DiffusionError::config(
            dir.join("unet").join("config.json"),
            "cross_attention_dim",
            format!(
                "is {c} but {what} is {h}; the UNet attends to the text encoder's hidden \
                 states, so they must be equal"
            ),
        ));
    }
    let turbo = {
        let spacing = scheduler
            .as_ref()
            .and_then(|s| s.get("timestep_spacing"))
            .and_then(|v| v.as_str());
        let prediction = scheduler
            .as_ref()
            .and_then(|s| s.get("prediction_type"))
            .and_then(|v| v.as_str())
            .unwrap_or("epsilon");
        (spacing == Some("trailing") && prediction == "epsilon") || turbo_named(dir)
    };
    let family = match hidden.or(cross) {
        _ if sdxl.is_some() && turbo => Some(ModelFamily::SdxlTurbo),
        _ if sdxl.is_some() => Some(ModelFamily::Sdxl),
        Some(1024) if turbo => Some(ModelFamily::SdTurbo),
        Some(1024) => Some(ModelFamily::Sd2),
        Some(_) => Some(ModelFamily::Sd1),
        None => None,
    };
    let family = family.map(|f| {
        // Pruned marks turn an SD 1.x/2.x into SDXS/pruned; SDXL (even with a TAESD vae) and
        // the turbo families keep their own names.
        if matches!(f, ModelFamily::Sd1 | ModelFamily::Sd2)
            && is_pruned(configs[1].as_ref(), configs[2].as_ref())
        {
            ModelFamily::SdxsPruned
        } else {
            f
        }
    });
    report.family = family;

    let force_zeros_for_empty_prompt = index
        .as_ref()
        .and_then(|i| i.get("force_zeros_for_empty_prompt"))
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    if report.problems.is_empty()
        && let (Some(family), [Some(te), Some(unet), Some(vae), rest @ ..]) =
            (family, components.as_slice())
    {
        let text_encoder_2 = rest.first().cloned().flatten();
        let folder = ModelFolder {
            dir: dir.to_path_buf(),
            class_name: class_name.unwrap_or_default(),
            family,
            text_encoder: te.clone(),
            unet: unet.clone(),
            vae: vae.clone(),
            tokenizer_dir,
            tokenizer_2_dir: text_encoder_2.as_ref().map(|_| tokenizer_2_dir),
            text_encoder_2,
            force_zeros_for_empty_prompt,
            scheduler_config,
            identity: String::new(),
        };
        match identity(&folder) {
            Ok(id) => {
                report.folder = Some(ModelFolder {
                    identity: id,
                    ..folder
                })
            }
            Err(e) => report.problems.push(e),
        }
    }
    report
}
