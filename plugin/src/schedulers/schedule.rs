//! The parts every scheduler shares, computed with diffusers' (torch/numpy) numerics so that
//! integer timesteps come out identical and float ones bit-identical to diffusers' float32 values:
//!
//! - [`NoiseSchedule`]: `betas` and `alphas_cumprod` exactly as diffusers' `__init__` (float32,
//!   `torch.linspace` with torch's CPU kernel, `torch.cumprod` accumulating in float64 as torch's
//!   CPU kernel does), optional zero-terminal-SNR rescaling;
//! - sigma tables `sigma(t) = sqrt((1 - abar_t) / abar_t)` (float32), `np.interp`, `_sigma_to_t`,
//!   Karras sigmas;
//! - the three `timestep_spacing` rules in the variants of DDIM/LCM (int64), Euler (float32) and
//!   DPM-Solver (int64, `n + 1` points).

use candle_core::Tensor;

use super::config::{BetaSchedule, SchedulerParams, TimestepSpacing};

/// The training noise schedule of `T = num_train_timesteps` steps.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// `beta_t`, float32, length T.
    pub betas: Vec<f32>,
    /// `abar_t = prod_{s <= t} (1 - beta_s)`, float32, length T.
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// diffusers' `__init__`: betas from `trained_betas` or `beta_schedule`, then
    /// `rescale_zero_terminal_snr` if `rescale_betas_zero_snr`, then `alphas_cumprod`.
    ///
    /// `clamp_terminal`: the sigma-based schedulers (Euler, Euler ancestral, DPM-Solver) set
    /// `alphas_cumprod[-1] = 2**-24` after zero-SNR rescaling so that the largest sigma is finite
    /// (4096); DDIM and LCM keep the exact 0.
    pub fn new(params: &SchedulerParams, clamp_terminal: bool) -> Self {
        let t = params.num_train_timesteps;
        let mut betas: Vec<f32> = match (&params.trained_betas, params.beta_schedule) {
            (Some(b), _) => b.iter().map(|&x| x as f32).collect(),
            (None, BetaSchedule::Linear) => {
                torch_linspace_f32(params.beta_start, params.beta_end, t)
            }
            (None, BetaSchedule::ScaledLinear) => {
                torch_linspace_f32(params.beta_start.sqrt(), params.beta_end.sqrt(), t)
                    .iter()
                    .map(|b| b * b)
                    .collect()
            }
            (None, BetaSchedule::SquaredCosCapV2) => betas_for_alpha_bar_cosine(t, 0.999),
        };
        if params.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = cumprod(&alphas);
        if params.rescale_betas_zero_snr
            && clamp_terminal
            && let Some(last) = alphas_cumprod.last_mut()
        {
            *last = 2f32.powi(-24);
        }
        Self {
            betas,
            alphas_cumprod,
        }
    }

    /// diffusers' `add_noise` for discrete-time schedulers (DDIM, LCM):
    /// `sqrt(abar_t) * original + sqrt(1 - abar_t) * noise`, shapes `[batch, channels, h, w]`.
    pub fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        t: usize,
    ) -> candle_core::Result<Tensor> {
        let a = self.alpha_cumprod(t);
        super::lin(a.sqrt() as f64, original, (1.0 - a).sqrt() as f64, noise)
    }

    /// `abar` at an integer timestep (DDIM/LCM index `alphas_cumprod[t]`).
    pub fn alpha_cumprod(&self, t: usize) -> f32 {
        self.alphas_cumprod[t]
    }

    /// `sigma_t = sqrt((1 - abar_t) / abar_t)` for every training timestep (float32 ops, as
    /// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`), increasing with t.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }

    /// `np.log(sigmas)` of the float32 table (float32 results), used by [`sigma_to_t`].
    pub fn log_sigmas(&self) -> Vec<f32> {
        self.sigmas()
            .iter()
            .map(|&s| (s as f64).ln() as f32)
            .collect()
    }
}

/// `torch.linspace(start, end, n, dtype=torch.float32)` as torch's CPU kernel computes it:
/// `step = (end - start) / (n - 1)` in float32, the first half `start + step * i`, the second
/// half `end - step * (n - 1 - i)`, each a fused multiply-add (one rounding).
pub fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n <= 1 {
        return vec![start; n];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// `torch.cumprod` of a float32 vector on the CPU: the running product is kept in float64 and
/// each entry rounded to float32.
pub fn cumprod(values: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    values
        .iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar(T, max_beta, "cosine")` (`squaredcos_cap_v2`):
/// `beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)`,
/// `abar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2`, computed in float64, stored as float32.
pub fn betas_for_alpha_bar_cosine(t: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |x: f64| {
        ((x + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..t)
        .map(|i| {
            let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, Algorithm 1), in float32:
/// shift and scale `sqrt(abar)` so that its last entry is 0 and its first unchanged, then
/// recover the betas.
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_abar: Vec<f32> = cumprod(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt_abar[0], sqrt_abar[sqrt_abar.len() - 1]);
    let scale = first / (first - last);
    for s in sqrt_abar.iter_mut() {
        *s -= last;
        *s *= scale;
    }
    let abar: Vec<f32> = sqrt_abar.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(abar.len());
    out.push(1.0 - abar[0]);
    out.extend(abar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// `np.interp(x, arange(len(fp)), fp)` with float32 table values: the table value at integer
/// `x`, linear interpolation between neighbours otherwise, clamped to the ends.
pub fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let slope = fp[j + 1] as f64 - fp[j] as f64;
    slope * (x - j as f64) + fp[j] as f64
}

/// diffusers' `_sigma_to_t`: the (fractional) timestep whose sigma is `sigma`, by linear
/// interpolation in log sigma over the float32 table `log_sigmas` (increasing):
/// `k` = the last index with `log_sigmas[k] <= log(sigma)` (0 if none, at most T - 2),
/// `w = clip((log_sigmas[k] - log sigma) / (log_sigmas[k] - log_sigmas[k+1]), 0, 1)`,
/// `t = (1 - w) * k + w * (k + 1)`.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let k = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (low, high) = (log_sigmas[k], log_sigmas[k + 1]);
    // numpy: float32 scalar - float64 scalar is float64; float32 - float32 stays float32.
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * k as f64 + w * (k + 1) as f64
}

/// Karras et al. (2022) sigmas, diffusers' `_convert_to_karras` (float64, rho = 7):
/// `sigma_i = (sigma_max^(1/rho) + ramp_i * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`,
/// `ramp = linspace(0, 1, n)`; decreasing from `sigma_max` to `sigma_min`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .iter()
        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// `np.linspace(start, stop, n)` (endpoint included) in float64: `i * step + start`, the last
/// entry exactly `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n <= 1 {
        return vec![start; n];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// `np.arange(start, stop, step)` for float64 arguments: `ceil((stop - start) / step)` values
/// `start + i * delta` with `delta = (start + step) - start` (numpy's fill rule).
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let second = start + step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.round`: round half to even.
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// The `trailing` rule shared by every class: `round(arange(last, 0, -T / n)) - 1`.
///
/// Deviation: for 62 step counts up to 1000 (61, 103, 121, …) float rounding makes numpy's
/// `arange` one element longer, ending in timestep -1 (which diffusers' DDIM then indexes as
/// `alphas_cumprod[-1]`, the last entry); we keep the first `n` values.
fn trailing(last: usize, t: usize, n: usize) -> Vec<f64> {
    np_arange(last as f64, 0.0, -(t as f64 / n as f64))
        .into_iter()
        .take(n)
        .map(|x| round_half_even(x) - 1.0)
        .collect()
}

/// DDIM's (and LCM-free integer) `set_timesteps`, int64 values as f64, decreasing:
/// `linspace`: `round(linspace(0, T - 1, n))` reversed; `leading`: `arange(n) * (T // n)`
/// reversed, `+ steps_offset`; `trailing`: `round(arange(T, 0, -T / n)) - 1`.
pub fn ddim_timesteps(
    spacing: TimestepSpacing,
    t: usize,
    n: usize,
    steps_offset: usize,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(round_half_even)
            .collect(),
        TimestepSpacing::Leading => (0..n)
            .rev()
            .map(|i| (i * (t / n) + steps_offset) as f64)
            .collect(),
        TimestepSpacing::Trailing => trailing(t, t, n),
    }
}

/// Euler / Euler ancestral `set_timesteps`: float32 values (as f64), decreasing. Like
/// [`ddim_timesteps`] except `linspace`, which is not rounded: `linspace(0, T - 1, n)` in float64,
/// stored as float32 (6 steps: 999, 799.2000122, 599.4000244, …, 0).
pub fn euler_timesteps(
    spacing: TimestepSpacing,
    t: usize,
    n: usize,
    steps_offset: usize,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|x| x as f32 as f64)
            .collect(),
        TimestepSpacing::Leading => (0..n)
            .rev()
            .map(|i| ((i * (t / n)) as f32 + steps_offset as f32) as f64)
            .collect(),
        TimestepSpacing::Trailing => trailing(t, t, n)
            .into_iter()
            .map(|x| x as f32 as f64)
            .collect(),
    }
}

/// DPM-Solver multistep `set_timesteps` (int64 values as f64, decreasing), which spaces `n + 1`
/// points and drops the last: `linspace`: `round(linspace(0, last - 1, n + 1))` reversed, minus
/// the final 0; `leading`: `arange(n + 1) * (last // (n + 1))` reversed, minus the final 0,
/// `+ steps_offset` (8 steps: 889, 778, …, 112); `trailing`: `round(arange(last, 0, -T / n)) - 1`.
/// `last` is T unless `lambda_min_clipped` clips the end of the schedule.
pub fn dpm_timesteps(
    spacing: TimestepSpacing,
    t: usize,
    last: usize,
    n: usize,
    steps_offset: usize,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = np_linspace(0.0, last as f64 - 1.0, n + 1)
                .into_iter()
                .rev()
                .map(round_half_even)
                .collect();
            v.pop();
            v
        }
        TimestepSpacing::Leading => (1..=n)
            .rev()
            .map(|i| (i * (last / (n + 1)) + steps_offset) as f64)
            .collect(),
        TimestepSpacing::Trailing => trailing(last, t, n),
    }
}

/// LCM's `set_timesteps` (strength 1): with `k = T // original_steps`, the origin schedule
/// `[1..=original_steps] * k - 1` reversed, sampled at `floor(linspace(0, original_steps, n,
/// endpoint=False))` (4 of 50: 999, 759, 499, 259). `None` when `n > original_steps` or
/// `original_steps > T` (diffusers raises).
pub fn lcm_timesteps(t: usize, original_steps: usize, n: usize) -> Option<Vec<f64>> {
    if n == 0 || original_steps == 0 || original_steps > t || original_steps / n < 1 {
        return None;
    }
    let k = t / original_steps;
    let origin: Vec<usize> = (1..=original_steps).rev().map(|i| i * k - 1).collect();
    let step = original_steps as f64 / n as f64;
    Some(
        (0..n)
            .map(|i| origin[(i as f64 * step).floor() as usize] as f64)
            .collect(),
    )
}

#[cfg(test)]
mod tests;
