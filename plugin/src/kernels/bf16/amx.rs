//! The bf16 GEMM on Intel AMX tiles (x86-64 `AMX-TILE` + `AMX-BF16`, Sapphire Rapids and later):
//! `TDPBF16PS` multiplies a 16 x 32 bf16 tile by a 32 x 16 one into a 16 x 16 f32 tile, 8192
//! multiply-adds per instruction (a 512-bit `VDPBF16PS` does 32).
//!
//! Layout (Intel's "Intel 64 and IA-32 Architectures Optimization Reference Manual", AMX chapter:
//! A row-major, B in the "VNNI" pair layout): `dst[r, o] += Σ_k x[r, k] · w[o, k]` is `C += A·B`
//! with A = `x` (rows x k), B = `wᵀ` (k x out) and C = `dst` itself. A and B are packed, zero-padded
//! to whole tiles, into 1 KiB tiles that `TILELOADD` reads with a 64-byte stride:
//! * `w` once per call into `[out/16][k/32][16 pairs of k][16 channels]` bf16 pairs (each 32-bit
//!   element holds the pair of consecutive `k` that `TDPBF16PS` multiplies together);
//! * `x` per task (a block of rows) into `[rows/16][k/32][16 rows][32 k]` bf16, rounded from f32
//!   to nearest even by `VCVTNE2PS2BF16` (which also flushes f32 denormals, below 1.2e-38, to zero).
//!
//! The microkernel loads a 32 x 32 block of `dst` into four tile registers (tmm0-3), adds the
//! products over the whole `k` (two A tiles in tmm4-5 and two B tiles in tmm6-7 per 32 values of
//! `k`) and stores it back: `dst` keeps its bias or residual, and there is no pass over the output
//! beyond that. Blocks at the ragged edges go through a zeroed scratch block and are added on.
//!
//! Linux hands a process the AMX tile state only after `arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`; [`available`] asks once, so where the kernel refuses (an old kernel, a
//! hypervisor that hides the state) the AVX-512 path runs instead. Other systems are not
//! supported here yet (the AVX-512 kernel runs there).

use rayon::prelude::*;

/// Rows of a tile (of A and C), and pairs of `k` in a tile of B.
const TR: usize = 16;
/// bf16 values of `k` per tile row of A.
const TK: usize = 32;
/// u16 elements in one 1 KiB tile.
const TILE: usize = TR * TK;
/// Tiles of `k` per slice (512 values of `k`).
const KC: usize = 16;

/// Whether this CPU has AMX-TILE and AMX-BF16 and the OS granted this process the tile state
/// (asked once; cached).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID.(EAX=7, ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE; the conversion of
            // the x panels needs AVX-512 BF16 (always present beside AMX-BF16, checked anyway).
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let cpu = leaf7.edx & (1 << 22) != 0
                && leaf7.edx & (1 << 24) != 0
                && super::cpu_has_avx512_bf16();
            cpu && request_tile_state()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18)`: true when granted.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    let ret: i64;
    // SAFETY: the arch_prctl system call (158 on x86-64 Linux) with two integer arguments; it
    // clobbers rcx and r11 (the syscall instruction) and touches no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") 158i64 => ret,
            in("rdi") 0x1023i64,
            in("rsi") 18i64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// [`super::gemm`] on AMX tiles: `dst[r * out_dim + o] += Σ_i bf16(x[r * in_dim + i]) *
/// w[o * in_dim + i]`.
///
/// # Safety
/// What `super::gemm_with` checks before calling it, and the raw-pointer writes and the AVX-512 /
/// AMX instructions below rely on: [`available`] is true; `rows`, `in_dim` and `out_dim` are all
/// non-zero, `in_dim` even; `x`, `w` and `dst` hold at least `rows x in_dim`, `out_dim x in_dim`
/// and `rows x out_dim` elements.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    x: &[f32],
    w: &[u16],
    dst: &mut [f32],
    parallel: bool,
) {
    debug_assert!(available());
    debug_assert!(
        rows > 0
            && out_dim > 0
            && in_dim > 0
            && in_dim.is_multiple_of(2)
            && x.len() >= rows * in_dim
            && w.len() >= out_dim * in_dim
            && dst.len() >= rows * out_dim
    );
    let kt = in_dim.div_ceil(TK);
    // B = wᵀ in pair tiles, channels padded to pairs of tiles (the microkernel's 32).
    let ct = out_dim.div_ceil(2 * TR) * 2;
    let mut wb_buf = Vec::new();
    let wb = aligned(&mut wb_buf, ct * kt * TILE / 2);
    let pack_w = |(c, panel): (usize, &mut [u32])| {
        let o0 = c * TR;
        let n_o = TR.min(out_dim.saturating_sub(o0));
        for kb in 0..kt {
            let pairs = (TK / 2).min((in_dim - kb * TK) / 2);
            let tile = &mut panel[kb * (TILE / 2)..][..TILE / 2];
            if n_o == 0 {
                continue;
            }
            // SAFETY: AMX CPUs have AVX-512F (checked by `available`); rows o0..o0 + n_o of w
            // hold `pairs` pairs from k = kb * 32 (in_dim is even), and the tile 256 pairs.
            unsafe { transpose_pairs(&w[o0 * in_dim + kb * TK..], in_dim, n_o, pairs, tile) };
        }
    };
    if parallel {
        wb.par_chunks_mut(kt * TILE / 2)
            .enumerate()
            .for_each(pack_w);
    } else {
        wb.chunks_mut(kt * TILE / 2).enumerate().for_each(pack_w);
    }
    let pairs = ct / 2;

    // Rows per task: the hot part of the packed x block (block rows x one KC slice of k) ~256 KiB
    // (of L2), 64..=512 rows.
    let hot_k = (kt.min(KC) * TK * 2).max(1);
    let block = ((256 * 1024 / hot_k) / (2 * TR) * (2 * TR)).clamp(4 * TR, 32 * TR);
    let block = block.min(rows.next_multiple_of(2 * TR));
    let row_blocks = rows.div_ceil(block);
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let strip = pairs.div_ceil(threads.div_ceil(row_blocks)).max(1);
    let strips = pairs.div_ceil(strip);
    let dst_ptr = crate::kernels::SendPtr(dst.as_mut_ptr());
    let wb = &*wb;
    let body = |xa: &mut Vec<u16>, task: usize| {
        let (rb, sj) = (task / strips, task % strips);
        let r0 = rb * block;
        let n = block.min(rows - r0);
        let rt = n.div_ceil(2 * TR) * 2;
        let xa = aligned(xa, rt * kt * TILE);
        pack_x(&x[r0 * in_dim..(r0 + n) * in_dim], n, in_dim, kt, xa);
        // SAFETY: `available` (checked by the caller) means the CPU has AMX and the OS granted
        // the tile state.
        unsafe { configure() };
        // k in slices of KC tiles: a 32-channel B panel of one slice (32 KiB) stays in L1 / L2
        // while every row pair of the block passes it; full dst blocks accumulate across the
        // slices, edge blocks are done whole at the first slice (through the scratch).
        let (p_lo, p_hi) = (sj * strip, ((sj + 1) * strip).min(pairs));
        // The task's channels in groups whose dst block (n rows x 32 * group) is ~256 KiB, so
        // that it stays in L2 across the k slices.
        let group = ((256 * 1024 / (4 * n)) / (2 * TR)).max(1);
        for g0 in (p_lo..p_hi).step_by(group) {
            for k0 in (0..kt).step_by(KC) {
                let kn = KC.min(kt - k0);
                for p in g0..(g0 + group).min(p_hi) {
                    let o0 = p * 2 * TR;
                    let b0 = &wb[(2 * p * kt + k0) * TILE / 2..];
                    let b1 = &wb[((2 * p + 1) * kt + k0) * TILE / 2..];
                    let cols = (2 * TR).min(out_dim - o0);
                    for q in (0..rt).step_by(2) {
                        let t0 = q * TR;
                        let n_rows = (2 * TR).min(n - t0);
                        // The 32 x 32 block of dst at row r0 + t0, column o0.
                        // SAFETY: that row is < rows and o0 < out_dim, inside dst.
                        let block_ptr = unsafe { dst_ptr.get().add((r0 + t0) * out_dim + o0) };
                        if n_rows == 2 * TR && cols == 2 * TR {
                            let a0 = &xa[(q * kt + k0) * TILE..];
                            let a1 = &xa[((q + 1) * kt + k0) * TILE..];
                            // SAFETY: A: kn tiles each from row tiles q, q + 1 < rt of `xa`
                            // (from k tile k0); B: kn tiles each from column tiles 2p, 2p + 1 < ct
                            // of `wb`; C: 32 rows x 32 columns of dst at a stride of out_dim
                            // floats, inside dst (just checked) and owned by this task (tasks
                            // own disjoint row blocks x channel strips).
                            unsafe {
                                micro(
                                    kn,
                                    a0.as_ptr(),
                                    a1.as_ptr(),
                                    b0.as_ptr(),
                                    b1.as_ptr(),
                                    block_ptr,
                                    4 * out_dim,
                                )
                            };
                            continue;
                        }
                        if k0 > 0 {
                            continue;
                        }
                        let (a0, a1) = (&xa[q * kt * TILE..], &xa[(q + 1) * kt * TILE..]);
                        let b0 = &wb[2 * p * kt * TILE / 2..];
                        let b1 = &wb[(2 * p + 1) * kt * TILE / 2..];
                        let mut scratch = [[0f32; 2 * TR]; 2 * TR];
                        // SAFETY: as above over all kt tiles, with C the 32 x 32 scratch
                        // (128-byte rows).
                        unsafe {
                            micro(
                                kt,
                                a0.as_ptr(),
                                a1.as_ptr(),
                                b0.as_ptr(),
                                b1.as_ptr(),
                                scratch.as_mut_ptr().cast(),
                                4 * 2 * TR,
                            )
                        };
                        for (t, srow) in scratch.iter().enumerate().take(n_rows) {
                            // SAFETY: row r0 + t0 + t < rows, columns [o0, o0 + cols) < out_dim.
                            let row = unsafe {
                                std::slice::from_raw_parts_mut(block_ptr.add(t * out_dim), cols)
                            };
                            for (d, v) in row.iter_mut().zip(srow) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        }
        // SAFETY: ends this thread's use of the tiles.
        unsafe { release() };
    };
    if parallel {
        (0..row_blocks * strips)
            .into_par_iter()
            .for_each_init(Vec::new, body);
    } else {
        let mut xa = Vec::new();
        (0..row_blocks * strips).for_each(|t| body(&mut xa, t));
    }
}

/// One B tile: `tile[kp * 16 + j]` = the bf16 pair `w[j * in_dim + 2 kp ..]` (as a 32-bit
/// element) for `j < n_o` rows and `kp < pairs`, zero elsewhere: a 16 x 16 transpose of 32-bit
/// elements (unpack 32 / 64-bit, then two 128-bit lane shuffles).
///
/// # Safety
/// AVX-512F present; `w` holds `n_o` rows at a stride of `in_dim` u16, each with `2 * pairs`
/// values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_pairs(w: &[u16], in_dim: usize, n_o: usize, pairs: usize, tile: &mut [u32]) {
    use std::arch::x86_64::*;
    debug_assert!(n_o <= TR && pairs <= TR && tile.len() >= TILE / 2);
    debug_assert!(n_o == 0 || w.len() >= (n_o - 1) * in_dim + 2 * pairs);
    // SAFETY: masked loads read only the `pairs` pairs of each of the `n_o` rows (the caller's
    // contract); the stores write the tile's 256 elements.
    unsafe {
        let mask: __mmask16 = ((1u32 << pairs) - 1) as __mmask16;
        let mut r = [_mm512_setzero_si512(); TR];
        for (j, v) in r.iter_mut().enumerate().take(n_o) {
            *v = _mm512_maskz_loadu_epi32(mask, w.as_ptr().add(j * in_dim).cast());
        }
        let mut t = [_mm512_setzero_si512(); TR];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // u[4i + c], 128-bit lane L: rows 4i..4i+3 of column 4L + c.
        let mut u = [_mm512_setzero_si512(); TR];
        for i in 0..4 {
            u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
            u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
            u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
            u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
        }
        let out = tile.as_mut_ptr();
        for c in 0..4 {
            let s0 = _mm512_shuffle_i32x4::<0x44>(u[c], u[4 + c]);
            let s1 = _mm512_shuffle_i32x4::<0xEE>(u[c], u[4 + c]);
            let s2 = _mm512_shuffle_i32x4::<0x44>(u[8 + c], u[12 + c]);
            let s3 = _mm512_shuffle_i32x4::<0xEE>(u[8 + c], u[12 + c]);
            let rows = [
                _mm512_shuffle_i32x4::<0x88>(s0, s2),
                _mm512_shuffle_i32x4::<0xDD>(s0, s2),
                _mm512_shuffle_i32x4::<0x88>(s1, s3),
                _mm512_shuffle_i32x4::<0xDD>(s1, s3),
            ];
            for (l, v) in rows.into_iter().enumerate() {
                _mm512_storeu_si512(out.add((4 * l + c) * TR).cast(), v);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_pairs(w: &[u16], in_dim: usize, n_o: usize, pairs: usize, tile: &mut [u32]) {
    tile.fill(0);
    for j in 0..n_o {
        for kp in 0..pairs {
            let at = j * in_dim + 2 * kp;
            tile[kp * TR + j] = w[at] as u32 | (w[at + 1] as u32) << 16;
        }
    }
}

/// `len` zeroed elements of `buf` starting at a 64-byte boundary (a tile row is one cache line:
/// unaligned, every row load would touch two).
fn aligned<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    let size = std::mem::size_of::<T>();
    buf.clear();
    buf.resize(len + 64 / size, T::default());
    let skip = buf.as_ptr().align_offset(64).min(64 / size);
    &mut buf[skip..skip + len]
}

/// Packs `n` rows of `x` (`[n, in_dim]` f32) into A tiles `[row tile][kt][16 rows][32]` bf16,
/// zero past `n` rows and `in_dim` columns.
fn pack_x(x: &[f32], n: usize, in_dim: usize, kt: usize, xa: &mut [u16]) {
    let full = in_dim / TK;
    for (r, row) in x.chunks_exact(in_dim).take(n).enumerate() {
        let base = (r / TR) * kt * TILE + (r % TR) * TK;
        for kb in 0..full {
            // SAFETY: AMX-BF16 CPUs have AVX-512F + BF16 (checked by `available`); the slices
            // hold 32 values.
            unsafe {
                cvt32(
                    &row[kb * TK..(kb + 1) * TK],
                    &mut xa[base + kb * TILE..][..TK],
                )
            };
        }
        for k in full * TK..in_dim {
            xa[base + full * TILE + (k - full * TK)] = super::to_bf16(row[k]);
        }
    }
}

/// 32 f32 -> 32 bf16 (round to nearest even).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn cvt32(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() >= TK && dst.len() >= TK);
    // SAFETY: both slices hold 32 elements (the caller's contract).
    unsafe {
        let lo = _mm512_loadu_ps(src.as_ptr());
        let hi = _mm512_loadu_ps(src.as_ptr().add(16));
        // The second operand goes to the low 16 lanes.
        let v = _mm512_cvtne2ps_pbh(hi, lo);
        _mm512_storeu_si512(
            dst.as_mut_ptr().cast(),
            std::mem::transmute::<__m512bh, __m512i>(v),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn cvt32(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = super::to_bf16(s);
    }
}

/// Loads the tile configuration: palette 1, tmm0-7 all 16 rows x 64 bytes.
///
/// # Safety
/// AMX present and granted ([`available`]).
#[cfg(target_arch = "x86_64")]
unsafe fn configure() {
    #[repr(C, align(64))]
    struct Config([u8; 64]);
    let mut cfg = Config([0; 64]);
    cfg.0[0] = 1;
    for t in 0..8 {
        cfg.0[16 + 2 * t] = 64;
        cfg.0[48 + t] = TR as u8;
    }
    // SAFETY: a valid palette-1 configuration in 64 aligned bytes (caller: AMX present).
    unsafe {
        std::arch::asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    }
}

/// Releases the tile state of this thread.
///
/// # Safety
/// AMX present and granted.
#[cfg(target_arch = "x86_64")]
unsafe fn release() {
    // SAFETY: the caller's contract.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

/// `C += [A0; A1] · [B0 B1]` for a 32 x 32 block of f32 `C` at `c` (rows `c_stride` bytes apart)
/// over `kt` tiles of `k`: `a0`/`a1` point at `kt` consecutive 1 KiB A tiles (rows 0-15 /
/// 16-31), `b0`/`b1` at `kt` consecutive B tiles (columns 0-15 / 16-31).
///
/// # Safety
/// AMX present, granted and configured by [`configure`] on this thread; the pointers cover
/// what is described above.
#[cfg(target_arch = "x86_64")]
unsafe fn micro(
    kt: usize,
    a0: *const u16,
    a1: *const u16,
    b0: *const u32,
    b1: *const u32,
    c: *mut f32,
    c_stride: usize,
) {
    // SAFETY: the caller's contract; the C block's 16-column halves are 64 bytes apart, its
    // lower 16 rows 16 strides down.
    unsafe {
        let c2 = c.byte_add(TR * c_stride);
        std::arch::asm!(
            "tileloadd tmm0, [{c} + {cs}*1]",
            "tileloadd tmm1, [{c} + {cs}*1 + 64]",
            "tileloadd tmm2, [{c2} + {cs}*1]",
            "tileloadd tmm3, [{c2} + {cs}*1 + 64]",
            "2:",
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {kt}",
            "jnz 2b",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            "tilestored [{c2} + {cs}*1], tmm2",
            "tilestored [{c2} + {cs}*1 + 64], tmm3",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            kt = inout(reg) kt => _,
            s = in(reg) 64usize,
            c = in(reg) c,
            c2 = in(reg) c2,
            cs = in(reg) c_stride,
            options(nostack),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn configure() {}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn release() {}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro(
    _: usize,
    _: *const u16,
    _: *const u16,
    _: *const u32,
    _: *const u32,
    _: *mut f32,
    _: usize,
) {
    unreachable!("AMX is x86-64 only ([`available`] is false elsewhere)")
}
