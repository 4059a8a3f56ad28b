//! Merging checked LoRAs into the base weights ([`LoraSet`], [`merge`]) and the identity of a
//! model with LoRAs ([`identity`]). What is merged and how is explained in
//! [`crate::loading::lora`].

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use crate::error::{DiffusionError, Result};
use crate::loading::lora::{LoraSpec, LoraTargets, check_file, check_lora};
use crate::loading::lora_names::LoraComponent;

/// One LoRA's contribution to one weight: `W += factor * (up.flatten(1) @ down.flatten(1))`.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    /// [rank, in(, kh, kw)], f32, CPU.
    pub down: Tensor,
    /// [out, rank(, 1, 1)], f32, CPU.
    pub up: Tensor,
    /// `lora_scale * alpha / rank`.
    pub factor: f64,
    /// The LoRA module (`file: key`), for logs and errors.
    pub source: String,
}

/// Adds every delta of `deltas` to `weight` (any float dtype; the sum is formed in f32 and
/// returned in `weight`'s dtype), in order, on `weight`'s device.
///
/// # Errors
/// A candle error if a delta's product does not have `weight`'s element count (prevented by
/// [`check_lora`]).
pub fn merge(weight: &Tensor, deltas: &[LoraDelta]) -> candle_core::Result<Tensor> {
    let dtype = weight.dtype();
    let mut w = weight.to_dtype(DType::F32)?;
    for d in deltas {
        let out = w.dims()[0];
        let rank = d.down.dims()[0];
        // The factor goes on the small `up` ([out, rank]) rather than on the product, saving
        // a pass over the weight (diffusers scales the product: the same up to f32 rounding).
        let up = d.up.to_device(w.device())?.reshape((out, rank))?;
        let up = up.affine(d.factor, 0.0)?;
        let down = d.down.to_device(w.device())?.reshape((rank, ()))?;
        let delta = up.matmul(&down)?.reshape(w.shape())?;
        w = (w + delta)?;
    }
    w.to_dtype(dtype)
}

/// The deltas of several LoRAs, per component and weight name.
#[derive(Debug, Default)]
pub struct LoraSet {
    deltas: HashMap<LoraComponent, HashMap<String, Vec<LoraDelta>>>,
}

impl LoraSet {
    /// Checks every LoRA of `loras` against `targets` ([`check_lora`]) and reads its tensors.
    ///
    /// # Errors
    /// The file-level errors of [`check_lora`], else the first problem of a file's
    /// [`LoraReport::problems`] (keys that match nothing come first, listed together).
    pub fn load(loras: &[LoraSpec], targets: &LoraTargets) -> Result<Self> {
        let mut set = Self::default();
        for spec in loras {
            let mut report = check_lora(spec, targets)?;
            if !report.problems.is_empty() {
                return Err(report.problems.remove(0));
            }
            for m in &report.matched {
                let (down, up) = report.read(m)?;
                let delta = LoraDelta {
                    down,
                    up,
                    factor: m.factor,
                    source: format!("{}: {}", spec.path.display(), m.key),
                };
                let weights = set.deltas.entry(m.component).or_default();
                weights.entry(m.weight.clone()).or_default().push(delta);
            }
        }
        Ok(set)
    }

    /// Removes and returns the deltas for `component` (weight name → deltas).
    pub fn take(&mut self, component: LoraComponent) -> HashMap<String, Vec<LoraDelta>> {
        self.deltas.remove(&component).unwrap_or_default()
    }

    /// Number of patched weights over all components.
    pub fn len(&self) -> usize {
        self.deltas.values().map(HashMap::len).sum()
    }

    /// True when nothing is patched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The identity of a model with LoRAs: `base` unchanged without LoRAs, else blake3 (hex) of
/// `base` and each LoRA's full file content and scale, in order (LoRAs of the same shapes share
/// a header, so the header alone would not tell them apart).
///
/// # Errors
/// Those of [`check_file`]; [`DiffusionError::Io`] if a file cannot be read.
pub fn identity(base: &str, loras: &[LoraSpec]) -> Result<String> {
    if loras.is_empty() {
        return Ok(base.to_string());
    }
    let mut h = blake3::Hasher::new();
    h.update(b"bevy_diffusion lora v1\0");
    h.update(base.as_bytes());
    for spec in loras {
        check_file(spec)?;
        let path = &spec.path;
        let mut file = std::fs::File::open(path).map_err(|e| DiffusionError::io(path, e))?;
        let mut content = blake3::Hasher::new();
        std::io::copy(&mut file, &mut content).map_err(|e| DiffusionError::io(path, e))?;
        h.update(content.finalize().as_bytes());
        h.update(&spec.scale.to_le_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}
