//! [`super::ModelFolder::identity`]: a content hash of the folder's configs, tokenizer files,
//! recommended sampling settings (`bevy_diffusion.json`) and weight headers (file names, sizes,
//! header digests), so a changed file changes every cache key and bake sidecar made with the
//! model, without hashing gigabytes of weights. The recommended settings are in it because a
//! request that leaves steps, guidance, scheduler or size unset is keyed as sent (unfilled), and
//! what it renders follows them.

use super::ModelFolder;
use crate::error::{DiffusionError, Result};

/// The content hash described at [`ModelFolder::identity`].
pub(super) fn identity(folder: &ModelFolder) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"bevy_diffusion model identity v1\0");
    let mut add_file = |relative: &str| -> Result<()> {
        let path = folder.dir.join(relative);
        if crate::loading::model_files::is_file(&path) {
            let bytes = crate::loading::model_files::read(&path)
                .map_err(|e| DiffusionError::io(&path, e))?;
            hasher.update(relative.as_bytes());
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
        Ok(())
    };
    for relative in [
        "model_index.json",
        "bevy_diffusion.json",
        "text_encoder/config.json",
        "unet/config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "text_encoder_2/config.json",
        "tokenizer_2/tokenizer.json",
        "tokenizer_2/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/tokenizer_config.json",
        "tokenizer_2/special_tokens_map.json",
    ] {
        add_file(relative)?;
    }
    for component in folder.components() {
        for shard in &component.weights.shards {
            let name = shard
                .path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            hasher.update(format!("{}/{name}\0", component.kind).as_bytes());
            hasher.update(&shard.file_len.to_le_bytes());
            hasher.update(&shard.header_digest);
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}
