//! DDIM (Song et al. 2021) with `eta = 0`: diffusers' `DDIMScheduler`
//! (`scheduling_ddim.py`: `set_timesteps`, `step`, `add_noise`).

use std::path::Path;

use candle_core::{Result, Tensor};

use super::config::{PredictionType, SchedulerParams};
use super::schedule::{NoiseSchedule, ddim_timesteps};
use super::{Scheduler, SchedulerStepOutput, check_step_index, lin};
use crate::error::DiffusionError;
use crate::noise::NoiseSource;

/// Deterministic DDIM. Timesteps by [`ddim_timesteps`] (SD 1.x config, 4 steps: 751, 501, 251,
/// 1); `init_noise_sigma = 1`; `scale_model_input` is the identity; draws no noise.
///
/// Step at `t` with `prev_t = t - T // n` (diffusers' rule whatever the spacing),
/// `abar_prev = abar[prev_t]`, or `final_alpha_cumprod` when `prev_t < 0` (1 with
/// `set_alpha_to_one`, else `abar[0]`):
/// - epsilon: `x0 = (x - sqrt(1 - abar_t) * eps) / sqrt(abar_t)`;
/// - v_prediction: `x0 = sqrt(abar_t) * x - sqrt(1 - abar_t) * v`,
///   `eps = sqrt(abar_t) * v + sqrt(1 - abar_t) * x`;
/// - sample: `x0 = model_output`, `eps = (x - sqrt(abar_t) * x0) / sqrt(1 - abar_t)`;
/// - `x0` clamped to `±clip_sample_range` with `clip_sample` (`eps` is not recomputed:
///   `use_clipped_model_output = False`);
/// - `x_prev = sqrt(abar_prev) * x0 + sqrt(1 - abar_prev) * eps`.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    schedule: NoiseSchedule,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    step_ratio: usize,
    prediction_type: PredictionType,
    clip_sample: Option<f64>,
}

impl DdimScheduler {
    /// diffusers' `DDIMScheduler(**params).set_timesteps(num_inference_steps)`. `path` names the
    /// config in the error for a `steps_offset` that pushes a timestep past `T - 1`.
    pub fn new(
        params: &SchedulerParams,
        num_inference_steps: usize,
        path: &Path,
    ) -> crate::Result<Self> {
        let schedule = NoiseSchedule::new(params, false);
        let t = params.num_train_timesteps;
        let timesteps = ddim_timesteps(
            params.timestep_spacing,
            t,
            num_inference_steps,
            params.steps_offset,
        );
        check_integer_timesteps(&timesteps, t, path)?;
        let final_alpha_cumprod = if params.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Self {
            schedule,
            final_alpha_cumprod,
            timesteps,
            step_ratio: t / num_inference_steps,
            prediction_type: params.prediction_type,
            clip_sample: params.clip_sample.then_some(params.clip_sample_range),
        })
    }
}

/// Refuses integer timesteps outside `0..T` (diffusers would fail indexing `alphas_cumprod`):
/// `leading` spacing plus `steps_offset` reaches `T` when `T // n == 1` (e.g. 1000 steps).
pub(crate) fn check_integer_timesteps(
    timesteps: &[f64],
    t: usize,
    path: &Path,
) -> crate::Result<()> {
    match timesteps.iter().find(|&&ts| !(ts >= 0.0 && ts < t as f64)) {
        Some(bad) => Err(DiffusionError::InvalidRequest {
            field: "num_inference_steps",
            value: timesteps.len().to_string(),
            reason: format!(
                "gives timestep {bad} with the steps_offset/timestep_spacing of {}, outside the {t} training \
                 timesteps; use fewer steps or another timestep_spacing",
                path.display()
            ),
        }),
        None => Ok(()),
    }
}

/// `(x0, eps)` from a model output at `abar_t` (shared by DDIM and LCM).
pub(crate) fn predict_x0_eps(
    prediction_type: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_prod_t: f32,
) -> Result<(Tensor, Tensor)> {
    let beta_prod_t = 1.0 - alpha_prod_t;
    let (sa, sb) = (alpha_prod_t.sqrt() as f64, beta_prod_t.sqrt() as f64);
    Ok(match prediction_type {
        PredictionType::Epsilon => (
            (lin(1.0, sample, -sb, model_output)? / sa)?,
            model_output.clone(),
        ),
        PredictionType::Sample => (
            model_output.clone(),
            (lin(1.0, sample, -sa, model_output)? / sb)?,
        ),
        PredictionType::VPrediction => (
            lin(sa, sample, -sb, model_output)?,
            lin(sa, model_output, sb, sample)?,
        ),
    })
}

impl Scheduler for DdimScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerStepOutput> {
        check_step_index(step_index, self.timesteps.len())?;
        let t = self.timesteps[step_index] as usize;
        let prev_t = t as i64 - self.step_ratio as i64;
        let alpha_prod_t = self.schedule.alpha_cumprod(t);
        let alpha_prod_prev = if prev_t >= 0 {
            self.schedule.alpha_cumprod(prev_t as usize)
        } else {
            self.final_alpha_cumprod
        };
        let (mut x0, eps) =
            predict_x0_eps(self.prediction_type, model_output, sample, alpha_prod_t)?;
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range)?;
        }
        let prev_sample = lin(
            alpha_prod_prev.sqrt() as f64,
            &x0,
            (1.0 - alpha_prod_prev).sqrt() as f64,
            &eps,
        )?;
        Ok(SchedulerStepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }

    /// `sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise` at `t = timesteps()[step_index]`.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(step_index, self.timesteps.len())?;
        self.schedule
            .add_noise(original, noise, self.timesteps[step_index] as usize)
    }
}
