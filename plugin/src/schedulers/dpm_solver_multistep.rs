//! DPM-Solver++(2M) (Lu et al. 2022): diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type = "dpmsolver++"`, `solver_order = 2`, `solver_type = "midpoint"`
//! (`scheduling_dpmsolver_multistep.py`: `set_timesteps`, `convert_model_output`,
//! `dpm_solver_first_order_update`, `multistep_dpm_solver_second_order_update`, `step`,
//! `add_noise`), optionally with Karras sigmas (`use_karras_sigmas`).

use candle_core::{Result, Tensor};

use super::config::{BetaSchedule, FinalSigmasType, PredictionType, SchedulerParams};
use super::schedule::{
    NoiseSchedule, dpm_timesteps, interp, karras_sigmas, round_half_even, sigma_to_t,
};
use super::{Scheduler, SchedulerStepOutput, check_step_index, lin};
use crate::noise::NoiseSource;

/// `(alpha_t, sigma_t, lambda_t)` of a sigma: `alpha = 1 / sqrt(sigma^2 + 1)`,
/// `sigma_t = sigma * alpha`, `lambda = log(alpha) - log(sigma_t)` (`+inf` for sigma 0).
fn alpha_sigma_lambda(sigma: f32) -> (f64, f64, f64) {
    let sigma = sigma as f64;
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let s = sigma * alpha;
    (alpha, s, alpha.ln() - s.ln())
}

/// DPM-Solver++ 2M (multistep, data prediction, midpoint), deterministic.
///
/// Timesteps ([`dpm_timesteps`], int64; SD 1.x `leading`, 8 steps: 889, 778, …, 112) with
/// `sigma_i = np.interp(t_i, arange(T), sigma_table)`; with Karras sigmas
/// `karras_sigmas(sigma(0), sigma(T-1), n)` and `t_i = round(_sigma_to_t(sigma_i))` (truncated
/// for `squaredcos_cap_v2`): the solver uses the exact sigmas, the UNet the rounded timesteps.
/// A final sigma 0 (`final_sigmas_type = zero`) or `sigma(0)` is appended.
/// `init_noise_sigma = 1`, `scale_model_input` is the identity.
///
/// Step `i` with `alpha_i = 1/sqrt(sigma_i^2+1)`, `s_i = sigma_i * alpha_i`,
/// `lambda_i = log(alpha_i) - log(s_i)`, `h = lambda_{i+1} - lambda_i`:
/// - data prediction (returned as `pred_original_sample`): epsilon
///   `x0_i = (x_i - s_i * eps) / alpha_i`, v_prediction `x0_i = alpha_i * x_i - s_i * v`,
///   sample `x0_i = model_output`;
/// - first order (the first step of a run — img2img starts mid-schedule —, and the last step
///   when `euler_at_final`, or `lower_order_final` with fewer than 15 steps, or a zero final
///   sigma): `x_{i+1} = (s_{i+1}/s_i) x_i - alpha_{i+1} (e^{-h} - 1) x0_i` (exactly `x0_i` when
///   `sigma_{i+1} = 0`);
/// - second order, midpoint: `r0 = (lambda_i - lambda_{i-1}) / h`, `D1 = (x0_i - x0_{i-1}) / r0`,
///   `x_{i+1} = (s_{i+1}/s_i) x_i - alpha_{i+1} (e^{-h} - 1) x0_i - 0.5 alpha_{i+1} (e^{-h} - 1) D1`.
///
/// `add_noise`: `alpha_i * x0 + s_i * noise`. Tensors `[batch, channels, h, w]`.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigmas_type: FinalSigmasType,
    /// The data prediction of the previous step of this run, with its step index.
    previous: Option<(usize, Tensor)>,
}

impl DpmSolverMultistepScheduler {
    /// diffusers' `DPMSolverMultistepScheduler(**params, algorithm_type="dpmsolver++",
    /// solver_order=2).set_timesteps(num_inference_steps)`; Karras sigmas when
    /// `params.use_karras_sigmas`.
    pub fn new(params: &SchedulerParams, num_inference_steps: usize) -> Self {
        let schedule = NoiseSchedule::new(params, true);
        let t = params.num_train_timesteps;
        let table = schedule.sigmas();
        // lambda_min_clipped: the schedule ends where lambda_t (float32) drops below it.
        let last_timestep = if params.lambda_min_clipped == f64::NEG_INFINITY {
            t
        } else {
            let clipped = schedule
                .alphas_cumprod
                .iter()
                .map(|&a| ((a.sqrt() as f64).ln() as f32) - (((1.0 - a).sqrt() as f64).ln() as f32))
                .filter(|&l| (l as f64) < params.lambda_min_clipped)
                .count();
            t - clipped
        };
        let (timesteps, sigmas): (Vec<f64>, Vec<f64>) = if params.use_karras_sigmas {
            let sigmas = karras_sigmas(table[0] as f64, table[t - 1] as f64, num_inference_steps);
            let log_sigmas = schedule.log_sigmas();
            let timesteps = sigmas
                .iter()
                .map(|&s| {
                    let ts = sigma_to_t(s, &log_sigmas);
                    // int64 cast: rounded, except for the cosine schedule (truncated).
                    if params.beta_schedule == BetaSchedule::SquaredCosCapV2 {
                        ts.trunc()
                    } else {
                        round_half_even(ts)
                    }
                })
                .collect();
            (timesteps, sigmas)
        } else {
            let timesteps = dpm_timesteps(
                params.timestep_spacing,
                t,
                last_timestep,
                num_inference_steps,
                params.steps_offset,
            );
            let sigmas = timesteps.iter().map(|&ts| interp(ts, &table)).collect();
            (timesteps, sigmas)
        };
        let last = match params.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => table[0],
        };
        let sigmas = sigmas
            .iter()
            .map(|&s| s as f32)
            .chain(std::iter::once(last))
            .collect();
        Self {
            timesteps,
            sigmas,
            prediction_type: params.prediction_type,
            lower_order_final: params.lower_order_final,
            euler_at_final: params.euler_at_final,
            final_sigmas_type: params.final_sigmas_type,
            previous: None,
        }
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
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
        let n = self.timesteps.len();
        check_step_index(step_index, n)?;
        let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.sigmas[step_index]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[step_index + 1]);
        let x0 = match self.prediction_type {
            PredictionType::Epsilon => (lin(1.0, sample, -sigma_s0, model_output)? / alpha_s0)?,
            PredictionType::VPrediction => lin(alpha_s0, sample, -sigma_s0, model_output)?,
            PredictionType::Sample => model_output.clone(),
        };
        let lower_order_final = step_index == n - 1
            && (self.euler_at_final
                || (self.lower_order_final && n < 15)
                || self.final_sigmas_type == FinalSigmasType::Zero);
        let h = lambda_t - lambda_s0;
        let phi = alpha_t * ((-h).exp() - 1.0); // alpha_t * (e^{-h} - 1)
        let ratio = if sigma_t == 0.0 {
            0.0
        } else {
            sigma_t / sigma_s0
        };
        let first_order = lin(ratio, sample, -phi, &x0)?;
        let prev_sample = match self.previous.take() {
            Some((prev_index, prev_x0)) if prev_index + 1 == step_index && !lower_order_final => {
                let (_, _, lambda_s1) = alpha_sigma_lambda(self.sigmas[step_index - 1]);
                let r0 = (lambda_s0 - lambda_s1) / h;
                let d1 = ((&x0 - &prev_x0)? * (1.0 / r0))?;
                (first_order - (d1 * (0.5 * phi))?)?
            }
            _ => first_order,
        };
        self.previous = Some((step_index, x0.clone()));
        Ok(SchedulerStepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }

    /// `alpha_i * x0 + s_i * noise` with `alpha_i = 1/sqrt(sigma_i^2 + 1)`, `s_i = sigma_i * alpha_i`.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(step_index, self.timesteps.len())?;
        let (alpha, sigma, _) = alpha_sigma_lambda(self.sigmas[step_index]);
        lin(alpha, original, sigma, noise)
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
