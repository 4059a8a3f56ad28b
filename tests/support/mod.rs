//! Shared helpers of the integration tests: where the fixtures are and how to compare tensors
//! with HF diffusers' references.
//!
//! `tests/fixtures/tiny-sd/` is a copy of the tiny random SD 1.x pipeline and the reference
//! tensors diffusers computed for it (see its README.md); the tests need nothing outside the repo.

pub mod parity;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// `tests/fixtures/tiny-sd`.
pub fn tiny_sd_dir() -> PathBuf {
    fixture_dir("tiny-sd")
}

/// `tests/fixtures/tiny-sd/model`: the diffusers-layout pipeline folder.
pub fn tiny_sd_model() -> PathBuf {
    tiny_sd_dir().join("model")
}

/// `tests/fixtures/<name>` (e.g. `tiny-taesd`, `tiny-sdxs`).
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// `tests/fixtures/tiny-sdxl`: the tiny random SDXL pipeline and its diffusers references.
pub fn tiny_sdxl_dir() -> PathBuf {
    fixture_dir("tiny-sdxl")
}

/// `tests/fixtures/tiny-sdxl/model`: the diffusers-layout SDXL pipeline folder.
pub fn tiny_sdxl_model() -> PathBuf {
    tiny_sdxl_dir().join("model")
}

/// All reference tensors of `references.safetensors`, by name (`<case>/<tensor>`).
pub struct References {
    tensors: HashMap<String, Tensor>,
    /// `references.json`.
    pub json: serde_json::Value,
}

impl References {
    /// Loads the fixture's references (panics with a clear message if the fixture is missing:
    /// this is test code).
    pub fn load() -> Self {
        Self::load_from(&tiny_sd_dir())
    }

    /// Loads the references of the fixture in `dir` (`tests/fixtures/<name>`).
    pub fn load_from(dir: &std::path::Path) -> Self {
        let tensors =
            candle_core::safetensors::load(dir.join("references.safetensors"), &Device::Cpu)
                .unwrap_or_else(|e| panic!("{}/references.safetensors: {e}", dir.display()));
        let json_text =
            std::fs::read_to_string(dir.join("references.json")).expect("references.json");
        // Python's json writes -Infinity (DPM-Solver's lambda_min_clipped), which is not JSON.
        let json = bevy_diffusion::schedulers::config::parse_lenient_json(&json_text)
            .expect("references.json parses");
        Self { tensors, json }
    }

    /// The tensor `name`, converted to f32 (ids stay integer: use [`References::ids`]).
    pub fn get(&self, name: &str) -> Tensor {
        let t = self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference tensor `{name}` not found"));
        t.to_dtype(DType::F32).expect("to f32")
    }

    /// True if the reference holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The names of all reference tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// An int64 tensor as rows of i64 (`[rows, cols]`).
    pub fn ids(&self, name: &str) -> Vec<Vec<i64>> {
        let t = self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference tensor `{name}` not found"));
        t.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap()
    }

    /// `references.json` → `cases.<case>`.
    pub fn case(&self, case: &str) -> &serde_json::Value {
        &self.json["cases"][case]
    }
}

/// max |a - b| and max |reference|.
pub fn max_abs_diff(actual: &Tensor, reference: &Tensor) -> (f32, f32) {
    assert_eq!(
        actual.dims(),
        reference.dims(),
        "shape of actual vs reference"
    );
    let a = actual
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let r = reference
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let diff = a
        .iter()
        .zip(&r)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = r.iter().map(|y| y.abs()).fold(0f32, f32::max);
    assert!(
        a.iter().all(|x| x.is_finite()),
        "actual has non-finite values"
    );
    (diff, scale)
}

/// The fixture README's tolerance: `max|a - r| <= 1e-4 * max(1, max|r|)`.
pub fn assert_close(what: &str, actual: &Tensor, reference: &Tensor) {
    assert_close_rtol(what, actual, reference, 1e-4);
}

/// `max|a - r| <= rtol * max(1, max|r|)`, with a message naming `what` and the figures.
pub fn assert_close_rtol(what: &str, actual: &Tensor, reference: &Tensor, rtol: f32) {
    let (diff, scale) = max_abs_diff(actual, reference);
    let tol = rtol * scale.max(1.0);
    assert!(
        diff <= tol,
        "{what}: max|diff| = {diff:e} > tolerance {tol:e} (max|ref| = {scale})"
    );
}

/// A real nats-server and worker processes for the farm tests (feature `farm`).
#[cfg(feature = "farm")]
pub mod farm;
