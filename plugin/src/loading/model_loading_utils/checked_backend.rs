//! The checking [`SimpleBackend`] behind [`super::CheckedWeights`]: every tensor a model asks
//! for is looked up in the safetensors headers (absent or mis-shaped: a typed error, recorded;
//! a dry build goes on with broadcast zeros), then read from its file (positional reads, no
//! mapping: [`super::tensor_read`]) or the compiled-in data, with its LoRA deltas merged, and
//! converted to the requested dtype (or to bf16, for the tensors a bf16 request keeps so).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::error::DiffusionError;
use crate::loading::lora_merge::{LoraDelta, merge};
use crate::loading::weights::bad;

use super::tensor_read::{
    Source, TensorLocation, check_int8_scale, check_location, dequantize_int8, read_tensor,
};

/// A zero of `shape` that takes no memory (a broadcast scalar).
fn zeros(shape: &Shape, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
}

/// Where the tensor data comes from: the open file(s) (one per shard, by path), read tensor by
/// tensor, or the bytes of a compiled-in file (`<embedded>/...`, see
/// [`crate::loading::model_files`]).
pub(super) enum TensorData {
    Files(HashMap<PathBuf, Mutex<File>>),
    Static(&'static [u8]),
}

impl TensorData {
    fn source(&self, file: &Path) -> candle_core::Result<Source<'_>> {
        match self {
            Self::Files(files) => match files.get(file) {
                Some(f) => Ok(Source::File(f)),
                None => candle_core::bail!("{} is not open", file.display()),
            },
            Self::Static(bytes) => Ok(Source::Bytes(bytes)),
        }
    }
}

/// What the checked backend recorded while a model was being built.
#[derive(Default)]
pub(super) struct LoadLog {
    /// Typed failures in the order they happened, with the tensor name.
    pub(super) failures: Vec<(String, DiffusionError)>,
    /// Every tensor name a model asked for.
    pub(super) requested: HashSet<String>,
}

/// The one weights-checking backend, serving both the load
/// ([`CheckedWeights::open`](super::CheckedWeights::open)) and `texgen inspect`'s dry build
/// ([`CheckedWeights::headers_only`](super::CheckedWeights::headers_only)).
pub(super) struct CheckedBackend {
    /// The tensor data; `None` for a headers-only (dry) build, whose tensors are broadcast zeros
    /// of the expected shape and whose problems are recorded without stopping construction.
    pub(super) data: Option<TensorData>,
    /// The file or index named by errors about absent tensors.
    pub(super) path: PathBuf,
    /// name -> (file holding it, where in that file: dtype, shape, byte range).
    pub(super) index: HashMap<String, (PathBuf, TensorLocation)>,
    pub(super) log: Arc<Mutex<LoadLog>>,
    /// LoRA deltas added to a tensor as it is loaded (see [`crate::loading::lora_merge`]).
    pub(super) lora: HashMap<String, Vec<LoraDelta>>,
    /// Tensors (by name and shape) kept in bf16 where f32 is asked for (a bf16 request's
    /// UNet weights, [`super::CheckedWeights::with_bf16`]); `None`: every tensor as asked.
    pub(super) bf16: Option<fn(&str, &[usize]) -> bool>,
}

impl CheckedBackend {
    fn record(&self, name: &str, error: DiffusionError) -> candle_core::Error {
        let message = error.to_string();
        if let Ok(mut log) = self.log.lock() {
            log.failures.push((name.to_string(), error));
        }
        candle_core::Error::Msg(message)
    }

    /// A dry build records `error` and goes on with zeros of `shape`; a real load fails.
    fn problem(
        &self,
        name: &str,
        error: DiffusionError,
        shape: &Shape,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if self.data.is_some() {
            return Err(self.record(name, error));
        }
        if let Ok(mut log) = self.log.lock() {
            log.failures.push((name.to_string(), error));
        }
        zeros(shape, dtype, dev)
    }

    fn requested(&self, name: &str) {
        if let Ok(mut log) = self.log.lock() {
            log.requested.insert(name.to_string());
        }
    }

    /// Header-only checks of a tensor before its data is read (the same for the load and the
    /// dry build): its dtype is one we read, and an `I8` weight has a usable `{name}_scale`
    /// sibling (see [`super::tensor_read`]), which is returned and marked as requested.
    fn check_stored(
        &self,
        name: &str,
        file: &Path,
        at: &TensorLocation,
    ) -> Result<Option<&(PathBuf, TensorLocation)>, DiffusionError> {
        check_location(at).map_err(|e| bad(file, format!("tensor `{name}`: {e}")))?;
        if at.dtype != "I8" {
            return Ok(None);
        }
        let scale_name = format!("{name}_scale");
        self.requested(&scale_name);
        let Some(entry) = self.index.get(&scale_name) else {
            return Err(bad(
                file,
                format!(
                    "tensor `{name}` is stored as I8 but `{scale_name}`, its per-output-channel \
                     scale, is absent"
                ),
            ));
        };
        check_int8_scale(at, &entry.1).map_err(|e| {
            bad(
                &entry.0,
                format!("`{scale_name}`, the scale of I8 `{name}`: {e}"),
            )
        })?;
        Ok(Some(entry))
    }

    fn load(
        &self,
        name: &str,
        file: &Path,
        at: &TensorLocation,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let scale = match self.check_stored(name, file, at) {
            Ok(scale) => scale,
            Err(e) => return self.problem(name, e, &Shape::from_dims(&at.shape), dtype, dev),
        };
        let Some(data) = &self.data else {
            return zeros(&Shape::from_dims(&at.shape), dtype, dev);
        };
        let deltas = self.lora.get(name);
        let raw = match scale {
            Some((scale_file, scale_at)) => data
                .source(file)
                .and_then(|src| dequantize_int8(src, at, data.source(scale_file)?, scale_at, dev)),
            None => data.source(file).and_then(|src| read_tensor(src, at, dev)),
        };
        let merged = raw
            .and_then(|t| match deltas {
                Some(deltas) => merge(&t, deltas),
                None => Ok(t),
            })
            .map_err(|e| {
                let reason = format!("tensor `{name}` cannot be loaded as {dtype:?}: {e}");
                self.record(name, bad(file, reason))
            })?;
        // A LoRA whose product overflows (a huge scale) or holds NaN would otherwise surface
        // only as non-finite latents after the whole schedule: name it here.
        if let Some(deltas) = deltas
            && !crate::kernels::all_finite(&merged)?
        {
            let sources: Vec<&str> = deltas.iter().map(|d| d.source.as_str()).collect();
            let path = sources
                .first()
                .and_then(|s| s.split_once(": "))
                .map_or_else(|| file.to_path_buf(), |(p, _)| PathBuf::from(p));
            return Err(self.record(
                name,
                DiffusionError::InvalidLora {
                    path,
                    key: name.to_string(),
                    reason: format!(
                        "merging {} into `{name}` gives NaN/inf (a non-finite tensor, or a \
                             scale too large)",
                        sources.join(", ")
                    ),
                },
            ));
        }
        let dtype = match self.bf16 {
            Some(keep) if dtype == DType::F32 && keep(name, merged.dims()) => DType::BF16,
            _ => dtype,
        };
        if merged.dtype() == dtype {
            Ok(merged)
        } else {
            merged.to_dtype(dtype)
        }
    }
}

/// The [`SimpleBackend`] handed to candle: a shared handle on the checked backend.
pub(super) struct SharedBackend(pub(super) Arc<CheckedBackend>);

impl SimpleBackend for SharedBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let b = &self.0;
        b.requested(name);
        let Some((file, at)) = b.index.get(name) else {
            let error = DiffusionError::MissingTensor {
                path: b.path.clone(),
                tensor: name.to_string(),
                expected: s.dims().to_vec(),
            };
            return b.problem(name, error, &s, dtype, dev);
        };
        if at.shape.as_slice() != s.dims() {
            let error = DiffusionError::ShapeMismatch {
                path: file.clone(),
                tensor: name.to_string(),
                expected: s.dims().to_vec(),
                found: at.shape.clone(),
            };
            return b.problem(name, error, &s, dtype, dev);
        }
        b.load(name, file, at, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let b = &self.0;
        b.requested(name);
        let Some((file, at)) = b.index.get(name) else {
            let error = DiffusionError::MissingTensor {
                path: b.path.clone(),
                tensor: name.to_string(),
                expected: Vec::new(),
            };
            return Err(b.record(name, error));
        };
        b.load(name, file, at, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.index.contains_key(name)
    }
}
