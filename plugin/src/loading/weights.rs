//! Safetensors-only weight loading with typed errors.
//!
//! Two layers:
//!
//! 1. [`read_header`] reads and checks the header of one `.safetensors` file *without* touching
//!    the tensor data: a file that is too short, a header that is not JSON, a dtype/shape that
//!    disagrees with its byte range, byte ranges that overlap, leave gaps, or run past the end of
//!    the file (a truncated download) all become [`DiffusionError::BadSafetensors`] naming the
//!    file and the reason. The same rules as the `safetensors` crate's
//!    `SafeTensors::read_metadata`, but with messages that name the offending tensor and byte
//!    counts.
//! 2. [`CheckedWeights`] opens validated files (reading each tensor, when a model asks for it,
//!    straight into its own buffer: no memory map, so a load's peak resident memory is the
//!    weights plus one tensor) and hands out a [`VarBuilder`] whose backend checks every tensor a
//!    model asks for against the header: an absent name becomes
//!    [`DiffusionError::MissingTensor`], a wrong shape [`DiffusionError::ShapeMismatch`] (both
//!    naming the file, the full dotted tensor name and the shapes). candle's errors are strings,
//!    so the typed error is recorded on the side and [`CheckedWeights::build`] returns it when
//!    model construction fails.
//!
//! Pickled checkpoints (`.bin`, `.ckpt`, `.pt`, `.pth`) are never opened here: see
//! [`crate::loading::folder`], which refuses them with [`DiffusionError::PickleWeights`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{DiffusionError, Result};

/// candle-nn's var builder, re-exported for code that builds models from [`CheckedWeights`].
pub use candle_nn::VarBuilder;

/// The checking loader (in `model_loading_utils.rs`), re-exported where it was first.
pub use super::model_loading_utils::CheckedWeights;

/// The largest safetensors header we read (the `safetensors` crate's own limit, 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// The dtype as spelled in the header (`F32`, `F16`, `BF16`, ...).
    pub dtype: String,
    /// The shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// `[start, end)` byte range inside the data section (after the header).
    pub data_offsets: (usize, usize),
}

/// The validated header of one `.safetensors` file.
#[derive(Debug, Clone)]
pub struct SafetensorsHeader {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub file_len: u64,
    /// Length of the JSON header (the 8-byte length prefix not included).
    pub header_len: u64,
    /// blake3 of the raw header bytes (names, dtypes, shapes, offsets): what model identities
    /// hash instead of gigabytes of weights.
    pub header_digest: [u8; 32],
    /// Every tensor, by name.
    pub tensors: BTreeMap<String, TensorMeta>,
    /// The header's `__metadata__` string map (e.g. PEFT's `lora_adapter_metadata`).
    pub metadata: BTreeMap<String, String>,
}

pub(crate) fn bad(path: &Path, reason: impl Into<String>) -> DiffusionError {
    DiffusionError::BadSafetensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads and validates the header of the safetensors file `path` without reading tensor data.
///
/// Checks, in order: the file size is at most `max_file_bytes`
/// ([`DiffusionError::FileTooLarge`]); the 8-byte little-endian header length and the header
/// fit in the file and the header is at most [`MAX_HEADER_BYTES`]; the header is UTF-8 JSON
/// mapping names to `{dtype, shape, data_offsets}` (plus an optional `__metadata__` map of
/// strings); each tensor's byte range has exactly `prod(shape) * sizeof(dtype)` bytes; the
/// ranges, sorted, start at 0 and neither overlap nor leave gaps; and the last one ends exactly
/// at the end of the file. These are the rules of the `safetensors` crate
/// (`SafeTensors::read_metadata`), which diffusers/transformers also enforce when loading.
///
/// # Errors
/// [`DiffusionError::Io`] if the file cannot be read, [`DiffusionError::FileTooLarge`], or
/// [`DiffusionError::BadSafetensors`] naming the file and what is wrong (e.g.
/// `truncated: tensor `x` ends at byte 123 of the data section but only 61 bytes follow the
/// header`). Never panics on malformed input.
pub fn read_header(path: &Path, max_file_bytes: u64) -> Result<SafetensorsHeader> {
    // A compiled-in file (`<embedded>/...`, see `model_files`) is read from memory.
    let (mut file, file_len): (Box<dyn Read>, u64) =
        match crate::loading::model_files::embedded_file(path) {
            Some(bytes) => {
                let bytes = bytes.ok_or_else(|| {
                    DiffusionError::io(path, std::io::Error::from(std::io::ErrorKind::NotFound))
                })?;
                (Box::new(bytes), bytes.len() as u64)
            }
            None => {
                let file = File::open(path).map_err(|e| DiffusionError::io(path, e))?;
                let len = file
                    .metadata()
                    .map_err(|e| DiffusionError::io(path, e))?
                    .len();
                (Box::new(file), len)
            }
        };
    if file_len > max_file_bytes {
        return Err(DiffusionError::FileTooLarge {
            path: path.to_path_buf(),
            size: file_len,
            limit: max_file_bytes,
        });
    }
    if file_len < 8 {
        return Err(bad(
            path,
            format!("the file is {file_len} bytes, too short for the 8-byte header length prefix"),
        ));
    }
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)
        .map_err(|e| DiffusionError::io(path, e))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(
            path,
            format!("header length {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    if header_len > file_len - 8 {
        return Err(bad(
            path,
            format!(
                "truncated: the header claims {header_len} bytes but the file has only {} after \
                 the length prefix",
                file_len - 8
            ),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| DiffusionError::io(path, e))?;
    let header_digest = *blake3::hash(&header).as_bytes();
    let text =
        std::str::from_utf8(&header).map_err(|e| bad(path, format!("header is not UTF-8: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| bad(path, format!("header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = json else {
        return Err(bad(path, "header is not a JSON object"));
    };

    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, value) in map {
        if name == "__metadata__" {
            let entries = value.as_object().and_then(|m| {
                m.iter()
                    .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect::<Option<BTreeMap<_, _>>>()
            });
            let Some(entries) = entries else {
                return Err(bad(path, "`__metadata__` must be a map of strings"));
            };
            metadata = entries;
            continue;
        }
        let info: safetensors::tensor::TensorInfo = serde_json::from_value(value)
            .map_err(|e| bad(path, format!("tensor `{name}`: invalid entry: {e}")))?;
        let elements = info
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let bits = elements.and_then(|n| n.checked_mul(info.dtype.bitsize()));
        let Some(bits) = bits else {
            return Err(bad(
                path,
                format!("tensor `{name}`: shape {:?} overflows", info.shape),
            ));
        };
        if bits % 8 != 0 {
            return Err(bad(
                path,
                format!("tensor `{name}`: data is not a whole number of bytes"),
            ));
        }
        let (start, end) = info.data_offsets;
        if end < start || end - start != bits / 8 {
            return Err(bad(
                path,
                format!(
                    "tensor `{name}`: dtype {:?} and shape {:?} need {} bytes but data_offsets \
                     [{start}, {end}] say otherwise",
                    info.dtype,
                    info.shape,
                    bits / 8
                ),
            ));
        }
        let meta = TensorMeta {
            dtype: format!("{:?}", info.dtype),
            shape: info.shape,
            data_offsets: info.data_offsets,
        };
        tensors.insert(name, meta);
    }

    // Byte ranges: sorted, contiguous from 0, no overlap, ending exactly at the end of the file.
    let mut ranges: Vec<(&str, (usize, usize))> = tensors
        .iter()
        .map(|(n, m)| (n.as_str(), m.data_offsets))
        .collect();
    ranges.sort_by_key(|&(_, r)| r);
    let mut end = 0usize;
    let mut previous: Option<&str> = None;
    for &(name, (s, e)) in &ranges {
        if s < end {
            let other = previous.unwrap_or("?");
            return Err(bad(
                path,
                format!(
                    "byte ranges overlap: tensor `{name}` [{s}, {e}] starts before tensor \
                     `{other}` ends at {end}"
                ),
            ));
        }
        if s > end {
            return Err(bad(
                path,
                format!(
                    "bytes [{end}, {s}) of the data section belong to no tensor (before `{name}`)"
                ),
            ));
        }
        end = e;
        previous = Some(name);
    }
    let data_len = file_len - 8 - header_len;
    let end = end as u64;
    if end > data_len {
        return Err(bad(
            path,
            format!(
                "truncated: tensor `{}` ends at byte {end} of the data section but only \
                 {data_len} bytes follow the header (file is {file_len} bytes, expected {})",
                previous.unwrap_or("?"),
                8 + header_len + end
            ),
        ));
    }
    if end < data_len {
        return Err(bad(
            path,
            format!(
                "{} unexpected bytes after the last tensor (the data section should end at the end \
                 of the file)",
                data_len - end
            ),
        ));
    }
    Ok(SafetensorsHeader {
        path: path.to_path_buf(),
        file_len,
        header_len,
        header_digest,
        tensors,
        metadata,
    })
}

/// The safetensors file(s) holding one model component's weights.
#[derive(Debug, Clone)]
pub struct WeightFiles {
    /// The single `.safetensors` file, or the `*.safetensors.index.json` of a sharded checkpoint.
    /// Errors about a tensor that is absent name this path.
    pub path: PathBuf,
    /// One validated header per file (one entry unless sharded), in shard order.
    pub shards: Vec<SafetensorsHeader>,
    /// True when this is the `fp16` variant (`*.fp16.safetensors`), converted to f32 on load.
    pub fp16_variant: bool,
}

impl WeightFiles {
    /// Total size of the weight files in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.file_len).sum()
    }

    /// The file holding tensor `name` and its header entry.
    pub fn tensor(&self, name: &str) -> Option<(&Path, &TensorMeta)> {
        self.shards
            .iter()
            .rev() // the last file holding a name wins (as in candle's MmapedSafetensors::multi)
            .find_map(|h| h.tensors.get(name).map(|m| (h.path.as_path(), m)))
    }

    /// Number of tensors over all files.
    pub fn tensor_count(&self) -> usize {
        self.shards.iter().map(|h| h.tensors.len()).sum()
    }
}
