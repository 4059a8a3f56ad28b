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
        let short = || {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file is shorter than its header says (changed while loading?)",
            )
        };
        match self {
            Source::File(file) => {
                let mut file = file
                    .lock()
                    .map_err(|_| std::io::Error::other("the weights file's lock is poisoned"))?;
                file.seek(SeekFrom::Start(offset))?;
                file.read_exact(buf).map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => short(),
                    _ => e,
                })
            }
            Source::Bytes(bytes) => {
                let range = usize::try_from(offset)
                    .ok()
                    .and_then(|start| bytes.get(start..start.checked_add(buf.len())?));
                buf.copy_from_slice(range.ok_or_else(short)?);
                Ok(())
            }
        }
    }
}

/// The stored dtypes we read: `(header spelling, bytes per element)`. Every dtype candle 0.11's
/// safetensors loader converts, except the placeholder micro-float formats (F4, F6, F8_E8M0),
/// which hold no values candle can compute with.
const DTYPES: [(&str, usize); 12] = [
    ("F64", 8),
    ("I64", 8),
    ("F32", 4),
    ("I32", 4),
    ("U32", 4),
    ("F16", 2),
    ("BF16", 2),
    ("I16", 2),
    ("U16", 2),
    ("F8_E4M3", 1),
    ("U8", 1),
    ("I8", 1),
];

/// Checks `at`'s dtype and byte count from the header alone; returns its element count.
///
/// # Errors
/// A dtype outside [`DTYPES`], or a byte length that does not hold its shape (the header
/// checks make that impossible for a validated file).
pub(crate) fn check_location(at: &TensorLocation) -> Result<usize, String> {
    let Some(&(_, size)) = DTYPES.iter().find(|(d, _)| *d == at.dtype) else {
        return Err(format!(
            "stored dtype {} is not supported (F64, F32, F16, BF16, F8_E4M3, I64, I32, I16, \
             U32, U16, U8, and I8 with a `_scale` sibling)",
            at.dtype
        ));
    };
    let n = at.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match n {
        Some(n) if n.checked_mul(size) == Some(at.bytes) => Ok(n),
        _ => Err(format!(
            "{} bytes do not hold shape {:?} of {}",
            at.bytes, at.shape, at.dtype
        )),
    }
}

/// Checks, from the headers alone, that `scale` can dequantize the I8 weight `q`: `q` has a
/// first (output-channel) dimension `out`; `scale` is F16, BF16 or F32 of shape `[out]` or
/// `[out, 1, ...]`.
///
/// # Errors
/// What is wrong, naming the shapes or the dtype.
pub(crate) fn check_int8_scale(q: &TensorLocation, scale: &TensorLocation) -> Result<(), String> {
    let Some(&out) = q.shape.first() else {
        return Err("an I8 weight needs at least one dimension (its output channels)".into());
    };
    if !matches!(scale.dtype.as_str(), "F16" | "BF16" | "F32") {
        return Err(format!(
            "its dtype is {}, not F16, BF16 or F32",
            scale.dtype
        ));
    }
    let per_channel = scale.shape.first() == Some(&out) && scale.shape[1..].iter().all(|&d| d == 1);
    if !per_channel {
        return Err(format!(
            "its shape is {:?}, not [{out}] or [{out}, 1, ...] (one value per output channel of \
             the weight's {:?})",
            scale.shape, q.shape
        ));
    }
    check_location(scale).map(|_| ())
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

/// Reads the `n` 16-bit elements at `at`, each converted by `from_bits`.
fn read_u16_as<T>(
    src: Source<'_>,
    at: &TensorLocation,
    n: usize,
    from_bits: impl Fn(u16) -> T,
) -> std::io::Result<Vec<T>> {
    Ok(read_elements::<u16>(src, at, n)?
        .into_iter()
        .map(from_bits)
        .collect())
}

fn tensor<T: WithDType>(v: Vec<T>, shape: &[usize], dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, dev)
}

/// Reads the tensor at `at` from `src` as a tensor of its stored dtype on `dev` (`U16`, which
/// candle lacks, widened to `U32` as candle's own loader does).
///
/// # Errors
/// A dtype outside [`DTYPES`] or `I8` (which needs its scale: [`dequantize_int8`]), the I/O
/// error of a failed seek or a short read (a file changed since its header was checked); as
/// candle errors, which the caller wraps into [`crate::DiffusionError::BadSafetensors`] naming
/// the file and tensor.
pub(crate) fn read_tensor(
    src: Source<'_>,
    at: &TensorLocation,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let n = check_location(at).map_err(candle_core::Error::Msg)?;
    let shape = at.shape.as_slice();
    match at.dtype.as_str() {
        "F64" => tensor(read_elements::<f64>(src, at, n)?, shape, dev),
        "I64" => tensor(read_elements::<i64>(src, at, n)?, shape, dev),
        "F32" => tensor(read_elements::<f32>(src, at, n)?, shape, dev),
        "I32" => tensor(read_elements::<i32>(src, at, n)?, shape, dev),
        "U32" => tensor(read_elements::<u32>(src, at, n)?, shape, dev),
        "F16" => tensor(read_u16_as(src, at, n, half::f16::from_bits)?, shape, dev),
        "BF16" => tensor(read_u16_as(src, at, n, half::bf16::from_bits)?, shape, dev),
        "I16" => tensor(read_elements::<i16>(src, at, n)?, shape, dev),
        "U16" => tensor(read_u16_as(src, at, n, u32::from)?, shape, dev),
        "U8" => tensor(read_elements::<u8>(src, at, n)?, shape, dev),
        "F8_E4M3" => {
            let bytes = read_elements::<u8>(src, at, n)?;
            Tensor::from_raw_buffer(&bytes, DType::F8E4M3, shape, dev)
        }
        _ => candle_core::bail!(
            "stored as {}: an 8-bit weight needs its `_scale` sibling to be read",
            at.dtype
        ),
    }
}

/// Dequantizes the channel-wise int8 weight `q` (`I8`, shape `[out, ...]`) with its `scale`
/// (checked by [`check_int8_scale`]) to an f32 tensor of `q`'s shape on `dev`:
/// `w[c, ...] = q[c, ...] * scale[c]` (compressed-tensors' int8 channel-wise layout).
///
/// # Errors
/// What [`check_int8_scale`] refuses, a short read, or a non-finite scale; as candle errors.
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
    check_int8_scale(q, scale).map_err(|e| candle_core::Error::Msg(format!("its scale: {e}")))?;
    let n = check_location(q).map_err(candle_core::Error::Msg)?;
    let out = q.shape[0];
    let scales: Vec<f32> = match scale.dtype.as_str() {
        "F16" => read_u16_as(scale_src, scale, out, |b| half::f16::from_bits(b).to_f32())?,
        "BF16" => read_u16_as(scale_src, scale, out, |b| half::bf16::from_bits(b).to_f32())?,
        _ => read_elements::<f32>(scale_src, scale, out)?,
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
    tensor(w, &q.shape, dev)
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
                ("f", "U16", vec![2], vec![1, 0, 255, 255]),
                ("g", "I32", vec![1], (-5i32).to_le_bytes().to_vec()),
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
        // U16 widened to U32 (candle has no U16), I32 as is.
        assert_eq!(
            read_tensor(file, &at[5], &dev)?.to_vec1::<u32>()?,
            vec![1, 65535]
        );
        assert_eq!(read_tensor(file, &at[6], &dev)?.to_vec1::<i32>()?, vec![-5]);
        // A file cut short after its header was read: an I/O error, not a crash.
        let len = std::fs::metadata(&path)?.len();
        let cut = std::fs::OpenOptions::new().write(true).open(&path)?;
        cut.set_len(len - 3)?;
        let e = read_tensor(file, &at[6], &dev).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("shorter than its header"), "{e}");
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
        assert!(e.to_string().contains("not [2] or [2, 1, ...]"), "{e}");
        // [1, 2] holds 2 values but is not per output channel.
        let row = at("F16", vec![1, 2], 6, 4);
        let e = dequantize_int8(src, &weight, src, &row, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("[1, 2]"), "{e}");
        let inf = at("F16", vec![2], 8, 4);
        let e = dequantize_int8(src, &weight, src, &inf, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("non-finite"), "{e}");
        let e = read_tensor(src, &weight, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("I8"), "{e}");
        // Past the end of the bytes: an error, not a panic.
        let past = at("I8", vec![2, 3], 8, 6);
        let e = dequantize_int8(src, &past, src, &scale, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("shorter than its header"), "{e}");
        Ok(())
    }
}
