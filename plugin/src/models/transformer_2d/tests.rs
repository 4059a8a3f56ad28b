use super::*;
use candle_core::Device;

/// Attention computed in chunks equals the one-shot computation.
#[test]
fn chunked_attention_matches() -> Result<()> {
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1., (3, 5, 4), &dev)?;
    let k = Tensor::randn(0f32, 1., (3, 7, 4), &dev)?;
    let v = Tensor::randn(0f32, 1., (3, 7, 2), &dev)?;
    let mask = Tensor::randn(0f32, 1., (5, 7), &dev)?;
    for mask in [None, Some(&mask)] {
        let s = (q.matmul(&k.t()?)? * 0.5)?;
        let s = match mask {
            Some(m) => s.broadcast_add(m)?,
            None => s,
        };
        let reference = candle_nn::ops::softmax_last_dim(&s)?.matmul(&v)?;
        // One shot, chunks of 2 heads, chunks of 1 head x 2 query rows.
        for limit in [usize::MAX, 70, 14] {
            let out = attention_chunked(&q, &k, &v, 0.5, mask, limit)?;
            let d = (out - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-6, "limit {limit}: {d}");
        }
    }
    Ok(())
}

#[test]
fn heads_round_trip() -> Result<()> {
    let x = Tensor::arange(0f32, 2. * 3. * 8., &Device::Cpu)?.reshape((2, 3, 8))?;
    let y = merge_heads(&split_heads(&x, 4)?, 4)?;
    assert_eq!(x.to_vec3::<f32>()?, y.to_vec3::<f32>()?);
    Ok(())
}
