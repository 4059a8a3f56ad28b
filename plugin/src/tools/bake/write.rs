//! One baked item written: its PNG, then its `NAME.texgen.json` sidecar, each atomically (a
//! temporary file renamed over the old one), plus the PBR maps when the item asks for them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{ItemOutcome, PlannedItem, Sidecar};
use crate::error::DiffusionError;
use crate::runtime::atomic_file::{encode_png, remove_stale_temp_files, write_atomic};

/// What a sidecar records besides the item and its pixels.
pub(crate) struct Written {
    pub(crate) content_hash: String,
    pub(crate) model_identity: String,
    pub(crate) model_dir: PathBuf,
    pub(crate) seed: u64,
}

/// Writes `image` as the item's PNG, then its sidecar, both atomically.
pub(crate) fn write_item(
    entry: &PlannedItem,
    image: &image::RgbaImage,
    written: Written,
    started: Instant,
    truncated: crate::pipeline::PromptTruncation,
) -> Result<ItemOutcome, DiffusionError> {
    let png = encode_png(image).map_err(|e| DiffusionError::Image {
        path: entry.png.clone(),
        reason: format!("cannot encode the PNG: {e}"),
    })?;
    let sidecar = Sidecar {
        name: entry.item.name.clone(),
        content_hash: written.content_hash,
        model_identity: written.model_identity,
        model_dir: written.model_dir,
        seed: written.seed,
        width: image.width(),
        height: image.height(),
        png_blake3: blake3::hash(&png).to_hex().to_string(),
        bevy_diffusion_version: env!("CARGO_PKG_VERSION").to_string(),
        request: entry.item.request.clone(),
    };
    let sidecar_json = serde_json::to_vec_pretty(&sidecar).map_err(|e| DiffusionError::Io {
        path: entry.sidecar.clone(),
        source: std::io::Error::other(e),
    })?;
    remove_stale_temp_files(&entry.png);
    remove_stale_temp_files(&entry.sidecar);
    // PNG first: a sidecar never describes a PNG that is not there yet.
    write_atomic(&entry.png, &png).map_err(|e| DiffusionError::io(&entry.png, e))?;
    write_atomic(&entry.sidecar, &sidecar_json)
        .map_err(|e| DiffusionError::io(&entry.sidecar, e))?;
    if entry.item.request.pbr {
        // NAME_normal.png, NAME_height.png, NAME_roughness.png, NAME_ao.png beside NAME.png.
        let maps = crate::pipeline::pbr::pbr_maps(image, &Default::default())?;
        let dir = entry.png.parent().unwrap_or(Path::new("."));
        crate::pipeline::pbr::PbrImages::from(&maps).save(dir, &entry.item.name)?;
    }
    Ok(ItemOutcome::Baked {
        png: entry.png.clone(),
        width: image.width(),
        height: image.height(),
        seconds: started.elapsed().as_secs_f64(),
        truncated,
    })
}
