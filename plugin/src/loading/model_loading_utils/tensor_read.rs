//! Reads one tensor of a safetensors file straight into the buffer that becomes its
//! [`Tensor`], with positional reads instead of a memory map, and dequantizes 8-bit weights.
//!
//! Why not mmap (candle's `MmapedSafetensors`, diffusers' `safe_open`): every page of a mapping
//! that has been touched counts toward the process's resident memory until the mapping is
//! dropped, so copying tensors out of a mapped SD 1.5 checkpoint peaked at 1.74x the weights'
//! bytes (the whole mapping plus the copies). Read into the tensor's own buffer, the data goes
//! through the page cache (not resident in this process) and the peak stays at the weights plus
//! one tensor. A file truncated or rewritten while loading is an I/O error here, not a `SIGBUS`.
//!
//! 8-bit weights follow the channel-wise int8 layout of compressed-tensors (vLLM, llm-compressor):
//! a weight `w` of shape `[out, ...]` is stored as `I8` under its own name, with a sibling
//! `w_scale` (`F16`, `BF16` or `F32`) of `out` values (shape `[out]` or `[out, 1, ...]`);
//! `w[c, ...] = q[c, ...] * scale[c]`, dequantized to f32 at load.
//!
//! Safetensors data is little-endian; on a big-endian target each element's bytes are swapped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, WithDType};

/// Where one tensor lives in its file.
#[derive(Debug, Clone)]
pub(crate) struct TensorLocation {
    /// The dtype as spelled in the header (`F32`, `F16`, `BF16`, `I8`, ...).
    pub(crate) dtype: String,
    /// The shape, outermost dimension first.
    pub(crate) shape: Vec<usize>,
    /// Absolute byte offset of the first element in the file (8 + header length + the header's
    /// `data_offsets` start).
    pub(crate) offset: u64,
    /// Byte length of the data (`prod(shape) * sizeof(dtype)`, checked by
    /// [`crate::loading::weights::read_header`]).
    pub(crate) bytes: usize,
}

/// Where tensor bytes are read from: an open file, or the bytes of a compiled-in file (the
/// same layout, offsets counted from its first byte).
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    File(&'a Mutex<File>),
    Bytes(&'static [u8]),
}

impl Source<'_> {
    fn read_exact_at(self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Source::File(file) => {
                let mut file = file
                    .lock()
                    .map_err(|_| std::io::Error::other("the weights file's lock is poisoned"))?;
                file.seek(SeekFrom::Start(offset))?;
                file.read_exact(buf)
            }
            Source::Bytes(bytes) => {
                let range = usize::try_from(offset)
                    .ok()
                    .and_then(|start| bytes.get(start..start.checked_add(buf.len())?));
                let Some(src) = range else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the tensor runs past the end of the compiled-in file",
                    ));
                };
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

/// Bytes per element of the stored dtypes we read.
fn element_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" => 8,
        "F32" | "U32" => 4,
        "F16" | "BF16" => 2,
        "U8" | "I8" => 1,
        _ => return None,
    })
}

/// Element count of `at`, checked against its byte length and dtype.
fn elements(at: &TensorLocation) -> candle_core::Result<usize> {
    let Some(size) = element_size(&at.dtype) else {
        candle_core::bail!(
            "stored dtype {} is not supported (only F32, F16, BF16, F64, U8, U32, I64, and I8 \
             with a `_scale` sibling)",
            at.dtype
        )
    };
    let n = at.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match n {
        Some(n) if n.checked_mul(size) == Some(at.bytes) => Ok(n),
        _ => candle_core::bail!(
            "{} bytes do not hold shape {:?} of {}",
            at.bytes,
            at.shape,
            at.dtype
        ),
    }
}

/// Reads the `n` little-endian elements of `T` at `at`.
fn read_elements<T: bytemuck::Pod>(
    src: Source<'_>,
    at: &TensorLocation,
    n: usize,
) -> std::io::Result<Vec<T>> {
    let mut v = vec![T::zeroed(); n];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
    src.read_exact_at(at.offset, bytes)?;
    if cfg!(target_endian = "big") {
        for element in bytes.chunks_exact_mut(std::mem::size_of::<T>()) {
            element.reverse();
        }
    }
    Ok(v)
}

fn tensor<T: WithDType>(v: Vec<T>, shape: &[usize], dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, dev)
}

/// Reads the tensor at `at` from `src` as a tensor of its stored dtype on `dev`.
///
/// Supported stored dtypes: `F32`, `F16`, `BF16`, `F64`, `U8`, `U32`, `I64` (candle's CPU
/// dtypes that weights use); any other, including `I8` (which needs its scale:
/// [`dequantize_int8`]), is an error naming it.
///
/// # Errors
/// The I/O error of a failed seek or a short read (a file changed since its header was
/// checked), or an unsupported dtype; as candle errors, which the caller wraps into
/// [`crate::DiffusionError::BadSafetensors`] naming the file and tensor.
pub(crate) fn read_tensor(
    src: Source<'_>,
    at: &TensorLocation,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let n = elements(at)?;
    let shape = at.shape.as_slice();
    match at.dtype.as_str() {
        "F32" => tensor(read_elements::<f32>(src, at, n)?, shape, dev),
        "F16" => {
            let bits = read_elements::<u16>(src, at, n)?;
            let v = bits.into_iter().map(half::f16::from_bits).collect();
            tensor(v, shape, dev)
        }
        "BF16" => {
            let bits = read_elements::<u16>(src, at, n)?;
            let v = bits.into_iter().map(half::bf16::from_bits).collect();
            tensor(v, shape, dev)
        }
        "F64" => tensor(read_elements::<f64>(src, at, n)?, shape, dev),
        "U8" => tensor(read_elements::<u8>(src, at, n)?, shape, dev),
        "U32" => tensor(read_elements::<u32>(src, at, n)?, shape, dev),
        "I64" => tensor(read_elements::<i64>(src, at, n)?, shape, dev),
        other => candle_core::bail!("stored dtype {other} cannot be read on its own"),
    }
}

/// Dequantizes the channel-wise int8 weight `q` (`I8`, shape `[out, ...]`) with its `scale`
/// (`F16`, `BF16` or `F32`, `out` values) to an f32 tensor of `q`'s shape on `dev`:
/// `w[c, ...] = q[c, ...] * scale[c]` (compressed-tensors' int8 channel-wise layout).
///
/// # Errors
/// `q` not `I8` or of rank 0, a scale of another dtype or element count, a short read, or a
/// non-finite scale; as candle errors naming the counts.
pub(crate) fn dequantize_int8(
    q_src: Source<'_>,
    q: &TensorLocation,
    scale_src: Source<'_>,
    scale: &TensorLocation,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    if q.dtype != "I8" {
        candle_core::bail!("a quantized weight must be I8, not {}", q.dtype);
    }
    let Some(&out) = q.shape.first() else {
        candle_core::bail!("an I8 weight needs at least one dimension (its output channels)")
    };
    let n = elements(q)?;
    let m = elements(scale)?;
    if m != out {
        candle_core::bail!(
            "its scale has {m} values (shape {:?}) but the weight has {out} output channels",
            scale.shape
        );
    }
    let scales: Vec<f32> = match scale.dtype.as_str() {
        "F32" => read_elements::<f32>(scale_src, scale, m)?,
        "F16" => read_elements::<u16>(scale_src, scale, m)?
            .into_iter()
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect(),
        "BF16" => read_elements::<u16>(scale_src, scale, m)?
            .into_iter()
            .map(|b| half::bf16::from_bits(b).to_f32())
            .collect(),
        other => candle_core::bail!("its scale must be F16, BF16 or F32, not {other}"),
    };
    if let Some(bad) = scales.iter().find(|s| !s.is_finite()) {
        candle_core::bail!("its scale holds a non-finite value ({bad})");
    }
    let values = read_elements::<i8>(q_src, q, n)?;
    let mut w = Vec::with_capacity(n);
    if n > 0 {
        for (row, &s) in values.chunks_exact(n / out).zip(&scales) {
            w.extend(row.iter().map(|&v| f32::from(v) * s));
        }
    }
    let t = tensor(w, &q.shape, dev)?;
    debug_assert_eq!(t.dtype(), DType::F32);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a safetensors file of `tensors` (name, dtype, shape, little-endian bytes) and
    /// returns the path and each tensor's location.
    fn write(
        dir: &std::path::Path,
        tensors: &[(&str, &str, Vec<usize>, Vec<u8>)],
    ) -> (std::path::PathBuf, Vec<TensorLocation>) {
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for (name, dtype, shape, data) in tensors {
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape,
                                   "data_offsets": [offset, offset + data.len()]}),
            );
            offset += data.len();
        }
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        let start = bytes.len() as u64;
        let mut locations = Vec::new();
        let mut at = 0u64;
        for (_, dtype, shape, data) in tensors {
            locations.push(TensorLocation {
                dtype: dtype.to_string(),
                shape: shape.clone(),
                offset: start + at,
                bytes: data.len(),
            });
            at += data.len() as u64;
            bytes.extend_from_slice(data);
        }
        let path = dir.join("t.safetensors");
        std::fs::write(&path, bytes).expect("write the test file");
        (path, locations)
    }

    #[test]
    fn reads_each_dtype_at_its_offset() -> candle_core::Result<()> {
        let dir = std::env::temp_dir().join(format!("bd_tensor_read_{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let f32s: Vec<u8> = [1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f16s: Vec<u8> = [0.5f32, -1.0, 2.0]
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        let bf16s: Vec<u8> = [4.0f32, -8.0]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        let i64s: Vec<u8> = [3i64, -9].iter().flat_map(|x| x.to_le_bytes()).collect();
        let (path, at) = write(
            &dir,
            &[
                ("a", "F32", vec![2, 3], f32s),
                ("b", "F16", vec![3], f16s),
                ("c", "BF16", vec![1, 2], bf16s),
                ("d", "I64", vec![2], i64s),
                ("e", "F8_E5M2", vec![1], vec![0]),
            ],
        );
        let file = Mutex::new(File::open(&path)?);
        let file = Source::File(&file);
        let dev = Device::Cpu;
        let a = read_tensor(file, &at[0], &dev)?;
        assert_eq!(a.dims(), &[2, 3]);
        assert_eq!(
            a.to_vec2::<f32>()?,
            vec![vec![1.5, -2.0, 3.25], vec![0.0, 7.0, -0.5]]
        );
        let b = read_tensor(file, &at[1], &dev)?;
        assert_eq!(b.dtype(), candle_core::DType::F16);
        assert_eq!(
            b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
            vec![0.5, -1.0, 2.0]
        );
        // Out of order: the reader seeks.
        let d = read_tensor(file, &at[3], &dev)?;
        assert_eq!(d.to_vec1::<i64>()?, vec![3, -9]);
        let c = read_tensor(file, &at[2], &dev)?;
        assert_eq!(
            c.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?,
            vec![vec![4.0, -8.0]]
        );
        let e = read_tensor(file, &at[4], &dev).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("F8_E5M2"), "{e}");
        // A file cut short after its header was read: an I/O error, not a crash.
        let len = std::fs::metadata(&path)?.len();
        let cut = std::fs::OpenOptions::new().write(true).open(&path)?;
        cut.set_len(len - 3)?;
        let e = read_tensor(file, &at[3], &dev).map(|_| ()).unwrap_err();
        assert!(e.to_string().to_lowercase().contains("fill"), "{e}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn int8_weights_dequantize_per_output_channel() -> candle_core::Result<()> {
        // Laid out as a file would be, read from memory (the compiled-in model's path).
        let q: [i8; 6] = [127, -127, 2, 0, 1, -64];
        let mut bytes: Vec<u8> = q.iter().map(|&v| v as u8).collect();
        let scales = [0.5f32, 0.25];
        bytes.extend(
            scales
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()),
        );
        bytes.extend(half::f16::INFINITY.to_bits().to_le_bytes());
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let src = Source::Bytes(bytes);
        let at = |dtype: &str, shape: Vec<usize>, offset: u64, len: usize| TensorLocation {
            dtype: dtype.into(),
            shape,
            offset,
            bytes: len,
        };
        let weight = at("I8", vec![2, 3, 1, 1], 0, 6);
        let scale = at("F16", vec![2, 1, 1, 1], 6, 4);
        let w = dequantize_int8(src, &weight, src, &scale, &Device::Cpu)?;
        assert_eq!(w.dims(), &[2, 3, 1, 1]);
        assert_eq!(
            w.flatten_all()?.to_vec1::<f32>()?,
            vec![63.5, -63.5, 1.0, 0.0, 0.25, -16.0]
        );
        // Wrong scale count, a non-finite scale, and I8 read without its scale: errors.
        let one = at("F16", vec![1], 6, 2);
        let e = dequantize_int8(src, &weight, src, &one, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("1 values"), "{e}");
        let inf = at("F16", vec![2], 8, 4);
        let e = dequantize_int8(src, &weight, src, &inf, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("non-finite"), "{e}");
        let e = read_tensor(src, &weight, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("I8"), "{e}");
        // Past the end of the bytes: an error, not a panic.
        let past = at("I8", vec![2, 3], 8, 6);
        let e = dequantize_int8(src, &past, src, &scale, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        Ok(())
    }
}
