//! Prompt files as assets: `asset_server.load("wall.texgen.ron")` yields a `Handle<Image>` that
//! fills in when the request in the file has been generated.
//!
//! A `*.texgen.ron` file holds one [`GenerationRequest`] in RON, the format of a `texgen bake`
//! manifest item (see [`crate::request::ron::parse_request_ron`]), e.g.
//!
//! ```ron
//! (prompt: "mossy cobblestone", seed: 7, tiling: xy, num_inference_steps: 12)
//! ```
//!
//! An img2img (or inpainting) file names its init image (and mask) relative to itself (`init_image: Path("rock.png")` is the
//! asset `rock.png` beside the prompt file, read through the same asset source). Absolute paths and
//! paths that leave the asset folder (`../../x.png`) are refused: prompt files may come from mods.
//!
//! [`TexgenLoader`] parses the file and returns a placeholder image at once (a malformed file is a
//! load error naming the file, line, column and field); it hands the request to
//! [`submit_texgen_assets`], which queues it once the placeholder is in `Assets<Image>` and points
//! the result at the same handle. With Bevy's file watcher (`file_watcher` feature), editing the
//! file reloads it: the old request is cancelled and the new one fills the same handle.

use std::collections::HashMap;

use bevy::asset::io::Reader;
use bevy::asset::{AssetLoader, AssetPath, AssetServer, Handle, LoadContext};
use bevy::ecs::prelude::{Res, ResMut, Resource};
use bevy::image::Image;
use bevy::reflect::TypePath;
use crossbeam_channel::{Receiver, Sender};

use super::images::placeholder;
use super::runtime::DiffusionRuntime;
use crate::request::ron::{RonError, parse_request_ron};
use crate::request::{GenerationRequest, InitImage};
use crate::runtime::worker::{RequestId, SubmitError};

/// Why a `*.texgen.ron` file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TexgenLoadError {
    /// A size or count of the request is out of range (checked before the placeholder is
    /// allocated).
    #[error("{file}: {source}")]
    InvalidRequest {
        /// The prompt file.
        file: String,
        /// What is out of range.
        #[source]
        source: SubmitError,
    },
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The asset path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid request (names the line, column and field).
    #[error(transparent)]
    Parse(#[from] RonError),
    /// The request's `init_image` or inpainting `mask` (resolved beside the prompt file, in the
    /// same asset source) is outside the asset folder, or could not be read or decoded.
    #[error("{file}: {field} {init_image}: {reason}")]
    InitImage {
        /// The prompt file.
        file: String,
        /// `init_image` or `mask`.
        field: &'static str,
        /// The init image as written in the file.
        init_image: String,
        /// Why it could not be used (missing file, not an image...).
        reason: String,
    },
}

/// The [`AssetLoader`] of `*.texgen.ron` prompt files (registered by the plugin).
#[derive(TypePath)]
pub struct TexgenLoader {
    requests: Sender<(AssetPath<'static>, GenerationRequest)>,
    placeholder_size: (u32, u32),
}

impl AssetLoader for TexgenLoader {
    type Asset = Image;
    type Settings = ();
    type Error = TexgenLoadError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        load_context: &mut LoadContext<'_>,
    ) -> Result<Image, TexgenLoadError> {
        let path = load_context.path().clone_owned();
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .await
            .map_err(|source| TexgenLoadError::Io {
                path: path.to_string(),
                source,
            })?;
        let text = String::from_utf8_lossy(&bytes);
        let mut request = parse_request_ron(&text, path.path())?;
        // The init image is an asset beside the prompt file, read through the asset source (so it
        // works from any working folder, from embedded/processed sources, and reloads with the
        // file); its pixels travel with the request. A prompt file may come from a mod: absolute
        // paths and paths that climb out of the asset folder are refused, not read from disk.
        for (field, image) in [
            ("init_image", &mut request.init_image),
            ("mask", &mut request.mask),
        ] {
            let Some(InitImage::Path(p)) = &*image else {
                continue;
            };
            let asset = path.resolve_embed(&AssetPath::from_path(p));
            let fail = |reason: String| TexgenLoadError::InitImage {
                file: path.to_string(),
                field,
                init_image: p.display().to_string(),
                reason,
            };
            if p.has_root() || asset.path().starts_with("..") {
                return Err(fail(
                    "must be an asset path relative to the prompt file, inside the asset folder"
                        .into(),
                ));
            }
            let bytes = load_context
                .read_asset_bytes(asset.clone())
                .await
                .map_err(|e| fail(format!("{asset}: {e}")))?;
            let rgba = image::load_from_memory(&bytes)
                .map_err(|e| fail(format!("{asset}: {e}")))?
                .to_rgba8();
            *image = Some(InitImage::Rgba {
                width: rgba.width(),
                height: rgba.height(),
                pixels: rgba.into_raw(),
            });
        }
        crate::runtime::worker::validate_submission(&request).map_err(|source| {
            TexgenLoadError::InvalidRequest {
                file: path.to_string(),
                source,
            }
        })?;
        let pick = |v: u32, fallback: u32| if v == 0 { fallback } else { v };
        let (w, h) = (
            pick(request.width, self.placeholder_size.0),
            pick(request.height, self.placeholder_size.1),
        );
        let image = placeholder(w, h, request.kind);
        // The receiver lives as long as the app; a send can only fail while it shuts down.
        let _ = self.requests.send((path, request));
        Ok(image)
    }

    fn extensions(&self) -> &[&str] {
        &["texgen.ron"]
    }
}

/// Requests parsed by [`TexgenLoader`], waiting for their placeholder to land in `Assets<Image>`.
#[derive(Resource)]
pub struct TexgenAssets {
    incoming: Receiver<(AssetPath<'static>, GenerationRequest)>,
    waiting: Vec<(AssetPath<'static>, GenerationRequest)>,
    running: HashMap<AssetPath<'static>, RequestId>,
}

/// The loader and the resource its requests arrive in.
pub(crate) fn texgen_loader(placeholder_size: (u32, u32)) -> (TexgenLoader, TexgenAssets) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let assets = TexgenAssets {
        incoming: rx,
        waiting: Vec::new(),
        running: HashMap::new(),
    };
    (
        TexgenLoader {
            requests: tx,
            placeholder_size,
        },
        assets,
    )
}

/// Queues the requests of loaded prompt files, targeting each file's own image handle. A request
/// waits until its placeholder is loaded, so the placeholder can never overwrite the result; a
/// reloaded file cancels its previous request.
pub fn submit_texgen_assets(
    mut queue: ResMut<TexgenAssets>,
    mut runtime: ResMut<DiffusionRuntime>,
    server: Res<AssetServer>,
) {
    let queue = &mut *queue;
    queue.waiting.extend(queue.incoming.try_iter());
    let mut still_waiting = Vec::new();
    for (path, request) in queue.waiting.drain(..) {
        let Some(handle): Option<Handle<Image>> = server.get_handle(&path) else {
            // Nobody holds a handle any more: the asset was dropped; nothing to fill.
            continue;
        };
        if !server.is_loaded(handle.id()) {
            still_waiting.push((path, request));
            continue;
        }
        if let Some(old) = queue.running.remove(&path) {
            runtime.cancel(old);
        }
        match runtime.submit(request.clone(), &handle, true) {
            Ok(id) => {
                queue.running.insert(path, id);
            }
            // Queue or quota full: try again next frame rather than dropping the file.
            Err(SubmitError::QueueFull { .. } | SubmitError::PlayerQuota { .. }) => {
                still_waiting.push((path, request));
            }
            Err(e) => tracing::warn!("bevy_diffusion: {path} was not queued: {e}"),
        }
    }
    queue.waiting = still_waiting;
    queue.running.retain(|_, id| runtime.image(*id).is_some());
}
