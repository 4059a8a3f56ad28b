//! Euler ancestral: diffusers' `EulerAncestralDiscreteScheduler`
//! (`scheduling_euler_ancestral_discrete.py`: `set_timesteps`, `scale_model_input`, `step`,
//! `add_noise`, `init_noise_sigma`).

use candle_core::{Result, Tensor};

use super::config::{FinalSigmasType, PredictionType, SchedulerParams};
use super::euler_discrete::{
    discrete_sigmas, euler_init_noise_sigma, euler_scale_model_input, euler_x0,
};
use super::schedule::NoiseSchedule;
use super::{Scheduler, SchedulerStepOutput, check_step_index, lin};
use crate::noise::NoiseSource;

/// Euler ancestral sampler. Timesteps and sigmas as Euler's (no Karras option, final sigma
/// always 0), `init_noise_sigma` the same (SD 1.x `leading`, 4 steps: 4.23641), UNet input
/// `x / sqrt(sigma_i^2 + 1)`.
///
/// Step `i` (`sigma_from = sigma_i`, `sigma_to = sigma_{i+1}`):
/// - `x0` by prediction type (epsilon `x - sigma_i * eps`; v_prediction
///   `v * (-sigma_i / sqrt(sigma_i^2 + 1)) + x / (sigma_i^2 + 1)`; `sample` is refused when
///   building, as diffusers raises `NotImplementedError`);
/// - `sigma_up = sqrt(sigma_to^2 * (sigma_from^2 - sigma_to^2) / sigma_from^2)`,
///   `sigma_down = sqrt(sigma_to^2 - sigma_up^2)`;
/// - `x_next = x + (x - x0) / sigma_i * (sigma_down - sigma_i) + z * sigma_up`, with `z` one
///   unit-normal draw of the model output's shape from the step's [`NoiseSource`], made on
///   every step, the last included (where `sigma_up = 0`), to keep diffusers' draw order.
///
/// `add_noise`: `x0 + sigma_i * noise`. Tensors `[batch, channels, h, w]`.
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
}

impl EulerAncestralDiscreteScheduler {
    /// diffusers' `EulerAncestralDiscreteScheduler(**params).set_timesteps(num_inference_steps)`.
    pub fn new(params: &SchedulerParams, num_inference_steps: usize) -> Self {
        let schedule = NoiseSchedule::new(params, true);
        let (timesteps, sigmas) = discrete_sigmas(
            params,
            &schedule,
            num_inference_steps,
            false,
            FinalSigmasType::Zero,
        );
        let init_noise_sigma = euler_init_noise_sigma(&sigmas, params.timestep_spacing);
        Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction_type: params.prediction_type,
        }
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(step_index, self.timesteps.len())?;
        euler_scale_model_input(sample, self.sigmas[step_index])
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerStepOutput> {
        check_step_index(step_index, self.timesteps.len())?;
        let sigma_from = self.sigmas[step_index];
        let sigma_to = self.sigmas[step_index + 1];
        let x0 = euler_x0(self.prediction_type, model_output, sample, sigma_from)?;
        let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        // `max(0)`: rounding must not turn a zero into NaN (diffusers would, for sigma_to << sigma_from).
        let sigma_down = (to2 - sigma_up * sigma_up).max(0.0).sqrt();
        let derivative = ((sample - &x0)? / sigma_from as f64)?;
        let prev_sample = (sample + (derivative * (sigma_down - sigma_from) as f64)?)?;
        let z = noise.randn(model_output.dims(), model_output.device())?;
        let prev_sample = lin(1.0, &prev_sample, sigma_up as f64, &z)?;
        Ok(SchedulerStepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }

    /// `x0 + sigma_i * noise`.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(step_index, self.timesteps.len())?;
        lin(1.0, original, self.sigmas[step_index] as f64, noise)
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
