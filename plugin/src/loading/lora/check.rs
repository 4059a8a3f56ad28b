//! A LoRA file matched against the model's weights without reading them: the file-level checks
//! ([`check_file`]), then every module's key, shapes and alpha ([`check_lora`]).

use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::loading::lora_names::{LoraRole, ModuleIndex, ModuleName, PeftAlphas, parse_key};
use crate::loading::weights::read_header;

/// Builds the name index of every target component.
fn indexes(targets: &LoraTargets) -> HashMap<LoraComponent, ModuleIndex> {
    targets
        .iter()
        .map(|(c, files)| {
            let tensors = files
                .shards
                .iter()
                .flat_map(|h| h.tensors.iter())
                .map(|(n, m)| (n.as_str(), m.shape.as_slice()));
            (*c, ModuleIndex::new(tensors))
        })
        .collect()
}

/// The checks before a LoRA file is read: a finite scale, not a pickle by extension, present.
///
/// # Errors
/// [`DiffusionError::InvalidLora`] (`scale`), [`DiffusionError::PickleWeights`],
/// [`DiffusionError::MissingFile`].
pub fn check_file(spec: &LoraSpec) -> Result<()> {
    spec.check_scale()?;
    let path = spec.path.as_path();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ["ckpt", "pt", "pth", "bin", "pkl"].contains(&ext.to_ascii_lowercase().as_str()) {
        return Err(DiffusionError::PickleWeights { path: path.into() });
    }
    if path.exists() && !path.is_file() {
        return Err(invalid(
            path,
            "path",
            if path.is_dir() {
                "is a directory, not a LoRA .safetensors file"
            } else {
                "is not a regular file (a device or pipe?), not a LoRA .safetensors file"
            },
        ));
    }
    if !path.is_file() {
        return Err(DiffusionError::MissingFile {
            path: path.into(),
            what: "LoRA file".into(),
        });
    }
    Ok(())
}

/// Opens `spec.path` and matches each of its modules against `targets`.
///
/// # Errors
/// File-level problems: [`DiffusionError::InvalidLora`] (`scale` not finite),
/// [`DiffusionError::MissingFile`], [`DiffusionError::PickleWeights`] (`.ckpt`, `.pt`, `.pth`,
/// `.bin`, or pickle/zip content), [`DiffusionError::BadSafetensors`],
/// [`DiffusionError::FileTooLarge`] (over [`MAX_LORA_FILE_BYTES`]). Problems of single keys are
/// in [`LoraReport::problems`].
pub fn check_lora(spec: &LoraSpec, targets: &LoraTargets) -> Result<LoraReport> {
    check_file(spec)?;
    let path = spec.path.as_path();
    let header = read_header(path, MAX_LORA_FILE_BYTES).map_err(|e| match e {
        DiffusionError::BadSafetensors { .. } if looks_pickled(path) => {
            DiffusionError::PickleWeights { path: path.into() }
        }
        e => e,
    })?;
    // SAFETY: read-only mapping of a small LoRA file, read only while loading; another process
    // rewriting the file meanwhile is undefined behaviour we cannot rule out (as with any mmap).
    let mmap = unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| bad(path, format!("cannot map the file: {e}")))?;
    let peft = PeftAlphas::from_metadata(header.metadata.get("lora_adapter_metadata"), path)?;

    // Group tensors by module.
    let mut modules: BTreeMap<(LoraComponent, ModuleName), [Option<String>; 3]> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for name in header.tensors.keys() {
        match parse_key(name) {
            Some(k) => {
                let slot = match k.role {
                    LoraRole::Down => 0,
                    LoraRole::Up => 1,
                    LoraRole::Alpha => 2,
                };
                modules.entry((k.component, k.module)).or_default()[slot] = Some(name.clone());
            }
            None => unmatched.push(name.clone()),
        }
    }
    let indexes = indexes(targets);
    let mut report = LoraReport {
        spec: spec.clone(),
        matched: Vec::new(),
        problems: Vec::new(),
        mmap,
    };
    for ((component, module), [down, up, alpha]) in modules {
        let any = [&down, &up, &alpha].into_iter().flatten().next();
        let key = any.map_or(String::new(), |n| module_key(n));
        let target = indexes.get(&component).and_then(|i| i.resolve(&module));
        let (Some(target), Some(down), Some(up)) = (target, &down, &up) else {
            if target.is_none() {
                unmatched.extend([down, up, alpha].into_iter().flatten());
            } else {
                let lacking = if down.is_none() {
                    "down (lora_down / lora_A)"
                } else {
                    "up"
                };
                report
                    .problems
                    .push(invalid(path, &key, format!("has no {lacking} tensor")));
            }
            continue;
        };
        let shape = |n: &str| {
            header
                .tensors
                .get(n)
                .map_or(Vec::new(), |m| m.shape.clone())
        };
        let (down_shape, up_shape) = (shape(down), shape(up));
        if let Err(problem) = check_shapes(&down_shape, &up_shape, &target.shape) {
            report.problems.push(DiffusionError::LoraShapeMismatch {
                path: path.into(),
                key: key.clone(),
                down: down_shape,
                up: up_shape,
                weight: format!("{}/{}", component.dir_name(), target.name),
                expected: target.shape.clone(),
                reason: problem,
            });
            continue;
        }
        let rank = down_shape[0];
        let module_path = match &module {
            ModuleName::Dotted(p) => p.clone(),
            ModuleName::Kohya(_) => target.name.trim_end_matches(".weight").to_string(),
        };
        let (alpha, rslora) = match &alpha {
            Some(a) => match read_alpha(&report.mmap, a) {
                Ok(v) => (v, false),
                Err(reason) => {
                    report.problems.push(invalid(path, a, reason));
                    continue;
                }
            },
            None => peft.alpha(component, &module_path, rank),
        };
        if !alpha.is_finite() {
            report
                .problems
                .push(invalid(path, &key, format!("alpha {alpha} is not finite")));
            continue;
        }
        let per_rank = if rslora {
            (rank as f64).sqrt()
        } else {
            rank as f64
        };
        report.matched.push(LoraMatch {
            component,
            key,
            weight: target.name.clone(),
            shape: target.shape.clone(),
            rank,
            alpha,
            factor: f64::from(spec.scale) * alpha / per_rank,
            down: down.clone(),
            up: up.clone(),
        });
    }
    if !unmatched.is_empty() {
        unmatched.sort();
        report.problems.insert(
            0,
            DiffusionError::LoraUnmatched {
                path: path.into(),
                keys: unmatched,
            },
        );
    }
    if report.matched.is_empty() && report.problems.is_empty() {
        report
            .problems
            .push(invalid(path, "", "the file holds no LoRA tensors"));
    }
    Ok(report)
}
