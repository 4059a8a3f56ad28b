//! Planning a bake: which items are up to date, which must be generated, which already failed
//! their checks (before any model work).

use std::path::{Path, PathBuf};

use super::manifest::{BakeItem, Sidecar, check_item_name, content_hash, png_path, sidecar_path};

// ---------------------------------------------------------------- planning

/// What a bake has to do for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemState {
    /// The PNG and sidecar match the request and model: nothing to do.
    UpToDate,
    /// To (re)generate, and why (`new`, `request or model changed`, `PNG missing`, ...).
    Needed(String),
    /// Cannot be baked (bad name, invalid field, unreadable init image): fails without model work.
    Invalid(String),
}

/// One item of a [`plan`].
#[derive(Debug, Clone)]
pub struct PlannedItem {
    /// The item as written.
    pub item: BakeItem,
    /// `<out>/<name>.png`.
    pub png: PathBuf,
    /// `<out>/<name>.texgen.json`.
    pub sidecar: PathBuf,
    /// [`content_hash`] on the planned model (None for invalid items).
    pub content_hash: Option<String>,
    /// What to do.
    pub state: ItemState,
}

/// Decides, without loading the model, which items of `items` are up to date in `out_dir` for
/// the model with `model_identity` (see the module docs). `vae_scale` is the model's pixels per
/// latent (8 for SD), for checking sizes; `force` marks every valid item as needed.
pub fn plan(
    items: &[BakeItem],
    base_dir: &Path,
    out_dir: &Path,
    model_identity: &str,
    vae_scale: usize,
    force: bool,
) -> Vec<PlannedItem> {
    let mut planned: Vec<PlannedItem> = Vec::with_capacity(items.len());
    for item in items {
        let name = &item.name;
        let png = png_path(out_dir, name);
        let sidecar = sidecar_path(out_dir, name);
        let mut entry = PlannedItem {
            item: item.clone(),
            png,
            sidecar,
            content_hash: None,
            state: ItemState::Needed("new".into()),
        };
        let clash = planned
            .iter()
            .find(|p| p.item.name.eq_ignore_ascii_case(name))
            .map(|p| p.item.name.clone());
        let valid = check_item_name(name)
            .map_err(|reason| format!("invalid item name {name:?}: {reason}"))
            .and_then(|()| match clash {
                Some(other) => Err(format!(
                    "item name {name:?} differs from {other:?} only in case; the files would \
                     collide on case-insensitive file systems"
                )),
                None => Ok(()),
            })
            .and_then(|()| item.request.validate(vae_scale).map_err(|e| e.to_string()))
            .and_then(|()| {
                content_hash(model_identity, &item.request, base_dir).map_err(|e| e.to_string())
            });
        match valid {
            Err(reason) => entry.state = ItemState::Invalid(reason),
            Ok(hash) => {
                entry.state = if force {
                    ItemState::Needed("forced".into())
                } else {
                    up_to_date(&entry.png, &entry.sidecar, &hash)
                };
                if entry.state == ItemState::UpToDate
                    && item.request.pbr
                    && crate::pipeline::pbr::map_paths(out_dir, name)
                        .iter()
                        .any(|p| !p.is_file())
                {
                    entry.state = ItemState::Needed("PBR map missing".into());
                }
                entry.content_hash = Some(hash);
            }
        }
        planned.push(entry);
    }
    planned
}

/// UpToDate, or Needed with the reason.
fn up_to_date(png: &Path, sidecar: &Path, hash: &str) -> ItemState {
    let needed = |why: &str| ItemState::Needed(why.to_string());
    if !sidecar.is_file() {
        return needed(if png.is_file() {
            "no sidecar next to the PNG"
        } else {
            "new"
        });
    }
    let Some(recorded) = std::fs::read_to_string(sidecar)
        .ok()
        .and_then(|t| serde_json::from_str::<Sidecar>(&t).ok())
    else {
        return needed("sidecar unreadable");
    };
    if recorded.content_hash != hash {
        return needed("request or model changed");
    }
    match std::fs::read(png) {
        Err(_) => needed("PNG missing"),
        Ok(bytes) if blake3::hash(&bytes).to_hex().as_str() != recorded.png_blake3 => {
            needed("PNG differs from the one baked")
        }
        Ok(_) => ItemState::UpToDate,
    }
}
