//! [`SchedulerParams`]: a [`SchedulerConfig`] resolved for the diffusers class a
//! [`SchedulerKind`] runs, with that class's `__init__` defaults (`Class.from_config(config)`).

use super::*;

/// A [`SchedulerConfig`] resolved for one diffusers class: every value the scheduler uses.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerParams {
    /// Training steps `T` of the noise schedule (1000 for SD).
    pub num_train_timesteps: usize,
    /// First beta of the training schedule.
    pub beta_start: f64,
    /// Last beta of the training schedule.
    pub beta_end: f64,
    /// How the betas are spread between `beta_start` and `beta_end`.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas (`trained_betas`), overriding `beta_start`/`beta_end`/`beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    /// Added to every `leading` timestep (SD 1.x: 1).
    pub steps_offset: usize,
    /// What the UNet predicts (epsilon, v, sample).
    pub prediction_type: PredictionType,
    /// How inference timesteps are spread over the training range.
    pub timestep_spacing: TimestepSpacing,
    /// DDIM: the final `alphas_cumprod` is 1 (true) or the first training one.
    pub set_alpha_to_one: bool,
    /// Clip the predicted `x0` to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    /// The range of `clip_sample`.
    pub clip_sample_range: f64,
    /// Rescale the betas to zero terminal SNR (Lin et al. 2023).
    pub rescale_betas_zero_snr: bool,
    /// Karras et al. sigmas instead of the schedule's own (Euler, DPM-Solver).
    pub use_karras_sigmas: bool,
    /// The last sigma: `zero` or the schedule's smallest.
    pub final_sigmas_type: FinalSigmasType,
    /// Euler: explicit lower end of the Karras range (`None` = the schedule's own).
    pub sigma_min: Option<f64>,
    /// Euler: explicit upper end of the Karras range (`None` = the schedule's own).
    pub sigma_max: Option<f64>,
    /// DPM-Solver: first-order final steps (fewer than 15 steps).
    pub lower_order_final: bool,
    /// DPM-Solver: an Euler step at the very end.
    pub euler_at_final: bool,
    /// DPM-Solver: the clipping threshold of `lambda(t)` (`-inf` = none).
    pub lambda_min_clipped: f64,
    /// LCM: the distillation's step count (default 50).
    pub original_inference_steps: usize,
    /// LCM: the boundary-condition scaling (default 10).
    pub timestep_scaling: f64,
}

impl SchedulerConfig {
    pub(super) fn unimplemented_value(&self, key: &str) -> Option<&Value> {
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
