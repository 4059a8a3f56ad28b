//! Where `--model` points: a local folder, or (with the opt-in `hf-hub` cargo feature) a
//! Hugging Face Hub repo id such as `stabilityai/sd-turbo`, of which only the files a
//! diffusers-layout folder needs are downloaded.
//!
//! The download is split so that everything but the network is testable offline:
//!
//! - [`plan_fetch`] (pure): given a repo's file list, which files to fetch: `model_index.json`,
//!   each component's `config.json` and safetensors weights (chosen in the same order as
//!   [`crate::loading::folder`] looks for them: full precision first, `fp16` when it is the only one
//!   or preferred; never `.bin`/`.ckpt`/`.pt`/`.pth`), the tokenizer files and the scheduler
//!   config; for SDXL (a repo with `text_encoder_2/` or `tokenizer_2/`) also
//!   `text_encoder_2/` and `tokenizer_2/`. [`shards_in_index`] (pure) expands a sharded checkpoint's index.
//! - [`RepoSource`]: list a repo's files and fetch one to a local path. [`LocalRepo`] serves a
//!   local folder (a stand-in for a repo, used by the tests); `HfHubRepo` (feature `hf-hub`) is
//!   `hf_hub`'s sync API with its on-disk cache.
//! - [`download`]: runs a plan against a source and returns the local folder holding the files.

use std::path::{Path, PathBuf};

use crate::loading::folder::{
    ComponentKind, PICKLE_EXTENSIONS, SUPPORTED_PIPELINES, UPSCALER_PIPELINE, UPSCALER_USE,
};

mod snapshot_download;
pub use snapshot_download::*;

/// Why a model could not be resolved or downloaded.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// `--model` names no folder but looks like a repo id, and the feature is off.
    #[error(
        "`{0}` is not a model folder; it looks like a Hugging Face Hub repo id, but this texgen \
         was built without downloads: rebuild with `--features hf-hub` (e.g. `cargo run -p \
         bevy_diffusion --features hf-hub --bin texgen -- ...`), or download the diffusers folder \
         yourself and pass its path"
    )]
    FeatureDisabled(String),
    /// The repo lacks something a diffusers Stable Diffusion folder needs, or has only pickles.
    #[error("{repo}: {reason}")]
    Unusable {
        /// The repo id (`owner/name`).
        repo: String,
        /// Why, in words.
        reason: String,
    },
    /// Listing or fetching failed (network, authentication, disk).
    #[error("{repo}: cannot fetch {file}: {reason}")]
    Fetch {
        /// The repo id (`owner/name`).
        repo: String,
        /// The file in the repo.
        file: String,
        /// Why, in words.
        reason: String,
    },
}

/// True when `spec` has the shape of a Hub repo id: `owner/name` (optionally `@revision`),
/// each part of ASCII letters, digits, `-`, `_` and `.`, not starting with `.` or `-`.
/// (`./models/x`, `/abs/path`, `models/x/y` and `x` are not.)
pub fn looks_like_repo_id(spec: &str) -> bool {
    let id = spec.split_once('@').map_or(spec, |(id, _)| id);
    let Some((owner, name)) = id.split_once('/') else {
        return false;
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['.', '-'])
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    part_ok(owner) && part_ok(name) && !name.ends_with(".json")
}

/// Where downloads go.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The Hub cache folder (`hf_hub`'s layout: `models--owner--name/snapshots/<sha>/...`);
    /// `None` = `$HF_HOME/hub` or `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Fetch the `fp16` weight variants when the repo has them (half the download; converted to
    /// f32 on load).
    pub prefer_fp16: bool,
    /// The Hub's address; `None` = `$HF_ENDPOINT` or `https://huggingface.co`.
    pub endpoint: Option<String>,
}

/// Resolves a `--model` argument (or a manifest's `model`) to a local folder: an existing path
/// as is (relative ones against `base_dir`); a repo id downloaded with the `hf-hub` feature;
/// anything else as a path (which the folder checks will then report as missing).
///
/// # Errors
/// [`HubError::FeatureDisabled`] for a repo id without the feature; download errors with it.
pub fn resolve_model(
    spec: &str,
    base_dir: &Path,
    options: &HubOptions,
) -> Result<PathBuf, HubError> {
    let path = Path::new(spec);
    let local = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    };
    if local.exists() || !looks_like_repo_id(spec) {
        return Ok(local);
    }
    fetch_repo(spec, options)
}

#[cfg(not(feature = "hf-hub"))]
fn fetch_repo(spec: &str, _: &HubOptions) -> Result<PathBuf, HubError> {
    Err(HubError::FeatureDisabled(spec.to_string()))
}

#[cfg(feature = "hf-hub")]
fn fetch_repo(spec: &str, options: &HubOptions) -> Result<PathBuf, HubError> {
    let repo = HfHubRepo::new(spec, options)?;
    download(&repo, options.prefer_fp16, &mut |file| {
        eprintln!("fetching {spec}/{file}")
    })
}

/// The files to fetch for a diffusers Stable Diffusion folder, and the sharded indexes whose
/// shards must be added once the index is fetched ([`shards_in_index`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPlan {
    /// Repo-relative paths (`/`-separated): small files first, weights last.
    pub files: Vec<String>,
    /// Repo-relative paths of `*.safetensors.index*.json` files among `files`.
    pub sharded_indexes: Vec<String>,
}

/// Tokenizer files fetched when present (`tokenizer.json`, or `vocab.json` + `merges.txt`, is
/// required).
const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
];

fn has_pickle_extension(file: &str) -> bool {
    Path::new(file)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decides which of a repo's files (`repo_files`, `/`-separated paths as the Hub lists them) to
/// fetch; see the module docs. `repo` is only named in errors.
///
/// # Errors
/// [`HubError::Unusable`] when a required file is absent (no `model_index.json`, a component
/// without config or safetensors weights (naming the pickle when that is all there is), no
/// tokenizer, no scheduler config; for SDXL the same for `text_encoder_2/` and `tokenizer_2/`).
pub fn plan_fetch(
    repo: &str,
    repo_files: &[String],
    prefer_fp16: bool,
) -> Result<FetchPlan, HubError> {
    let unusable = |reason: String| HubError::Unusable {
        repo: repo.to_string(),
        reason,
    };
    let has = |f: &str| repo_files.iter().any(|x| x == f);
    if !has("model_index.json") {
        let single = repo_files
            .iter()
            .find(|f| !f.contains('/') && (f.ends_with(".safetensors") || has_pickle_extension(f)));
        return Err(unusable(match single {
            Some(f) => format!(
                "no model_index.json: not a diffusers pipeline (only a single-file checkpoint, \
                 {f}); convert it with diffusers' `from_single_file(...).save_pretrained(...)`"
            ),
            None => "no model_index.json: not a diffusers pipeline repo".into(),
        }));
    }
    // SDXL: a second text encoder and tokenizer.
    let sdxl = repo_files
        .iter()
        .any(|f| f.starts_with("text_encoder_2/") || f.starts_with("tokenizer_2/"));
    let mut files = vec!["model_index.json".to_string()];
    let mut weights = Vec::new();
    let mut sharded_indexes = Vec::new();
    for &kind in ComponentKind::for_folder(sdxl) {
        let dir = kind.dir_name();
        let config = format!("{dir}/config.json");
        if !has(&config) {
            return Err(unusable(format!("{config} is missing")));
        }
        files.push(config);
        let stem = kind.weights_stem();
        let plain = [
            format!("{dir}/{stem}.safetensors"),
            format!("{dir}/{stem}.safetensors.index.json"),
        ];
        let fp16 = [
            format!("{dir}/{stem}.fp16.safetensors"),
            format!("{dir}/{stem}.safetensors.index.fp16.json"),
            format!("{dir}/{stem}.fp16.safetensors.index.json"),
        ];
        let order: Vec<&String> = if prefer_fp16 {
            fp16.iter().chain(plain.iter()).collect()
        } else {
            plain.iter().chain(fp16.iter()).collect()
        };
        match order.into_iter().find(|f| has(f)) {
            Some(f) => {
                if f.ends_with(".json") {
                    sharded_indexes.push(f.clone());
                }
                weights.push(f.clone());
            }
            None => {
                let pickle = repo_files
                    .iter()
                    .find(|f| f.starts_with(&format!("{dir}/")) && has_pickle_extension(f));
                return Err(unusable(match pickle {
                    Some(p) => format!(
                        "{dir} has only pickled weights ({p}), which are never downloaded or \
                         loaded; use a repo with safetensors weights"
                    ),
                    None => format!("{dir} has no safetensors weights ({stem}.safetensors)"),
                }));
            }
        }
    }
    for dir in if sdxl {
        &["tokenizer", "tokenizer_2"][..]
    } else {
        &["tokenizer"][..]
    } {
        let tokenizer: Vec<String> = TOKENIZER_FILES
            .iter()
            .map(|f| format!("{dir}/{f}"))
            .filter(|f| has(f))
            .collect();
        let usable_tokenizer = has(&format!("{dir}/tokenizer.json"))
            || (has(&format!("{dir}/vocab.json")) && has(&format!("{dir}/merges.txt")));
        if !usable_tokenizer {
            return Err(unusable(format!(
                "no tokenizer ({dir}/tokenizer.json, or vocab.json + merges.txt)"
            )));
        }
        files.extend(tokenizer);
    }
    if !has("scheduler/scheduler_config.json") {
        return Err(unusable(
            "scheduler/scheduler_config.json is missing".into(),
        ));
    }
    files.push("scheduler/scheduler_config.json".into());
    files.extend(weights);
    debug_assert!(files.iter().all(|f| !has_pickle_extension(f)));
    Ok(FetchPlan {
        files,
        sharded_indexes,
    })
}

/// The shard files (repo-relative) a sharded checkpoint's index lists, each once, sorted.
/// `index_file` is the index's repo-relative path; shards live in its folder.
///
/// # Errors
/// [`HubError::Unusable`] if the index is not JSON with a `weight_map`, or names a file that is
/// not a plain `*.safetensors` name in its folder.
pub fn shards_in_index(
    repo: &str,
    index_file: &str,
    index_json: &str,
) -> Result<Vec<String>, HubError> {
    let unusable = |reason: String| HubError::Unusable {
        repo: repo.to_string(),
        reason: format!("{index_file}: {reason}"),
    };
    let json = crate::configuration_utils::parse_lenient_json(index_json)
        .map_err(|e| unusable(format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| unusable("no `weight_map` object".into()))?;
    let dir = index_file.rsplit_once('/').map_or("", |(d, _)| d);
    let mut shards: Vec<String> = Vec::new();
    for file in map.values() {
        let name = file.as_str().unwrap_or_default();
        let plain = !name.is_empty()
            && !name.contains(['/', '\\'])
            && name != ".."
            && name.ends_with(".safetensors");
        if !plain {
            return Err(unusable(format!(
                "lists {file}, which is not a .safetensors file name in its folder"
            )));
        }
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        if !shards.contains(&path) {
            shards.push(path);
        }
    }
    shards.sort();
    Ok(shards)
}

#[cfg(test)]
mod tests;
