//! The per-file checks of a LoRA: module keys, pickle refusal, `down`/`up`/weight shape
//! agreement and the `alpha` scalar.

use super::*;

/// `lora_unet_x.lora_down.weight` → `lora_unet_x`, `unet.a.b.lora_A.weight` → `unet.a.b`.
pub(super) fn module_key(tensor: &str) -> String {
    const SUFFIXES: [&str; 9] = [
        ".lora_down.weight",
        ".lora_up.weight",
        ".lora_A.weight",
        ".lora_B.weight",
        ".lora.down.weight",
        ".lora.up.weight",
        ".down.weight",
        ".up.weight",
        ".alpha",
    ];
    SUFFIXES
        .iter()
        .find_map(|s| tensor.strip_suffix(s))
        .unwrap_or(tensor)
        .to_string()
}

/// A torch `.pt`/`.ckpt` (zip, `PK\x03\x04`) or raw pickle (`\x80` + protocol 2-5) renamed to
/// `.safetensors`.
pub(super) fn looks_pickled(path: &Path) -> bool {
    let mut head = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    read.is_ok() && (head == *b"PK\x03\x04" || (head[0] == 0x80 && (2..=5).contains(&head[1])))
}

/// Why `down` [r, in(, kh, kw)] and `up` [out, r(, 1, 1)] cannot patch a weight of `weight`'s
/// shape. A 1x1 conv and a Linear accept each other's LoRA (as diffusers does for `proj_in`).
pub(super) fn check_shapes(down: &[usize], up: &[usize], weight: &[usize]) -> Result<(), String> {
    let ranked = |s: &[usize]| matches!(s.len(), 2 | 4) && s.iter().all(|&d| d > 0);
    if !ranked(down) || !ranked(up) {
        return Err("down and up must be 2-D or 4-D with no zero dimension".into());
    }
    let rank = down[0];
    if up[1] != rank || up[2..].iter().any(|&d| d != 1) {
        return Err(format!("up must be [out, {rank}] or [out, {rank}, 1, 1]"));
    }
    let kernel = |s: &[usize]| -> Vec<usize> { s.get(2..).unwrap_or(&[]).to_vec() };
    let one_by_one = |k: &[usize]| k.iter().all(|&d| d == 1);
    let (kd, kw) = (kernel(down), kernel(weight));
    let kernels_ok = kd == kw || (one_by_one(&kd) && one_by_one(&kw));
    if up[0] != weight[0] || down[1] != weight[1] || !kernels_ok {
        return Err("up @ down does not have the weight's shape".into());
    }
    if rank > up[0].min(down[1..].iter().product()) {
        return Err(format!("rank {rank} exceeds the weight's smaller side"));
    }
    Ok(())
}

/// kohya's 0-dim (or 1-element) `alpha` tensor.
pub(super) fn read_alpha(mmap: &MmapedSafetensors, name: &str) -> Result<f64, String> {
    let t = mmap
        .load(name, &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F64))
        .map_err(|e| format!("alpha cannot be read: {e}"))?;
    if t.elem_count() != 1 {
        return Err(format!("alpha has shape {:?}; expected a scalar", t.dims()));
    }
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f64>())
        .map(|v| v[0])
        .map_err(|e| format!("alpha cannot be read: {e}"))
}
