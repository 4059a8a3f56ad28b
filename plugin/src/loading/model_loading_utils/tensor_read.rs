//! Reads one tensor of a safetensors file straight into the buffer that becomes its
//! [`Tensor`], with positional reads instead of a memory map.
//!
//! Why not mmap (candle's `MmapedSafetensors`, diffusers' `safe_open`): every page of a mapping
//! that has been touched counts toward the process's resident memory until the mapping is
//! dropped, so copying tensors out of a mapped SD 1.5 checkpoint peaked at 1.73x the weights'
//! bytes (the whole mapping plus the copies). Read into the tensor's own buffer, the data goes
//! through the page cache (not resident in this process) and the peak stays at the weights plus
//! one tensor. A file truncated or rewritten while loading is an I/O error here, not a `SIGBUS`.
//!
//! Safetensors data is little-endian; on a big-endian target each element's bytes are swapped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;

use candle_core::{Device, Tensor, WithDType};

/// Where one tensor lives in its file.
#[derive(Debug, Clone)]
pub(crate) struct TensorLocation {
    /// The dtype as spelled in the header (`F32`, `F16`, `BF16`, ...).
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

/// Reads `n` little-endian elements of `T` from `file` at its current position.
fn read_elements<T: bytemuck::Pod>(file: &mut File, n: usize) -> std::io::Result<Vec<T>> {
    let mut v = vec![T::zeroed(); n];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
    file.read_exact(bytes)?;
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

/// Reads the tensor at `at` from `file` as a tensor of its stored dtype on `dev`.
///
/// Supported stored dtypes: `F32`, `F16`, `BF16`, `F64`, `U8`, `U32`, `I64` (candle's CPU
/// dtypes that weights use); any other is an error naming it.
///
/// # Errors
/// The I/O error of a failed seek or a short read (a file changed since its header was
/// checked), or an unsupported dtype; as candle errors, which the caller wraps into
/// [`crate::DiffusionError::BadSafetensors`] naming the file and tensor.
pub(crate) fn read_tensor(
    file: &Mutex<File>,
    at: &TensorLocation,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let n: usize = at.shape.iter().product();
    let mut file = file
        .lock()
        .map_err(|_| candle_core::Error::Msg("the weights file's lock is poisoned".into()))?;
    file.seek(SeekFrom::Start(at.offset))?;
    let f = &mut *file;
    let shape = at.shape.as_slice();
    let size = match at.dtype.as_str() {
        "F32" | "U32" => 4,
        "F16" | "BF16" => 2,
        "F64" | "I64" => 8,
        "U8" => 1,
        other => candle_core::bail!(
            "stored dtype {other} is not supported (only F32, F16, BF16, F64, U8, U32, I64)"
        ),
    };
    if n.checked_mul(size) != Some(at.bytes) {
        candle_core::bail!(
            "{} bytes do not hold {n} elements of {}",
            at.bytes,
            at.dtype
        );
    }
    match at.dtype.as_str() {
        "F32" => tensor(read_elements::<f32>(f, n)?, shape, dev),
        "F16" => {
            let bits = read_elements::<u16>(f, n)?;
            tensor(
                bits.into_iter().map(half::f16::from_bits).collect(),
                shape,
                dev,
            )
        }
        "BF16" => {
            let bits = read_elements::<u16>(f, n)?;
            tensor(
                bits.into_iter().map(half::bf16::from_bits).collect(),
                shape,
                dev,
            )
        }
        "F64" => tensor(read_elements::<f64>(f, n)?, shape, dev),
        "U8" => tensor(read_elements::<u8>(f, n)?, shape, dev),
        "U32" => tensor(read_elements::<u32>(f, n)?, shape, dev),
        _ => tensor(read_elements::<i64>(f, n)?, shape, dev),
    }
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
        let dev = Device::Cpu;
        let a = read_tensor(&file, &at[0], &dev)?;
        assert_eq!(a.dims(), &[2, 3]);
        assert_eq!(
            a.to_vec2::<f32>()?,
            vec![vec![1.5, -2.0, 3.25], vec![0.0, 7.0, -0.5]]
        );
        let b = read_tensor(&file, &at[1], &dev)?;
        assert_eq!(b.dtype(), candle_core::DType::F16);
        assert_eq!(
            b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
            vec![0.5, -1.0, 2.0]
        );
        // Out of order: the reader seeks.
        let d = read_tensor(&file, &at[3], &dev)?;
        assert_eq!(d.to_vec1::<i64>()?, vec![3, -9]);
        let c = read_tensor(&file, &at[2], &dev)?;
        assert_eq!(
            c.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?,
            vec![vec![4.0, -8.0]]
        );
        let e = read_tensor(&file, &at[4], &dev).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("F8_E5M2"), "{e}");
        // A file cut short after its header was read: an I/O error, not a crash.
        let len = std::fs::metadata(&path)?.len();
        let cut = std::fs::OpenOptions::new().write(true).open(&path)?;
        cut.set_len(len - 3)?;
        let e = read_tensor(&file, &at[3], &dev).map(|_| ()).unwrap_err();
        assert!(e.to_string().to_lowercase().contains("fill"), "{e}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
