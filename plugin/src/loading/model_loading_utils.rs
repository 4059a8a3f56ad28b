//! The one weights-checking backend, after diffusers' `models/model_loading_utils.py`
//! (`load_state_dict` + the missing / mismatched key checks of `load_model_dict_into_meta`):
//! [`CheckedWeights`] hands models a [`VarBuilder`] whose every lookup is checked against the
//! safetensors headers ([`super::weights::read_header`]). It serves the real load
//! ([`CheckedWeights::open`], each tensor read from its file into its own buffer, LoRA deltas
//! merged on the way) and `texgen inspect`'s dry build ([`CheckedWeights::headers_only`]: zeros,
//! every problem recorded).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use super::weights::{WeightFiles, bad};
use crate::error::{DiffusionError, Result};
use crate::loading::lora_merge::LoraDelta;

mod checked_backend;
mod tensor_read;
use checked_backend::{CheckedBackend, LoadLog, SharedBackend, TensorData};
use tensor_read::TensorLocation;

/// Header-checked weights of one component, handing out checking
/// [`VarBuilder`]s.
///
/// Every tensor a model requests through [`CheckedWeights::var_builder`] is checked against the
/// header before its data is read: absent → [`DiffusionError::MissingTensor`] (naming
/// [`WeightFiles::path`], the full dotted name and the shape the model expected); wrong shape →
/// [`DiffusionError::ShapeMismatch`] (naming the file holding it, the name, the expected and the
/// stored shape). Tensors are converted to the requested dtype (f32 for the var builders made
/// here), whatever they are stored as (f16, bf16, f32, ...). Each tensor is read from its file with
/// a positional read straight into the buffer that becomes the tensor (no memory map), so the
/// peak resident memory of a load is the weights plus one tensor (see
/// `model_loading_utils/tensor_read.rs`).
pub struct CheckedWeights {
    backend: Arc<CheckedBackend>,
    files: WeightFiles,
    device: Device,
}

impl CheckedWeights {
    /// Opens `files` (whose headers [`read_header`] has validated) for loading onto `device`;
    /// a compiled-in file (`<embedded>/...`, [`crate::loading::model_files`]) is read from its
    /// `&'static [u8]` instead.
    ///
    /// # Errors
    /// [`DiffusionError::Io`] if a file cannot be opened; [`DiffusionError::BadSafetensors`] if
    /// a file's size is no longer the one its header was validated against (it changed since),
    /// or a path names no compiled-in file.
    pub fn open(files: &WeightFiles, device: &Device) -> Result<Self> {
        Self::open_with_lora(files, device, HashMap::new())
    }

    /// [`CheckedWeights::open`], adding LoRA deltas (weight name → deltas, from
    /// [`crate::loading::lora_merge::LoraSet::take`]) to those tensors as a model loads them:
    /// merged in f32, then converted to the requested dtype. [`CheckedWeights::unused_lora`]
    /// afterwards names the patched weights no model asked for.
    ///
    /// # Errors
    /// As [`CheckedWeights::open`].
    pub fn open_with_lora(
        files: &WeightFiles,
        device: &Device,
        lora: HashMap<String, Vec<LoraDelta>>,
    ) -> Result<Self> {
        let paths: Vec<&Path> = files.shards.iter().map(|h| h.path.as_path()).collect();
        if let [path] = paths[..]
            && let Some(bytes) = crate::loading::model_files::embedded_file(path)
        {
            let bytes = bytes.ok_or_else(|| bad(path, "not a file of the compiled-in model"))?;
            return Ok(Self::with_data(
                files,
                device,
                Some(TensorData::Static(bytes)),
                lora,
            ));
        }
        let mut open = HashMap::new();
        for header in &files.shards {
            let path = header.path.as_path();
            let file = std::fs::File::open(path).map_err(|e| DiffusionError::io(path, e))?;
            let len = file
                .metadata()
                .map_err(|e| DiffusionError::io(path, e))?
                .len();
            if len != header.file_len {
                return Err(bad(
                    path,
                    format!(
                        "the file changed since its header was read ({} bytes then, {len} now)",
                        header.file_len
                    ),
                ));
            }
            open.insert(path.to_path_buf(), Mutex::new(file));
        }
        Ok(Self::with_data(
            files,
            device,
            Some(TensorData::Files(open)),
            lora,
        ))
    }

    /// Weights answered from the headers alone (no data read; `texgen inspect`'s dry build):
    /// presence and shape are checked exactly as by [`CheckedWeights::open`], but every tensor
    /// is a broadcast zero of the shape the model expects, and a missing or mis-shaped tensor
    /// is recorded ([`CheckedWeights::take_failures`]) while construction goes on, so one build
    /// finds every problem. The var builders are f32 on the CPU.
    pub fn headers_only(files: &WeightFiles) -> Self {
        Self::with_data(files, &Device::Cpu, None, HashMap::new())
    }

    fn with_data(
        files: &WeightFiles,
        device: &Device,
        data: Option<TensorData>,
        lora: HashMap<String, Vec<LoraDelta>>,
    ) -> Self {
        // Later shards override earlier ones, as `WeightFiles::tensor` reads them.
        let mut index = HashMap::new();
        for header in &files.shards {
            let data_start = 8 + header.header_len;
            for (name, meta) in &header.tensors {
                let (start, end) = meta.data_offsets;
                let at = TensorLocation {
                    dtype: meta.dtype.clone(),
                    shape: meta.shape.clone(),
                    offset: data_start + start as u64,
                    bytes: end - start,
                };
                index.insert(name.clone(), (header.path.clone(), at));
            }
        }
        let backend = CheckedBackend {
            data,
            path: files.path.clone(),
            index,
            log: Arc::new(Mutex::new(LoadLog::default())),
            lora,
            bf16: None,
        };
        Self {
            backend: Arc::new(backend),
            files: files.clone(),
            device: device.clone(),
        }
    }

    /// These weights, with every tensor for which `keep(name, shape)` holds converted to bf16
    /// where the model asks for f32 (after any LoRA merge, which stays f32): the UNet weights a
    /// bf16 request keeps in bf16 (see `crate::precision`). Call it before the first
    /// [`CheckedWeights::var_builder`] / [`CheckedWeights::build`]; afterwards it changes
    /// nothing.
    pub fn with_bf16(mut self, keep: fn(&str, &[usize]) -> bool) -> Self {
        let unique = Arc::get_mut(&mut self.backend).map(|b| b.bf16 = Some(keep));
        debug_assert!(unique.is_some(), "with_bf16 after a var builder was made");
        self
    }

    /// The files these weights come from.
    pub fn files(&self) -> &WeightFiles {
        &self.files
    }

    /// A root [`VarBuilder`] (f32, on the device given to [`CheckedWeights::open`]) whose every
    /// lookup is checked; use `vb.pp("...")` to walk the checkpoint's tensor names.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(SharedBackend(self.backend.clone()));
        VarBuilder::from_backend(backend, DType::F32, self.device.clone())
    }

    /// Removes and returns the first typed failure recorded since the last call, if any.
    pub fn take_failure(&self) -> Option<DiffusionError> {
        let mut log = self.backend.log.lock().ok()?;
        if log.failures.is_empty() {
            None
        } else {
            Some(log.failures.remove(0).1)
        }
    }

    /// Removes and returns every typed failure recorded so far, in the order met (for a
    /// [`CheckedWeights::headers_only`] build: all the problems of the checkpoint).
    pub fn take_failures(&self) -> Vec<DiffusionError> {
        match self.backend.log.lock() {
            Ok(mut log) => std::mem::take(&mut log.failures)
                .into_iter()
                .map(|(_, e)| e)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Builds a model with `construct(self.var_builder())`, turning a failure into a typed error.
    ///
    /// If construction fails, returns the recorded tensor failure whose message the candle error
    /// carries (the one that actually stopped construction), else the first recorded failure
    /// (a model may probe optional tensors with `get` and recover), else the candle error as
    /// [`DiffusionError::Candle`].
    pub fn build<T>(
        &self,
        construct: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
    ) -> Result<T> {
        match construct(self.var_builder()) {
            Ok(model) => {
                if let Ok(mut log) = self.backend.log.lock() {
                    log.failures.clear();
                }
                Ok(model)
            }
            Err(e) => {
                let message = e.to_string();
                let mut log = match self.backend.log.lock() {
                    Ok(log) => log,
                    Err(_) => return Err(DiffusionError::Candle(e)),
                };
                let failures = std::mem::take(&mut log.failures);
                let matching = failures
                    .iter()
                    .rposition(|(_, err)| message.contains(&err.to_string()));
                let chosen = match matching {
                    Some(i) => failures.into_iter().nth(i),
                    None => failures.into_iter().next(),
                };
                Err(chosen.map_or(DiffusionError::Candle(e), |(_, err)| err))
            }
        }
    }

    /// LoRA-patched weights that no model asked for, sorted, with the first LoRA module of each
    /// (a LoRA for a tensor the model's config leaves unused would otherwise be dropped
    /// silently).
    pub fn unused_lora(&self) -> Vec<(String, String)> {
        let Ok(log) = self.backend.log.lock() else {
            return Vec::new();
        };
        let mut unused: Vec<(String, String)> = self
            .backend
            .lora
            .iter()
            .filter(|(n, _)| !log.requested.contains(*n))
            .map(|(n, d)| {
                (
                    n.clone(),
                    d.first().map_or(String::new(), |d| d.source.clone()),
                )
            })
            .collect();
        unused.sort();
        unused
    }

    /// [`Self::unused_tensors`] less known buffers that carry no weights (`position_ids`,
    /// `num_batches_tracked`, `logit_scale`) and names under `allowed_prefixes` (parts not
    /// built on purpose), as a [`DiffusionError::UnexpectedTensors`] naming
    /// the first three; `None` when every weight was used.
    pub fn unexpected_tensors(&self, allowed_prefixes: &[&str]) -> Option<DiffusionError> {
        const BUFFERS: [&str; 3] = ["position_ids", "num_batches_tracked", "logit_scale"];
        let unexpected: Vec<String> = self
            .unused_tensors()
            .into_iter()
            .filter(|n| !BUFFERS.iter().any(|b| n.ends_with(b)))
            .filter(|n| !allowed_prefixes.iter().any(|p| n.starts_with(p)))
            .collect();
        if unexpected.is_empty() {
            return None;
        }
        let mut first = unexpected[..unexpected.len().min(3)].join(", ");
        if unexpected.len() > 3 {
            first.push_str(", ...");
        }
        Some(DiffusionError::UnexpectedTensors {
            path: self.files().path.clone(),
            count: unexpected.len(),
            first,
        })
    }

    /// Tensors present in the file(s) that no model asked for, sorted (diffusers warns about
    /// these too: often harmless, e.g. CLIP's `position_ids`, but a long list hints at a config
    /// that does not match the weights).
    pub fn unused_tensors(&self) -> Vec<String> {
        let Ok(log) = self.backend.log.lock() else {
            return Vec::new();
        };
        let mut unused: Vec<String> = self
            .backend
            .index
            .keys()
            .filter(|n| !log.requested.contains(*n))
            .cloned()
            .collect();
        unused.sort();
        unused
    }
}
