//! The one JSON config reader, after diffusers' `configuration_utils.py` (`ConfigMixin.load_config`):
//! a config file is read once into a [`JsonConfig`] (size-bounded, Python's non-finite numbers
//! accepted) whose typed accessors name the file and the field in every error. Model configs
//! (`models/`), the scheduler config (`schedulers/config.rs`), the folder checks (`loading/`),
//! the recommended settings (`request/`) and `texgen inspect` all read through it.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::config_bounds::MAX_LAYERS_PER_BLOCK;
use crate::error::DiffusionError;

/// Largest config file read (bytes); larger ones are refused before reading.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024 * 1024;

/// A parsed JSON config that names the file and the field in every error: the one reader of
/// every `config.json`, `model_index.json`, `scheduler_config.json` and `bevy_diffusion.json`
/// in this crate (models, schedulers, loading, inspect).
#[derive(Debug, Clone)]
pub struct JsonConfig {
    /// The file, named in every error.
    pub path: PathBuf,
    map: Map<String, Value>,
}

impl JsonConfig {
    /// Reads and parses `path`, a JSON object as diffusers and transformers write configs
    /// (`config.json`, `model_index.json`, `scheduler_config.json`, `bevy_diffusion.json`).
    /// Python's bare `NaN` / `Infinity` / `-Infinity` are accepted ([`parse_lenient_json`]).
    ///
    /// Errors: [`DiffusionError::Io`] if it cannot be read; [`DiffusionError::InvalidConfig`]
    /// (field `(file)`) if it is over [`MAX_CONFIG_BYTES`], not JSON, or not an object.
    pub fn read(path: &Path) -> crate::Result<Self> {
        let len =
            crate::loading::model_files::len(path).map_err(|e| DiffusionError::io(path, e))?;
        if len > MAX_CONFIG_BYTES {
            return Err(DiffusionError::config(
                path,
                "(file)",
                format!("file is {len} bytes, too large for a config"),
            ));
        }
        let text = crate::loading::model_files::read_to_string(path)
            .map_err(|e| DiffusionError::io(path, e))?;
        Self::parse_str(&text, path)
    }

    /// [`Self::read`] for a file the folder must have: [`DiffusionError::MissingFile`] naming
    /// `what` when it does not exist.
    pub fn read_required(path: &Path, what: &str) -> crate::Result<Self> {
        if !crate::loading::model_files::is_file(path) {
            return Err(DiffusionError::MissingFile {
                path: path.to_path_buf(),
                what: what.to_string(),
            });
        }
        Self::read(path)
    }

    /// [`Self::read`] where a missing file means "nothing there": `Ok(None)`.
    pub fn read_optional(path: &Path) -> crate::Result<Option<Self>> {
        match crate::loading::model_files::len(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => Self::read(path).map(Some),
        }
    }

    /// Parses the text of a config; `path` is only named in errors. Errors as [`Self::read`].
    pub fn parse_str(text: &str, path: &Path) -> crate::Result<Self> {
        let value: Value = parse_lenient_json(text)
            .map_err(|e| DiffusionError::config(path, "(file)", format!("not valid JSON: {e}")))?;
        Self::from_value(value, path)
    }

    /// Wraps an already parsed JSON object; `path` is only named in errors.
    /// Errors: [`DiffusionError::InvalidConfig`] if `value` is not an object.
    pub fn from_value(value: Value, path: &Path) -> crate::Result<Self> {
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_path_buf(),
                map,
            }),
            other => Err(DiffusionError::config(
                path,
                "(file)",
                format!("expected a JSON object, found {other}"),
            )),
        }
    }

    /// The whole object.
    pub fn map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The whole object as a JSON value.
    pub fn to_value(&self) -> Value {
        Value::Object(self.map.clone())
    }

    /// The object deserialized as `T` (e.g. a `#[serde(deny_unknown_fields)]` struct).
    /// Errors: [`DiffusionError::InvalidConfig`] naming the file and serde's reason.
    pub fn deserialize<T: DeserializeOwned>(&self) -> crate::Result<T> {
        serde_json::from_value(self.to_value())
            .map_err(|e| DiffusionError::config(&self.path, "(file)", e.to_string()))
    }

    /// `_class_name` (diffusers' class of the component or pipeline), when a string.
    pub fn class_name(&self) -> Option<&str> {
        self.raw("_class_name").and_then(Value::as_str)
    }

    /// `key` as an unsigned integer, when it is one (no error otherwise: for cross-checks
    /// between configs, which the model's own parse reports).
    pub fn u64_field(&self, key: &str) -> Option<u64> {
        self.raw(key).and_then(Value::as_u64)
    }

    /// The raw value of `key` (`None` when absent or `null`).
    pub fn raw(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// `value` (of `key`) parsed as `T`; errors name the file, `key` and the value.
    pub fn parse<T: DeserializeOwned>(&self, key: &str, value: &Value) -> crate::Result<T> {
        serde_json::from_value(value.clone()).map_err(|e| {
            DiffusionError::config(
                &self.path,
                key,
                format!("cannot use {value}: {e} ({})", std::any::type_name::<T>()),
            )
        })
    }

    /// `key` parsed as `T`, or `default` when absent or `null`.
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> crate::Result<T> {
        Ok(self.opt(key)?.unwrap_or(default))
    }

    /// `key` parsed as `T`; `None` when absent or `null`.
    pub fn opt<T: DeserializeOwned>(&self, key: &str) -> crate::Result<Option<T>> {
        self.raw(key).map(|v| self.parse(key, v)).transpose()
    }

    /// `key` as `T`, a present `null` included (`Option<T>` reads it as `None`); `default` when
    /// absent.
    ///
    /// Errors: [`DiffusionError::InvalidConfig`] naming the file, `key`, serde's reason and the
    /// value found, or `missing` when `key` is absent and there is no default.
    pub fn field<T: DeserializeOwned>(&self, key: &str, default: Option<T>) -> crate::Result<T> {
        match (self.map.get(key), default) {
            (Some(v), _) => {
                T::deserialize(v).map_err(|e| self.invalid(key, format!("{e} (found {v})")))
            }
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.invalid(key, "missing")),
        }
    }

    /// An `InvalidConfig` error naming `key` and `reason`.
    pub fn invalid(&self, key: &str, reason: impl Into<String>) -> DiffusionError {
        DiffusionError::config(&self.path, key, reason)
    }

    /// An `UnsupportedConfig` error naming `key` and its value.
    pub fn unsupported(&self, key: &str, value: &Value) -> DiffusionError {
        DiffusionError::UnsupportedConfig {
            path: self.path.clone(),
            field: key.to_string(),
            value: value.to_string(),
        }
    }

    /// Refuses `key` unless it is absent or `is_default(value)` holds (`null` counts as absent
    /// when `null_ok`).
    pub fn refuse_unless(
        &self,
        key: &str,
        null_ok: bool,
        is_default: impl Fn(&Value) -> bool,
    ) -> crate::Result<()> {
        match self.map.get(key) {
            None => Ok(()),
            Some(Value::Null) if null_ok => Ok(()),
            Some(v) if is_default(v) => Ok(()),
            Some(v) => Err(self.unsupported(key, v)),
        }
    }

    /// [`Self::per_block`] for a count (`layers_per_block`, `transformer_layers_per_block`): an
    /// int or a per-block list, each entry at most [`MAX_LAYERS_PER_BLOCK`], checked before
    /// anything is built from it.
    pub fn per_block_count(
        &self,
        key: &str,
        n: usize,
        default: usize,
    ) -> crate::Result<Vec<usize>> {
        let counts: Vec<usize> = self.per_block(key, n, default)?;
        if let Some(c) = counts.iter().find(|&&c| c > MAX_LAYERS_PER_BLOCK) {
            let reason =
                format!("{c} layers in one block is out of range (0..={MAX_LAYERS_PER_BLOCK})");
            return Err(DiffusionError::config(&self.path, key, reason));
        }
        Ok(counts)
    }

    /// `key` as one value per block: a scalar is repeated `n` times, a list must have `n` entries.
    pub fn per_block<T: DeserializeOwned + Clone>(
        &self,
        key: &str,
        n: usize,
        default: T,
    ) -> crate::Result<Vec<T>> {
        match self.raw(key) {
            None => Ok(vec![default; n]),
            Some(Value::Array(items)) => {
                if items.len() != n {
                    return Err(DiffusionError::config(
                        &self.path,
                        key,
                        format!("has {} entries but there are {n} down blocks", items.len()),
                    ));
                }
                items.iter().map(|v| self.parse(key, v)).collect()
            }
            Some(v) => Ok(vec![self.parse(key, v)?; n]),
        }
    }
}

/// Parses JSON as Python's `json.dumps` writes it: the bare tokens `NaN`, `Infinity` and
/// `-Infinity` (outside strings) become the JSON strings `"NaN"`, `"Infinity"`, `"-Infinity"`,
/// which the scheduler config reads as numbers (diffusers' DPM-Solver config stores
/// `"lambda_min_clipped": -Infinity`). Everything else is strict JSON.
///
/// Errors: serde_json's error for text that is not JSON.
pub fn parse_lenient_json(text: &str) -> serde_json::Result<Value> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if c == '\\' {
                let escaped: String = rest.chars().take(2).collect();
                out.push_str(&escaped);
                rest = &rest[escaped.len()..];
                continue;
            }
            if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    serde_json::from_str(&out)
}
