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

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{DiffusionError, Result};
use crate::loading::lora_names::{LoraComponent, invalid_lora as invalid};
use crate::loading::weights::{WeightFiles, bad};

mod check;
mod lora_file;
pub use check::{check_file, check_lora};
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
