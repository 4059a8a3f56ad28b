//! What a bake tells: [`ItemOutcome`] per item, the [`BakeEvent`]s while it runs, the final
//! [`BakeReport`], and [`BakeError`] when it cannot run at all.

use std::path::{Path, PathBuf};

use super::PlannedItem;
use crate::error::DiffusionError;
use crate::request::ron::RonError;

/// How one item ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// Generated and written.
    Baked {
        /// The PNG written.
        png: PathBuf,
        /// Its size in pixels.
        width: u32,
        /// Its size in pixels.
        height: u32,
        /// Generation time (the model load not included).
        seconds: f64,
        /// Which of the item's prompts were longer than 77 tokens and were cut.
        truncated: crate::pipeline::PromptTruncation,
    },
    /// Up to date; nothing done.
    Skipped,
    /// Not written, and why.
    Failed(String),
}

/// Progress of a [`bake`](super::bake), in order: `Planned`, then per item `ItemStarted`,
/// `Step`s and `ItemFinished` (skipped and invalid items only get `ItemFinished`);
/// `LoadingModel` and `ModelLoaded` before the first item that needs the model.
#[derive(Debug)]
pub enum BakeEvent<'a> {
    /// The plan: every item and what will be done with it.
    Planned {
        /// Every item of the manifest, in order.
        items: &'a [PlannedItem],
    },
    /// The model is about to be loaded (lazily, for the first item to generate).
    LoadingModel {
        /// The model folder.
        dir: &'a Path,
    },
    /// The model is loaded.
    ModelLoaded {
        /// The model folder.
        dir: &'a Path,
        /// Load time in seconds.
        seconds: f64,
    },
    /// Item `index` starts generating.
    ItemStarted {
        /// The item's position in the manifest (0-based).
        index: usize,
        /// The item's name.
        name: &'a str,
        /// Why, in words.
        reason: &'a str,
    },
    /// A denoising step of item `index` finished (`step` is 1-based).
    Step {
        /// The item's position in the manifest (0-based).
        index: usize,
        /// The item's name.
        name: &'a str,
        /// Denoising steps done so far (1-based).
        step: usize,
        /// Denoising steps in all.
        total: usize,
    },
    /// Item `index` is done, skipped or failed.
    ItemFinished {
        /// The item's position in the manifest (0-based).
        index: usize,
        /// The item's name.
        name: &'a str,
        /// What happened to it.
        outcome: &'a ItemOutcome,
    },
}

/// The result of a [`bake`](super::bake).
#[derive(Debug, Clone, PartialEq)]
pub struct BakeReport {
    /// `(name, outcome)` in manifest order.
    pub items: Vec<(String, ItemOutcome)>,
    /// Whether the model was loaded (false when every item was skipped or invalid).
    pub model_loaded: bool,
    /// The identity of the model the bake planned with.
    pub model_identity: String,
    /// True when [`BakeOptions::cancel`](super::BakeOptions::cancel) stopped the bake (the
    /// remaining items are absent).
    pub cancelled: bool,
}

impl BakeReport {
    fn count(&self, f: impl Fn(&ItemOutcome) -> bool) -> usize {
        self.items.iter().filter(|(_, o)| f(o)).count()
    }
    /// Items generated and written.
    pub fn baked(&self) -> usize {
        self.count(|o| matches!(o, ItemOutcome::Baked { .. }))
    }
    /// Items up to date.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, ItemOutcome::Skipped))
    }
    /// Items that failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, ItemOutcome::Failed(_)))
    }
    /// `baked N, skipped M, failed K`.
    pub fn summary(&self) -> String {
        format!(
            "baked {}, skipped {}, failed {}",
            self.baked(),
            self.skipped(),
            self.failed()
        )
    }
}

/// Why a bake could not run at all (a failing item is not one: see [`ItemOutcome::Failed`]).
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    /// The manifest does not parse.
    #[error(transparent)]
    Manifest(#[from] RonError),
    /// The model folder is broken or cannot be loaded.
    #[error(transparent)]
    Model(#[from] DiffusionError),
    /// The manifest cannot be read or the output folder cannot be created.
    #[error("{path}: {error}")]
    Io {
        /// The file that could not be written or read.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}
