//! Noise schedulers with diffusers semantics, built from a model folder's
//! `scheduler/scheduler_config.json` the way diffusers' `Class.from_config(pipe.scheduler.config)`
//! does: whichever class the folder names, a request may run any of ours with that config.
//!
//! | kind | diffusers class |
//! |---|---|
//! | [`SchedulerKind::Ddim`] | `DDIMScheduler` (eta = 0) |
//! | [`SchedulerKind::Euler`] | `EulerDiscreteScheduler` |
//! | [`SchedulerKind::EulerAncestral`] | `EulerAncestralDiscreteScheduler` |
//! | [`SchedulerKind::DpmSolverMultistep`] | `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint) |
//! | [`SchedulerKind::DpmSolverMultistepKarras`] | the same with `use_karras_sigmas=True` |
//! | [`SchedulerKind::Lcm`] | `LCMScheduler` |
//!
//! Timesteps are `f64` (Euler schedules are fractional, e.g. 799.2; integer schedules are exact).

pub mod config;
pub mod ddim;
pub mod dpm_solver_multistep;
pub mod euler_ancestral_discrete;
pub mod euler_discrete;
pub mod lcm;
pub mod schedule;

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

pub use config::{PredictionType, SchedulerConfig, TimestepSpacing};

use crate::noise::NoiseSource;

/// Which scheduler a request runs. Serialised (and parsed) as the CLI names:
/// `ddim`, `euler`, `euler-a`, `dpmpp-2m`, `dpmpp-2m-karras`, `lcm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchedulerKind {
    #[serde(rename = "ddim")]
    Ddim,
    #[serde(rename = "euler")]
    Euler,
    #[serde(rename = "euler-a")]
    EulerAncestral,
    #[serde(rename = "dpmpp-2m")]
    DpmSolverMultistep,
    #[serde(rename = "dpmpp-2m-karras")]
    DpmSolverMultistepKarras,
    #[serde(rename = "lcm")]
    Lcm,
}

/// One scheduler step's results, `[batch, channels, h, w]` each.
#[derive(Debug, Clone)]
pub struct SchedulerStepOutput {
    /// x_{t-1}: the latents for the next step (or the final latents after the last step).
    pub prev_sample: Tensor,
    /// The scheduler's estimate of the clean latents x_0 (LCM: its `denoised`; DPM++: its data
    /// prediction), used for previews.
    pub pred_original_sample: Tensor,
}

/// A configured scheduler for one generation (stateful: DPM-Solver++ keeps a history).
///
/// The pipeline calls, for each `step_index` in `begin..timesteps().len()`:
/// `scale_model_input` -> UNet at `timesteps()[step_index]` -> `step`.
pub trait Scheduler: Send {
    /// The timesteps the UNet sees, in order (length = num_inference_steps).
    fn timesteps(&self) -> &[f64];
    /// Standard deviation of the initial noise (`init_noise_sigma`): initial latents are
    /// unit noise times this.
    fn init_noise_sigma(&self) -> f64;
    /// diffusers' `scale_model_input`: the UNet input for `sample` at `step_index`
    /// (identity for DDIM/DPM++/LCM, `x / sqrt(sigma^2 + 1)` for Euler schedulers).
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor>;
    /// Advances `sample` (x_t at `timesteps()[step_index]`) given the (guided) `model_output`.
    /// Ancestral/consistency schedulers draw their noise from `noise`, in diffusers' order.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<SchedulerStepOutput>;
    /// diffusers' `add_noise`: noises clean latents `original` with unit `noise` to the level of
    /// `timesteps()[step_index]` (img2img starts there).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor>;
}
