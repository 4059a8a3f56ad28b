//! Latent Consistency Model multistep sampling (Luo et al. 2023): diffusers' `LCMScheduler`
//! (`scheduling_lcm.py`: `set_timesteps` with `strength = 1`,
//! `get_scalings_for_boundary_condition_discrete`, `step`, `add_noise`).

use candle_core::{Result, Tensor};

use super::config::{PredictionType, SchedulerParams};
use super::ddim::predict_x0_eps;
use super::schedule::{NoiseSchedule, lcm_timesteps};
use super::{Scheduler, SchedulerStepOutput, check_step_index, lin};
use crate::noise::NoiseSource;

/// LCM sampler. Timesteps by [`lcm_timesteps`] from `original_inference_steps` (50:
/// 4 steps are 999, 759, 499, 259; `timestep_spacing` and `steps_offset` are not used);
/// `init_noise_sigma = 1`, `scale_model_input` is the identity.
///
/// Step `i` at `t`, next timestep `t'` (= `t` on the last step):
/// - `x0` as DDIM (epsilon `(x - sqrt(1 - abar_t) eps) / sqrt(abar_t)`, v_prediction
///   `sqrt(abar_t) x - sqrt(1 - abar_t) v`, sample), clamped with `clip_sample`;
/// - boundary condition, `sigma_data = 0.5`, `u = t * timestep_scaling`:
///   `c_skip = sigma_data^2 / (u^2 + sigma_data^2)`, `c_out = u / sqrt(u^2 + sigma_data^2)`,
///   `denoised = c_out * x0 + c_skip * x` (returned as `pred_original_sample`);
/// - not the last step: `x_next = sqrt(abar_t') * denoised + sqrt(1 - abar_t') * z`, `z` one
///   unit-normal draw from the step's [`NoiseSource`]; the last step returns `denoised` and
///   draws nothing.
///
/// `add_noise`: `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`. Tensors `[batch, channels, h, w]`.
/// (diffusers' LCM img2img pipeline instead passes `strength` to `set_timesteps`, which thins
/// the origin schedule; with this trait img2img runs the tail of the full schedule.)
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    prediction_type: PredictionType,
    clip_sample: Option<f64>,
    timestep_scaling: f64,
}

impl LcmScheduler {
    /// diffusers' `LCMScheduler(**params).set_timesteps(num_inference_steps)`; `None` when
    /// `num_inference_steps > original_inference_steps` (diffusers raises).
    pub fn new(params: &SchedulerParams, num_inference_steps: usize) -> Option<Self> {
        let timesteps = lcm_timesteps(
            params.num_train_timesteps,
            params.original_inference_steps,
            num_inference_steps,
        )?;
        Some(Self {
            schedule: NoiseSchedule::new(params, false),
            timesteps,
            prediction_type: params.prediction_type,
            clip_sample: params.clip_sample.then_some(params.clip_sample_range),
            timestep_scaling: params.timestep_scaling,
        })
    }

    /// `(c_skip, c_out)` at timestep `t` (`get_scalings_for_boundary_condition_discrete`).
    pub fn boundary_scalings(&self, t: f64) -> (f64, f64) {
        let sigma_data2 = 0.25;
        let u = t * self.timestep_scaling;
        (
            sigma_data2 / (u * u + sigma_data2),
            u / (u * u + sigma_data2).sqrt(),
        )
    }
}

impl Scheduler for LcmScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerStepOutput> {
        let n = self.timesteps.len();
        check_step_index(step_index, n)?;
        let t = self.timesteps[step_index];
        let alpha_prod_t = self.schedule.alpha_cumprod(t as usize);
        let (mut x0, _) = predict_x0_eps(self.prediction_type, model_output, sample, alpha_prod_t)?;
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range)?;
        }
        let (c_skip, c_out) = self.boundary_scalings(t);
        let denoised = lin(c_out, &x0, c_skip, sample)?;
        let prev_sample = if step_index + 1 < n {
            let alpha_prod_prev = self
                .schedule
                .alpha_cumprod(self.timesteps[step_index + 1] as usize);
            let z = noise.randn(model_output.dims(), model_output.device())?;
            lin(
                alpha_prod_prev.sqrt() as f64,
                &denoised,
                (1.0 - alpha_prod_prev).sqrt() as f64,
                &z,
            )?
        } else {
            denoised.clone()
        };
        Ok(SchedulerStepOutput {
            prev_sample,
            pred_original_sample: denoised,
        })
    }

    /// `sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise` at `t = timesteps()[step_index]`.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(step_index, self.timesteps.len())?;
        self.schedule
            .add_noise(original, noise, self.timesteps[step_index] as usize)
    }
}
