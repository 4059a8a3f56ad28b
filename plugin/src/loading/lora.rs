//! LoRA files (`.safetensors`, kohya or diffusers/PEFT naming) merged into the base weights at
//! load time, with diffusers' semantics (`pipe.load_lora_weights(...)` then
//! `pipe.fuse_lora(lora_scale=...)`, PEFT `LoraLayer.get_delta_weight`):
//!
//! ```text
//! W' = W + Σ_lora  lora_scale · alpha_m / rank_m · (up.flatten(1) @ down.flatten(1)).reshape(W.shape)
//! ```
//!
//! per module `m` (alpha/rank differs between modules), in f32, Linear ([out, in]) and Conv2d
//! ([out, in, kh, kw], down with the base kernel, up 1x1) alike; biases untouched. Alpha comes from
//! kohya's `.alpha` tensors, else from the PEFT header metadata (`lora_adapter_metadata`:
//! `<component>.lora_alpha`, `.alpha_pattern`, `.use_rslora`), else alpha = rank (scale 1), as in
//! diffusers. Names: [`crate::loading::lora_names`].
//!
//! [`check_lora`] matches a file against the model without touching the model's weights (what
//! `texgen inspect --lora` prints); every key that matches nothing, every shape mismatch and every
//! bad alpha is a [`DiffusionError`] naming the key. [`LoraSet::load`](crate::loading::lora_merge::LoraSet::load) refuses a file with any
//! such problem, then hands each component's `LoraDelta`s to
//! `CheckedWeights` (`loading/model_loading_utils.rs`), which adds them to a tensor as the model asks for
//! it (one tensor at a time: no second copy of the model in memory).
//!
//! Where LoRAs are named: [`crate::LoadOptions::loras`], `texgen generate|bake --lora
//! FILE[:SCALE]`, a bake manifest's `loras: [("file", 0.8)]`, `DiffusionSettings::loras`.
//! Changing them means loading the model again; the model identity (cache keys, bake sidecars)
//! includes each LoRA file's content hash and scale. Requests (`*.texgen.ron`,
//! `GenerationRequest`) do not pick LoRAs: with merged weights every LoRA combination is a
//! separate copy of the UNet and text encoder (SD 1.5 in f32: about 3.9 GB each), and unmerged
//! runtime adapters (`x W + s·(x·down)·up` per layer, PEFT's `set_adapters`) would have to live
//! inside every Linear/Conv of the model code. Several styles for one game are therefore several
//! models (one [`crate::StableDiffusion`] each) or one baked set of textures per style.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{DiffusionError, Result};
use crate::loading::lora_names::{
    LoraComponent, LoraRole, ModuleIndex, ModuleName, PeftAlphas, parse_key,
};
use crate::loading::weights::{WeightFiles, read_header};

mod lora_file;
use lora_file::*;

/// The largest LoRA file opened (4 GiB; real ones are 2 MB – 1.5 GB).
pub const MAX_LORA_FILE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// One LoRA file and its `lora_scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// A `.safetensors` LoRA file (kohya or diffusers/PEFT naming).
    pub path: PathBuf,
    /// diffusers' `lora_scale`: 1.0 = as trained, 0 = no effect; must be finite.
    pub scale: f32,
}

impl LoraSpec {
    /// `FILE` or `FILE:SCALE` (texgen's `--lora`); the part after the last `:` is the scale only
    /// if it parses as a number, so `C:\loras\x.safetensors` stays a path. Default scale 1.0.
    ///
    /// # Errors
    /// [`DiffusionError::InvalidLora`] for a scale that is not finite.
    pub fn parse(text: &str) -> Result<Self> {
        // `FILE:SCALE`, unless the whole text names an existing file or the part after the
        // last `:` is a path (`C:\loras\x.safetensors`).
        let (path, scale) = match text.rsplit_once(':') {
            Some((p, s))
                if !p.is_empty() && !s.contains(['/', '\\']) && !Path::new(text).exists() =>
            {
                match s.trim().parse::<f32>() {
                    Ok(scale) => (p, scale),
                    Err(_) => {
                        return Err(invalid(
                            Path::new(p),
                            "scale",
                            format!(
                                "`{s}` is not a number (FILE[:SCALE], e.g. style.safetensors:0.8)"
                            ),
                        ));
                    }
                }
            }
            _ => (text, 1.0),
        };
        let spec = Self {
            path: PathBuf::from(path),
            scale,
        };
        spec.check_scale()?;
        Ok(spec)
    }

    fn check_scale(&self) -> Result<()> {
        if self.scale.is_finite() {
            return Ok(());
        }
        Err(invalid(
            &self.path,
            "scale",
            format!("{} is not finite", self.scale),
        ))
    }
}

fn invalid(path: &Path, key: &str, reason: impl Into<String>) -> DiffusionError {
    DiffusionError::InvalidLora {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// One LoRA module matched to a model weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraMatch {
    /// The component patched.
    pub component: LoraComponent,
    /// The module's key in the file without the tensor suffix (`lora_unet_…`, `unet.…`).
    pub key: String,
    /// The model's tensor name in that component's weight file (`<module path>.weight`).
    pub weight: String,
    /// Its shape: [out, in] or [out, in, kh, kw].
    pub shape: Vec<usize>,
    /// `down.shape[0]`.
    pub rank: usize,
    /// The module's alpha (see the module docs for where it comes from).
    pub alpha: f64,
    /// `lora_scale * alpha / rank` (`/ sqrt(rank)` with PEFT's `use_rslora`): the factor on
    /// `up @ down`.
    pub factor: f64,
    down: String,
    up: String,
}

/// What [`check_lora`] found: the modules that match and every problem, each naming its key.
pub struct LoraReport {
    /// The file and scale checked.
    pub spec: LoraSpec,
    /// Modules that patch a model weight, in key order.
    pub matched: Vec<LoraMatch>,
    /// [`DiffusionError::LoraUnmatched`] (all keys that match nothing, in one error),
    /// [`DiffusionError::LoraShapeMismatch`], [`DiffusionError::InvalidLora`].
    pub problems: Vec<DiffusionError>,
    mmap: MmapedSafetensors,
}

/// `texgen inspect --lora`: one line per (component, rank, alpha) group with an example
/// module, then every problem.
impl std::fmt::Display for LoraReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let spec = &self.spec;
        writeln!(
            f,
            "LoRA {} (scale {}): {} module(s) match, {} problem(s)",
            spec.path.display(),
            spec.scale,
            self.matched.len(),
            self.problems.len()
        )?;
        let mut groups: BTreeMap<(LoraComponent, usize, String), Vec<&LoraMatch>> = BTreeMap::new();
        for m in &self.matched {
            let key = (m.component, m.rank, format!("{}", m.alpha));
            groups.entry(key).or_default().push(m);
        }
        for ((component, rank, alpha), ms) in &groups {
            let e = ms[0];
            writeln!(
                f,
                "  {:<14} {:>4} module(s), rank {rank}, alpha {alpha} (x{:.4}), e.g. `{}` -> \
                 `{}` {:?}",
                component.dir_name(),
                ms.len(),
                e.factor,
                e.key,
                e.weight,
                e.shape
            )?;
        }
        for p in &self.problems {
            writeln!(f, "  problem: {p}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for LoraReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraReport")
            .field("spec", &self.spec)
            .field("matched", &self.matched)
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
}

impl LoraReport {
    /// Reads `m`'s (down, up) tensors as f32 on the CPU.
    ///
    /// # Errors
    /// [`DiffusionError::BadSafetensors`] if a tensor cannot be read or converted.
    pub fn read(&self, m: &LoraMatch) -> Result<(Tensor, Tensor)> {
        let load = |name: &str| {
            self.mmap
                .load(name, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| {
                    bad(
                        &self.spec.path,
                        format!("tensor `{name}` cannot be read: {e}"),
                    )
                })
        };
        Ok((load(&m.down)?, load(&m.up)?))
    }
}

/// The weights a LoRA may patch: per component, the weight files of the loaded model.
pub type LoraTargets<'a> = [(LoraComponent, &'a WeightFiles)];

/// What a LoRA may patch in `folder`: unet, text_encoder and, in an SDXL folder, text_encoder_2.
pub fn lora_targets(
    folder: &crate::loading::folder::ModelFolder,
) -> Vec<(LoraComponent, &WeightFiles)> {
    let mut targets = vec![
        (LoraComponent::Unet, &folder.unet.weights),
        (LoraComponent::TextEncoder, &folder.text_encoder.weights),
    ];
    if let Some(te2) = &folder.text_encoder_2 {
        targets.push((LoraComponent::TextEncoder2, &te2.weights));
    }
    targets
}

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
    // SAFETY: read-only mapping, read only while loading (as in `CheckedWeights::open`).
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
