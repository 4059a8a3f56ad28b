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

pub use config::{
    BetaSchedule, FinalSigmasType, PredictionType, SchedulerConfig, SchedulerParams,
    TimestepSpacing,
};
pub use ddim::DdimScheduler;
pub use dpm_solver_multistep::DpmSolverMultistepScheduler;
pub use euler_ancestral_discrete::EulerAncestralDiscreteScheduler;
pub use euler_discrete::EulerDiscreteScheduler;
pub use lcm::LcmScheduler;

use crate::error::DiffusionError;
use crate::noise::NoiseSource;

/// Which scheduler a request runs. Serialised (and parsed) as the CLI names:
/// `ddim`, `euler`, `euler-a`, `dpmpp-2m`, `dpmpp-2m-karras`, `lcm`; the Rust variant names are
/// accepted too when parsing (`EulerAncestral`: RON cannot write `euler-a` without `r#`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchedulerKind {
    /// diffusers `DDIMScheduler` (`schedulers/ddim.rs`): deterministic, eta 0.
    #[serde(rename = "ddim", alias = "Ddim")]
    Ddim,
    /// diffusers `EulerDiscreteScheduler` (`schedulers/euler_discrete.rs`).
    #[serde(rename = "euler", alias = "Euler")]
    Euler,
    /// diffusers `EulerAncestralDiscreteScheduler` (`schedulers/euler_ancestral_discrete.rs`): fresh noise each step.
    #[serde(rename = "euler-a", alias = "EulerAncestral")]
    EulerAncestral,
    /// diffusers `DPMSolverMultistepScheduler`, DPM-Solver++ 2M (`schedulers/dpm_solver_multistep.rs`).
    #[serde(rename = "dpmpp-2m", alias = "DpmSolverMultistep")]
    DpmSolverMultistep,
    /// DPM-Solver++ 2M with `use_karras_sigmas=True`.
    #[serde(rename = "dpmpp-2m-karras", alias = "DpmSolverMultistepKarras")]
    DpmSolverMultistepKarras,
    /// diffusers `LCMScheduler` (`schedulers/lcm.rs`): latent-consistency models, 1-8 steps.
    #[serde(rename = "lcm", alias = "Lcm")]
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
    /// unit noise times this. 1 for DDIM, DPM++ and LCM.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// diffusers' `scale_model_input`: the UNet input for `sample` at `step_index`
    /// (identity for DDIM/DPM++/LCM, `x / sqrt(sigma^2 + 1)` for Euler schedulers).
    fn scale_model_input(&self, sample: &Tensor, _step_index: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }
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
    /// The sigma schedule (float32, `timesteps().len() + 1` entries, the last one the final
    /// sigma) of the sigma-parametrised schedulers (Euler, Euler ancestral, DPM-Solver++);
    /// `None` for DDIM and LCM, which have none.
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }
}

/// Builds the scheduler `kind` for `num_inference_steps` steps from a folder's config, as
/// diffusers' `<Class>.from_config(config, timestep_spacing=spacing_override)` followed by
/// `set_timesteps(num_inference_steps)` (see [`SchedulerConfig::resolve`] for how missing keys
/// are filled and which options are refused).
///
/// Errors: [`DiffusionError::InvalidRequest`] (`num_inference_steps`) for 0 steps, more steps
/// than `num_train_timesteps`, or (LCM) more than `original_inference_steps`;
/// [`DiffusionError::UnsupportedConfig`] / [`DiffusionError::InvalidConfig`] naming the config
/// file and field for options the scheduler would use but we do not implement.
pub fn build_scheduler(
    config: &SchedulerConfig,
    kind: SchedulerKind,
    num_inference_steps: usize,
    spacing_override: Option<TimestepSpacing>,
) -> crate::Result<Box<dyn Scheduler>> {
    let mut params = config.resolve(kind)?;
    if let Some(spacing) = spacing_override {
        params.timestep_spacing = spacing;
    }
    let bad_steps = |reason: String| DiffusionError::InvalidRequest {
        field: "num_inference_steps",
        value: num_inference_steps.to_string(),
        reason,
    };
    if num_inference_steps == 0 {
        return Err(bad_steps("must be at least 1".into()));
    }
    if num_inference_steps > params.num_train_timesteps {
        return Err(bad_steps(format!(
            "must be at most num_train_timesteps = {} (the training schedule's length)",
            params.num_train_timesteps
        )));
    }
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(DdimScheduler::new(
            &params,
            num_inference_steps,
            &config.path,
        )?),
        SchedulerKind::Euler => Box::new(EulerDiscreteScheduler::new(&params, num_inference_steps)),
        SchedulerKind::EulerAncestral => Box::new(EulerAncestralDiscreteScheduler::new(
            &params,
            num_inference_steps,
        )),
        SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverMultistepKarras => Box::new(
            DpmSolverMultistepScheduler::new(&params, num_inference_steps),
        ),
        SchedulerKind::Lcm => match LcmScheduler::new(&params, num_inference_steps) {
            Some(s) => Box::new(s),
            None => {
                return Err(bad_steps(format!(
                    "LCM runs at most original_inference_steps = {} steps (and needs num_train_timesteps >= it)",
                    params.original_inference_steps
                )));
            }
        },
    })
}

/// `a * x + b * y` for tensors of one shape.
pub(crate) fn lin(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    x.affine(a, 0.0)? + y.affine(b, 0.0)?
}

/// Errors (instead of panicking) on a step index past the schedule.
pub(crate) fn check_step_index(step_index: usize, len: usize) -> Result<()> {
    if step_index >= len {
        candle_core::bail!(
            "scheduler step_index {step_index} is out of range: the schedule has {len} steps"
        );
    }
    Ok(())
}
