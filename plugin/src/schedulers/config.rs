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
use crate::error::{DiffusionError, Result};

/// How timesteps are spread over the training range (diffusers' `timestep_spacing`).
///
/// With `T` training steps and `n` inference steps (DDIM's integer rules; Euler keeps the
/// `linspace` values unrounded, DPM-Solver uses `n + 1` points, see [`super::schedule`]):
/// `leading`: `arange(n) * (T // n)` reversed, plus `steps_offset`; `linspace`:
/// `round(linspace(0, T - 1, n))` reversed; `trailing`: `round(arange(T, 0, -T / n)) - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepSpacing {
    #[serde(alias = "Leading")]
    Leading,
    #[serde(alias = "Linspace")]
    Linspace,
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
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<BetaSchedule>,
    /// Explicit betas (`trained_betas`), overriding `beta_start`/`beta_end`/`beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    pub steps_offset: Option<usize>,
    pub prediction_type: Option<PredictionType>,
    pub timestep_spacing: Option<TimestepSpacing>,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub rescale_betas_zero_snr: Option<bool>,
    /// Dynamic thresholding; `true` is refused when building a scheduler that reads it.
    pub thresholding: Option<bool>,
    pub use_karras_sigmas: Option<bool>,
    pub final_sigmas_type: Option<FinalSigmasType>,
    /// Euler: explicit Karras range (`null` = the schedule's own).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// DPM-Solver: `lower_order_final`, `euler_at_final`, `lambda_min_clipped`.
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub lambda_min_clipped: Option<f64>,
    /// LCM: `original_inference_steps` (default 50) and `timestep_scaling` (default 10).
    pub original_inference_steps: Option<usize>,
    pub timestep_scaling: Option<f64>,
    /// Options we do not implement, kept as written (`key`, JSON value) so that building a
    /// scheduler that would read one with a non-default value can refuse it by name:
    /// `use_exponential_sigmas`, `use_beta_sigmas`, `use_lu_lambdas`, `use_flow_sigmas`,
    /// `use_dynamic_shifting`, `interpolation_type`, `timestep_type`, `variance_type`,
    /// `algorithm_type`, `solver_order`, `solver_type`.
    pub unimplemented: Vec<(String, Value)>,
}

/// A [`SchedulerConfig`] resolved for one diffusers class: every value the scheduler uses.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerParams {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub set_alpha_to_one: bool,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub rescale_betas_zero_snr: bool,
    pub use_karras_sigmas: bool,
    pub final_sigmas_type: FinalSigmasType,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub lambda_min_clipped: f64,
    pub original_inference_steps: usize,
    pub timestep_scaling: f64,
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
    /// Reads and parses `path` (a diffusers `scheduler_config.json` of any scheduler class).
    ///
    /// Errors: [`DiffusionError::Io`]; [`DiffusionError::InvalidConfig`] (not JSON, a value of
    /// the wrong type or range) and [`DiffusionError::UnsupportedConfig`] (a `beta_schedule`,
    /// `prediction_type`, `timestep_spacing` or `final_sigmas_type` we do not know), naming the
    /// file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a `scheduler_config.json`; `path` is only named in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value = parse_lenient_json(text)
            .map_err(|e| DiffusionError::config(path, "<json>", format!("not valid JSON: {e}")))?;
        Self::from_value(&value, path)
    }

    /// Builds from an already parsed JSON object (e.g. references.json
    /// `cases.<case>.scheduler_config`); `path` is only named in errors. Non-finite numbers may
    /// be given as the strings `"-Infinity"`, `"Infinity"`, `"NaN"` (see [`parse_lenient_json`]).
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| DiffusionError::config(path, "<json>", "expected a JSON object"))?;
        let used_defaults: Vec<&str> = match obj.get("_use_default_values") {
            Some(Value::Array(keys)) => keys.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let fields = Fields {
            obj,
            path,
            used_defaults,
        };
        let class_name = fields.string("_class_name")?;
        let trained_betas = match fields.get("trained_betas") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| number(v).filter(|b| b.is_finite() && *b >= 0.0 && *b < 1.0))
                    .collect::<Option<Vec<f64>>>()
                    .ok_or_else(|| {
                        DiffusionError::config(
                            path,
                            "trained_betas",
                            "expected an array of numbers in [0, 1)",
                        )
                    })?,
            ),
            Some(other) => {
                return Err(DiffusionError::config(
                    path,
                    "trained_betas",
                    format!("expected null or an array of numbers, found {other}"),
                ));
            }
        };
        let unimplemented = UNIMPLEMENTED_KEYS
            .iter()
            .filter_map(|k| fields.get(k).map(|v| (k.to_string(), v.clone())))
            .collect();
        let config = Self {
            path: path.to_path_buf(),
            class_name,
            num_train_timesteps: fields.count("num_train_timesteps", 1)?,
            beta_start: fields.finite("beta_start")?,
            beta_end: fields.finite("beta_end")?,
            beta_schedule: fields.choice(
                "beta_schedule",
                &[
                    ("linear", BetaSchedule::Linear),
                    ("scaled_linear", BetaSchedule::ScaledLinear),
                    ("squaredcos_cap_v2", BetaSchedule::SquaredCosCapV2),
                ],
            )?,
            trained_betas,
            steps_offset: fields.count("steps_offset", 0)?,
            prediction_type: fields.choice(
                "prediction_type",
                &[
                    ("epsilon", PredictionType::Epsilon),
                    ("v_prediction", PredictionType::VPrediction),
                    ("sample", PredictionType::Sample),
                ],
            )?,
            timestep_spacing: fields.choice(
                "timestep_spacing",
                &[
                    ("leading", TimestepSpacing::Leading),
                    ("linspace", TimestepSpacing::Linspace),
                    ("trailing", TimestepSpacing::Trailing),
                ],
            )?,
            set_alpha_to_one: fields.boolean("set_alpha_to_one")?,
            clip_sample: fields.boolean("clip_sample")?,
            clip_sample_range: fields.finite("clip_sample_range")?,
            rescale_betas_zero_snr: fields.boolean("rescale_betas_zero_snr")?,
            thresholding: fields.boolean("thresholding")?,
            use_karras_sigmas: fields.boolean("use_karras_sigmas")?,
            final_sigmas_type: fields.choice(
                "final_sigmas_type",
                &[
                    ("zero", FinalSigmasType::Zero),
                    ("sigma_min", FinalSigmasType::SigmaMin),
                ],
            )?,
            sigma_min: fields.finite("sigma_min")?,
            sigma_max: fields.finite("sigma_max")?,
            lower_order_final: fields.boolean("lower_order_final")?,
            euler_at_final: fields.boolean("euler_at_final")?,
            lambda_min_clipped: fields.number("lambda_min_clipped")?,
            original_inference_steps: fields.count("original_inference_steps", 1)?,
            timestep_scaling: fields.finite("timestep_scaling")?,
            unimplemented,
        };
        config.check_ranges()?;
        Ok(config)
    }

    fn check_ranges(&self) -> Result<()> {
        let bad =
            |field: &str, reason: String| Err(DiffusionError::config(&self.path, field, reason));
        for (field, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if let Some(v) = v
                && !(0.0..1.0).contains(&v)
            {
                return bad(field, format!("{v} is not in [0, 1)"));
            }
        }
        if let (Some(betas), Some(t)) = (&self.trained_betas, self.num_train_timesteps)
            && betas.len() != t
        {
            return bad(
                "trained_betas",
                format!("has {} entries but num_train_timesteps is {t}", betas.len()),
            );
        }
        if let Some(v) = self.lambda_min_clipped
            && v.is_nan()
        {
            return bad("lambda_min_clipped", "is NaN".into());
        }
        Ok(())
    }

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

    fn unimplemented_value(&self, key: &str) -> Option<&Value> {
        self.unimplemented
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Fills the keys this config lacks with the `__init__` defaults of the diffusers class
    /// `kind` runs (as `Class.from_config(config)` does) and refuses options that class would
    /// use but we do not implement ([`DiffusionError::UnsupportedConfig`], naming the field).
    ///
    /// Class defaults that differ: `beta_start`/`beta_end`/`beta_schedule` are
    /// 0.0001/0.02/linear except LCM (0.00085/0.012/scaled_linear); `timestep_spacing` is
    /// `leading` for DDIM and LCM, `linspace` for Euler, Euler ancestral and DPM-Solver;
    /// `clip_sample` is true for DDIM, false for LCM; `set_alpha_to_one` is true (DDIM, LCM).
    ///
    /// The kind decides what the class name decides in diffusers: the DPM-Solver++ kinds force
    /// `algorithm_type = dpmsolver++`, `solver_order = 2`, `solver_type = midpoint`, and
    /// `use_karras_sigmas` false for [`SchedulerKind::DpmSolverMultistep`], true for
    /// [`SchedulerKind::DpmSolverMultistepKarras`]. Euler honours the config's
    /// `use_karras_sigmas`, as `EulerDiscreteScheduler.from_config` would.
    pub fn resolve(&self, kind: SchedulerKind) -> Result<SchedulerParams> {
        use SchedulerKind as K;
        let lcm = kind == K::Lcm;
        let dpm = matches!(kind, K::DpmSolverMultistep | K::DpmSolverMultistepKarras);
        let default_spacing = match kind {
            K::Ddim | K::Lcm => TimestepSpacing::Leading,
            _ => TimestepSpacing::Linspace,
        };
        let params = SchedulerParams {
            num_train_timesteps: self.num_train_timesteps.unwrap_or(1000),
            beta_start: self
                .beta_start
                .unwrap_or(if lcm { 0.00085 } else { 0.0001 }),
            beta_end: self.beta_end.unwrap_or(if lcm { 0.012 } else { 0.02 }),
            beta_schedule: self.beta_schedule.unwrap_or(if lcm {
                BetaSchedule::ScaledLinear
            } else {
                BetaSchedule::Linear
            }),
            trained_betas: self.trained_betas.clone(),
            steps_offset: self.steps_offset.unwrap_or(0),
            prediction_type: self.prediction_type.unwrap_or(PredictionType::Epsilon),
            timestep_spacing: self.timestep_spacing.unwrap_or(default_spacing),
            set_alpha_to_one: self.set_alpha_to_one.unwrap_or(true),
            clip_sample: match kind {
                K::Ddim => self.clip_sample.unwrap_or(true),
                K::Lcm => self.clip_sample.unwrap_or(false),
                _ => false,
            },
            clip_sample_range: self.clip_sample_range.unwrap_or(1.0),
            rescale_betas_zero_snr: self.rescale_betas_zero_snr.unwrap_or(false),
            use_karras_sigmas: match kind {
                K::Euler => self.use_karras_sigmas.unwrap_or(false),
                K::DpmSolverMultistepKarras => true,
                _ => false,
            },
            final_sigmas_type: self.final_sigmas_type.unwrap_or(FinalSigmasType::Zero),
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            lower_order_final: self.lower_order_final.unwrap_or(true),
            euler_at_final: self.euler_at_final.unwrap_or(false),
            lambda_min_clipped: self.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            original_inference_steps: self.original_inference_steps.unwrap_or(50),
            timestep_scaling: self.timestep_scaling.unwrap_or(10.0),
        };
        let unsupported = |field: &str, value: String| {
            Err(DiffusionError::UnsupportedConfig {
                path: self.path.clone(),
                field: field.into(),
                value,
            })
        };
        // Options the target class reads, with the value it must have for us.
        let mut must_be: Vec<(&str, Value)> = Vec::new();
        let reads_thresholding = matches!(kind, K::Ddim | K::Lcm) || dpm;
        if reads_thresholding && self.thresholding == Some(true) {
            return unsupported("thresholding", "true".into());
        }
        if kind == K::Euler {
            must_be.extend([
                ("use_exponential_sigmas", Value::Bool(false)),
                ("use_beta_sigmas", Value::Bool(false)),
                ("interpolation_type", Value::from("linear")),
                ("timestep_type", Value::from("discrete")),
            ]);
        }
        if dpm {
            must_be.extend([
                ("use_exponential_sigmas", Value::Bool(false)),
                ("use_beta_sigmas", Value::Bool(false)),
                ("use_lu_lambdas", Value::Bool(false)),
                ("use_flow_sigmas", Value::Bool(false)),
                ("use_dynamic_shifting", Value::Bool(false)),
                ("variance_type", Value::Null),
            ]);
        }
        for (key, want) in must_be {
            if let Some(v) = self.unimplemented_value(key)
                && *v != want
            {
                return unsupported(key, v.to_string());
            }
        }
        if kind == K::EulerAncestral && params.prediction_type == PredictionType::Sample {
            // diffusers: NotImplementedError("prediction_type not implemented yet: sample").
            return unsupported("prediction_type", "\"sample\" (with euler-a)".into());
        }
        Ok(params)
    }
}

/// Typed access to the keys of one config object, honouring `_use_default_values`.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
    used_defaults: Vec<&'a str>,
}

impl Fields<'_> {
    /// The value of `key`, `None` when absent, `null`, or listed in `_use_default_values`.
    fn get(&self, key: &str) -> Option<&Value> {
        if self.used_defaults.contains(&key) {
            return None;
        }
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn err(&self, key: &str, expected: &str, found: &Value) -> DiffusionError {
        DiffusionError::config(
            self.path,
            key,
            format!("expected {expected}, found {found}"),
        )
    }

    fn number(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| number(v).ok_or_else(|| self.err(key, "a number", v)))
            .transpose()
    }

    fn finite(&self, key: &str) -> Result<Option<f64>> {
        match self.number(key)? {
            Some(x) if !x.is_finite() => {
                Err(self.err(key, "a finite number", &Value::from(x.to_string())))
            }
            other => Ok(other),
        }
    }

    fn count(&self, key: &str, min: u64) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                match v.as_u64().or_else(|| {
                    v.as_f64()
                        .filter(|x| x.fract() == 0.0 && *x >= 0.0)
                        .map(|x| x as u64)
                }) {
                    Some(n) if n >= min && n <= 1 << 24 => Ok(n as usize),
                    _ => Err(self.err(key, &format!("an integer >= {min}"), v)),
                }
            })
            .transpose()
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.err(key, "true or false", v)))
            .transpose()
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.err(key, "a string", v))
            })
            .transpose()
    }

    fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)]) -> Result<Option<T>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let s = v
            .as_str()
            .ok_or_else(|| self.err(key, &format!("one of {names:?}"), v))?;
        match options.iter().find(|(n, _)| *n == s) {
            Some((_, t)) => Ok(Some(*t)),
            None => Err(DiffusionError::UnsupportedConfig {
                path: self.path.to_path_buf(),
                field: key.into(),
                value: format!("{v} (supported: {})", names.join(", ")),
            }),
        }
    }
}

/// A JSON number, or one of the strings `"Infinity"`, `"-Infinity"`, `"NaN"` that
/// [`parse_lenient_json`] turns Python's bare tokens into.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            _ => None,
        },
        _ => None,
    }
}

/// Parses JSON as Python's `json.dumps` writes it: the bare tokens `NaN`, `Infinity` and
/// `-Infinity` (outside strings) become the JSON strings `"NaN"`, `"Infinity"`, `"-Infinity"`,
/// which [`SchedulerConfig::from_value`] reads as numbers. Everything else is strict JSON.
pub fn parse_lenient_json(text: &str) -> serde_json::Result<Value> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if c == '\\' {
                let escaped: String = rest.chars().take(2).collect();
                out.push_str(&escaped);
                rest = &rest[escaped.len()..];
                continue;
            }
            if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    serde_json::from_str(&out)
}
