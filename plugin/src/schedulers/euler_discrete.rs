//! Euler (Karras et al. 2022, Algorithm 2 with `s_churn = 0`): diffusers'
//! `EulerDiscreteScheduler` (`scheduling_euler_discrete.py`: `set_timesteps`,
//! `scale_model_input`, `step`, `add_noise`, `init_noise_sigma`).

use candle_core::{Result, Tensor};

use super::config::{FinalSigmasType, PredictionType, SchedulerParams, TimestepSpacing};
use super::schedule::{NoiseSchedule, euler_timesteps, interp, karras_sigmas, sigma_to_t};
use super::{Scheduler, SchedulerStepOutput, check_step_index, lin};
use crate::noise::NoiseSource;

/// The timesteps and sigmas of `EulerDiscreteScheduler.set_timesteps` (also those of
/// `EulerAncestralDiscreteScheduler`, which has neither Karras sigmas nor `final_sigmas_type`):
///
/// - timesteps by [`euler_timesteps`] (float32, `linspace` unrounded);
/// - `sigma_i = np.interp(t_i, arange(T), sigma_table)`;
/// - Karras (`karras`): `karras_sigmas(sigma_min or sigma_last, sigma_max or sigma_first, n)`
///   and the timesteps become `_sigma_to_t` of those (fractional, float32);
/// - a final sigma appended: 0 (`final_sigmas_type = zero`) or `sigma(0)` (`sigma_min`).
///
/// Returns `(timesteps, sigmas)` with `sigmas.len() == timesteps.len() + 1`, sigmas float32.
pub(crate) fn discrete_sigmas(
    params: &SchedulerParams,
    schedule: &NoiseSchedule,
    num_inference_steps: usize,
    karras: bool,
    final_sigmas_type: FinalSigmasType,
) -> (Vec<f64>, Vec<f32>) {
    let table = schedule.sigmas();
    let mut timesteps = euler_timesteps(
        params.timestep_spacing,
        params.num_train_timesteps,
        num_inference_steps,
        params.steps_offset,
    );
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &table)).collect();
    if karras && !sigmas.is_empty() {
        let sigma_min = params.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
        let sigma_max = params.sigma_max.unwrap_or(sigmas[0]);
        sigmas = karras_sigmas(sigma_min, sigma_max, num_inference_steps);
        let log_sigmas = schedule.log_sigmas();
        timesteps = sigmas
            .iter()
            .map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64)
            .collect();
    }
    let last = match final_sigmas_type {
        FinalSigmasType::Zero => 0.0,
        FinalSigmasType::SigmaMin => table[0],
    };
    let sigmas = sigmas
        .iter()
        .map(|&s| s as f32)
        .chain(std::iter::once(last))
        .collect();
    (timesteps, sigmas)
}

/// diffusers' Euler `init_noise_sigma`: the largest sigma for `linspace`/`trailing` spacing,
/// `sqrt(max_sigma^2 + 1)` for `leading` (float32).
pub(crate) fn euler_init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
    }
}

/// `x / sqrt(sigma^2 + 1)`: the UNet input of the sigma-parametrised (Euler) schedulers.
pub(crate) fn euler_scale_model_input(sample: &Tensor, sigma: f32) -> Result<Tensor> {
    sample / ((sigma * sigma + 1.0).sqrt() as f64)
}

/// `x0` of the sigma-parametrised schedulers: epsilon `x - sigma * eps`; v_prediction
/// `v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)`; sample `model_output`.
pub(crate) fn euler_x0(
    prediction_type: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    let s2 = sigma * sigma + 1.0;
    match prediction_type {
        PredictionType::Epsilon => lin(1.0, sample, -(sigma as f64), model_output),
        PredictionType::VPrediction => lin(
            -(sigma / s2.sqrt()) as f64,
            model_output,
            (1.0 / s2) as f64,
            sample,
        ),
        PredictionType::Sample => Ok(model_output.clone()),
    }
}

/// Euler discrete sampler (`s_churn = 0`: deterministic). `init_noise_sigma` as
/// `euler_init_noise_sigma` (SD 1.x, `linspace`, 6 steps: 14.6146); the UNet sees
/// `x / sqrt(sigma_i^2 + 1)` at the float timestep `t_i` (never rounded, e.g. 799.2000122).
///
/// Step `i`: `x0` by prediction type (`euler_x0`), `d = (x - x0) / sigma_i`,
/// `x_next = x + d * (sigma_{i+1} - sigma_i)`. `add_noise`: `x0 + sigma_i * noise`.
/// All tensors `[batch, channels, h, w]`.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
}

impl EulerDiscreteScheduler {
    /// diffusers' `EulerDiscreteScheduler(**params).set_timesteps(num_inference_steps)`
    /// (Karras sigmas when `params.use_karras_sigmas`).
    pub fn new(params: &SchedulerParams, num_inference_steps: usize) -> Self {
        let schedule = NoiseSchedule::new(params, true);
        let (timesteps, sigmas) = discrete_sigmas(
            params,
            &schedule,
            num_inference_steps,
            params.use_karras_sigmas,
            params.final_sigmas_type,
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

impl Scheduler for EulerDiscreteScheduler {
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerStepOutput> {
        check_step_index(step_index, self.timesteps.len())?;
        let sigma = self.sigmas[step_index];
        let x0 = euler_x0(self.prediction_type, model_output, sample, sigma)?;
        let derivative = ((sample - &x0)? / sigma as f64)?;
        let dt = self.sigmas[step_index + 1] - sigma;
        let prev_sample = (sample + (derivative * dt as f64)?)?;
        Ok(SchedulerStepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }

    /// `x0 + sigma_i * noise` (diffusers with `begin_index` set, as the img2img pipeline does).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(step_index, self.timesteps.len())?;
        lin(1.0, original, self.sigmas[step_index] as f64, noise)
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
