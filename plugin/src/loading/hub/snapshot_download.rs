//! Fetching a planned file set, after `huggingface_hub.snapshot_download`: the [`RepoSource`]
//! trait, a local mirror ([`LocalRepo`], for tests and offline copies) and, with the `hf-hub`
//! feature, the Hub itself (`HfHubRepo`).

use super::*;

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
/// run as a text-to-image model (SD3, FLUX, ...) is refused; the x4 upscaler's refusal says how
/// to use it instead.
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
            let class = crate::configuration_utils::JsonConfig::read(&local)
                .ok()
                .and_then(|j| j.class_name().map(String::from));
            match class {
                Some(c) if SUPPORTED_PIPELINES.contains(&c.as_str()) => {}
                Some(c) if c == UPSCALER_PIPELINE => {
                    return Err(unusable(format!(
                        "model_index.json names {c}, an x4 upscaler, not a text-to-image \
                         model: {UPSCALER_USE}"
                    )));
                }
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
pub(super) fn root_of(local: &Path, file: &str) -> Option<PathBuf> {
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

pub(super) fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
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
