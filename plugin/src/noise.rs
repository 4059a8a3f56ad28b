//! Randomness we own: candle cannot seed its CPU RNG, so every random draw of a generation
//! (initial latents, VAE posterior sampling, img2img noise, ancestral scheduler steps) comes from
//! one [`NoiseSource`] owned by the request.
//!
//! [`SeededNoise`] is a ChaCha8 stream seeded from the request's `seed` and mapped to unit
//! Gaussians with `rand_distr::StandardNormal`: portable across machines and bit-identical run
//! to run. [`ReplayNoise`] hands out caller-supplied tensors instead (diffusers' `latents=`
//! argument, or the fixture's saved draws).

use std::collections::VecDeque;

use candle_core::{Device, Result, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A source of unit-Gaussian noise tensors, drawn in the order the pipeline asks for them.
pub trait NoiseSource: Send {
    /// Draws an `f32` tensor of `shape` with i.i.d. N(0, 1) entries.
    fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor>;
}

/// Seeded, portable Gaussian noise (ChaCha8 + standard normal).
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    /// A stream that depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Tensor::from_vec(data, shape, device)
    }
}

/// Hands out the given tensors in order, then falls back to `fallback` (if any).
///
/// Used for diffusers' explicit `latents=` argument and for parity tests that replay the noise
/// diffusers drew. A tensor whose shape differs from the one asked for is an error.
pub struct ReplayNoise {
    queue: VecDeque<Tensor>,
    fallback: Option<Box<dyn NoiseSource>>,
}

impl ReplayNoise {
    /// Replays `tensors` in order; asking for more than given is an error.
    pub fn new(tensors: impl IntoIterator<Item = Tensor>) -> Self {
        Self {
            queue: tensors.into_iter().collect(),
            fallback: None,
        }
    }

    /// Replays `tensors` first, then draws from `fallback`.
    pub fn with_fallback(
        tensors: impl IntoIterator<Item = Tensor>,
        fallback: Box<dyn NoiseSource>,
    ) -> Self {
        Self {
            queue: tensors.into_iter().collect(),
            fallback: Some(fallback),
        }
    }
}

impl NoiseSource for ReplayNoise {
    fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        match self.queue.pop_front() {
            Some(t) => {
                if t.dims() != shape {
                    candle_core::bail!(
                        "replayed noise has shape {:?}, expected {:?}",
                        t.dims(),
                        shape
                    );
                }
                t.to_device(device)?.to_dtype(candle_core::DType::F32)
            }
            None => match self.fallback.as_mut() {
                Some(f) => f.randn(shape, device),
                None => candle_core::bail!("replayed noise exhausted (asked for {shape:?})"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_and_unit_statistics() -> Result<()> {
        let dev = Device::Cpu;
        let a = SeededNoise::new(7)
            .randn(&[1, 4, 32, 32], &dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = SeededNoise::new(7)
            .randn(&[1, 4, 32, 32], &dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let c = SeededNoise::new(8)
            .randn(&[1, 4, 32, 32], &dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
        Ok(())
    }
}
