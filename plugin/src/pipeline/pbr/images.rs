//! The maps as 8-bit images and their files (`NAME_normal.png`, ...), with the file-name check
//! that keeps them inside the output folder.

use image::{GrayImage, RgbImage};

use super::PbrMaps;
use crate::error::{DiffusionError, Result};

/// The four maps as 8-bit images, named as `texgen pbr` writes them.
#[derive(Debug, Clone)]
pub struct PbrImages {
    /// `NAME_normal.png`: RGB tangent-space normals, OpenGL (+Y up).
    pub normal: RgbImage,
    /// `NAME_height.png`: grey, 0 = low.
    pub height: GrayImage,
    /// `NAME_roughness.png`: grey, 255 = fully rough.
    pub roughness: GrayImage,
    /// `NAME_ao.png`: grey, 255 = unoccluded.
    pub ao: GrayImage,
}

impl From<&PbrMaps> for PbrImages {
    fn from(m: &PbrMaps) -> Self {
        Self {
            normal: m.normal_image(),
            height: m.height.to_gray(),
            roughness: m.roughness.to_gray(),
            ao: m.ao.to_gray(),
        }
    }
}

/// The file-name suffixes of the four maps, in [`PbrImages::save`]'s order.
pub const PBR_MAP_SUFFIXES: [&str; 4] = ["normal", "height", "roughness", "ao"];

/// Checks that `name` (the NAME of `NAME_normal.png`, ...) is a plain file-name stem, so the
/// maps land inside their folder: not empty, no path separator (`/`, `\`), not `.` or `..`, not
/// an absolute path or a drive (`:`), no NUL. Dots inside a name (`wall..v2`, the same names bake
/// accepts for its items) are fine: without a separator they cannot leave the folder.
///
/// Errors: [`DiffusionError::InvalidRequest`] naming `name` and the value.
pub fn check_map_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name.contains(['/', '\\']) {
        Some(
            "a name must not contain a path separator (`/` or `\\`): the maps go in the output folder",
        )
    } else if name == "." || name == ".." {
        Some("a name must not be `.` or `..`: the maps go in the output folder")
    } else if name.contains(':') || std::path::Path::new(name).has_root() {
        Some("a name must not be an absolute path or name a drive (`:`)")
    } else if name.contains('\0') {
        Some("a name must not contain a NUL character")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(DiffusionError::InvalidRequest {
            field: "name",
            value: format!("{name:?}"),
            reason: reason.into(),
        }),
    }
}

/// `dir/NAME_normal.png`, `NAME_height.png`, `NAME_roughness.png`, `NAME_ao.png`.
pub fn map_paths(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    PBR_MAP_SUFFIXES
        .iter()
        .map(|suffix| dir.join(format!("{name}_{suffix}.png")))
        .collect()
}

impl PbrImages {
    /// Writes `NAME_normal.png`, `NAME_height.png`, `NAME_roughness.png` and `NAME_ao.png` into
    /// `dir` (created if missing) and returns the paths in that order.
    ///
    /// Errors: [`DiffusionError::InvalidRequest`] (`name`) for a name [`check_map_name`]
    /// refuses (nothing is written); [`DiffusionError::Io`] / [`DiffusionError::Image`] naming
    /// the file.
    pub fn save(&self, dir: &std::path::Path, name: &str) -> Result<Vec<std::path::PathBuf>> {
        check_map_name(name)?;
        std::fs::create_dir_all(dir).map_err(|e| DiffusionError::io(dir, e))?;
        let paths = map_paths(dir, name);
        let images: [image::DynamicImage; 4] = [
            self.normal.clone().into(),
            self.height.clone().into(),
            self.roughness.clone().into(),
            self.ao.clone().into(),
        ];
        for (path, img) in paths.iter().zip(images) {
            img.save(path).map_err(|e| DiffusionError::Image {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(paths)
    }
}
