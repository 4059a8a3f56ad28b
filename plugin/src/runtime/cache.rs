//! A result cache keyed by a content hash of (model identity, every pixel-affecting request
//! field): an in-memory LRU in front of an optional on-disk directory of PNGs.
//!
//! A hit returns without running the model. A corrupt or partial disk entry is treated as a miss
//! (and removed), never an error. Disk writes are atomic: a temporary file in the same directory,
//! then a rename, so a crash leaves either the old entry or the new one.

use std::path::{Path, PathBuf};

use image::RgbaImage;
use lru::LruCache;

use crate::request::{GenerationRequest, InitImage};
use crate::runtime::atomic_file::{encode_png, write_atomic};

/// A cache key: blake3 of the model identity and the request's canonical JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// The key of `request` on the model with `model_identity`.
    pub fn new(model_identity: &str, request: &GenerationRequest) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"bevy_diffusion cache v1\0");
        h.update(model_identity.as_bytes());
        h.update(b"\0");
        // serde_json of a struct is deterministic (fields in declaration order).
        h.update(&serde_json::to_vec(&request.pixel_fields()).unwrap_or_default());
        Self(*h.finalize().as_bytes())
    }

    /// The key the worker caches a job under: [`CacheKey::new`], extended with the bytes of
    /// the init image and mask files the request names by path, so that a file edited in place
    /// (a player repaints a mask and saves it under the same name) is a miss, not the old image.
    /// `None` (do not cache) when such a file cannot be read: the job then fails with the reason.
    pub fn for_job(model_identity: &str, request: &GenerationRequest) -> Option<Self> {
        let key = Self::new(model_identity, request);
        let files = [("init_image", &request.init_image), ("mask", &request.mask)];
        if !files
            .iter()
            .any(|(_, i)| matches!(i, Some(InitImage::Path(_))))
        {
            return Some(key);
        }
        let mut h = blake3::Hasher::new();
        h.update(b"bevy_diffusion cache v1 files\0");
        h.update(&key.0);
        for (field, image) in files {
            if let Some(InitImage::Path(path)) = image {
                let bytes = std::fs::read(path).ok()?;
                h.update(field.as_bytes());
                h.update(b"\0");
                h.update(blake3::hash(&bytes).as_bytes());
            }
        }
        Some(Self(*h.finalize().as_bytes()))
    }

    /// Lower-case hex, used as the file name on disk.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// In-memory LRU (by entry count) plus an optional disk directory.
pub struct ImageCache {
    /// Unbounded as a map (so nothing is allocated up front for a huge `memory_entries`); `put`
    /// evicts down to `memory_cap`.
    memory: LruCache<CacheKey, RgbaImage>,
    memory_cap: usize,
    disk: Option<PathBuf>,
}

impl ImageCache {
    /// A cache holding up to `memory_entries` images in memory (0 = none) and, if `disk` is set,
    /// every image as `<disk>/<hex>.png`.
    pub fn new(memory_entries: usize, disk: Option<PathBuf>) -> Self {
        Self {
            memory: LruCache::unbounded(),
            memory_cap: memory_entries.max(1),
            disk,
        }
    }

    fn remember(&mut self, key: CacheKey, image: RgbaImage) {
        self.memory.put(key, image);
        while self.memory.len() > self.memory_cap {
            self.memory.pop_lru();
        }
    }

    /// The cached image for `key`, from memory or disk. Unreadable disk entries count as misses
    /// and are removed.
    pub fn get(&mut self, key: &CacheKey) -> Option<RgbaImage> {
        if let Some(img) = self.memory.get(key) {
            return Some(img.clone());
        }
        let path = self.disk_path(key)?;
        if !path.exists() {
            return None;
        }
        match image::open(&path) {
            Ok(img) => {
                let img = img.to_rgba8();
                self.remember(*key, img.clone());
                Some(img)
            }
            Err(e) => {
                tracing::warn!(
                    "cache entry {} is unreadable ({e}); regenerating",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `image` under `key` (memory, and disk atomically when configured). Disk failures are
    /// logged, not returned: a cache must never fail a generation.
    pub fn put(&mut self, key: CacheKey, image: &RgbaImage) {
        self.remember(key, image.clone());
        if let Some(path) = self.disk_path(&key)
            && let Err(e) = write_png_atomic(image, &path)
        {
            tracing::warn!("could not write cache entry {}: {e}", path.display());
        }
    }

    fn disk_path(&self, key: &CacheKey) -> Option<PathBuf> {
        self.disk
            .as_ref()
            .map(|d| d.join(format!("{}.png", key.hex())))
    }
}

/// Writes `image` as PNG to `path` atomically ([`write_atomic`]).
pub fn write_png_atomic(image: &RgbaImage, path: &Path) -> std::io::Result<()> {
    let bytes = encode_png(image).map_err(std::io::Error::other)?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "bevy_diffusion_cache_test_{name}_{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn key_depends_on_model_and_every_field() {
        let r = GenerationRequest {
            prompt: "wall".into(),
            ..Default::default()
        };
        let k = CacheKey::new("m1", &r);
        assert_eq!(k, CacheKey::new("m1", &r.clone()));
        assert_ne!(k, CacheKey::new("m2", &r));
        assert_ne!(
            k,
            CacheKey::new(
                "m1",
                &GenerationRequest {
                    seed: 1,
                    ..r.clone()
                }
            )
        );
        assert_ne!(
            k,
            CacheKey::new(
                "m1",
                &GenerationRequest {
                    tiling: crate::Tiling::XY,
                    ..r.clone()
                }
            )
        );
        let other_player = GenerationRequest {
            player: Some("bob".into()),
            priority: 3,
            ..r
        };
        assert_eq!(
            k,
            CacheKey::new("m1", &other_player),
            "scheduling fields do not change the key"
        );
    }

    #[test]
    fn disk_round_trip_and_corrupt_entry_is_a_miss() {
        let dir = temp_dir("disk");
        let img = RgbaImage::from_pixel(3, 2, image::Rgba([1, 2, 3, 4]));
        let key = CacheKey::new("m", &GenerationRequest::default());
        ImageCache::new(4, Some(dir.clone())).put(key, &img);
        // A fresh cache (empty memory) finds it on disk.
        assert_eq!(ImageCache::new(4, Some(dir.clone())).get(&key), Some(img));
        // Corrupt it: a miss, and the file is gone.
        let file = dir.join(format!("{}.png", key.hex()));
        std::fs::write(&file, b"not a png").unwrap();
        assert_eq!(ImageCache::new(4, Some(dir.clone())).get(&key), None);
        assert!(!file.exists());
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(leftovers.is_empty(), "no temporary files left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
