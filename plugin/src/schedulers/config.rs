//! `scheduler/scheduler_config.json`: parsing with diffusers' `ConfigMixin.from_config` semantics.
//!
//! diffusers builds any scheduler from any folder's config (`EulerDiscreteScheduler.from_config(
//! pipe.scheduler.config)`): keys the stored config has are used, keys it lacks (or lists in
//! `_use_default_values`) take the defaults of the *target* class. [`SchedulerConfig`] therefore
//! keeps what the file says (every field an `Option`), and [`SchedulerConfig::resolve`] fills the
//! gaps with the defaults of the class that a [`SchedulerKind`] runs, giving [`SchedulerParams`].
//!
//! Python's `json.dumps` writes `-Infinity` / `Infinity` / `NaN` (diffusers' DPM-Solver config
//! stores `"lambda_min_clipped": -Infinity`); [`parse_lenient_json`] accepts them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::SchedulerKind;
use crate::configuration_utils::JsonConfig;
use crate::error::{DiffusionError, Result};

mod from_config;
mod resolve;
pub use resolve::*;

/// How timesteps are spread over the training range (diffusers' `timestep_spacing`).
///
/// With `T` training steps and `n` inference steps (DDIM's integer rules; Euler keeps the
/// `linspace` values unrounded, DPM-Solver uses `n + 1` points, see [`super::schedule`]):
/// `leading`: `arange(n) * (T // n)` reversed, plus `steps_offset`; `linspace`:
/// `round(linspace(0, T - 1, n))` reversed; `trailing`: `round(arange(T, 0, -T / n)) - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepSpacing {
    /// `arange(n) * (T // n)` reversed, plus `steps_offset` (SD 1.x).
    #[serde(alias = "Leading")]
    Leading,
    /// `round(linspace(0, T - 1, n))` reversed.
    #[serde(alias = "Linspace")]
    Linspace,
    /// `round(arange(T, 0, -T / n)) - 1` (SD-Turbo, zero-SNR models).
    #[serde(alias = "Trailing")]
    Trailing,
}

/// What the UNet predicts (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PredictionType {
    /// The noise `eps`: `x_t = sqrt(abar) * x0 + sqrt(1 - abar) * eps`.
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The velocity `v = sqrt(abar) * eps - sqrt(1 - abar) * x0` (SD 2.x 768px, zero-SNR models).
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// The clean sample `x0` itself (not supported by Euler ancestral, as in diffusers).
    #[serde(rename = "sample")]
    Sample,
}

/// How the betas of the training schedule are made (diffusers' `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)` (float32).
    #[serde(rename = "linear")]
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2` (float32): Stable Diffusion's.
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    /// The cosine schedule `betas_for_alpha_bar(T)` (Improved DDPM), betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredCosCapV2,
}

/// What the sigma after the last step is (diffusers' `final_sigmas_type`; Euler and DPM-Solver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FinalSigmasType {
    /// 0: the last step lands on the clean sample.
    #[serde(rename = "zero")]
    Zero,
    /// `sigma(0) = sqrt((1 - abar_0) / abar_0)`.
    #[serde(rename = "sigma_min")]
    SigmaMin,
}

/// A `scheduler_config.json` as written: every key it sets (minus those listed in
/// `_use_default_values`), parsed and type-checked. Unknown keys are ignored (diffusers ignores
/// the keys of other scheduler classes too). Build schedulers with
/// [`super::build_scheduler`]; see [`SchedulerConfig::resolve`] for the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerConfig {
    /// Where the config came from (named in errors); `<scheduler_config>` for in-memory ones.
    pub path: PathBuf,
    /// `_class_name`, e.g. `PNDMScheduler`.
    pub class_name: Option<String>,
    /// Training steps `T` of the noise schedule (1000 for SD).
    pub num_train_timesteps: Option<usize>,
    /// First beta of the training schedule.
    pub beta_start: Option<f64>,
    /// Last beta of the training schedule.
    pub beta_end: Option<f64>,
    /// How the betas are spread between `beta_start` and `beta_end`.
    pub beta_schedule: Option<BetaSchedule>,
    /// Explicit betas (`trained_betas`), overriding `beta_start`/`beta_end`/`beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    /// Added to every `leading` timestep (SD 1.x: 1).
    pub steps_offset: Option<usize>,
    /// What the UNet predicts (epsilon, v, sample).
    pub prediction_type: Option<PredictionType>,
    /// How inference timesteps are spread over the training range.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// DDIM: the final `alphas_cumprod` is 1 (true) or the first training one.
    pub set_alpha_to_one: Option<bool>,
    /// Clip the predicted `x0` to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: Option<bool>,
    /// The range of `clip_sample`.
    pub clip_sample_range: Option<f64>,
    /// Rescale the betas to zero terminal SNR (Lin et al. 2023).
    pub rescale_betas_zero_snr: Option<bool>,
    /// Dynamic thresholding; `true` is refused when building a scheduler that reads it.
    pub thresholding: Option<bool>,
    /// Karras et al. sigmas instead of the schedule's own (Euler, DPM-Solver).
    pub use_karras_sigmas: Option<bool>,
    /// The last sigma: `zero` or the schedule's smallest.
    pub final_sigmas_type: Option<FinalSigmasType>,
    /// Euler: explicit Karras range (`null` = the schedule's own).
    pub sigma_min: Option<f64>,
    /// Euler: explicit upper end of the Karras range (`None` = the schedule's own).
    pub sigma_max: Option<f64>,
    /// DPM-Solver: `lower_order_final`, `euler_at_final`, `lambda_min_clipped`.
    pub lower_order_final: Option<bool>,
    /// DPM-Solver: an Euler step at the very end.
    pub euler_at_final: Option<bool>,
    /// DPM-Solver: the clipping threshold of `lambda(t)` (`-inf` = none).
    pub lambda_min_clipped: Option<f64>,
    /// LCM: `original_inference_steps` (default 50) and `timestep_scaling` (default 10).
    pub original_inference_steps: Option<usize>,
    /// LCM: the boundary-condition scaling (default 10).
    pub timestep_scaling: Option<f64>,
    /// Options we do not implement, kept as written (`key`, JSON value) so that building a
    /// scheduler that would read one with a non-default value can refuse it by name:
    /// `use_exponential_sigmas`, `use_beta_sigmas`, `use_lu_lambdas`, `use_flow_sigmas`,
    /// `use_dynamic_shifting`, `interpolation_type`, `timestep_type`, `variance_type`,
    /// `algorithm_type`, `solver_order`, `solver_type`.
    pub unimplemented: Vec<(String, Value)>,
}

/// Keys parsed into [`SchedulerConfig::unimplemented`].
const UNIMPLEMENTED_KEYS: &[&str] = &[
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
    "use_flow_sigmas",
    "use_dynamic_shifting",
    "interpolation_type",
    "timestep_type",
    "variance_type",
    "algorithm_type",
    "solver_order",
    "solver_type",
];

impl SchedulerConfig {
    /// The scheduler a request runs when it names none: the one matching `_class_name`, or a
    /// fallback for classes we do not implement (no folder is refused for its scheduler class):
    ///
    /// | `_class_name` | kind | why |
    /// |---|---|---|
    /// | `DDIMScheduler` | [`SchedulerKind::Ddim`] | exact |
    /// | `EulerDiscreteScheduler` | [`SchedulerKind::Euler`] | exact (Karras sigmas honoured) |
    /// | `EulerAncestralDiscreteScheduler` | [`SchedulerKind::EulerAncestral`] | exact |
    /// | `DPMSolverMultistepScheduler` | [`SchedulerKind::DpmSolverMultistep`], or `…Karras` with `use_karras_sigmas` | exact for `dpmsolver++` order 2 |
    /// | `LCMScheduler` | [`SchedulerKind::Lcm`] | exact |
    /// | `PNDMScheduler` (SD 1.x), `DDPMScheduler`, missing or unknown | [`SchedulerKind::Ddim`] | deterministic, same `alphas_cumprod`/leading timesteps, reads the same keys |
    /// | `LMSDiscreteScheduler`, `HeunDiscreteScheduler`, `KDPM2DiscreteScheduler` | [`SchedulerKind::Euler`] | same sigma parametrisation and timesteps |
    /// | `KDPM2AncestralDiscreteScheduler` | [`SchedulerKind::EulerAncestral`] | ancestral counterpart |
    /// | `DPMSolverMultistepScheduler` with another algorithm/order/solver type, `DPMSolverSinglestepScheduler`, `DEISMultistepScheduler`, `UniPCMultistepScheduler`, `DPMSolverSDEScheduler`, `EDMDPMSolverMultistepScheduler` | [`SchedulerKind::DpmSolverMultistep`] (`…Karras` with `use_karras_sigmas`) | the same family of exponential-integrator solvers |
    /// | `TCDScheduler` | [`SchedulerKind::Lcm`] | consistency-model timesteps |
    ///
    /// [`SchedulerConfig::native_kind`] tells whether the class is implemented exactly.
    pub fn default_kind(&self) -> SchedulerKind {
        if let Some(kind) = self.native_kind() {
            return kind;
        }
        let dpm = if self.use_karras_sigmas == Some(true) {
            SchedulerKind::DpmSolverMultistepKarras
        } else {
            SchedulerKind::DpmSolverMultistep
        };
        match self.class_name.as_deref() {
            Some("LMSDiscreteScheduler" | "HeunDiscreteScheduler" | "KDPM2DiscreteScheduler") => {
                SchedulerKind::Euler
            }
            Some("KDPM2AncestralDiscreteScheduler") => SchedulerKind::EulerAncestral,
            Some(
                "DPMSolverMultistepScheduler"
                | "DPMSolverSinglestepScheduler"
                | "DEISMultistepScheduler"
                | "UniPCMultistepScheduler"
                | "DPMSolverSDEScheduler"
                | "EDMDPMSolverMultistepScheduler",
            ) => dpm,
            Some("TCDScheduler") => SchedulerKind::Lcm,
            _ => SchedulerKind::Ddim,
        }
    }

    /// When `_class_name` is not implemented exactly: a sentence naming the class and the
    /// stand-in [`SchedulerConfig::default_kind`] runs instead (logged when a model loads,
    /// printed by `texgen inspect`). `unknown` is true for a class outside the table above (a
    /// typo, or a scheduler newer than this crate), which is worth a warning.
    pub fn stand_in(&self) -> Option<(String, bool)> {
        if self.native_kind().is_some() {
            return None;
        }
        let kind = self.default_kind();
        let known = matches!(
            self.class_name.as_deref(),
            Some(
                "PNDMScheduler"
                    | "DDPMScheduler"
                    | "LMSDiscreteScheduler"
                    | "HeunDiscreteScheduler"
                    | "KDPM2DiscreteScheduler"
                    | "KDPM2AncestralDiscreteScheduler"
                    | "DPMSolverMultistepScheduler"
                    | "DPMSolverSinglestepScheduler"
                    | "DEISMultistepScheduler"
                    | "UniPCMultistepScheduler"
                    | "DPMSolverSDEScheduler"
                    | "EDMDPMSolverMultistepScheduler"
                    | "TCDScheduler"
            )
        );
        let path = self.path.display();
        Some(match self.class_name.as_deref() {
            None => (
                format!("{path}: no `_class_name`; requests that name no scheduler run {kind:?}"),
                false,
            ),
            Some(class) if known => (
                format!(
                    "{path}: `_class_name` = {class} is not implemented exactly; requests that name no scheduler run {kind:?} as its stand-in"
                ),
                false,
            ),
            Some(class) => (
                format!(
                    "{path}: unknown scheduler `_class_name` = {class}; requests that name no scheduler run {kind:?} as a stand-in (set `scheduler` in the request to choose)"
                ),
                true,
            ),
        })
    }

    /// The kind that runs `_class_name` exactly as diffusers does, if we implement that class
    /// (`DPMSolverMultistepScheduler` only with `algorithm_type` `dpmsolver++`, order 2,
    /// `midpoint`, which are its defaults).
    pub fn native_kind(&self) -> Option<SchedulerKind> {
        match self.class_name.as_deref()? {
            "DDIMScheduler" => Some(SchedulerKind::Ddim),
            "EulerDiscreteScheduler" => Some(SchedulerKind::Euler),
            "EulerAncestralDiscreteScheduler" => Some(SchedulerKind::EulerAncestral),
            "LCMScheduler" => Some(SchedulerKind::Lcm),
            "DPMSolverMultistepScheduler" => {
                let is = |key: &str, want: &Value| {
                    self.unimplemented_value(key).is_none_or(|v| v == want)
                };
                let native = is("algorithm_type", &Value::from("dpmsolver++"))
                    && is("solver_order", &Value::from(2))
                    && is("solver_type", &Value::from("midpoint"));
                native.then_some(if self.use_karras_sigmas == Some(true) {
                    SchedulerKind::DpmSolverMultistepKarras
                } else {
                    SchedulerKind::DpmSolverMultistep
                })
            }
            _ => None,
        }
    }
}

pub use crate::configuration_utils::parse_lenient_json;
