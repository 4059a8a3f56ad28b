//! GroupNorm (+ optional fused SiLU) over NCHW `f32`, parallel over (sample, group): one pass
//! for the mean, one for the centred variance, one writing `a_c * x + b_c` (then SiLU), where
//! `a_c = gamma_c / sqrt(var + eps)` and `b_c = beta_c - mean * a_c`. Statistics accumulate in
//! f32 lanes per 256-element block and f64 across blocks.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::profile::{self, OpKind};
use super::{on_cpu_f32, simd, with_slice};

/// diffusers/PyTorch `nn.GroupNorm(groups, channels, eps, affine=True)`; weights `weight`,
/// `bias` (`[channels]` each), as `candle_nn::group_norm` loads them.
#[derive(Debug, Clone)]
pub struct GroupNormKernel {
    weight: Tensor,
    bias: Tensor,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    groups: usize,
    channels: usize,
    eps: f64,
}

impl GroupNormKernel {
    /// Loads `weight` and `bias` `[channels]` from `vb`; `channels` must be a multiple of
    /// `groups`.
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
        Self::from_tensors(weight, bias, groups, eps)
    }

    /// From `weight`, `bias` `[channels]`.
    pub fn from_tensors(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let channels = weight.dims1()?;
        if groups == 0 || channels % groups != 0 {
            candle_core::bail!(
                "GroupNorm: {channels} channels are not a multiple of {groups} groups"
            );
        }
        let gamma = weight.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let beta = bias.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        Ok(Self {
            weight,
            bias,
            gamma,
            beta,
            groups,
            channels,
            eps,
        })
    }

    /// `[b, channels, ...]` -> same shape, normalised per (sample, group).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// `silu(group_norm(x))`, in one output pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, act: bool) -> Result<Tensor> {
        profile::timed(OpKind::GroupNorm, || self.run_inner(x, act))
    }

    fn run_inner(&self, x: &Tensor, act: bool) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 2 || dims[1] != self.channels {
            candle_core::bail!("GroupNorm over {} channels got {:?}", self.channels, dims);
        }
        if !on_cpu_f32(x) {
            let gn = candle_nn::GroupNorm::new(
                self.weight.clone(),
                self.bias.clone(),
                self.channels,
                self.groups,
                self.eps,
            )?;
            let y = candle_core::Module::forward(&gn, x)?;
            return if act { y.silu() } else { Ok(y) };
        }
        let b = dims[0];
        let spatial: usize = dims[2..].iter().product();
        let cpg = self.channels / self.groups;
        let group_len = cpg * spatial;
        let mut out = super::zeroed(b * self.channels * spatial);
        if out.is_empty() {
            return Tensor::from_vec(out, dims, &Device::Cpu);
        }
        with_slice(x, |xs| {
            out.par_chunks_mut(group_len)
                .zip(xs.par_chunks(group_len))
                .enumerate()
                .for_each(|(i, (o, xg))| {
                    let g = i % self.groups;
                    let n = group_len as f64;
                    let mut sq = [0f64; 2];
                    simd::sum_and_squares(xg, &mut sq);
                    let mean = (sq[0] / n) as f32;
                    let mut c2 = 0f64;
                    simd::centered_squares(xg, mean, &mut c2);
                    let rstd = 1.0 / (c2 / n + self.eps).sqrt();
                    o.copy_from_slice(xg);
                    for (j, oc) in o.chunks_mut(spatial.max(1)).enumerate() {
                        let c = g * cpg + j;
                        let a = (self.gamma[c] as f64 * rstd) as f32;
                        let bb = self.beta[c] - mean * a;
                        simd::affine_inplace(oc, a, bb, act);
                    }
                });
            Ok(())
        })?;
        Tensor::from_vec(out, dims, &Device::Cpu)
    }
}
