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

use crate::loading::folder::{ComponentKind, PICKLE_EXTENSIONS, SUPPORTED_PIPELINES};

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
    Unusable { repo: String, reason: String },
    /// Listing or fetching failed (network, authentication, disk).
    #[error("{repo}: cannot fetch {file}: {reason}")]
    Fetch {
        repo: String,
        file: String,
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
    let json: serde_json::Value =
        serde_json::from_str(index_json).map_err(|e| unusable(format!("not JSON: {e}")))?;
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

/// A model repository: its file list, and a way to get one file onto the local disk.
pub trait RepoSource {
    /// The repo id (named in messages).
    fn repo_id(&self) -> &str;
    /// Every file in the repo, `/`-separated, relative to its root.
    fn list_files(&self) -> Result<Vec<String>, HubError>;
    /// Makes `file` available locally and returns its path, which must be
    /// `<root>/<file>` for one root shared by every file of the repo.
    fn fetch(&self, file: &str) -> Result<PathBuf, HubError>;
}

/// Fetches what [`plan_fetch`] selects (and the shards of sharded indexes) from `source` and
/// returns the local folder holding them. `on_file` is called before each fetch.
///
/// Before any weights are fetched, `model_index.json` is read and a pipeline class we cannot
/// run (SDXL, SD3, FLUX, ...) is refused.
///
/// # Errors
/// [`HubError`] from the plan or the source, or [`HubError::Unusable`] when the pipeline class
/// is not supported or the fetched files do not share one folder.
pub fn download(
    source: &dyn RepoSource,
    prefer_fp16: bool,
    on_file: &mut dyn FnMut(&str),
) -> Result<PathBuf, HubError> {
    let repo = source.repo_id().to_string();
    let unusable = |reason: String| HubError::Unusable {
        repo: repo.clone(),
        reason,
    };
    let plan = plan_fetch(&repo, &source.list_files()?, prefer_fp16)?;
    let mut root: Option<PathBuf> = None;
    let mut fetch = |file: &str| -> Result<PathBuf, HubError> {
        on_file(file);
        let local = source.fetch(file)?;
        let this_root = root_of(&local, file).ok_or_else(|| {
            unusable(format!(
                "{file} was fetched to {}, not under a folder mirroring the repo",
                local.display()
            ))
        })?;
        match &root {
            None => root = Some(this_root),
            Some(r) if *r == this_root => {}
            Some(r) => {
                return Err(unusable(format!(
                    "files landed in two folders ({} and {}): the repo changed during the \
                     download; run again",
                    r.display(),
                    this_root.display()
                )));
            }
        }
        Ok(local)
    };
    for file in &plan.files {
        let local = fetch(file)?;
        if file == "model_index.json" {
            let class = std::fs::read_to_string(&local)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|j| j.get("_class_name")?.as_str().map(String::from));
            match class {
                Some(c) if SUPPORTED_PIPELINES.contains(&c.as_str()) => {}
                Some(c) => {
                    return Err(unusable(format!(
                        "model_index.json names {c}; only {} are supported",
                        SUPPORTED_PIPELINES.join(", ")
                    )));
                }
                None => return Err(unusable("model_index.json has no `_class_name`".into())),
            }
        }
        if plan.sharded_indexes.contains(file) {
            let text = std::fs::read_to_string(&local).map_err(|e| HubError::Fetch {
                repo: repo.clone(),
                file: file.clone(),
                reason: e.to_string(),
            })?;
            for shard in shards_in_index(&repo, file, &text)? {
                fetch(&shard)?;
            }
        }
    }
    root.ok_or_else(|| unusable("nothing to fetch".into()))
}

/// `local` minus the `file` suffix (`/a/b/unet/config.json` - `unet/config.json` = `/a/b`).
fn root_of(local: &Path, file: &str) -> Option<PathBuf> {
    let mut root = local.to_path_buf();
    for _ in file.split('/') {
        if !root.pop() {
            return None;
        }
    }
    (root.join(file) == local).then_some(root)
}

/// A local folder standing in for a Hub repo: files are "fetched" by copying them into
/// `<cache>/<repo id with / replaced by -->`, as a download would.
#[derive(Debug, Clone)]
pub struct LocalRepo {
    /// The folder playing the repo.
    pub root: PathBuf,
    /// The id it is known by.
    pub id: String,
    /// Where fetched files are copied.
    pub cache: PathBuf,
}

impl LocalRepo {
    /// The folder the files are fetched into.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.cache.join(self.id.replace('/', "--"))
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

impl RepoSource for LocalRepo {
    fn repo_id(&self) -> &str {
        &self.id
    }

    fn list_files(&self) -> Result<Vec<String>, HubError> {
        let mut files = Vec::new();
        walk(&self.root, &self.root, &mut files).map_err(|e| HubError::Fetch {
            repo: self.id.clone(),
            file: "(file list)".into(),
            reason: e.to_string(),
        })?;
        files.sort();
        Ok(files)
    }

    fn fetch(&self, file: &str) -> Result<PathBuf, HubError> {
        let err = |e: std::io::Error| HubError::Fetch {
            repo: self.id.clone(),
            file: file.to_string(),
            reason: e.to_string(),
        };
        let target = self.snapshot_dir().join(file);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::copy(self.root.join(file), &target).map_err(err)?;
        Ok(target)
    }
}

/// A Hub model repo through `hf_hub`'s sync API: files land in its cache
/// (`<cache>/models--owner--name/snapshots/<sha>/<file>`), so a file already there is not
/// downloaded again, and a repo fetched once works offline (the file list then comes from the
/// cached snapshot). Honours `HF_HOME`, `HF_ENDPOINT` and `HF_TOKEN` (or the cache's `token`
/// file) for gated repos.
#[cfg(feature = "hf-hub")]
pub struct HfHubRepo {
    id: String,
    repo: hf_hub::api::sync::ApiRepo,
    cached: hf_hub::CacheRepo,
}

#[cfg(feature = "hf-hub")]
impl HfHubRepo {
    /// A handle on `spec` (`owner/name` or `owner/name@revision`), caching in
    /// `options.cache_dir` (default: `$HF_HOME/hub` or `~/.cache/huggingface/hub`).
    pub fn new(spec: &str, options: &HubOptions) -> Result<Self, HubError> {
        let mut builder = hf_hub::api::sync::ApiBuilder::from_env();
        let cache = match &options.cache_dir {
            Some(dir) => {
                builder = builder.with_cache_dir(dir.clone());
                hf_hub::Cache::new(dir.clone())
            }
            None => hf_hub::Cache::from_env(),
        };
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Ok(token) = std::env::var("HF_TOKEN")
            && !token.is_empty()
        {
            builder = builder.with_token(Some(token));
        }
        let api = builder.build().map_err(|e| HubError::Fetch {
            repo: spec.to_string(),
            file: "(client)".into(),
            reason: e.to_string(),
        })?;
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev.to_string()),
            None => (spec, "main".to_string()),
        };
        let repo = hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, revision);
        Ok(Self {
            id: spec.to_string(),
            cached: cache.repo(repo.clone()),
            repo: api.repo(repo),
        })
    }
}

#[cfg(feature = "hf-hub")]
impl RepoSource for HfHubRepo {
    fn repo_id(&self) -> &str {
        &self.id
    }

    fn list_files(&self) -> Result<Vec<String>, HubError> {
        let error = match self.repo.info() {
            Ok(info) => return Ok(info.siblings.into_iter().map(|s| s.rfilename).collect()),
            Err(e) => e.to_string(),
        };
        // Offline: the snapshot a previous download left in the cache, if any.
        let snapshot = self
            .cached
            .get("model_index.json")
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let mut files = Vec::new();
        match snapshot {
            Some(root) if walk(&root, &root, &mut files).is_ok() => {
                tracing::warn!(
                    "{}: cannot reach the Hub ({error}); using the cached snapshot {}",
                    self.id,
                    root.display()
                );
                files.sort();
                Ok(files)
            }
            _ => Err(HubError::Fetch {
                repo: self.id.clone(),
                file: "(file list)".into(),
                reason: error,
            }),
        }
    }

    fn fetch(&self, file: &str) -> Result<PathBuf, HubError> {
        self.repo.get(file).map_err(|e| HubError::Fetch {
            repo: self.id.clone(),
            file: file.to_string(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The file list of stabilityai/sd-turbo (as of 2024), abridged.
    fn sd_turbo() -> Vec<String> {
        files(&[
            ".gitattributes",
            "README.md",
            "model_index.json",
            "sd_turbo.safetensors",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors",
            "text_encoder/model.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.bin",
        ])
    }

    #[test]
    fn repo_ids_and_paths() {
        for id in [
            "stabilityai/sd-turbo",
            "runwayml/stable-diffusion-v1-5",
            "a/b@fp16",
        ] {
            assert!(looks_like_repo_id(id), "{id}");
        }
        for path in [
            "./models/x",
            "/abs/path",
            "models/x/y",
            "model",
            "../x",
            "a/.hidden",
            "a/b c",
            "C:\\models\\x",
            "a/manifest.json",
        ] {
            assert!(!looks_like_repo_id(path), "{path}");
        }
    }

    #[test]
    fn plan_selects_only_what_a_folder_needs() {
        let plan = plan_fetch("stabilityai/sd-turbo", &sd_turbo(), false).unwrap();
        assert_eq!(
            plan.files,
            files(&[
                "model_index.json",
                "text_encoder/config.json",
                "unet/config.json",
                "vae/config.json",
                "tokenizer/tokenizer_config.json",
                "tokenizer/special_tokens_map.json",
                "tokenizer/vocab.json",
                "tokenizer/merges.txt",
                "scheduler/scheduler_config.json",
                "text_encoder/model.safetensors",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
            ])
        );
        assert!(plan.sharded_indexes.is_empty());
        let fp16 = plan_fetch("stabilityai/sd-turbo", &sd_turbo(), true).unwrap();
        assert!(
            fp16.files
                .contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string())
        );
        assert!(
            !fp16
                .files
                .iter()
                .any(|f| f.ends_with(".bin") || f == "sd_turbo.safetensors")
        );
    }

    #[test]
    fn plan_refuses_pickles_and_single_files_and_fetches_sdxl() {
        let mut pickled = sd_turbo();
        pickled.retain(|f| !f.starts_with("vae/diffusion_pytorch_model") || f.ends_with(".bin"));
        let e = plan_fetch("x/y", &pickled, false).unwrap_err().to_string();
        assert!(
            e.contains("vae/diffusion_pytorch_model.bin") && e.contains("pickled"),
            "{e}"
        );
        // SDXL: text_encoder_2 and tokenizer_2 are needed and fetched.
        let mut sdxl = sd_turbo();
        sdxl.push("text_encoder_2/config.json".into());
        let e = plan_fetch("x/y", &sdxl, false).unwrap_err().to_string();
        assert!(e.contains("text_encoder_2"), "{e}");
        sdxl.push("text_encoder_2/model.safetensors".into());
        let e = plan_fetch("x/y", &sdxl, false).unwrap_err().to_string();
        assert!(e.contains("tokenizer_2/tokenizer.json"), "{e}");
        sdxl.extend(files(&[
            "tokenizer_2/tokenizer.json",
            "tokenizer_2/tokenizer_config.json",
        ]));
        let plan = plan_fetch("x/y", &sdxl, false).unwrap();
        for f in [
            "text_encoder_2/config.json",
            "text_encoder_2/model.safetensors",
            "tokenizer_2/tokenizer.json",
            "tokenizer_2/tokenizer_config.json",
        ] {
            assert!(plan.files.iter().any(|x| x == f), "{f} in {:?}", plan.files);
        }
        let single = files(&["README.md", "v1-5-pruned.ckpt"]);
        let e = plan_fetch("x/y", &single, false).unwrap_err().to_string();
        assert!(
            e.contains("v1-5-pruned.ckpt") && e.contains("model_index.json"),
            "{e}"
        );
    }

    #[test]
    fn sharded_indexes_expand_to_their_shards() {
        let mut list = sd_turbo();
        list.retain(|f| !f.starts_with("unet/diffusion_pytorch_model"));
        list.push("unet/diffusion_pytorch_model.safetensors.index.json".into());
        let plan = plan_fetch("x/y", &list, false).unwrap();
        assert_eq!(
            plan.sharded_indexes,
            ["unet/diffusion_pytorch_model.safetensors.index.json"]
        );
        let index = r#"{"weight_map": {"a": "diffusion_pytorch_model-00002-of-00002.safetensors",
            "b": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "c": "diffusion_pytorch_model-00001-of-00002.safetensors"}}"#;
        assert_eq!(
            shards_in_index("x/y", &plan.sharded_indexes[0], index).unwrap(),
            [
                "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                "unet/diffusion_pytorch_model-00002-of-00002.safetensors"
            ]
        );
        let evil = r#"{"weight_map": {"a": "../../etc/passwd"}}"#;
        assert!(shards_in_index("x/y", "unet/i.json", evil).is_err());
    }

    #[test]
    fn root_of_strips_the_repo_path() {
        assert_eq!(
            root_of(Path::new("/c/snap/unet/config.json"), "unet/config.json"),
            Some(PathBuf::from("/c/snap"))
        );
        assert_eq!(
            root_of(Path::new("/c/other.json"), "unet/config.json"),
            None
        );
    }

    /// The HF implementation, offline: a snapshot already in the cache is listed and fetched
    /// from there (the endpoint is a closed local port, so nothing can be downloaded).
    #[cfg(feature = "hf-hub")]
    #[test]
    fn hf_repo_works_offline_from_its_cache() {
        let cache = std::env::temp_dir().join(format!("bd_hub_cache_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let repo_dir = cache.join("models--tests--tiny-sd");
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), "0123abcd").unwrap();
        let snapshot = repo_dir.join("snapshots/0123abcd");
        let model = crate::loading::embedded::bundled_model_dir();
        let mut files = Vec::new();
        walk(&model, &model, &mut files).unwrap();
        for f in &files {
            let target = snapshot.join(f);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(model.join(f), target).unwrap();
        }
        let options = HubOptions {
            cache_dir: Some(cache.clone()),
            endpoint: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        let repo = HfHubRepo::new("tests/tiny-sd", &options).unwrap();
        let local = download(&repo, false, &mut |_| {}).unwrap();
        assert_eq!(local, snapshot);
        assert!(crate::loading::folder::ModelFolder::open(&local, &Default::default()).is_ok());
        // Not cached: the fetch error names the repo.
        let missing = HfHubRepo::new("tests/absent", &options).unwrap();
        let e = download(&missing, false, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tests/absent: cannot fetch"), "{e}");
        let _ = std::fs::remove_dir_all(&cache);
    }

    #[cfg(not(feature = "hf-hub"))]
    #[test]
    fn repo_ids_need_the_feature() {
        let e = resolve_model(
            "stabilityai/sd-turbo",
            Path::new("."),
            &HubOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, HubError::FeatureDisabled(_)));
        assert!(e.to_string().contains("--features hf-hub"), "{e}");
        // A path that is not a repo id stays a path (reported missing by the folder checks).
        assert_eq!(
            resolve_model("no/such/dir", Path::new("/base"), &HubOptions::default()).unwrap(),
            PathBuf::from("/base/no/such/dir")
        );
    }
}
